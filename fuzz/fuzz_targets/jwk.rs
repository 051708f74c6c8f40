//! A JWK as an account key arrives: parsed once into an allowed key, whose canonical forms must parse back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_jose::Jwk;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = Jwk::from_slice(data) else { return };
    let again = Jwk::from_slice(key.canonical_json().as_bytes()).expect("the canonical JWK parses");
    assert_eq!(again, key, "the canonical JWK is the same key");
    let from_spki = Jwk::from_spki_der(&key.spki_der()).expect("the canonical SPKI parses");
    assert_eq!(from_spki, key, "the canonical SPKI is the same key");
    assert_eq!(from_spki.key_hash(), key.key_hash());
    let _ = key.thumbprint();
});
