//! Every limit against both stores (in-memory always; Redis when `QUARRY_TEST_REDIS_URL` names a server, as the
//! test command arranges), driven by explicit times, never by sleeping.

use std::sync::Arc;

use quarry_ratelimits::gcra::Micros;
use quarry_ratelimits::limits::ip_domain_bucket_id;
use quarry_ratelimits::{
    Bucket, LimitName, Limiter, Limits, LimitsFile, MemoryStore, RedisStore, Store, Transaction, Verdict,
};

const SECOND: Micros = 1_000_000;
/// Every limit's default in these tests: 4 per hour with a burst of 3, so one unit comes back every 15 minutes.
const COUNT: u64 = 4;
const PERIOD_SECS: u64 = 3_600;
const BURST: u64 = 3;
const INTERVAL: Micros = PERIOD_SECS as i64 * SECOND / COUNT as i64;

fn limits_file(extra: &str) -> LimitsFile {
    let mut text = String::from("version = 1\n");
    for limit in LimitName::ALL.into_iter().filter(|l| !l.is_override_only()) {
        text.push_str(&format!("[limits.{limit}]\ncount = {COUNT}\nperiod_secs = {PERIOD_SECS}\nburst = {BURST}\n"));
    }
    text.push_str(extra);
    toml::from_str(&text).expect("limits file")
}

/// A number no other test (or earlier run against the same Redis) uses, for bucket ids.
fn unique() -> u64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    u64::from_be_bytes(bytes) >> 12
}

/// Bytes from the standard library's randomly seeded hasher: enough to keep test buckets apart.
fn random_bytes(bytes: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    for chunk in bytes.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        let value = hasher.finish().to_be_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
}

/// The stores to run against, named.
async fn stores() -> Vec<(&'static str, Store)> {
    let mut stores = vec![("memory", Store::Memory(MemoryStore::default()))];
    if let Ok(url) = std::env::var("QUARRY_TEST_REDIS_URL") {
        stores.push(("redis", Store::Redis(RedisStore::connect(&url).expect("connect to the test Redis"))));
    }
    stores
}

async fn limiters(extra: &str) -> Vec<(&'static str, Limiter)> {
    let limits = Limits::from_file(&limits_file(extra)).expect("limits");
    stores().await.into_iter().map(|(name, store)| (name, Limiter::new(limits.clone(), store))).collect()
}

/// One bucket of every limit (the override-only one with its override, see `every_limit_…`).
fn every_bucket(n: u64) -> Vec<Bucket> {
    let account = i64::try_from(n).expect("fits");
    vec![
        Bucket::new_registrations_per_ip(std::net::IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8])),
        Bucket::new_registrations_per_ipv6_range(std::net::IpAddr::from([0x2001, 0xdb8, n as u16, 1, 0, 0, 0, 1]))
            .expect("v6"),
        Bucket::new_orders_per_account(account),
        Bucket::failed_authorizations(account, "a.example.com"),
        Bucket::certificates_per_domain(&format!("d{n}.example.com")),
        Bucket::certificates_per_domain(&ip_domain_bucket_id(std::net::IpAddr::from([
            0x2001, 0xdb8, 1, n as u16, 0, 0, 0, 9,
        ]))),
        Bucket::certificates_per_domain_per_account(account, "example.com"),
        Bucket::certificates_per_fqdn_set(&format!("{n:064x}")),
        Bucket::failed_authorizations_for_pausing(account, "a.example.com"),
    ]
}

