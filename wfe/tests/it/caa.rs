//! CAA as a client meets it: checked after control is proven (a `caa` problem on the challenge), and again at
//! finalize for authorizations validated too long ago.

use quarry_core::{ErrorKind, Problem};
use quarry_jose::Algorithm;
use serde_json::json;

use crate::harness::{Stack, csr};

#[tokio::test]
async fn a_caa_denial_invalidates_the_authorization() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    stack.va.caa(Some(Problem::new(ErrorKind::Caa, "CAA record for example.org prevents issuance by this CA")));
    let (order_url, order) = stack.order(&account, &["*.caa.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap();
    let authz = stack.client.post(&account, authz_url, None).await.unwrap().json();
    let challenge = authz["challenges"][0]["url"].as_str().unwrap();
    stack.client.post(&account, challenge, Some(&json!({}))).await.unwrap();
    let order = stack.client.poll(&account, &order_url, 100, |o| o["status"] == "invalid").await.unwrap();
    assert_eq!(order["status"], "invalid");
    let challenge = stack.client.post(&account, challenge, None).await.unwrap().json();
    assert_eq!(challenge["error"]["type"], "urn:ietf:params:acme:error:caa");
    let asked = stack.va.caa_requests();
    assert_eq!(asked.len(), 1);
    let account_id = account.url.as_deref().unwrap().rsplit('/').next().unwrap();
    assert_eq!(asked[0].account_uri, format!("{}{account_id}", quarry_testkit::stack::ACCOUNT_URI_PREFIX));
    assert_eq!(asked[0].identifier.as_ref().unwrap().value, "caa.example.org");
    assert!(asked[0].wildcard);
    assert_eq!(asked[0].validation_method, "dns-01");
}

#[tokio::test]
async fn caa_is_checked_again_at_finalize_for_old_validations() {
    // Every validation counts as old: the recheck always runs.
    let stack = Stack::start_configured(|ra| ra.caa_recheck_after_secs = -1, |_| {}).await;
    let account = stack.account(Algorithm::Es384).await;
    let (order_url, order) = stack.order(&account, &["recheck.example.org"]).await;
    stack.make_ready(&account, &order_url, &order).await;
    assert_eq!(stack.va.caa_requests().len(), 1, "checked once after validation");
    // The domain's CAA changed since: finalize is refused and nothing is issued.
    stack.va.caa(Some(Problem::new(ErrorKind::Caa, "CAA record for recheck.example.org prevents issuance")));
    let finalize = json!({"csr": csr(&["recheck.example.org"])});
    let refused = stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&finalize)).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("caa"), "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(stack.va.caa_requests().len(), 2);
    let order = stack.client.post(&account, &order_url, None).await.unwrap().json();
    assert_eq!(order["status"], "ready", "a CAA refusal at finalize leaves the order ready");
    // Allowed again: the same order is issued.
    stack.va.caa(None);
    let issued = stack.client.post(&account, order["finalize"].as_str().unwrap(), Some(&finalize)).await.unwrap();
    assert_eq!(issued.json()["status"], "valid");
}
