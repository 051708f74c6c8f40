//! CAA record sets as a DNS server might publish them (one record per line: a flags byte, the tag, the value), and
//! the decision over them for plain and wildcard names, with account and method parameters (RFC 8659, RFC 8657).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_va::caa::{CaaCheck, CaaRecord, decide};

fuzz_target!(|data: &[u8]| {
    let records: Vec<CaaRecord> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let (&flags, rest) = line.split_first()?;
            let rest = String::from_utf8_lossy(rest);
            let (tag, value) = rest.split_once(' ').unwrap_or((&rest, ""));
            Some(CaaRecord { critical: flags & 0x80 != 0, tag: tag.to_owned(), value: value.to_owned() })
        })
        .collect();
    for (wildcard, method) in [(false, "http-01"), (true, "dns-01"), (false, "tls-alpn-01")] {
        let check = CaaCheck {
            name: "www.quarry-test.org",
            wildcard,
            validation_method: method,
            account_uri: "https://acme.quarry.example.com/acme/acct/1",
        };
        let _ = decide(&records, check, &["quarry.example.com".to_owned()], "quarry-test.org");
    }
});
