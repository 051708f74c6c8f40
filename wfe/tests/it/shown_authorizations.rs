//! A challenge answer that starts from the authorization its client was just shown (`[authorization_cache]`) answers
//! as one that reads the authorization would, even when the copy is stale, and starts no validation the sa refuses.

use std::time::{Duration, Instant};

use quarry_jose::Algorithm;
use serde_json::{Value, json};

use crate::harness::Stack;

/// The sa as an operator reaches it, to change an authorization behind the wfe's back.
fn admin_sa(stack: &Stack) -> quarry_proto::client::SaClient {
    let services = &stack.services;
    let peer = quarry_core::peer::Peer::new(&services.pki.client_config("sa", services.sa), &services.pki.tls("admin"));
    quarry_proto::client::SaClient::new(peer.expect("the sa's peer"))
}

/// The id at the end of an authorization's URL.
fn id_of(url: &str) -> i64 {
    url.rsplit('/').next().and_then(|id| id.parse().ok()).expect("an authorization id")
}

/// Shows the client its new authorization, deactivates it behind the wfe's back, then answers its challenge: gives
/// the answer's status, its problem type and detail, and how many validations the va was asked for.
async fn answer_after_a_change_the_wfe_did_not_see(cache_ttl_ms: u64) -> (u16, Value, Value, usize) {
    let stack = Stack::start_with(|wfe| wfe.authorization_cache.ttl_ms = cache_ttl_ms).await;
    let account = stack.account(Algorithm::Es256).await;
    let (_, order) = stack.order(&account, &["stale.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let shown = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    assert_eq!(shown["status"], "pending");
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    admin_sa(&stack).deactivate_authorization(id_of(&authz_url), deadline).await.unwrap();
    let challenge_url = shown["challenges"][0]["url"].as_str().unwrap();
    let answer = stack.client.post(&account, challenge_url, Some(&json!({}))).await.unwrap();
    let problem = answer.json();
    (answer.status, problem["type"].clone(), problem["detail"].clone(), stack.va.calls())
}

#[tokio::test]
async fn a_stale_copy_answers_as_a_read_would_and_starts_nothing() {
    let from_copy = answer_after_a_change_the_wfe_did_not_see(30_000).await;
    let from_read = answer_after_a_change_the_wfe_did_not_see(0).await;
    assert_eq!(from_copy, from_read);
    let (status, kind, detail, validations) = from_copy;
    assert_eq!((status, kind.as_str()), (400, Some("urn:ietf:params:acme:error:malformed")), "{detail}");
    assert!(detail.as_str().unwrap().contains("deactivated"), "{detail}");
    assert_eq!(validations, 0, "the sa refused the validation's start");
}

#[tokio::test]
async fn a_copy_serves_one_answer_and_the_next_reads_the_authorization() {
    let stack = Stack::start().await;
    stack.va.pass();
    let account = stack.account(Algorithm::Es256).await;
    let (_, order) = stack.order(&account, &["shown.example.org"]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let shown = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    let challenge_url = shown["challenges"][0]["url"].as_str().unwrap();
    let first = stack.client.post(&account, challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!((first.status, first.json()["status"].as_str()), (200, Some("valid")));
    // The copy was pending; a second answer must see the authorization as it is now.
    let second = stack.client.post(&account, challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!((second.status, second.json()["status"].as_str()), (200, Some("valid")));
    assert_eq!(stack.va.calls(), 1, "validated once");
    // Another account is refused, copy or not.
    let other = stack.account(Algorithm::Es256).await;
    let refused = stack.client.post(&other, challenge_url, Some(&json!({}))).await.unwrap();
    assert_eq!(refused.status, 404);
}
