//! The JSON payload of every ACME resource, with the checks each resource makes before any call.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = quarry_wfe::parse_payloads(data);
});
