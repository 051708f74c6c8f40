//! `VA.DoDCV` over mutual TLS: the allowlist, results rather than errors, and the caller's deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quarry_core::{ErrorKind, Identifier};
use quarry_proto::va::DcvRequest;
use quarry_proto::va::va_client::VaClient;
use quarry_testkit::challtestsrv::RunningServer;
use quarry_testkit::pki::TestPki;
use quarry_va::Config;

use crate::{KEY_AUTHORIZATION, challenge_server, config, silent_server};

async fn serve(config: Config) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(quarry_va::serve(config, listener, std::future::pending()));
    addr
}

fn request(challenge_type: &str, token: &str) -> DcvRequest {
    DcvRequest {
        identifier: Some((&Identifier::dns("a.example.org")).into()),
        challenge_type: challenge_type.into(),
        token: token.into(),
        expected_key_authorization: KEY_AUTHORIZATION.into(),
        authorization_id: 1,
        account_id: 1,
        caa: None,
    }
}

async fn started(pki: &TestPki, srv: &RunningServer) -> SocketAddr {
    srv.state.add_http01("good", KEY_AUTHORIZATION);
    serve(config(pki, srv)).await
}

#[tokio::test]
async fn the_ra_may_call_and_others_may_not() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let addr = started(&pki, &srv).await;
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    let answer = ra.do_dcv(request("http-01", "good")).await.expect("dcv");
    let version = answer.metadata().get(quarry_core::grpc::VERSION_HEADER).and_then(|v| v.to_str().ok());
    assert_eq!(version, Some(quarry_core::build::get().describe().as_str()), "every gRPC answer names its build");
    let result = answer.into_inner();
    assert!(result.problem.is_none(), "{:?}", result.problem);
    assert_eq!(result.perspective, "primary");
    assert_eq!(result.rir, "ARIN", "the configured RIR is echoed");
    assert_eq!(result.records.len(), 1);
    assert_eq!(result.records[0].address_used, "127.0.0.1");
    for client in ["wfe", "intruder"] {
        let mut other = VaClient::new(pki.channel(client, "va", addr));
        let status = other.do_dcv(request("http-01", "good")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{client}");
    }
}

#[tokio::test]
async fn failed_validations_are_results_and_bad_requests_are_errors() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let addr = started(&pki, &srv).await;
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    let cases = [("http-01", "missing", ErrorKind::Unauthorized), ("tls-alpn-02", "good", ErrorKind::Malformed)];
    for (challenge, token, kind) in cases {
        let result = ra.do_dcv(request(challenge, token)).await.expect("dcv").into_inner();
        let problem = result.problem.unwrap_or_else(|| panic!("{challenge}/{token} passed"));
        assert_eq!(problem.kind, kind.as_str(), "{challenge}/{token}");
    }
    let status = ra.do_dcv(DcvRequest { identifier: None, ..request("http-01", "good") }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_validation_ends_before_the_callers_deadline() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let (silent, _task) = silent_server().await;
    let mut config = config(&pki, &srv);
    config.http01_port = silent.port();
    config.timeout_ms = 60_000;
    let addr = serve(config).await;
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let message = request("http-01", "good");
    let result = ra
        .do_dcv(quarry_core::grpc::request_with_deadline(message, Some(deadline)))
        .await
        .expect("a result, not a deadline error")
        .into_inner();
    assert!(Instant::now() < deadline + Duration::from_millis(500));
    let problem = result.problem.expect("timed out");
    assert_eq!((problem.kind.as_str(), problem.detail.as_str()), ("connection", "validation timed out"));
}

#[tokio::test]
async fn a_missing_allowlist_entry_stops_start_up() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let mut config = config(&pki, &srv);
    config.grpc = pki.server_config(&[]);
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), quarry_va::serve(config, listener, async {})).await;
    assert!(matches!(outcome, Ok(Err(quarry_va::Error::Config(_)))), "{outcome:?}");
}

/// A gRPC port takes TLS clients only: a connection that never starts its handshake is closed after the handshake
/// timeout (10 s), and meanwhile the ra is served.
#[tokio::test]
async fn a_connection_that_never_handshakes_is_closed() {
    use tokio::io::AsyncReadExt;
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let addr = started(&pki, &srv).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    ra.do_dcv(request("http-01", "good")).await.expect("the ra is served");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(9), "closed early: {:?}", started.elapsed());
}

#[tokio::test]
async fn client_testing_passes_every_validation_unchecked_after_a_bounded_sleep() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let mut config = config(&pki, &srv);
    // Pebble's PEBBLE_VA_ALWAYS_VALID, with its sleep of at most 1 s (a draw below 2).
    config.client_testing = quarry_va::ClientTesting { sleep_max_secs: 2, always_valid: true };
    let addr = serve(config).await;
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    // Nothing answers the token "missing": only the knob can make it pass.
    let started = Instant::now();
    let result = ra.do_dcv(request("http-01", "missing")).await.expect("dcv").into_inner();
    assert!(result.problem.is_none(), "{:?}", result.problem);
    assert_eq!(result.records[0].hostname, "a.example.org");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(srv.state.http_request_history("a.example.org").is_empty(), "the va contacted the responder");
    assert!(srv.state.dns_request_history("a.example.org").is_empty(), "the va looked the name up");
}
