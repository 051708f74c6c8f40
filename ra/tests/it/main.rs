//! The ra as a real gRPC server over mutual TLS, with a real sa and ca on loopback and a fake va whose verdict each
//! test sets.

use std::time::{Duration, Instant};

use quarry_core::grpc::Channel;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::{Algorithm, SigningKey};
use quarry_proto::core as pb;
use quarry_proto::ra::registration_authority_client::RegistrationAuthorityClient;
use quarry_proto::ra::*;
use quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient;
use quarry_testkit::stack::InProcessStack;

mod recovery;

struct Stack {
    inner: InProcessStack,
}

impl Stack {
    async fn start() -> Stack {
        Stack { inner: InProcessStack::start(false, |ra| ra.profiles.values_mut().for_each(|p| p.max_names = 3)).await }
    }

    fn ra(&self, client: &str) -> RegistrationAuthorityClient<Channel> {
        RegistrationAuthorityClient::new(self.inner.pki.channel(client, "ra", self.inner.ra))
    }

    fn sa(&self) -> StorageAuthorityReadOnlyClient<Channel> {
        StorageAuthorityReadOnlyClient::new(self.inner.pki.channel("wfe", "sa", self.inner.sa))
    }

    /// The sa's read-write service, as the ra calls it.
    fn sa_rw(&self) -> quarry_proto::sa::storage_authority_client::StorageAuthorityClient<Channel> {
        quarry_proto::sa::storage_authority_client::StorageAuthorityClient::new(self.inner.pki.channel(
            "ra",
            "sa",
            self.inner.sa,
        ))
    }

