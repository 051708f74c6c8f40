//! What operators see: one trace per ACME request across every service, and metrics that move with issuance.

use super::*;

/// Every service exports its spans to a collector: the challenge request is one trace through the wfe, the ra, the
/// primary va and both remote perspectives and the sa; the finalize request one trace through the wfe, the ra, the
/// ca, the sa and the publisher.
#[tokio::test]
async fn one_acme_request_is_one_trace_across_every_service() {
    let receiver = quarry_testkit::otlp::OtlpReceiver::start().await;
    let stack = Stack::start_with_args(None, None, &["--otlp-endpoint".into(), receiver.endpoint.clone()]).await;
    let account = stack.instant_acme_account().await;
    let names = ["traced.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    // The trace of the wfe span whose path starts with `prefix`, with the services of its spans and their count.
    let trace_of = |prefix: &str| {
        let spans = receiver.spans();
        let root =
            spans.iter().find(|s| s.service == "wfe" && s.attribute("path").is_some_and(|p| p.starts_with(prefix)))?;
        let mut services: Vec<String> =
            spans.iter().filter(|s| s.trace_id == root.trace_id).map(|s| s.service.clone()).collect();
        services.sort();
        Some(services)
    };
    let covers = |services: &[String], wanted: &[&str]| wanted.iter().all(|w| services.iter().any(|s| s == w));
    let started = Instant::now();
    let (challenge, finalize) = loop {
        let challenge = trace_of("/acme/chall/").unwrap_or_default();
        let finalize = trace_of("/acme/finalize/").unwrap_or_default();
        let vas = challenge.iter().filter(|s| *s == "va").count();
        if covers(&challenge, &["wfe", "ra", "sa"])
            && vas >= 3
            && covers(&finalize, &["wfe", "ra", "ca", "sa", "publisher"])
        {
            break (challenge, finalize);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "traces incomplete: challenge {challenge:?}, finalize {finalize:?}; {} spans in all",
            receiver.spans().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!challenge.iter().any(|s| s == "ca"), "the challenge trace reached the ca: {challenge:?}");
    assert!(!finalize.iter().any(|s| s == "va"), "the finalize trace reached the va: {finalize:?}");
}

/// Every service serves Prometheus metrics on its own debug port, and they move as a certificate is issued:
/// ACME requests by endpoint, validations by challenge and perspective, issuance by profile, gRPC calls by method
/// and code, rate-limit decisions, and the database pool.
#[tokio::test]
async fn every_service_serves_metrics_that_move_with_issuance() {
    let metrics_base = free_port_range();
    let stack = Stack::start_with_args(None, None, &["--metrics-base-port".into(), metrics_base.to_string()]).await;
    let scrape = |index: u16| async move {
        let (status, body) = http_get(&format!("http://127.0.0.1:{}/metrics", metrics_base + index)).await;
        assert_eq!(status, 200);
        String::from_utf8(body).expect("text")
    };
    // Indexes in `quarry dev`'s order: nonce, sa, va-remote-a, va-remote-b, va, publisher, ca, crl-updater, ra, wfe.
    let (sa, remote_a, va, publisher, ca, crl_updater, ra, wfe) = (1, 2, 4, 5, 6, 7, 8, 9);
    assert_eq!(metric(&scrape(ca).await, "quarry_certificates_issued_total", &[]), 0.0);

    let account = stack.instant_acme_account().await;
    let names = ["metered.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    let wfe_text = scrape(wfe).await;
    let finalized = [("endpoint", "finalize"), ("method", "POST"), ("status", "200")];
    assert_eq!(metric(&wfe_text, "quarry_acme_requests_total", &finalized), 1.0, "{wfe_text}");
    assert!(metric(&wfe_text, "quarry_acme_request_duration_seconds_count", &[("endpoint", "new-order")]) >= 1.0);
    let issued = [("profile", "classic")];
    assert_eq!(metric(&scrape(ca).await, "quarry_certificates_issued_total", &issued), 1.0);
    let valid = [("challenge", "http-01"), ("result", "valid")];
    assert_eq!(
        metric(&scrape(va).await, "quarry_validations_total", &[("perspective", "primary"), valid[0], valid[1]]),
        1.0
    );
    assert_eq!(
        metric(&scrape(remote_a).await, "quarry_validations_total", &[("perspective", "remote-a"), valid[0], valid[1]]),
        1.0
    );
    let sa_text = scrape(sa).await;
    let stored = [("rpc", "/quarry.sa.v1.StorageAuthority/AddCertificate"), ("code", "Ok")];
    assert_eq!(metric(&sa_text, "quarry_grpc_server_requests_total", &stored), 1.0, "{sa_text}");
    assert!(sa_text.contains("quarry_db_pool_connections{state=\"idle\"}"), "{sa_text}");
    // The new order cost the sa two calls: what it depends on, read at once, and its creation.
    let sa_calls = |rpc: &str| metric(&sa_text, "quarry_grpc_server_requests_total", &[("rpc", rpc)]);
    assert_eq!(sa_calls("/quarry.sa.v1.StorageAuthorityReadOnly/GetNewOrderFacts"), 1.0, "{sa_text}");
    assert_eq!(sa_calls("/quarry.sa.v1.StorageAuthority/NewOrderAndAuthorizations"), 1.0, "{sa_text}");
    for folded in ["GetOrderForNames", "CheckIdentifiersPaused", "GetValidAuthorizations"] {
        assert_eq!(sa_calls(&format!("/quarry.sa.v1.StorageAuthorityReadOnly/{folded}")), 0.0, "{sa_text}");
    }
    // The finalization made three sa calls: the ra's one read of what it checks, the ca's precertificate (its serial
    // reserved and its order's fuse taken in the same write) and certificate (its order finalized in the same write).
    for (rpc, calls) in [
        ("StorageAuthorityReadOnly/GetFinalizationFacts", 1.0),
        ("StorageAuthority/SetOrderProcessing", 0.0),
        ("StorageAuthority/AddPrecertificate", 1.0),
        ("StorageAuthority/AddCertificate", 1.0),
        ("StorageAuthorityReadOnly/GetOrderAuthorizations", 0.0),
        ("StorageAuthority/AddSerial", 0.0),
        ("StorageAuthority/FinalizeOrder", 0.0),
        // The authorization is never read: the client's look at it was served from what the new order created, the
        // challenge answer started from the copy the client was shown, and its poll from the answer's outcome.
        ("StorageAuthorityReadOnly/GetAuthorization", 0.0),
        // Nor the certificate: its download was served from what the finalize answer issued.
        ("StorageAuthorityReadOnly/GetCertificate", 0.0),
        // The validation ended within the challenge answer's wait, so the sa was written once, with its outcome:
        // no fuse was taken first.
        ("StorageAuthority/SetAuthorizationProcessing", 0.0),
        ("StorageAuthority/FinalizeAuthorization", 1.0),
    ] {
        let rpc = format!("/quarry.sa.v1.{rpc}");
        let served = metric(&sa_text, "quarry_grpc_server_requests_total", &[("rpc", &rpc)]);
        assert_eq!(served, calls, "{rpc}: {sa_text}");
    }
    let called = [("rpc", "/quarry.ra.v1.RegistrationAuthority/NewOrder"), ("code", "Ok")];
    assert_eq!(metric(&wfe_text, "quarry_grpc_client_requests_total", &called), 1.0, "{wfe_text}");
    let nonce_text = scrape(0).await;
    assert!(metric(&nonce_text, "quarry_nonces_minted_total", &[]) >= 5.0, "{nonce_text}");
    assert!(metric(&nonce_text, "quarry_nonce_redemptions_total", &[("result", "valid")]) >= 5.0, "{nonce_text}");
    let spent = [("limit", "NewOrdersPerAccount"), ("action", "spend"), ("decision", "allowed")];
    assert_eq!(metric(&scrape(ra).await, "quarry_ratelimit_decisions_total", &spent), 1.0);
    // CT per log: the precertificate went to both of the stack's logs (final certificates go on later, unawaited).
    let publisher_text = scrape(publisher).await;
    let submitted = [("kind", "precertificate"), ("result", "ok")];
    assert_eq!(metric(&publisher_text, "quarry_ct_submissions_total", &submitted), 2.0, "{publisher_text}");
    assert!(metric(&publisher_text, "quarry_ct_submission_seconds_count", &[("kind", "precertificate")]) >= 2.0);
    // The crl-updater marks its complete passes (every 10 s in dev; the first may have met an sa still starting).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let text = scrape(crl_updater).await;
        let completed = metric(&text, "quarry_crl_last_complete_pass_timestamp_seconds", &[]);
        if completed > 0.0 {
            assert!(metric(&text, "quarry_crl_shard_updates_total", &[("result", "updated")]) >= 1.0, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no complete CRL pass within 40 s: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every process says which build it runs: the binary's commit.
    let (_, commit, _) = binary_build();
    for index in 0..10 {
        let text = scrape(index).await;
        assert_eq!(metric(&text, "quarry_build_info", &[("commit", &commit)]), 1.0, "process {index}: {text}");
    }
}
