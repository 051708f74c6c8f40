//! Requests that must fail the wfe's JWS checks, each with its RFC 8555 problem type and without changing state.

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, tamper_signature as tamper};
use serde_json::{Value, json};

use crate::harness::Stack;

#[tokio::test]
async fn bad_requests_get_the_right_problem_and_change_nothing() {
    let stack = Stack::start().await;
    let client = &stack.client;
    let new_account = client.url("newAccount");
    let new_order = client.url("newOrder");
    let account = stack.account(Algorithm::Es256).await;
    let order_payload = json!({"identifiers": [{"type": "dns", "value": "a.example.org"}]});

    // A replayed nonce.
    let nonce = client.nonce().await.unwrap();
    let body = account.sign(&new_order, &nonce, Some(&order_payload));
    assert_eq!(client.post_body(&new_order, body.clone()).await.unwrap().status, 201);
    let replayed = client.post_body(&new_order, body).await.unwrap();
    assert_eq!((replayed.status, replayed.problem_type().as_deref()), (400, Some("badNonce")));
    assert!(replayed.header("replay-nonce").is_some(), "a badNonce answer carries a fresh nonce");

    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        (
            "wrong url",
            account.sign(&new_account, &client.nonce().await.unwrap(), Some(&order_payload)),
            None,
            403,
            "unauthorized",
        ),
        (
            "bad signature",
            tamper(&account.sign(&new_order, &client.nonce().await.unwrap(), Some(&order_payload))),
            None,
            400,
            "malformed",
        ),
        ("unknown nonce prefix", account.sign(&new_order, "zzzzzzzzAAAA", Some(&order_payload)), None, 400, "badNonce"),
        (
            "wrong content type",
            account.sign(&new_order, &client.nonce().await.unwrap(), Some(&order_payload)),
            Some("application/json"),
            415,
            "malformed",
        ),
        ("not a JWS", "{}".to_owned(), None, 400, "malformed"),
        ("oversized body", format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20)), None, 413, "malformed"),
        (
            "unsupported algorithm",
            with_header(&account, &new_order, &client.nonce().await.unwrap(), json!({"alg": "HS256"})),
            None,
            400,
            "badSignatureAlgorithm",
        ),
        (
            "jwk where kid belongs",
            with_header(
                &account,
                &new_order,
                &client.nonce().await.unwrap(),
                json!({"jwk": account.key.jwk().to_json(), "kid": null}),
            ),
            None,
            400,
            "malformed",
        ),
        (
            "unknown account",
            with_header(
                &account,
                &new_order,
                &client.nonce().await.unwrap(),
                json!({"kid": format!("{}/acme/acct/99999", stack.base)}),
            ),
            None,
            400,
            "accountDoesNotExist",
        ),
    ];
    for (what, body, content_type, status, problem) in cases {
        let response = client
            .request(
                http::Method::POST,
                &new_order,
                Some(content_type.unwrap_or("application/jose+json")),
                body.into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.problem_type().as_deref()),
            (status, Some(problem)),
            "{what}: {}",
            String::from_utf8_lossy(&response.body)
        );
        // A body past the listener's limit is refused before any handler reads it (RFC 8555 §6.5 asks for a nonce
        // on errors only as a SHOULD; the wfe does not spend one on a request it never read).
        if what != "oversized body" {
            assert!(response.header("replay-nonce").is_some(), "{what}: no Replay-Nonce");
            assert!(response.headers_all("link").iter().any(|l| l.ends_with("rel=\"index\"")), "{what}: no index link");
        }
        assert_eq!(response.header("content-type").as_deref(), Some("application/problem+json"), "{what}");
    }
    if let Some(algorithms) = client
        .request(
            http::Method::POST,
            &new_order,
            Some("application/jose+json"),
            with_header(&account, &new_order, &client.nonce().await.unwrap(), json!({"alg": "none"})).into_bytes(),
        )
        .await
        .unwrap()
        .json()["algorithms"]
        .as_array()
    {
        assert!(algorithms.contains(&json!("ES256")));
    } else {
        panic!("badSignatureAlgorithm lists the supported algorithms");
    }

    // A new-account with kid instead of jwk creates nothing.
    let stranger =
        AcmeAccount { key: quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap(), url: account.url.clone() };
    let kid_on_new_account =
        client.post(&stranger, &new_account, Some(&json!({"termsOfServiceAgreed": true}))).await.unwrap();
    assert_eq!(kid_on_new_account.problem_type().as_deref(), Some("malformed"));
    let stranger = AcmeAccount { key: stranger.key, url: None };
    let lookup = client.post(&stranger, &new_account, Some(&json!({"onlyReturnExisting": true}))).await.unwrap();
    assert_eq!(lookup.problem_type().as_deref(), Some("accountDoesNotExist"), "no account was created");

    // Only the one good order exists: a second identical request reuses it rather than finding others.
    let reused = client.post(&account, &new_order, Some(&order_payload)).await.unwrap();
    assert_eq!(reused.status, 201);
    assert!(reused.header("location").unwrap().ends_with("/acme/order/1"));
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let stack = Stack::start().await;
    let missing =
        stack.client.request(http::Method::GET, &format!("{}/nope", stack.base), None, Vec::new()).await.unwrap();
    assert_eq!((missing.status, missing.problem_type().as_deref()), (404, Some("malformed")));
    let get_post_only =
        stack.client.request(http::Method::GET, &stack.client.url("newOrder"), None, Vec::new()).await.unwrap();
    assert_eq!((get_post_only.status, get_post_only.problem_type().as_deref()), (405, Some("malformed")));
}