    /// A fresh key, blocked for issuance through the sa.
    async fn blocked_key(&self) -> rcgen::KeyPair {
        let blocked = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&blocked);
        let key_hash = quarry_jose::Jwk::from_spki_der(&spki).unwrap().key_hash().to_vec();
        let block = quarry_proto::sa::AddBlockedKeyRequest { key_hash, source: "test".into(), comment: String::new() };
        self.sa_rw().add_blocked_key(block).await.unwrap();
        blocked
    }

    async fn account(&self) -> (pb::Account, SigningKey) {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let account = pb::Account {
            jwk: key.jwk().to_json().to_string().into_bytes(),
            contact: vec!["mailto:ops@example.org".into()],
            terms_of_service_agreed: true,
            ..Default::default()
        };
        (self.ra("wfe").new_account(account).await.unwrap().into_inner(), key)
    }

    async fn order(&self, account_id: i64, names: &[&str]) -> Result<pb::Order, Problem> {
        let request =
            NewOrderRequest { account_id, identifiers: names.iter().map(|n| dns(n)).collect(), ..Default::default() };
        self.ra("wfe").new_order(request).await.map(|r| r.into_inner()).map_err(Problem::from)
    }

    async fn authorization(&self, id: i64) -> pb::Authorization {
        self.sa().get_authorization(quarry_proto::sa::AuthorizationId { id }).await.unwrap().into_inner()
    }

    async fn stored_order(&self, id: i64) -> pb::Order {
        self.sa().get_order(quarry_proto::sa::OrderId { id }).await.unwrap().into_inner()
    }

    async fn order_status(&self, id: i64) -> String {
        self.stored_order(id).await.status
    }

    /// Starts the validation of one authorization (its first challenge).
    async fn validate_started(&self, authorization_id: i64, account_id: i64) {
        let request =
            PerformValidationRequest { authorization_id, challenge_index: 0, account_id, ..Default::default() };
        let started = self.ra("wfe").perform_validation(request).await.unwrap().into_inner();
        assert_eq!(started.challenges[0].status, "processing");
    }

    /// Starts validation of every authorization of the order and waits (bounded) until none is pending.
    async fn validate_all(&self, order: &pb::Order, account_id: i64) {
        for id in &order.authorization_ids {
            let request = PerformValidationRequest {
                authorization_id: *id,
                challenge_index: 0,
                account_id,
                ..Default::default()
            };
            self.ra("wfe").perform_validation(request).await.unwrap();
        }
        let started = Instant::now();
        for id in &order.authorization_ids {
            while self.authorization(*id).await.status == "pending" {
                assert!(started.elapsed() < Duration::from_secs(10), "validation did not finish");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn dns(value: &str) -> pb::Identifier {
    pb::Identifier { r#type: "dns".into(), value: value.into() }
}

fn csr(names: &[&str]) -> Vec<u8> {
    csr_with_key(names, &rcgen::KeyPair::generate().unwrap())
}

fn csr_with_key(names: &[&str], key: &rcgen::KeyPair) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(key).unwrap().der().to_vec()
}

async fn finalize(stack: &Stack, order: &pb::Order, account_id: i64, csr: Vec<u8>) -> Result<pb::Order, Problem> {
    let request = FinalizeOrderRequest { order_id: order.id, account_id, csr, ..Default::default() };
    stack.ra("wfe").finalize_order(request).await.map(|r| r.into_inner()).map_err(Problem::from)
}

#[tokio::test]
async fn accounts_are_checked_and_created_once_per_key() {
    let stack = Stack::start().await;
    let (account, key) = stack.account().await;
    assert_eq!(account.status, "valid");
    let again = pb::Account { jwk: key.jwk().to_json().to_string().into_bytes(), ..Default::default() };
    assert_eq!(stack.ra("wfe").new_account(again).await.unwrap().into_inner().id, account.id);

    let bad_contact = pb::Account {
        jwk: SigningKey::generate(Algorithm::Es256).unwrap().jwk().to_json().to_string().into_bytes(),
        contact: vec!["mailto:a@example.org?subject=hi".into()],
        ..Default::default()
    };
    let err = Problem::from(stack.ra("wfe").new_account(bad_contact).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::InvalidContact);
    let bad_key = pb::Account { jwk: br#"{"kty":"oct","k":"AAAA"}"#.to_vec(), ..Default::default() };
    let err = Problem::from(stack.ra("wfe").new_account(bad_key).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::BadPublicKey);
}

#[tokio::test]
async fn orders_reuse_orders_and_valid_authorizations() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let order = stack.order(account.id, &["a.example.org", "*.w.example.org"]).await.unwrap();
    assert_eq!(order.status, "pending");
    let same = stack.order(account.id, &["*.W.example.org", "a.example.org"]).await.unwrap();
    assert_eq!(same.id, order.id, "an identical pending order is reused");
    // A new order comes with its authorizations as recorded, for the wfe to show; a reused one without (they may be
    // under validation by then).
    let ids: Vec<i64> = order.authorizations.iter().map(|a| a.id).collect();
    assert_eq!(ids, order.authorization_ids);
    for created in &order.authorizations {
        assert_eq!(*created, stack.authorization(created.id).await);
    }
    assert!(same.authorizations.is_empty());
    let wildcard = stack.authorization(order.authorization_ids[0]).await;
    let wildcard = if wildcard.wildcard { wildcard } else { stack.authorization(order.authorization_ids[1]).await };
    assert_eq!(wildcard.challenges.iter().map(|c| c.r#type.as_str()).collect::<Vec<_>>(), ["dns-01"]);

    stack.inner.va.pass();
    stack.validate_all(&order, account.id).await;
    assert_eq!(stack.order_status(order.id).await, "ready");
    let second = stack.order(account.id, &["a.example.org", "b.example.org"]).await.unwrap();
    assert_ne!(second.id, order.id);
    let reused: Vec<i64> =
        second.authorization_ids.iter().filter(|id| order.authorization_ids.contains(id)).copied().collect();
    assert_eq!(reused.len(), 1, "the valid authorization for a.example.org is reused");
    let statuses: Vec<&str> = second.authorizations.iter().map(|a| a.status.as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "valid").count(), 1, "{statuses:?}");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
}

#[tokio::test]
async fn bad_orders_get_one_subproblem_per_identifier() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let err = stack.order(account.id, &["ok.example.org", "bad..example.org", "-x.example.org"]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::RejectedIdentifier);
    assert_eq!(err.subproblems.len(), 2);
    let err = stack
        .order(account.id, &["a.example.org", "b.example.org", "c.example.org", "d.example.org"])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed);
    let request = NewOrderRequest {
        account_id: account.id,
        identifiers: vec![dns("a.example.org")],
        profile: "nope".into(),
        ..Default::default()
    };
    let err = Problem::from(stack.ra("wfe").new_order(request).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::InvalidProfile);
}

#[tokio::test]
async fn a_failed_validation_invalidates_the_order() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let order = stack.order(account.id, &["fail.example.org"]).await.unwrap();
    stack.inner.va.fail(Problem::new(ErrorKind::IncorrectResponse, "wrong key authorization"));
    stack.validate_all(&order, account.id).await;
    let authz = stack.authorization(order.authorization_ids[0]).await;
    assert_eq!(authz.status, "invalid");
    assert_eq!(authz.challenges[0].error.as_ref().unwrap().kind, "incorrectResponse");
    assert_eq!(stack.order_status(order.id).await, "invalid");
    assert_eq!(stack.inner.va.calls(), 1);
}

/// A va older than CAA in `DoDCV` ignores it: the ra notices from the answer and asks `DoCAA` itself.
#[tokio::test]
async fn caa_is_asked_apart_from_a_va_that_ignores_it_in_the_validation() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let order = stack.order(account.id, &["older.example.org"]).await.unwrap();
    stack.inner.va.answer_as_older_va(true);
    stack.inner.va.caa(Some(Problem::new(ErrorKind::Caa, "CAA record for older.example.org prevents issuance")));
    stack.validate_all(&order, account.id).await;
    let authz = stack.authorization(order.authorization_ids[0]).await;
    assert_eq!(authz.status, "invalid");
    assert_eq!(authz.challenges[0].error.as_ref().unwrap().kind, "caa");
    assert_eq!(stack.inner.va.caa_requests().len(), 1, "asked once, apart");
}

