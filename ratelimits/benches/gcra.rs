//! Rate-limit decisions: the pure GCRA step, and a whole new-order batch (account, names, FQDN set) spent against
//! the in-memory store with production's limits. `cargo bench -p quarry-ratelimits --bench gcra`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_ratelimits::gcra::{self, Rate};
use quarry_ratelimits::{Bucket, Limiter, Limits, LimitsFile, MemoryStore, Store, Transaction};

fn decisions(c: &mut Criterion) {
    let rate = Rate::new(300, 3 * 3_600 * 1_000_000, 300).expect("a rate");
    let now = quarry_ratelimits::now_micros();
    c.bench_function("gcra_decide", |b| b.iter(|| gcra::decide(rate, std::hint::black_box(Some(now - 1_000)), now, 1)));

    let file: LimitsFile = toml::from_str(include_str!("../../deploy/env/production/ratelimits.toml")).expect("toml");
    let limiter = Limiter::new(Limits::from_file(&file).expect("limits"), Store::Memory(MemoryStore::default()));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut account = 0_i64;
    c.bench_function("new_order_batch_spend_memory", |b| {
        b.iter(|| {
            // A new account and domain each time, so that no bucket fills up and every batch is spent.
            account += 1;
            let domain = format!("d{account}.example.com");
            let transactions = [
                Transaction::one(Bucket::new_orders_per_account(account)),
                Transaction::one(Bucket::certificates_per_domain(&domain)),
                Transaction::one(Bucket::certificates_per_domain_per_account(account, &domain)),
                Transaction::one(Bucket::certificates_per_fqdn_set(&format!("{account:064x}"))),
            ];
            runtime.block_on(limiter.spend(now, &transactions))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