#[tokio::test]
async fn every_limit_admits_its_burst_then_one_per_interval() {
    let n = unique();
    let account = n;
    // CertificatesPerDomainPerAccount applies only where overridden: give this account's bucket the defaults.
    let extra = format!(
        "[[overrides]]\nlimit = \"CertificatesPerDomainPerAccount\"\nbucket = \"{account}:example.com\"\ncount = {COUNT}\nperiod_secs = {PERIOD_SECS}\nburst = {BURST}\n"
    );
    let start: Micros = 1_800_000_000 * SECOND;
    for (store, limiter) in limiters(&extra).await {
        for bucket in every_bucket(n) {
            let txn = [Transaction::one(bucket.clone())];
            for spent in 0..BURST {
                assert_eq!(limiter.spend(start, &txn).await, Verdict::Allowed, "{store} {bucket:?} #{spent}");
            }
            let Verdict::Denied(denial) = limiter.spend(start, &txn).await else {
                panic!("{store} {bucket:?}: burst + 1 must be denied");
            };
            assert_eq!((denial.limit, &denial.bucket_id), (bucket.limit, &bucket.id), "{store}");
            assert_eq!(denial.retry_in, INTERVAL, "{store} {bucket:?}");
            assert_eq!(denial.retry_after_secs(), 900, "{store}");
            assert!(denial.detail().contains(bucket.limit.as_str()), "{}", denial.detail());
            // A check never spends; a denial never spends either.
            assert!(matches!(limiter.check(start, &txn).await, Verdict::Denied(_)), "{store}");
            assert!(matches!(limiter.spend(start + INTERVAL - 1, &txn).await, Verdict::Denied(_)), "{store}");
            assert_eq!(limiter.spend(start + INTERVAL, &txn).await, Verdict::Allowed, "{store} {bucket:?}");
            assert!(matches!(limiter.spend(start + INTERVAL, &txn).await, Verdict::Denied(_)), "{store}");
        }
        assert_eq!(limiter.store_errors(), 0, "{store}");
    }
}

#[tokio::test]
async fn an_override_only_limit_without_an_override_does_not_limit() {
    let n = unique();
    let bucket = Bucket::certificates_per_domain_per_account(i64::try_from(n).expect("fits"), "example.com");
    for (store, limiter) in limiters("").await {
        for _ in 0..10 {
            assert_eq!(limiter.spend(0, &[Transaction::one(bucket.clone())]).await, Verdict::Allowed, "{store}");
        }
    }
}

#[tokio::test]
async fn a_batch_spends_all_or_nothing_and_names_the_latest_to_free() {
    let n = unique();
    let orders = Bucket::new_orders_per_account(i64::try_from(n).expect("fits"));
    let domain = Bucket::certificates_per_domain(&format!("batch{n}.example.com"));
    for (store, limiter) in limiters("").await {
        let both = [Transaction::one(orders.clone()), Transaction::one(domain.clone())];
        let full_domain = [Transaction { bucket: domain.clone(), cost: BURST }];
        assert_eq!(limiter.spend(0, &full_domain).await, Verdict::Allowed, "{store}");
        let Verdict::Denied(denial) = limiter.spend(0, &both).await else { panic!("{store}: domain is full") };
        assert_eq!(denial.limit, LimitName::CertificatesPerDomain, "{store}");
        // The orders bucket was not spent by the denied batch: its whole burst is still there.
        let burst = [Transaction { bucket: orders.clone(), cost: BURST }];
        assert_eq!(limiter.spend(0, &burst).await, Verdict::Allowed, "{store}");
        // Refund one unit and it fits again at once; reset empties the bucket.
        limiter.refund(0, &[Transaction::one(orders.clone())]).await;
        assert_eq!(limiter.spend(0, &[Transaction::one(orders.clone())]).await, Verdict::Allowed, "{store}");
        limiter.reset(std::slice::from_ref(&domain)).await;
        assert_eq!(limiter.spend(0, &[Transaction { bucket: domain.clone(), cost: BURST }]).await, Verdict::Allowed);
    }
}

#[tokio::test]
async fn parallel_spends_never_admit_more_than_the_burst() {
    let n = unique();
    let bucket = Bucket::new_orders_per_account(i64::try_from(n).expect("fits"));
    for (store, limiter) in limiters("").await {
        let limiter = Arc::new(limiter);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (limiter, bucket) = (Arc::clone(&limiter), bucket.clone());
            tasks.push(tokio::spawn(async move { limiter.spend(5 * SECOND, &[Transaction::one(bucket)]).await }));
        }
        let mut allowed = 0;
        for task in tasks {
            if task.await.expect("task") == Verdict::Allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, BURST, "{store}: exactly the burst is admitted");
    }
}