#[tokio::test]
async fn finalization_checks_the_csr_then_issues() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let names = ["f.example.org", "www.f.example.org"];
    let order = stack.order(account.id, &names).await.unwrap();
    let early = finalize(&stack, &order, account.id, csr(&names)).await.unwrap_err();
    assert_eq!(early.kind, ErrorKind::OrderNotReady);
    let early_garbage = finalize(&stack, &order, account.id, b"not a csr".to_vec()).await.unwrap_err();
    assert_eq!(early_garbage.kind, ErrorKind::OrderNotReady, "the order's own problem comes first");

    stack.inner.va.pass();
    stack.validate_all(&order, account.id).await;
    let mismatch =
        finalize(&stack, &order, account.id, csr(&["f.example.org", "other.example.org"])).await.unwrap_err();
    assert_eq!(mismatch.kind, ErrorKind::BadCsr);
    assert_eq!(stack.order_status(order.id).await, "ready", "a refused CSR changes nothing");
    let garbage = finalize(&stack, &order, account.id, b"not a csr".to_vec()).await.unwrap_err();
    assert_eq!(garbage.kind, ErrorKind::BadCsr);
    let (other, _) = stack.account().await;
    // Another account's order is answered as a missing one, as the wfe answers: no sign that it exists.
    let stranger = finalize(&stack, &order, other.id, csr(&names)).await.unwrap_err();
    assert_eq!(stranger.kind, ErrorKind::NotFound);
    let missing = pb::Order { id: order.id + 1_000, ..order.clone() };
    let missing = finalize(&stack, &missing, account.id, csr(&names)).await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound);
    // A blocked key, as the sa's one read of what finalization checks says.
    let blocked = stack.blocked_key().await;
    let forbidden = finalize(&stack, &order, account.id, csr_with_key(&names, &blocked)).await.unwrap_err();
    assert_eq!(forbidden.kind, ErrorKind::BadPublicKey);
    assert_eq!(stack.order_status(order.id).await, "ready");

    let done = finalize(&stack, &order, account.id, csr(&names)).await.unwrap();
    assert_eq!(done.status, "valid");
    assert!(!done.certificate_serial.is_empty());
    let again = finalize(&stack, &order, account.id, csr(&names)).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::OrderNotReady);
}

