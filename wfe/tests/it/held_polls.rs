//! Held polls (`hold_processing_ms`): a POST-as-GET of an authorization or challenge being validated, or of an order
//! being issued, is answered when the work settles — one poll instead of a wait of `Retry-After` — or, past the hold,
//! as still under way with `Retry-After`. A challenge's answer waits the same way for the validation it starts.

use std::time::{Duration, Instant};

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, HttpResponse};
use serde_json::{Value, json};

use crate::harness::{Stack, csr};

/// The longest any single request of these tests may take: far above every hold, so never the reason one passes.
const REQUEST_BOUND: Duration = Duration::from_secs(10);

/// A POST of `payload` (none: a POST-as-GET) to `url`, with how long it took.
async fn timed_post(
    stack: &Stack,
    account: &AcmeAccount,
    url: &str,
    payload: Option<&Value>,
) -> (HttpResponse, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(REQUEST_BOUND, stack.client.post(account, url, payload))
        .await
        .expect("the request answers within its bound")
        .expect("the request is answered");
    (response, started.elapsed())
}

/// A POST-as-GET of `url`, with how long it took.
async fn timed_poll(stack: &Stack, account: &AcmeAccount, url: &str) -> (HttpResponse, Duration) {
    timed_post(stack, account, url, None).await
}

/// Orders `name`; returns its authorization's and its first challenge's URLs.
async fn challenge_of_new_order(stack: &Stack, account: &AcmeAccount, name: &str) -> (String, String) {
    let (_, order) = stack.order(account, &[name]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = stack.client.post(account, &authz_url, None).await.unwrap().json();
    let challenge_url = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
    (authz_url, challenge_url)
}

/// Answers the challenge at `url`, with how long the answer took.
async fn answer_challenge(stack: &Stack, account: &AcmeAccount, url: &str) -> (HttpResponse, Duration) {
    timed_post(stack, account, url, Some(&json!({}))).await
}

/// Orders `name` with the va holding validations and answers its challenge, which waits out the hold; returns the
/// authorization's and the challenge's URLs (the challenge is being validated until the test lets the va answer)
/// and the challenge's answer.
async fn validation_under_way(stack: &Stack, account: &AcmeAccount, name: &str) -> (String, String, HttpResponse) {
    stack.va.hold(true);
    let (authz_url, challenge_url) = challenge_of_new_order(stack, account, name).await;
    let (answer, _) = answer_challenge(stack, account, &challenge_url).await;
    assert_eq!(answer.json()["status"], "processing", "{}", String::from_utf8_lossy(&answer.body));
    (authz_url, challenge_url, answer)
}

/// Lets the va answer `after` from now.
fn release_va_after(stack: &Stack, after: Duration) {
    let va = stack.va.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        va.hold(false);
    });
}

#[tokio::test]
async fn a_challenge_answer_waits_for_its_validation_and_the_first_poll_finds_it_settled() {
    let stack = Stack::start_with(|wfe| wfe.hold_processing_ms = 5_000).await;
    let account = stack.account(Algorithm::Es256).await;
    stack.va.hold(true);
    let (authz_url, challenge_url) = challenge_of_new_order(&stack, &account, "answered.example.org").await;
    release_va_after(&stack, Duration::from_millis(300));
    let (answer, took) = answer_challenge(&stack, &account, &challenge_url).await;
    assert_eq!(answer.json()["status"], "valid", "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("retry-after"), None);
    assert!(answer.header("replay-nonce").is_some());
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(4), "waited for the va: {took:?}");
    let (authz, took) = timed_poll(&stack, &account, &authz_url).await;
    assert_eq!(authz.json()["status"], "valid", "{}", authz.json());
    assert!(took < Duration::from_secs(1), "nothing to hold: {took:?}");
}

#[tokio::test]
async fn a_poll_of_a_validation_under_way_is_answered_when_it_ends() {
    let stack = Stack::start_with(|wfe| wfe.hold_processing_ms = 1_000).await;
    let account = stack.account(Algorithm::Es256).await;
    let (authz_url, _, _) = validation_under_way(&stack, &account, "held.example.org").await;
    release_va_after(&stack, Duration::from_millis(300));
    let (held, took) = timed_poll(&stack, &account, &authz_url).await;
    assert_eq!(held.json()["status"], "valid", "one poll sees the validation's end: {}", held.json());
    assert_eq!(held.header("retry-after"), None);
    assert!(took >= Duration::from_millis(250), "held until the va answered: {took:?}");
    assert!(held.header("replay-nonce").is_some(), "a held reply gets its nonce as any other");
}

#[tokio::test]
async fn a_validation_longer_than_the_hold_is_answered_still_under_way() {
    let stack = Stack::start_with(|wfe| wfe.hold_processing_ms = 400).await;
    let account = stack.account(Algorithm::Es256).await;
    let (authz_url, challenge_url, _) = validation_under_way(&stack, &account, "slow.example.org").await;

    let (authz, took) = timed_poll(&stack, &account, &authz_url).await;
    assert_eq!(authz.json()["status"], "pending", "{}", authz.json());
    assert_eq!(authz.header("retry-after").as_deref(), Some("1"), "the configured Retry-After");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "held for the hold: {took:?}");

    let (challenge, took) = timed_poll(&stack, &account, &challenge_url).await;
    assert_eq!(challenge.json()["status"], "processing", "{}", challenge.json());
    assert_eq!(challenge.header("retry-after").as_deref(), Some("1"));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "held for the hold: {took:?}");

    stack.va.hold(false);
    let authz = stack.client.poll(&account, &authz_url, 20, |a| a["status"] != "pending").await.unwrap();
    assert_eq!(authz["status"], "valid");
}

