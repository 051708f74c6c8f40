//! A DNS response as the va receives it: the answer section's TXT values (dns-01) and CAA records, and the CAA
//! decision over those records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_va::caa::{CaaCheck, decide};
use quarry_va::resolver::{caa_records, decode_answers, txt_values};

fuzz_target!(|data: &[u8]| {
    let Some(answers) = decode_answers(data) else { return };
    let _ = txt_values(&answers);
    let records = caa_records(&answers);
    for wildcard in [false, true] {
        let check = CaaCheck {
            name: "www.quarry-test.org",
            wildcard,
            validation_method: "dns-01",
            account_uri: "https://acme.quarry.example.com/acme/acct/1",
        };
        let _ = decide(&records, check, &["quarry.example.com".to_owned()], "quarry-test.org");
    }
});