#[tokio::test]
async fn nonces_are_redeemed_by_the_instance_that_minted_them() {
    let stack = Stack::start().await;
    let client = &stack.client;
    let account = stack.account(Algorithm::Es256).await;
    let account_url = account.url.clone().unwrap();
    let mut by_prefix = std::collections::BTreeMap::new();
    // The wfe mints nonces in batches, from each replica in turn: three batches' worth spans both.
    for _ in 0..3 * quarry_wfe::NONCE_BATCH {
        let nonce = client.nonce().await.unwrap();
        by_prefix.entry(nonce[..8].to_owned()).or_insert_with(Vec::new).push(nonce);
    }
    let prefixes: Vec<&String> = by_prefix.keys().collect();
    let mut replicas: Vec<&String> = stack.services.nonces.iter().map(|(prefix, _)| prefix).collect();
    replicas.sort();
    assert_eq!(prefixes, replicas);
    let post_as_get = |nonce: &str| {
        let body = account.sign(&account_url, nonce, None);
        client.request(http::Method::POST, &account_url, Some("application/jose+json"), body.into_bytes())
    };
    // Each instance's nonce works once, wherever the previous one came from.
    for nonces in by_prefix.values() {
        let answer = post_as_get(&nonces[0]).await.unwrap();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let replayed = post_as_get(&nonces[0]).await.unwrap();
        assert_eq!(replayed.problem_type().as_deref(), Some("badNonce"));
    }
    // A nonce minted by one replica, presented under the other's prefix, is refused by the other.
    let (first, second) = (&by_prefix[replicas[0]][1], &by_prefix[replicas[1]][1]);
    let forged = format!("{}{}", &first[..8], &second[8..]);
    let refused = post_as_get(&forged).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("badNonce"));
    let genuine = post_as_get(second).await.unwrap();
    assert_eq!(genuine.status, 200, "the forged nonce did not use up the genuine one");
}

/// Signs the new-order payload with the account key but with header members replaced (a null removes one).
fn with_header(account: &AcmeAccount, url: &str, nonce: &str, changes: Value) -> String {
    let payload = json!({"identifiers": [{"type": "dns", "value": "a.example.org"}]});
    account.sign_with_header(url, nonce, Some(&payload), changes)
}