#[tokio::test]
async fn a_store_that_fails_lets_requests_through_and_is_counted() {
    let Ok(url) = std::env::var("QUARRY_TEST_REDIS_URL") else {
        // The in-memory store cannot fail; this is the Redis store's property.
        return;
    };
    // A proxy in front of Redis that the test can cut.
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = listener.local_addr().expect("addr");
    let cut = cut_switch();
    tokio::spawn(forward(listener, target.clone(), cut.clone()));
    let store = RedisStore::connect(&format!("redis://{proxy}/")).expect("connect through the proxy");
    let limiter = Limiter::new(Limits::from_file(&limits_file("")).expect("limits"), Store::Redis(store));
    let bucket = Bucket::new_orders_per_account(i64::try_from(unique()).expect("fits"));
    let full = [Transaction { bucket: bucket.clone(), cost: BURST }];
    assert_eq!(limiter.spend(0, &full).await, Verdict::Allowed);
    assert!(matches!(limiter.spend(0, &[Transaction::one(bucket.clone())]).await, Verdict::Denied(_)));
    cut.notify_waiters();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // Each check alone used to wait out the connection manager's whole reconnect backoff (about 6 s); after the
    // first failure they skip Redis, so twenty of them answer well within the bound.
    let checks = async {
        let mut verdicts = Vec::new();
        for _ in 0..20 {
            verdicts.push(limiter.spend(0, &[Transaction::one(bucket.clone())]).await);
        }
        verdicts
    };
    let verdicts = tokio::time::timeout(std::time::Duration::from_secs(20), checks)
        .await
        .expect("a failing store answers in bounded time");
    assert!(verdicts.iter().all(|v| *v == Verdict::Allowed), "fail open: {verdicts:?}");
    assert_eq!(limiter.store_errors(), 20);

    // Redis back behind the same address: the limiter uses it again once the cool-off is over, and the bucket it
    // filled before the cut still denies (the checks that failed open wrote nothing).
    let listener = tokio::net::TcpListener::bind(proxy).await.expect("bind the proxy's address again");
    tokio::spawn(forward(listener, target, cut_switch()));
    let mut denied = false;
    for _ in 0..100 {
        if matches!(limiter.spend(0, &[Transaction::one(bucket.clone())]).await, Verdict::Denied(_)) {
            denied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(denied, "the limiter never used Redis again after it came back");
}

/// Forwards every connection `listener` accepts to `target` until `cut` is notified, which also cuts them.
async fn forward(listener: tokio::net::TcpListener, target: String, cut: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            () = cut.notified() => return,
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { return };
                let target = target.clone();
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        }
    }
}

/// Cuts every proxied connection and stops accepting when notified.
fn cut_switch() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}

#[test]
fn the_environment_files_are_valid_and_production_is_lets_encrypts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env");
    for env in ["dev", "staging", "production"] {
        let text = std::fs::read_to_string(dir.join(env).join("ratelimits.toml")).expect("limits file");
        let file: LimitsFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{env}: {e}"));
        Limits::from_file(&file).unwrap_or_else(|e| panic!("{env}: {e}"));
    }
    let text = std::fs::read_to_string(dir.join("production/ratelimits.toml")).expect("production");
    let file: LimitsFile = toml::from_str(&text).expect("parses");
    let value = |name: &str| {
        let v = file.limits[name];
        (v.count, v.period_secs, v.burst)
    };
    assert_eq!(value("NewRegistrationsPerIPAddress"), (10, 3 * 3_600, 10));
    assert_eq!(value("NewOrdersPerAccount"), (300, 3 * 3_600, 300));
    assert_eq!(value("CertificatesPerDomain"), (50, 7 * 86_400, 50));
    assert_eq!(value("CertificatesPerFQDNSet"), (5, 7 * 86_400, 5));
    assert_eq!(value("FailedAuthorizationsPerDomainPerAccount"), (5, 3_600, 5));
}
