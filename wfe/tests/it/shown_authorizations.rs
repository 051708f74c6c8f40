//! A challenge answer that starts from the authorization its client was just shown (`[authorization_cache]`) answers
//! as one that reads the authorization would, even when the copy is stale, and starts no validation the sa refuses;
//! the read that follows an answer is served once from the authorization the answer left, and the first read of a new
//! order's authorization from what the new order created.

use std::time::{Duration, Instant};

use quarry_jose::Algorithm;
use quarry_testkit::client::AcmeAccount;
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

/// Orders `name` for a new account and shows it its authorization: gives the account, the authorization's URL as
/// shown, and its first challenge's URL.
async fn shown_authorization(stack: &Stack, name: &str) -> (AcmeAccount, String, String) {
    let account = stack.account(Algorithm::Es256).await;
    let (_, order) = stack.order(&account, &[name]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let shown = stack.client.post(&account, &authz_url, None).await.unwrap().json();
    assert_eq!(shown["status"], "pending");
    let challenge_url = shown["challenges"][0]["url"].as_str().unwrap().to_owned();
    (account, authz_url, challenge_url)
}

/// Shows the client its new authorization, deactivates it behind the wfe's back, then answers its challenge: gives
/// the answer's status, its problem type and detail, and how many validations the va was asked for.
async fn answer_after_a_change_the_wfe_did_not_see(cache_ttl_ms: u64) -> (u16, Value, Value, usize) {
    let stack = Stack::start_with(|wfe| wfe.authorization_cache.ttl_ms = cache_ttl_ms).await;
    let (account, authz_url, challenge_url) = shown_authorization(&stack, "stale.example.org").await;
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    admin_sa(&stack).deactivate_authorization(id_of(&authz_url), deadline).await.unwrap();
    let answer = stack.client.post(&account, &challenge_url, Some(&json!({}))).await.unwrap();
    let problem = answer.json();
    let stored = admin_sa(&stack).get_authorization(id_of(&authz_url), deadline).await.unwrap();
    assert_eq!(stored.status.as_str(), "deactivated", "the validation's outcome changed nothing");
    (answer.status, problem["type"].clone(), problem["detail"].clone(), stack.va.calls())
}

/// The ra takes no fuse in the sa before a validation it can wait for, so nothing stops one started from a stale
/// copy: the sa refuses its outcome (the authorization is no longer pending), and the client is answered as a read
/// would have answered it.
#[tokio::test]
async fn a_stale_copy_answers_as_a_read_would_and_changes_nothing() {
    let (status, kind, detail, validations) = answer_after_a_change_the_wfe_did_not_see(30_000).await;
    let from_read = answer_after_a_change_the_wfe_did_not_see(0).await;
    assert_eq!((status, &kind, &detail), (from_read.0, &from_read.1, &from_read.2));
    assert_eq!((status, kind.as_str()), (400, Some("urn:ietf:params:acme:error:malformed")), "{detail}");
    assert!(detail.as_str().unwrap().contains("deactivated"), "{detail}");
    assert_eq!(from_read.3, 0, "read, the authorization is refused before any validation");
    assert_eq!(validations, 1, "from the copy, one validation ran; its outcome was refused");
}

#[tokio::test]
async fn a_copy_serves_one_answer_and_the_next_reads_the_authorization() {
    let stack = Stack::start().await;
    stack.va.pass();
    let (account, _, challenge_url) = shown_authorization(&stack, "shown.example.org").await;
    let challenge_url = challenge_url.as_str();
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

/// Orders a name for a new account, and (if `answer_first`) reads its authorization and answers its challenge
/// (validated); then deactivates the authorization behind the wfe's back and reads it twice: gives the two statuses
/// read.
async fn reads_after_a_change_the_wfe_did_not_see(cache_ttl_ms: u64, answer_first: bool) -> [Value; 2] {
    let stack = Stack::start_with(|wfe| wfe.authorization_cache.ttl_ms = cache_ttl_ms).await;
    stack.va.pass();
    let (account, authz_url) = if answer_first {
        let (account, authz_url, challenge_url) = shown_authorization(&stack, "settled.example.org").await;
        let answer = stack.client.post(&account, &challenge_url, Some(&json!({}))).await.unwrap();
        assert_eq!((answer.status, answer.json()["status"].as_str()), (200, Some("valid")));
        (account, authz_url)
    } else {
        let account = stack.account(Algorithm::Es256).await;
        let (_, order) = stack.order(&account, &["created.example.org"]).await;
        (account, order["authorizations"][0].as_str().unwrap().to_owned())
    };
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    admin_sa(&stack).deactivate_authorization(id_of(&authz_url), deadline).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let read = stack.client.post(&account, &authz_url, None).await.unwrap();
        assert_eq!(read.status, 200);
        statuses.push(read.json()["status"].clone());
    }
    statuses.try_into().unwrap()
}

#[tokio::test]
async fn the_read_after_an_answer_is_served_once_from_what_the_answer_left() {
    // The copy serves the first read: a change made elsewhere since (here an operator's; for a client, its own
    // deactivation through another wfe) shows from the second read on, as with a lagging read replica.
    let from_copy = reads_after_a_change_the_wfe_did_not_see(30_000, true).await;
    assert_eq!(from_copy, [json!("valid"), json!("deactivated")]);
    let from_reads = reads_after_a_change_the_wfe_did_not_see(0, true).await;
    assert_eq!(from_reads, [json!("deactivated"), json!("deactivated")]);
}

#[tokio::test]
async fn the_first_read_of_a_new_authorization_is_served_once_from_what_the_new_order_created() {
    let from_copy = reads_after_a_change_the_wfe_did_not_see(30_000, false).await;
    assert_eq!(from_copy, [json!("pending"), json!("deactivated")]);
    let from_reads = reads_after_a_change_the_wfe_did_not_see(0, false).await;
    assert_eq!(from_reads, [json!("deactivated"), json!("deactivated")]);
}
