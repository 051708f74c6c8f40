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