#[tokio::test]
async fn a_poll_of_a_challenge_under_way_is_answered_when_it_ends() {
    let stack = Stack::start_with(|wfe| wfe.hold_processing_ms = 1_000).await;
    let account = stack.account(Algorithm::Es256).await;
    let (_, challenge_url, _) = validation_under_way(&stack, &account, "held-challenge.example.org").await;
    release_va_after(&stack, Duration::from_millis(300));
    let (held, took) = timed_poll(&stack, &account, &challenge_url).await;
    assert_eq!(held.json()["status"], "valid", "{}", held.json());
    assert!(took >= Duration::from_millis(250), "{took:?}");
}

/// Finalizes an order for `name` (asynchronously: the answer is `processing`); returns the order's URL.
async fn issuance_under_way(stack: &Stack, account: &AcmeAccount, name: &str) -> String {
    let (order_url, order) = stack.order(account, &[name]).await;
    stack.make_ready(account, &order_url, &order).await;
    let payload = json!({"csr": csr(&[name])});
    let answer = stack.client.post(account, order["finalize"].as_str().unwrap(), Some(&payload)).await.unwrap();
    assert_eq!(answer.json()["status"], "processing", "{}", String::from_utf8_lossy(&answer.body));
    order_url
}

/// A stack finalizing in the background, whose CT logs take `log_delay` to answer, holding polls `hold_ms`.
async fn slow_issuance_stack(log_delay: Duration, hold_ms: u64) -> Stack {
    let stack = Stack::start_configured(|ra| ra.async_finalize = true, |wfe| wfe.hold_processing_ms = hold_ms).await;
    for log in &stack.services.ct_logs {
        log.set_delay(log_delay);
    }
    stack
}

#[tokio::test]
async fn a_poll_of_an_order_being_issued_is_answered_when_it_is_valid() {
    let stack = slow_issuance_stack(Duration::from_millis(300), 5_000).await;
    let account = stack.account(Algorithm::Es256).await;
    let order_url = issuance_under_way(&stack, &account, "issued.example.org").await;
    let (held, took) = timed_poll(&stack, &account, &order_url).await;
    let order: Value = held.json();
    assert_eq!(order["status"], "valid", "one poll sees the certificate: {order}");
    assert!(order["certificate"].is_string());
    assert_eq!(held.header("retry-after"), None);
    assert!(took >= Duration::from_millis(250), "held while the CT logs answered: {took:?}");
}

#[tokio::test]
async fn an_issuance_longer_than_the_hold_is_answered_processing() {
    let stack = slow_issuance_stack(Duration::from_millis(1_500), 400).await;
    let account = stack.account(Algorithm::Es256).await;
    let order_url = issuance_under_way(&stack, &account, "slow-issuance.example.org").await;
    let (held, took) = timed_poll(&stack, &account, &order_url).await;
    assert_eq!(held.json()["status"], "processing", "{}", held.json());
    assert_eq!(held.header("retry-after").as_deref(), Some("1"));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "held for the hold: {took:?}");
    let order = stack.client.poll(&account, &order_url, 40, |o| o["status"] != "processing").await.unwrap();
    assert_eq!(order["status"], "valid");
}

#[tokio::test]
async fn retry_after_follows_how_long_validations_are_seen_under_way() {
    let stack = Stack::start_with(|wfe| {
        wfe.retry_after_secs = 5;
        wfe.hold_processing_ms = 1_200;
    })
    .await;
    let account = stack.account(Algorithm::Es256).await;
    // The validation outlasts the challenge answer's wait (the hold), which measures it as at least that long:
    // the answer asks the client back after 2 s (1.2 s rounded up) rather than the configured 5.
    let (authz_url, _, answer) = validation_under_way(&stack, &account, "measured.example.org").await;
    assert_eq!(answer.header("retry-after").as_deref(), Some("2"), "the measured time, rounded up");

    // So does a poll's hold that ends with the validation still under way.
    let (authz, took) = timed_poll(&stack, &account, &authz_url).await;
    assert_eq!(authz.json()["status"], "pending", "{}", authz.json());
    assert!(took >= Duration::from_millis(1_200), "held for the hold: {took:?}");
    assert_eq!(authz.header("retry-after").as_deref(), Some("2"), "the measured time, rounded up");
    stack.va.hold(false);
    let authz = stack.client.poll(&account, &authz_url, 20, |a| a["status"] != "pending").await.unwrap();
    assert_eq!(authz["status"], "valid");
}

#[tokio::test]
async fn a_hold_of_zero_answers_at_once() {
    let stack = Stack::start_with(|wfe| wfe.hold_processing_ms = 0).await;
    let account = stack.account(Algorithm::Es256).await;
    let (authz_url, _, _) = validation_under_way(&stack, &account, "unheld.example.org").await;
    let (authz, took) = timed_poll(&stack, &account, &authz_url).await;
    stack.va.hold(false);
    assert_eq!(authz.json()["status"], "pending");
    assert_eq!(authz.header("retry-after").as_deref(), Some("1"));
    assert!(took < Duration::from_secs(3), "{took:?}");
}
