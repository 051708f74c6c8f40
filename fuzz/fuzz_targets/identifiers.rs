//! An identifier as a new-order names it: its syntax, its normal form and the fixed issuance policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_core::{Identifier, IdentifierType};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, value)) = data.split_first() else { return };
    let Ok(value) = std::str::from_utf8(value) else { return };
    let kind = if kind % 2 == 0 { IdentifierType::Dns } else { IdentifierType::Ip };
    let identifier = Identifier { kind, value: value.to_owned() };
    if identifier.check_well_formed().is_ok() {
        let normalized = identifier.normalized();
        assert_eq!(normalized.normalized(), normalized, "normalizing is idempotent");
        let _ = quarry_core::policy::check_fixed(&normalized);
        let _ = normalized.without_wildcard();
        let _ = quarry_core::identifier::registered_domain(&normalized.value);
    }
});
