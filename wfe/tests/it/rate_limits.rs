//! Rate limits end to end through the wfe (whatever it refuses is a `rateLimited` problem with `Retry-After` and a
//! detail naming the limit), with the exemptions for renewals and ARI replacements. Each test gives the ra a
//! limits file where one limit is tight and every other is the dev's permissive one.

use quarry_core::Problem;
use quarry_jose::Algorithm;
use quarry_testkit::client::HttpResponse;
use serde_json::json;

use crate::harness::{Stack, issue};
use crate::profiles_and_renewal::cert_id;

/// The dev limits with `limit` set to `burst` per day (burst the same).
fn limits_file(dir: &std::path::Path, limit: &str, burst: u64) -> std::path::PathBuf {
    let dev = std::fs::read_to_string(quarry_testkit::stack::DEV_LIMITS).expect("dev limits");
    let mut table: toml::Table = toml::from_str(&dev).expect("toml");
    let limits = table["limits"].as_table_mut().expect("limits");
    let value: toml::Table =
        toml::from_str(&format!("count = {burst}\nperiod_secs = 86400\nburst = {burst}")).expect("value");
    limits.insert(limit.to_owned(), toml::Value::Table(value));
    let path = dir.join(format!("{limit}.toml"));
    std::fs::write(&path, table.to_string()).expect("write limits");
    path
}

async fn stack_with_tight(limit: &str, burst: u64) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_file(dir.path(), limit, burst);
    (Stack::start_configured(move |ra| ra.rate_limits.limits_file = file, |_| {}).await, dir)
}

fn assert_limited(response: &HttpResponse, limit: &str) {
    assert_eq!(response.status, 429, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.problem_type().as_deref(), Some("rateLimited"));
    let detail = response.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(limit) && detail.contains("retry after"), "{detail}");
    let retry_after: u64 = response.header("retry-after").expect("Retry-After").parse().expect("seconds");
    // One unit comes back per 86400 / burst seconds.
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn new_accounts_per_ip_address() {
    let (stack, _dir) = stack_with_tight("NewRegistrationsPerIPAddress", 2).await;
    stack.account(Algorithm::Es256).await;
    stack.account(Algorithm::Es256).await;
    let third = quarry_testkit::client::AcmeAccount::generate(Algorithm::Es256);
    let terms = json!({ "termsOfServiceAgreed": true });
    let refused = stack.client.post(&third, &stack.client.url("newAccount"), Some(&terms)).await.expect("answered");
    assert_limited(&refused, "NewRegistrationsPerIPAddress");
    assert_eq!(refused.header("retry-after").as_deref(), Some("43200"));
}

