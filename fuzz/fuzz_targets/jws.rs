//! A request body as the wfe reads it: the flattened JWS, its protected header, its embedded key, the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(jws) = quarry_jose::Jws::parse(data) else { return };
    let _ = jws.is_post_as_get();
    if let quarry_jose::KeyRef::Jwk(jwk) = &jws.header.key {
        let _ = jws.verify(jwk);
    }
});
