//! Work a crashed ra left mid-way, taken over by another replica's sweep: a validation run again once and failed the
//! second time, an order finished from its stored precertificate, an order that died before one failed. The crash is
//! simulated by a held validation and by rows written as a dying ra would leave them; the sweeping replica is a
//! second `Registrar` on the same sa, ca and va.

use std::time::{Duration, Instant};

use quarry_ca::issuance::{CertProfile, IssueRequest, Issuer, issuer_id, prepare_precertificate, random_serial};
use quarry_proto::sa::storage_authority_client::StorageAuthorityClient;
use quarry_proto::sa::{AddCertificateRequest, SetOrderProcessingRequest};
use quarry_ra::{Registrar, SweepReport};

use quarry_testkit::stack::InProcessStack;

use crate::{Stack, csr};

/// Every stuck row qualifies, whatever its age.
const NOW: Duration = Duration::ZERO;

async fn sweeper(stack: &Stack) -> Registrar {
    Registrar::open(&stack.inner.ra_config).await.expect("a second ra replica")
}

async fn wait_for_status(stack: &Stack, authorization_id: i64, wanted: &str) {
    let started = Instant::now();
    while stack.authorization(authorization_id).await.status != wanted {
        assert!(started.elapsed() < Duration::from_secs(10), "never {wanted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_validation_left_running_is_run_again_once_then_failed() {
    let stack = Stack::start().await;
    let sweeper = sweeper(&stack).await;
    let (account, _) = stack.account().await;

    // The first ra's validation never answers (as if it had died with it): another replica runs it again.
    stack.inner.va.hold(true);
    let order = stack.order(account.id, &["again.example.org"]).await.unwrap();
    let id = order.authorization_ids[0];
    stack.validate_started(id, account.id).await;
    let report = sweeper.sweep_older_than(NOW, Duration::from_secs(3600)).await;
    assert_eq!(report, SweepReport { validations_retried: 1, ..SweepReport::default() });
    assert_eq!(sweeper.sweep_older_than(Duration::from_secs(3600), NOW).await, SweepReport::default());
    stack.inner.va.hold(false);
    wait_for_status(&stack, id, "valid").await;

    // Interrupted a second time, the validation is failed, and says why.
    stack.inner.va.hold(true);
    let order = stack.order(account.id, &["twice.example.org"]).await.unwrap();
    let id = order.authorization_ids[0];
    stack.validate_started(id, account.id).await;
    assert_eq!(sweeper.sweep_older_than(NOW, NOW).await.validations_retried, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sweeper.sweep_older_than(NOW, NOW).await.validations_failed, 1);
    let failed = stack.authorization(id).await;
    assert_eq!(failed.status, "invalid");
    let error = failed.challenges[0].error.as_ref().expect("the challenge's error");
    assert_eq!(error.kind, "serverInternal");
    assert!(error.detail.contains("interrupted twice"), "{}", error.detail);
    assert_eq!(stack.order_status(order.id).await, "invalid", "the client orders again");
    stack.inner.va.hold(false);
}

#[tokio::test]
async fn an_order_left_processing_is_finished_from_its_precertificate_or_failed() {
    let stack = Stack::start().await;
    let sweeper = sweeper(&stack).await;
    let (account, _) = stack.account().await;
    stack.inner.va.pass();
    let as_ca = StorageAuthorityClient::new(stack.inner.pki.channel("ca", "sa", stack.inner.sa));

    // An order whose ra died after the ca stored the precertificate: the linting copy is in the sa, nothing else.
    let names = ["recovered.example.org"];
    let order = stack.order(account.id, &names).await.unwrap();
    stack.validate_all(&order, account.id).await;
    as_ca
        .clone()
        .set_order_processing(SetOrderProcessingRequest { id: order.id, owner: "ra-dead".into() })
        .await
        .unwrap();
    let issuer = Issuer::from_pem_files(&stack.inner.pki.issuer_cert(), &stack.inner.pki.issuer_key()).unwrap();
    let serial = random_serial(1).unwrap();
    let request = IssueRequest {
        csr: quarry_core::csr::parse_csr(&csr(&names)).unwrap(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: Vec::new(),
        serial: serial.to_vec(),
        not_before: time::OffsetDateTime::now_utc(),
        profile: CertProfile::CLASSIC,
        crl_url: format!("{}0.crl", quarry_testkit::stack::CRL_URL_PREFIX),
        issuer_url: quarry_testkit::stack::ISSUER_URL.into(),
    };
    let linting_copy = prepare_precertificate(&issuer, &request).unwrap().linting_copy;
    let (now, expires) = (quarry_core::clock::now(), quarry_core::clock::now() + 90 * 86_400);
    // As the ca stores it: the serial reserved for the order in the same write, which is how the sweeper finds it.
    let stored = AddCertificateRequest {
        account_id: account.id,
        der: linting_copy,
        issued: now,
        issuer_id: issuer_id(&issuer),
        order_id: order.id,
        expires,
        processing_by: String::new(),
    };
    as_ca.clone().add_precertificate(stored).await.unwrap();
    assert_eq!(stack.order_status(order.id).await, "processing");

    // An order whose ra died before the ca was asked.
    let early = stack.order(account.id, &["early.example.org"]).await.unwrap();
    stack.validate_all(&early, account.id).await;
    as_ca
        .clone()
        .set_order_processing(SetOrderProcessingRequest { id: early.id, owner: "ra-dead".into() })
        .await
        .unwrap();

    let report = sweeper.sweep_older_than(Duration::from_secs(3600), NOW).await;
    assert_eq!(report, SweepReport { orders_completed: 1, orders_failed: 1, ..SweepReport::default() });
    let finished = stack.stored_order(order.id).await;
    assert_eq!(finished.status, "valid");
    assert_eq!(finished.certificate_serial, hex::encode(serial));
    let certificate = stack
        .sa()
        .get_certificate(quarry_proto::sa::Serial { serial: hex::encode(serial) })
        .await
        .unwrap()
        .into_inner();
    assert!(!quarry_core::ct::is_precertificate(&certificate.der).unwrap(), "a final certificate");
    let failed = stack.stored_order(early.id).await;
    assert_eq!(failed.status, "invalid");
    assert!(failed.error.unwrap().detail.contains("before a certificate was signed"));
    assert_eq!(sweeper.sweep_older_than(NOW, NOW).await, SweepReport::default(), "nothing left");
}

/// A replica that is gone (its heartbeat removed, as at its stop, or lapsed, as after a crash) has its validation
/// taken over by the next sweep of another — here the stack's own ra — long before the deadline.
#[tokio::test]
async fn the_validation_of_a_replica_that_is_gone_is_taken_over_at_once() {
    use quarry_proto::ra::PerformValidationRequest;
    use quarry_proto::ra::registration_authority_server::RegistrationAuthority;
    // Validations may take longer than the few seconds after which a gone replica's work counts as orphaned.
    let stack = Stack { inner: InProcessStack::start(false, |ra| ra.validation_timeout_ms = 30_000).await };
    let (account, _) = stack.account().await;
    let dying = sweeper(&stack).await;
    dying.heartbeat().await.unwrap();
    stack.inner.va.hold(true);
    let order = stack.order(account.id, &["orphaned.example.org"]).await.unwrap();
    let id = order.authorization_ids[0];
    let request = PerformValidationRequest {
        authorization_id: id,
        challenge_index: 0,
        account_id: account.id,
        ..Default::default()
    };
    RegistrationAuthority::perform_validation(&dying, tonic::Request::new(request)).await.unwrap();
    // Its owner alive, the validation is left alone (its deadline is far).
    tokio::time::sleep(quarry_ra::SWEEP_PERIOD * 2).await;
    assert_eq!(stack.inner.va.calls(), 1);
    dying.farewell().await;
    let gone = Instant::now();
    while stack.inner.va.calls() < 2 {
        assert!(gone.elapsed() < Duration::from_secs(15), "nobody took the validation over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.inner.va.hold(false);
    wait_for_status(&stack, id, "valid").await;
}