/// During a rolling update the ra may meet an sa that predates `with_order` in GetFinalizationFacts: it answers the
/// facts without the order. The ra then reads the order alone and asks the facts again for its identifiers, and
/// checks and issues as it does with a newer sa: another account's order is missing, a blocked key refused.
#[tokio::test]
async fn finalize_reads_the_order_alone_from_an_sa_older_than_facts_with_the_order() {
    const FACTS: &str = "/quarry.sa.v1.StorageAuthorityReadOnly/GetFinalizationFacts";
    const GET_ORDER: &str = "/quarry.sa.v1.StorageAuthorityReadOnly/GetOrder";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let older_sa = listener.local_addr().unwrap();
    let inner = InProcessStack::start(false, |ra| ra.sa.address = vec![format!("https://{older_sa}")]).await;
    let older = quarry_testkit::older::OlderRelease::sa_without_order_in_facts(&inner.pki, listener, inner.sa).await;
    let stack = Stack { inner };
    let (account, _) = stack.account().await;
    let names = ["older-sa.example.org"];
    let order = stack.order(account.id, &names).await.unwrap();
    stack.inner.va.pass();
    stack.validate_all(&order, account.id).await;

    let (other, _) = stack.account().await;
    let stranger = finalize(&stack, &order, other.id, csr(&names)).await.unwrap_err();
    assert_eq!(stranger.kind, ErrorKind::NotFound);
    let blocked = stack.blocked_key().await;
    let (facts_before, orders_before) = (older.calls(FACTS), older.calls(GET_ORDER));
    let forbidden = finalize(&stack, &order, account.id, csr_with_key(&names, &blocked)).await.unwrap_err();
    assert_eq!(forbidden.kind, ErrorKind::BadPublicKey);
    assert_eq!(older.calls(FACTS) - facts_before, 2, "asked with the order, then for the order's identifiers");
    assert_eq!(older.calls(GET_ORDER) - orders_before, 1, "the order read alone");
    assert_eq!(stack.order_status(order.id).await, "ready");

    let done = finalize(&stack, &order, account.id, csr(&names)).await.unwrap();
    assert_eq!(done.status, "valid");
    assert!(!done.certificate_serial.is_empty());
}

/// A ca that predates `processing_by` issues without the order's fuse taken as the precertificate is stored, so the
/// sa does not record the certificate as the order's: the ra marks the order processing and records the
/// certificate itself, and the order is valid, its fuse taken, as with a newer ca.
#[tokio::test]
async fn finalize_through_a_ca_older_than_the_fuse_in_the_precertificate_still_finalizes_the_order() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let older_ca = listener.local_addr().unwrap();
    let inner = InProcessStack::start(false, |ra| ra.ca.address = vec![format!("https://{older_ca}")]).await;
    let older = quarry_testkit::older::OlderRelease::ca_without_fuse_in_precertificate(&inner.pki, listener, inner.ca);
    let older = older.await;
    let stack = Stack { inner };
    let (account, _) = stack.account().await;
    let names = ["older-ca.example.org"];
    let order = stack.order(account.id, &names).await.unwrap();
    stack.inner.va.pass();
    stack.validate_all(&order, account.id).await;

    let done = finalize(&stack, &order, account.id, csr(&names)).await.unwrap();
    assert_eq!(done.status, "valid");
    assert_eq!(older.calls("/quarry.ca.v1.CertificateAuthority/IssueCertificate"), 1);
    let stored = stack.stored_order(order.id).await;
    assert_eq!(
        (stored.status.as_str(), stored.certificate_serial.as_str()),
        ("valid", done.certificate_serial.as_str())
    );
    let again = finalize(&stack, &order, account.id, csr(&names)).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::OrderNotReady);
    assert_eq!(older.calls("/quarry.ca.v1.CertificateAuthority/IssueCertificate"), 1, "refused before the ca");
}