/// Finding 3 of the security review: behind a load balancer every request carried the balancer's address, so one
/// per-IP bucket held every client. Now a trusted proxy's `X-Forwarded-For` names the client (its right-most
/// untrusted entry), and anyone else's is ignored.
#[tokio::test]
async fn per_ip_limits_count_the_client_a_trusted_proxy_names() {
    let new_account = |client: quarry_testkit::client::AcmeClient| async move {
        let account = quarry_testkit::client::AcmeAccount::generate(Algorithm::Es256);
        let terms = json!({ "termsOfServiceAgreed": true });
        client.post(&account, &client.url("newAccount"), Some(&terms)).await.expect("answered")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_file(dir.path(), "NewRegistrationsPerIPAddress", 1);
    let behind_proxy = Stack::start_configured(
        move |ra| ra.rate_limits.limits_file = file,
        |wfe| wfe.listener.trusted_proxies = vec!["127.0.0.0/8".parse().expect("CIDR")],
    )
    .await;
    let client = &behind_proxy.client;
    for address in ["198.51.100.1", "198.51.100.2", "::ffff:198.51.100.3"] {
        let created = new_account(client.forwarded_for(address)).await;
        assert_eq!(created.status, 201, "{address}: {}", String::from_utf8_lossy(&created.body));
    }
    assert_limited(&new_account(client.forwarded_for("198.51.100.1")).await, "NewRegistrationsPerIPAddress");
    // IPv4-mapped is the IPv4 address; an entry the client wrote itself, left of the proxy's, changes nothing.
    assert_limited(&new_account(client.forwarded_for("198.51.100.3")).await, "NewRegistrationsPerIPAddress");
    let forged = client.forwarded_for("203.0.113.50, 198.51.100.2");
    assert_limited(&new_account(forged).await, "NewRegistrationsPerIPAddress");

    // Without trusted proxies the header is the client's own word: every request counts as its peer, 127.0.0.1.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_file(dir.path(), "NewRegistrationsPerIPAddress", 1);
    let direct = Stack::start_configured(move |ra| ra.rate_limits.limits_file = file, |_| {}).await;
    assert_eq!(new_account(direct.client.forwarded_for("198.51.100.1")).await.status, 201);
    let spoofed = new_account(direct.client.forwarded_for("198.51.100.2")).await;
    assert_limited(&spoofed, "NewRegistrationsPerIPAddress");
}

#[tokio::test]
async fn new_orders_per_account_and_reused_orders_are_free() {
    let (stack, _dir) = stack_with_tight("NewOrdersPerAccount", 2).await;
    let account = stack.account(Algorithm::Es256).await;
    stack.order(&account, &["one.example.org"]).await;
    stack.order(&account, &["two.example.org"]).await;
    // The same identifiers again: the existing order is handed back, nothing is spent.
    let (_, reused) = stack.order(&account, &["one.example.org"]).await;
    assert_eq!(reused["status"], "pending");
    let refused =
        stack.new_order(&account, &json!({"identifiers": [{"type": "dns", "value": "three.example.org"}]})).await;
    assert_limited(&refused, "NewOrdersPerAccount");
    // Another account has its own bucket.
    let other = stack.account(Algorithm::Es256).await;
    stack.order(&other, &["three.example.org"]).await;
}

#[tokio::test]
async fn certificates_per_registered_domain_spare_renewals() {
    let (stack, _dir) = stack_with_tight("CertificatesPerDomain", 1).await;
    let account = stack.account(Algorithm::Es256).await;
    issue(&stack, &account, &["www.example.org"]).await;
    // Another name under example.org: the registered domain's certificate is spent.
    let refused =
        stack.new_order(&account, &json!({"identifiers": [{"type": "dns", "value": "api.example.org"}]})).await;
    assert_limited(&refused, "CertificatesPerDomain");
    // A renewal (exactly the same identifiers) is exempt.
    issue(&stack, &account, &["www.example.org"]).await;
    // Another registered domain is untouched.
    issue(&stack, &account, &["www.example.net"]).await;
}

#[tokio::test]
async fn certificates_per_identifier_set_limit_renewals_too() {
    let (stack, _dir) = stack_with_tight("CertificatesPerFQDNSet", 1).await;
    let account = stack.account(Algorithm::Es256).await;
    issue(&stack, &account, &["dup.example.org"]).await;
    let refused =
        stack.new_order(&account, &json!({"identifiers": [{"type": "dns", "value": "dup.example.org"}]})).await;
    assert_limited(&refused, "CertificatesPerFQDNSet");
}

#[tokio::test]
async fn an_ari_replacement_in_its_window_is_exempt_from_every_limit() {
    let (stack, _dir) = stack_with_tight("CertificatesPerFQDNSet", 1).await;
    let account = stack.account(Algorithm::Es256).await;
    let (der, _) = issue(&stack, &account, &["ari.example.org"]).await;
    let names = json!([{"type": "dns", "value": "ari.example.org"}]);
    // Not yet in its window: limited like any order.
    let early = stack.new_order(&account, &json!({"identifiers": names, "replaces": cert_id(&der)})).await;
    assert_limited(&early, "CertificatesPerFQDNSet");
    // Revoked, its window lies in the past: the replacement is exempt.
    let revoke = json!({"certificate": quarry_jose::b64_encode(&der), "reason": 4});
    let revoked = stack.client.post(&account, &stack.client.url("revokeCert"), Some(&revoke)).await.unwrap();
    assert_eq!(revoked.status, 200);
    let replacement = stack.new_order(&account, &json!({"identifiers": names, "replaces": cert_id(&der)})).await;
    assert_eq!(replacement.status, 201, "{}", String::from_utf8_lossy(&replacement.body));
}

#[tokio::test]
async fn failed_validations_per_identifier() {
    let (stack, _dir) = stack_with_tight("FailedAuthorizationsPerDomainPerAccount", 1).await;
    let account = stack.account(Algorithm::Es256).await;
    stack.va.fail(Problem::new(quarry_core::ErrorKind::Unauthorized, "wrong key authorization"));
    let (order_url, order) = stack.order(&account, &["flaky.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
    stack.client.post(&account, &challenge, Some(&json!({}))).await.unwrap();
    stack.client.poll(&account, &order_url, 100, |o| o["status"] == "invalid").await.expect("order invalid");
    let refused =
        stack.new_order(&account, &json!({"identifiers": [{"type": "dns", "value": "flaky.example.org"}]})).await;
    assert_limited(&refused, "FailedAuthorizationsPerDomainPerAccount");
    // Other identifiers are not affected.
    stack.va.pass();
    let (order_url, order) = stack.order(&account, &["steady.example.org"]).await;
    stack.make_ready(&account, &order_url, &order).await;
}

/// Orders `name`, fails its validation (the fake va says so) and waits until the order is invalid.
async fn fail_once(stack: &Stack, account: &quarry_testkit::client::AcmeAccount, name: &str) {
    let (order_url, order) = stack.order(account, &[name]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = stack.client.post(account, &authz_url, None).await.unwrap().json();
    let challenge = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
    stack.client.post(account, &challenge, Some(&json!({}))).await.unwrap();
    stack.client.poll(account, &order_url, 100, |o| o["status"] == "invalid").await.expect("order invalid");
}

#[tokio::test]
async fn an_account_that_keeps_failing_is_paused_until_unpaused() {
    let (stack, _dir) = stack_with_tight("FailedAuthorizationsForPausingPerDomainPerAccount", 2).await;
    let account = stack.account(Algorithm::Es256).await;
    stack.va.fail(Problem::new(quarry_core::ErrorKind::Unauthorized, "wrong key authorization"));
    for _ in 0..3 {
        fail_once(&stack, &account, "zombie.example.org").await;
    }
    let order = json!({"identifiers": [{"type": "dns", "value": "zombie.example.org"}]});
    let refused = stack.new_order(&account, &order).await;
    assert_eq!(refused.status, 429, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.problem_type().as_deref(), Some("rateLimited"));
    let detail = refused.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("paused for zombie.example.org") && detail.contains("unpause"), "{detail}");
    // Other identifiers are not paused.
    stack.order(&account, &["alive.example.org"]).await;

    // The operator unpauses (through the sa, as `quarry admin unpause` does).
    let services = &stack.services;
    let mut sa = quarry_proto::sa::storage_authority_client::StorageAuthorityClient::new(services.pki.channel(
        "admin",
        "sa",
        services.sa,
    ));
    let id = account.url.as_deref().and_then(|u| u.rsplit('/').next()).and_then(|id| id.parse().ok()).expect("id");
    let unpaused = sa.unpause_account(quarry_proto::sa::AccountId { id }).await.expect("unpaused").into_inner();
    assert_eq!(unpaused.count, 1);
    stack.va.pass();
    assert_eq!(stack.new_order(&account, &order).await.status, 201);
}

#[tokio::test]
async fn overrides_in_the_sa_are_read_by_the_ra() {
    let db = quarry_testkit::db::TestDatabase::sqlite();
    let settings =
        quarry_sa::store::PoolSettings { max_connections: 2, statement_timeout: std::time::Duration::from_secs(5) };
    let store = quarry_sa::Store::open(&db.url, settings).await.expect("store");
    // The first account of a fresh database is number 1: raise its new-order limit from 1 to 3.
    let raised = quarry_sa::RateLimitOverride {
        limit_name: "NewOrdersPerAccount".into(),
        bucket_key: "1".into(),
        count: 3,
        period_secs: 86_400,
        burst: 3,
        comment: "a hosting provider".into(),
        enabled: true,
    };
    store.set_rate_limit_override(&raised, 0).await.expect("override");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = limits_file(dir.path(), "NewOrdersPerAccount", 1);
    let stack = Stack::start_on_configured(db, move |ra| ra.rate_limits.limits_file = file).await;
    let first = stack.account(Algorithm::Es256).await;
    assert!(first.url.as_deref().is_some_and(|u| u.ends_with("/1")), "{:?}", first.url);
    // The ra reads the overrides as it starts; give it a moment (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut created = 0;
    for n in 0..3 {
        loop {
            let order = json!({"identifiers": [{"type": "dns", "value": format!("o{n}.example.org")}]});
            let response = stack.new_order(&first, &order).await;
            if response.status == 201 {
                created += 1;
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the override never applied: {}",
                String::from_utf8_lossy(&response.body)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert_eq!(created, 3);
    let fourth = stack.new_order(&first, &json!({"identifiers": [{"type": "dns", "value": "o3.example.org"}]})).await;
    assert_limited(&fourth, "NewOrdersPerAccount");
    // Another account still has the file's limit of 1.
    let second = stack.account(Algorithm::Es256).await;
    stack.order(&second, &["p0.example.org"]).await;
    let refused = stack.new_order(&second, &json!({"identifiers": [{"type": "dns", "value": "p1.example.org"}]})).await;
    assert_limited(&refused, "NewOrdersPerAccount");
}
