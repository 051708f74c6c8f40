//! JWS verification per algorithm, as the wfe does it for every POST: parse the flattened JWS, then verify its
//! signature with the account key; and parsing an account's stored key, which the wfe's account cache does once
//! per sa read instead of once per POST. `cargo bench -p quarry-jose --bench jws`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_jose::{Algorithm, Jwk, Jws, SigningKey, sign_flattened};
use serde_json::json;

fn jws_verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("jws_parse_and_verify");
    for algorithm in [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256] {
        let key = SigningKey::generate(algorithm).expect("generate a key");
        let jwk = key.jwk();
        let header = json!({
            "alg": algorithm.as_str(),
            "kid": "https://acme.example/acme/acct/1",
            "nonce": "AAAAAAAAzq3sKD0R7Jgqv8nQ2zX4dM1yP6kF9hL3",
            "url": "https://acme.example/acme/new-order",
        });
        let payload = json!({ "identifiers": [{ "type": "dns", "value": "www.example.com" }] }).to_string();
        let body = sign_flattened(&key, &header, Some(payload.as_bytes()));
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                let jws = Jws::parse(std::hint::black_box(body.as_bytes())).expect("parses");
                jws.verify(&jwk).expect("verifies");
            })
        });
    }
    group.finish();
}

fn stored_key_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("stored_account_key_parse");
    for algorithm in [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256] {
        let stored = SigningKey::generate(algorithm).expect("generate a key").jwk().canonical_json();
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| Jwk::from_slice(std::hint::black_box(stored.as_bytes())).expect("parses"))
        });
    }
    group.finish();
}

criterion_group!(benches, jws_verification, stored_key_parsing);
criterion_main!(benches);