/// During a rolling update the ra may meet an sa that predates GetFinalizationFacts and GetNewOrderFacts: it answers `unimplemented`
/// (here a server without the sa's services at all), which the sa client tells apart from a failure, so that the
/// ra asks the reads it replaces instead.
#[tokio::test]
async fn an_sa_without_the_one_reads_of_new_order_and_finalization_is_told_apart() {
    use quarry_proto::client::SaClient;
    let stack = Stack::start().await;
    let client = |service: &str, addr| {
        let peer =
            quarry_core::peer::Peer::new(&stack.inner.pki.client_config(service, addr), &stack.inner.pki.tls("ra"));
        SaClient::new(peer.unwrap())
    };
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let names = [quarry_core::Identifier::dns("older.example.org")];
    let older = client("ca", stack.inner.ca).get_finalization_facts(1, vec![0; 32], &names, 0, false, deadline).await;
    assert!(older.unwrap().is_none(), "no such RPC: ask the older reads");
    let current = client("sa", stack.inner.sa).get_finalization_facts(1, vec![0; 32], &names, 0, false, deadline).await;
    let facts = current.unwrap().expect("the sa answers");
    assert!(facts.authorizations.is_empty() && !facts.key_blocked && !facts.renewal, "{facts:?}");
    // The same for new-order's one read.
    let question = quarry_proto::sa::NewOrderFactsRequest {
        account_id: 1,
        identifiers: quarry_proto::convert::identifiers_to_pb(&names),
        profile: "classic".into(),
        ..Default::default()
    };
    let older = client("ca", stack.inner.ca).get_new_order_facts(question.clone(), deadline).await;
    assert!(older.unwrap().is_none(), "no such RPC: ask the older reads");
    let facts = client("sa", stack.inner.sa).get_new_order_facts(question, deadline).await.unwrap();
    assert_eq!(facts.expect("the sa answers"), quarry_core::model::NewOrderFacts::default());
}

