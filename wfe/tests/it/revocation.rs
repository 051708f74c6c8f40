//! Revocation through the wfe (RFC 8555 §7.6): by the certificate's account or by its key, and a compromised key
//! taking every certificate with it, whoever holds them.

use std::time::Duration;

use quarry_jose::Algorithm;
use serde_json::json;

use crate::harness::{Stack, issue, issue_for_key};

#[tokio::test]
async fn certificates_are_revoked_by_their_account_or_their_key() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es256).await;
    let url = stack.client.url("revokeCert");
    let (der, _) = issue(&stack, &account, &["rev.example.org"]).await;
    let payload = |reason: i64| json!({"certificate": quarry_jose::b64_encode(&der), "reason": reason});

    let stranger = stack.account(Algorithm::Es384).await;
    let refused = stack.client.post(&stranger, &url, Some(&payload(0))).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("unauthorized"));
    let bad_reason = stack.client.post(&account, &url, Some(&payload(3))).await.unwrap();
    assert_eq!(bad_reason.problem_type().as_deref(), Some("badRevocationReason"));
    let revoked = stack.client.post(&account, &url, Some(&payload(4))).await.unwrap();
    assert_eq!(revoked.status, 200, "{}", String::from_utf8_lossy(&revoked.body));
    let again = stack.client.post(&account, &url, Some(&payload(4))).await.unwrap();
    assert_eq!(again.problem_type().as_deref(), Some("alreadyRevoked"));

    // Signed with the certificate's own key (the ra revokes it as keyCompromise and blocks the key).
    let (der, cert_key) = issue(&stack, &account, &["key.example.org"]).await;
    let by_key = quarry_testkit::client::AcmeAccount { key: cert_key, url: None };
    let body = json!({"certificate": quarry_jose::b64_encode(&der)});
    let revoked = stack.client.post(&by_key, &url, Some(&body)).await.unwrap();
    assert_eq!(revoked.status, 200, "{}", String::from_utf8_lossy(&revoked.body));
    // The compromised key is blocked: it cannot become an account key either.
    let new_account = json!({"termsOfServiceAgreed": true});
    let refused = stack.client.post(&by_key, &stack.client.url("newAccount"), Some(&new_account)).await.unwrap();
    assert_eq!(refused.problem_type().as_deref(), Some("badPublicKey"), "{}", String::from_utf8_lossy(&refused.body));
    let unknown = stack
        .client
        .post(&account, &url, Some(&json!({"certificate": quarry_jose::b64_encode(b"nope")})))
        .await
        .unwrap();
    assert_eq!(unknown.problem_type().as_deref(), Some("malformed"));
}

/// Waits (at most `seconds`) for the certificate `der` to be revoked for key compromise; returns the reason code it
/// was last seen revoked with, if any. Waiting for the reason, not just the status, matters for a certificate
/// revoked earlier for another reason: the bad-key revoker raises it one certificate at a time, after others.
async fn revoked_within(store: &quarry_sa::Store, der: &[u8], seconds: u64) -> Option<i64> {
    const KEY_COMPROMISE: i64 = 1;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let serial: String = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
    let serial = serial.trim_start_matches("00").to_owned();
    let mut seen = None;
    for attempt in 0..=seconds * 5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, _, reason, _, _) = store.get_certificate_status(&serial).await.unwrap();
        if status == "revoked" {
            seen = Some(reason);
            if reason == KEY_COMPROMISE {
                break;
            }
        }
    }
    seen
}

/// Finding 5 of the security review: a key-compromise revocation signed by the certificate's key revoked that one
/// certificate, and another account's certificate for the same key stayed valid. Now the bad-key revoker revokes
/// every unexpired certificate of the key, whoever holds it, in either encoding; and a key an operator blocks loses
/// its certificates the same way.
#[tokio::test]
async fn a_compromised_key_loses_every_certificate_whoever_holds_it() {
    let stack = Stack::start().await;
    let settings = quarry_sa::store::PoolSettings { max_connections: 2, statement_timeout: Duration::from_secs(5) };
    let store = quarry_sa::Store::open(&stack.services.db.url, settings).await.unwrap();
    let (first, second) = (stack.account(Algorithm::Es256).await, stack.account(Algorithm::Es256).await);
    let shared = quarry_jose::SigningKey::generate(Algorithm::Es256).unwrap();
    let firsts = issue_for_key(&stack, &first, &["one.example.org"], &shared, false).await;
    let seconds = issue_for_key(&stack, &second, &["two.example.org"], &shared, true).await;
    let (unrelated, other_key) = issue(&stack, &second, &["three.example.org"]).await;
    // Revoked earlier by its holder as superseded: compromise raises its reason.
    let superseded = issue_for_key(&stack, &second, &["four.example.org"], &shared, false).await;
    let body = json!({"certificate": quarry_jose::b64_encode(&superseded), "reason": 4});
    let answer = stack.client.post(&second, &stack.client.url("revokeCert"), Some(&body)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));

    let by_key = quarry_testkit::client::AcmeAccount { key: shared, url: None };
    let body = json!({"certificate": quarry_jose::b64_encode(&firsts), "reason": 1});
    let answer = stack.client.post(&by_key, &stack.client.url("revokeCert"), Some(&body)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(revoked_within(&store, &firsts, 1).await, Some(1));
    assert_eq!(revoked_within(&store, &seconds, 20).await, Some(1), "the other account's certificate");
    assert_eq!(revoked_within(&store, &superseded, 20).await, Some(1), "superseded, then compromised");
    assert_eq!(revoked_within(&store, &unrelated, 0).await, None, "another key's certificate stays good");
    let again = stack.client.post(&by_key, &stack.client.url("revokeCert"), Some(&body)).await.unwrap();
    assert_eq!(again.problem_type().as_deref(), Some("alreadyRevoked"));

    // An operator's block (`quarry admin block-key` writes it to the sa): the next pass revokes the key's certificates.
    let hash = other_key.jwk().key_hash();
    store.add_blocked_key(&hash, "admin", "reported compromised").await.unwrap();
    let limit = quarry_ra::BAD_KEY_PERIOD.as_secs() + 15;
    assert_eq!(revoked_within(&store, &unrelated, limit).await, Some(1), "within a pass of the operator's block");
}
