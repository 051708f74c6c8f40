//! The service over gRPC: minting, redeeming once, invalid nonces as answers, and the client allowlist.

use std::collections::HashSet;

use quarry_proto::core::Empty;
use quarry_proto::nonce::{NonceBatchRequest, NonceMessage};
use quarry_testkit::pki::TestPki;
use tonic::Code;

use crate::{Running, config};

fn message(nonce: &str) -> NonceMessage {
    NonceMessage { nonce: nonce.to_owned() }
}

#[tokio::test]
async fn the_wfe_mints_nonces_that_redeem_once() {
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let mut wfe = nonce_service.client(&pki, "wfe");

    let mut minted = Vec::new();
    for _ in 0..5 {
        let nonce = wfe.nonce(Empty {}).await.expect("nonce").into_inner().nonce;
        assert!(nonce.starts_with(&nonce_service.prefix), "{nonce}");
        assert_eq!(nonce.len(), quarry_nonce::NONCE_LEN, "{nonce}");
        minted.push(nonce);
    }
    assert_eq!(minted.iter().collect::<HashSet<_>>().len(), minted.len(), "nonces repeat");

    for nonce in minted.iter().rev() {
        assert!(wfe.redeem(message(nonce)).await.expect("redeem").into_inner().valid, "{nonce}");
    }
    for nonce in &minted {
        assert!(!wfe.redeem(message(nonce)).await.expect("second redeem").into_inner().valid, "{nonce}");
    }
}

#[tokio::test]
async fn batches_are_distinct_fresh_nonces_and_capped() {
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let mut wfe = nonce_service.client(&pki, "wfe");

    let batch = wfe.nonce_batch(NonceBatchRequest { count: 16 }).await.expect("batch").into_inner().nonces;
    assert_eq!(batch.len(), 16);
    assert_eq!(batch.iter().collect::<HashSet<_>>().len(), 16, "nonces repeat");
    for nonce in &batch {
        assert!(nonce.starts_with(&nonce_service.prefix), "{nonce}");
        assert!(wfe.redeem(message(nonce)).await.expect("redeem").into_inner().valid, "{nonce}");
        assert!(!wfe.redeem(message(nonce)).await.expect("second redeem").into_inner().valid, "{nonce}");
    }
    let huge = wfe.nonce_batch(NonceBatchRequest { count: 100_000 }).await.expect("batch").into_inner().nonces;
    assert_eq!(huge.len(), 256, "one call mints at most 256");
    let none = wfe.nonce_batch(NonceBatchRequest { count: 0 }).await.expect("batch").into_inner().nonces;
    assert_eq!(none.len(), 1, "a count of 0 still gives one nonce");
}

#[tokio::test]
async fn invalid_nonces_are_answers_not_errors() {
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let mut wfe = nonce_service.client(&pki, "wfe");
    let valid = wfe.nonce(Empty {}).await.expect("nonce").into_inner().nonce;
    let mut tampered = valid.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");

    let cases = [
        ("empty", String::new()),
        ("garbage", format!("{}garbage", nonce_service.prefix)),
        ("foreign prefix", format!("otherpfx{}", &valid[quarry_nonce::PREFIX_LEN..])),
        ("tampered", tampered),
        ("oversized", format!("{}{}", nonce_service.prefix, "A".repeat(64 * 1024))),
    ];
    for (name, nonce) in cases {
        let answer = wfe.redeem(message(&nonce)).await.unwrap_or_else(|e| panic!("{name}: {e}")).into_inner();
        assert!(!answer.valid, "{name}");
    }
    assert!(wfe.redeem(message(&valid)).await.expect("redeem").into_inner().valid);
}

#[tokio::test]
async fn nonces_of_a_previous_process_are_invalid() {
    let pki = TestPki::new();
    let before = Running::start(config(&pki)).await;
    let old = before.client(&pki, "wfe").nonce(Empty {}).await.expect("nonce").into_inner().nonce;
    drop(before);

    let after = Running::start(config(&pki)).await;
    let mut wfe = after.client(&pki, "wfe");
    assert!(!wfe.redeem(message(&old)).await.expect("redeem").into_inner().valid);
    let fresh = wfe.nonce(Empty {}).await.expect("nonce").into_inner().nonce;
    assert!(wfe.redeem(message(&fresh)).await.expect("redeem").into_inner().valid);
}

#[tokio::test]
async fn concurrent_callers_each_redeem_their_nonces_once() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 20;
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let client = nonce_service.client(&pki, "wfe");

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut nonces = Vec::with_capacity(PER_TASK);
            for _ in 0..PER_TASK {
                let nonce = client.nonce(Empty {}).await.expect("nonce").into_inner().nonce;
                assert!(client.redeem(message(&nonce)).await.expect("redeem").into_inner().valid);
                nonces.push(nonce);
            }
            nonces
        });
    }
    let mut all = HashSet::new();
    while let Some(nonces) = tasks.join_next().await {
        for nonce in nonces.expect("task") {
            assert!(all.insert(nonce), "a nonce was minted twice");
        }
    }
    assert_eq!(all.len(), TASKS * PER_TASK);
}

#[tokio::test]
async fn clients_off_the_allowlist_are_refused() {
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let valid = nonce_service.client(&pki, "wfe").nonce(Empty {}).await.expect("nonce").into_inner().nonce;

    for caller in ["ra", "intruder"] {
        let mut client = nonce_service.client(&pki, caller);
        let status = client.nonce(Empty {}).await.expect_err("nonce must be refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{caller} nonce: {status:?}");
        let status = client.redeem(message(&valid)).await.expect_err("redeem must be refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{caller} redeem: {status:?}");
    }
    // A refused redeem must not have used the nonce up.
    let mut wfe = nonce_service.client(&pki, "wfe");
    assert!(wfe.redeem(message(&valid)).await.expect("redeem").into_inner().valid);
}

/// Each replica's prefix comes from the address the wfe reaches it at: two replicas never share one, and a replica
/// told its advertised address (a pod's) uses that rather than its listen address.
#[tokio::test]
async fn replicas_derive_distinct_prefixes_from_their_addresses() {
    let pki = TestPki::new();
    let first = Running::start(config(&pki)).await;
    let second = Running::start(config(&pki)).await;
    let advertised = Running::start(quarry_nonce::Config {
        advertise: Some("127.0.0.9:9301".parse().expect("address")),
        ..config(&pki)
    })
    .await;
    let prefixes = [&first.prefix, &second.prefix, &advertised.prefix];
    assert_eq!(prefixes.iter().collect::<HashSet<_>>().len(), 3, "{prefixes:?}");
    for running in [&first, &second, &advertised] {
        let nonce = running.client(&pki, "wfe").nonce(Empty {}).await.expect("nonce").into_inner().nonce;
        assert!(nonce.starts_with(&running.prefix), "{nonce} from {}", running.addr);
    }
    // A nonce minted by one replica is refused by another (the wfe routes it back by its prefix).
    let nonce = first.client(&pki, "wfe").nonce(Empty {}).await.expect("nonce").into_inner().nonce;
    assert!(!second.client(&pki, "wfe").redeem(message(&nonce)).await.expect("redeem").into_inner().valid);
}
