//! Nonce minting and redemption, each of which the nonce service does once per ACME request.
//! `cargo bench -p quarry-nonce --bench nonce`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_nonce::NonceSource;

fn nonces(c: &mut Criterion) {
    let mut source = NonceSource::new("benchNNN", 40_000).expect("a nonce source");
    c.bench_function("nonce_mint", |b| b.iter(|| source.mint().expect("mints")));
    c.bench_function("nonce_mint_then_redeem", |b| {
        b.iter(|| {
            let nonce = source.mint().expect("mints");
            source.try_redeem(&nonce).expect("redeems");
        })
    });
    let nonce = source.mint().expect("mints");
    source.try_redeem(&nonce).expect("redeems");
    c.bench_function("nonce_refuse_replayed", |b| b.iter(|| source.try_redeem(&nonce).expect_err("replayed")));
}

criterion_group!(benches, nonces);
criterion_main!(benches);