/// The wfe sends the authorization, order and account it has just read: the ra uses them instead of reading them
/// again, and answers with exactly what the sa then shows, without reading it back.
#[tokio::test]
async fn the_wfes_copies_spare_reads_and_answer_as_the_sa_would() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let order = stack.order(account.id, &["copies.example.org"]).await.unwrap();
    let id = order.authorization_ids[0];
    let pending = stack.authorization(id).await;
    stack.inner.va.hold(true);
    let start = |authorization: pb::Authorization, account_id: i64| PerformValidationRequest {
        authorization_id: id,
        challenge_index: 0,
        account_id,
        authorization: Some(authorization),
        account: Some(account.clone()),
        wait_ms: 0,
    };
    let (other, _) = stack.account().await;
    let stranger = stack.ra("wfe").perform_validation(start(pending.clone(), other.id)).await.unwrap_err();
    assert_eq!(Problem::from(stranger).kind, ErrorKind::Unauthorized, "the copy's owner is checked");
    let started = stack.ra("wfe").perform_validation(start(pending.clone(), account.id)).await.unwrap().into_inner();
    assert_eq!(started.challenges[0].status, "processing");
    assert_eq!(started, stack.authorization(id).await, "the answer is what the sa shows");
    // A second POST meets the validation under way: the ra's conditional update fails, and it reads the sa.
    let again = stack.ra("wfe").perform_validation(start(pending, account.id)).await.unwrap().into_inner();
    assert_eq!(again, started);
    stack.inner.va.hold(false);
    let begun = Instant::now();
    while stack.authorization(id).await.status == "pending" {
        assert!(begun.elapsed() < Duration::from_secs(10), "validation did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.inner.va.calls(), 1);
    assert_eq!(stack.inner.va.caa_requests().len(), 1, "CAA asked for in the same call");

    let ready = stack.stored_order(order.id).await;
    assert_eq!(ready.status, "ready");
    let finalize = FinalizeOrderRequest {
        order_id: order.id,
        account_id: account.id,
        csr: csr(&["copies.example.org"]),
        order: Some(ready),
        account: Some(account.clone()),
    };
    let mut done = stack.ra("wfe").finalize_order(finalize).await.unwrap().into_inner();
    assert_eq!(done.status, "valid");
    let stored = stack.stored_order(order.id).await;
    // The sa stamps the start of processing by its own clock; the ra's answer approximates it.
    assert!((done.began_processing - stored.began_processing).abs() <= 1, "{done:?}");
    done.began_processing = stored.began_processing;
    // The answer carries the certificate it issued, as the sa stored it, for the wfe to serve its download.
    let certificate = std::mem::take(&mut done.certificate_der);
    assert_eq!(done, stored, "the answer is what the sa shows");
    let serial = quarry_proto::sa::Serial { serial: stored.certificate_serial.clone() };
    assert_eq!(certificate, stack.sa().get_certificate(serial).await.unwrap().into_inner().der);
}

/// Asked to wait (`wait_ms`, as the wfe asks when it holds polls), the ra answers with the validation's outcome as
/// the sa recorded it; a validation longer than the wait is answered processing when the wait ends.
#[tokio::test]
async fn a_wait_answers_with_the_outcome_as_recorded() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let start = |authorization_id: i64, wait_ms: u32| PerformValidationRequest {
        authorization_id,
        challenge_index: 0,
        account_id: account.id,
        wait_ms,
        ..Default::default()
    };
    let quick = stack.order(account.id, &["quick.example.org"]).await.unwrap().authorization_ids[0];
    let settled = stack.ra("wfe").perform_validation(start(quick, 5_000)).await.unwrap().into_inner();
    assert_eq!(settled.status, "valid", "{settled:?}");
    assert_eq!(settled.challenges[0].status, "valid");
    assert_eq!(settled, stack.authorization(quick).await, "the answer is what the sa shows");
    // An outcome within the wait is the sa's one write: no fuse was taken before it (it would name this ra).
    let fused = |id: i64| format!("authorizations WHERE id = {id} AND attempted_by <> ''");
    assert_eq!(stack.inner.db.count(&fused(quick)).await, 0, "no fuse for a validation within the wait");

    let slow = stack.order(account.id, &["slow.example.org"]).await.unwrap().authorization_ids[0];
    stack.inner.va.hold(true);
    let began = Instant::now();
    let started = stack.ra("wfe").perform_validation(start(slow, 300)).await.unwrap().into_inner();
    let waited = began.elapsed();
    assert_eq!(started.challenges[0].status, "processing");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "waited {waited:?}");
    // Answered "processing", the validation is stored as under way (by this ra, for the sweeper), as every reader
    // then finds it; a second POST meanwhile joins it instead of starting another.
    assert_eq!(started, stack.authorization(slow).await, "the answer is what the sa shows");
    assert_eq!(stack.inner.db.count(&fused(slow)).await, 1, "the fuse was taken before the answer");
    let again = stack.ra("wfe").perform_validation(start(slow, 100)).await.unwrap().into_inner();
    assert_eq!(again, started);
    stack.inner.va.hold(false);
    let begun = Instant::now();
    while stack.authorization(slow).await.status == "pending" {
        assert!(begun.elapsed() < Duration::from_secs(10), "the validation was not recorded after its late fuse");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.authorization(slow).await.status, "valid");
    assert_eq!(stack.inner.va.calls(), 2, "one validation each, the second POST's included");
}

/// A copy whose id is not the one asked for is ignored: the ra reads the authorization asked for.
#[tokio::test]
async fn a_copy_of_another_authorization_is_ignored() {
    let stack = Stack::start().await;
    let (account, _) = stack.account().await;
    let first = stack.order(account.id, &["first.example.org"]).await.unwrap();
    let second = stack.order(account.id, &["second.example.org"]).await.unwrap();
    let (first_id, second_id) = (first.authorization_ids[0], second.authorization_ids[0]);
    stack.inner.va.hold(true);
    let request = PerformValidationRequest {
        authorization_id: second_id,
        challenge_index: 0,
        account_id: account.id,
        authorization: Some(stack.authorization(first_id).await),
        account: Some(account.clone()),
        wait_ms: 0,
    };
    let started = stack.ra("wfe").perform_validation(request).await.unwrap().into_inner();
    assert_eq!(started.id, second_id);
    assert_eq!(started.identifier.unwrap().value, "second.example.org");
    assert_eq!(stack.authorization(first_id).await.challenges[0].status, "pending", "the first is untouched");
    stack.inner.va.hold(false);
}

#[tokio::test]
async fn only_the_wfe_may_call() {
    let stack = Stack::start().await;
    let account = pb::Account { jwk: b"{}".to_vec(), ..Default::default() };
    for caller in ["va", "intruder"] {
        let err = stack.ra(caller).new_account(account.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{caller}");
    }
}
