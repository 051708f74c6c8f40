//! What a trusted proxy says about the client: a PROXY protocol v2 header, and `X-Forwarded-For` values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_core::client_addr::{TrustedProxies, parse_proxy_v2};

fuzz_target!(|data: &[u8]| {
    let _ = parse_proxy_v2(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let peer = "10.1.2.3".parse().unwrap();
        let _ = proxies.forwarded_client(peer, text.split('\n'));
    }
});
