//! A SubjectPublicKeyInfo as a CSR or certificate carries it: one allowed key, one canonical encoding, one hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_jose::Jwk;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = Jwk::from_spki_der(data) else { return };
    let canonical = key.spki_der();
    let again = Jwk::from_spki_der(&canonical).expect("the canonical SPKI parses");
    assert_eq!(again, key);
    assert_eq!(again.spki_der(), canonical, "canonical encoding is a fixed point");
    let from_jwk = Jwk::from_slice(key.canonical_json().as_bytes()).expect("the key's JWK parses");
    assert_eq!(from_jwk.key_hash(), key.key_hash());
});
