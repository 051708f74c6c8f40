//! The va against the challenge test server on loopback: http-01 and dns-01 outcomes, and the gRPC service
//! over mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use quarry_core::config::ConfigVersion;
use quarry_core::{ErrorKind, Identifier};
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as ChallConfig, RunningServer};
use quarry_testkit::pki::TestPki;
use quarry_va::resolver::DnsResolver;
use quarry_va::{Config, Validator};

const SERVICE: &str = "quarry.va.v1.VA";
const KEY_AUTHORIZATION: &str = "token123.thumbprint456";

async fn challenge_server() -> RunningServer {
    ChallTestSrv::start(ChallConfig::ephemeral()).await.expect("challenge test server")
}

fn config(pki: &TestPki, srv: &RunningServer) -> Config {
    Config {
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(SERVICE, &["ra"])]),
        tls: pki.tls("va"),
        dns_resolver: srv.dns_addr.expect("dns"),
        http01_port: srv.http01_addr.expect("http01").port(),
        tls_alpn01_port: 443,
        perspective: "primary".into(),
        timeout_ms: 5_000,
        max_redirects: 3,
        max_body_bytes: 1024,
    }
}

fn validator(config: &Config) -> Validator {
    let resolver = DnsResolver::new(config.dns_resolver, std::time::Duration::from_secs(2)).expect("resolver");
    Validator::new(config, Arc::new(resolver))
}

#[tokio::test]
async fn http01_outcomes() {
    quarry_core::install_crypto_provider();
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let va = validator(&config(&pki, &srv));
    srv.state.add_http01("good", KEY_AUTHORIZATION);
    srv.state.add_http01("wrong", "something.else");
    srv.state.add_redirect("/.well-known/acme-challenge/hop", "/.well-known/acme-challenge/good");
    let port = srv.http01_addr.unwrap().port();
    srv.state.add_redirect("/.well-known/acme-challenge/otherport", &format!("http://a.example.org:{}/x", port + 1));
    srv.state.add_redirect("/.well-known/acme-challenge/loop", "/.well-known/acme-challenge/loop");
    srv.state.set_servfail("broken.example.org");
    let cases: &[(&str, &str, Option<ErrorKind>)] = &[
        ("a.example.org", "good", None),
        ("a.example.org", "wrong", Some(ErrorKind::IncorrectResponse)),
        ("a.example.org", "missing", Some(ErrorKind::Unauthorized)),
        ("a.example.org", "hop", None),
        ("a.example.org", "otherport", Some(ErrorKind::Connection)),
        ("a.example.org", "loop", Some(ErrorKind::Connection)),
        ("broken.example.org", "good", Some(ErrorKind::Dns)),
    ];
    for (name, token, expected) in cases {
        let (records, problem) = va.validate(&Identifier::dns(*name), "http-01", token, KEY_AUTHORIZATION, None).await;
        assert_eq!(problem.as_ref().map(|p| p.kind), *expected, "{name}/{token}: {problem:?}");
        assert!(!records.is_empty(), "{name}/{token}: no record");
        if expected.is_none() {
            assert_eq!(records.last().unwrap().address_used, "127.0.0.1");
        }
    }
}

#[tokio::test]
async fn http01_with_nothing_listening_is_a_connection_problem() {
    quarry_core::install_crypto_provider();
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let mut config = config(&pki, &srv);
    config.http01_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let va = validator(&config);
    let (records, problem) = va.validate(&Identifier::dns("a.example.org"), "http-01", "t", "t.x", None).await;
    assert_eq!(problem.map(|p| p.kind), Some(ErrorKind::Connection));
    assert_eq!(records[0].addresses_tried, ["127.0.0.1"]);
}

#[tokio::test]
async fn dns01_outcomes() {
    quarry_core::install_crypto_provider();
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let va = validator(&config(&pki, &srv));
    let value = quarry_jose::dns01_txt_value(KEY_AUTHORIZATION);
    srv.state.set_txt("_acme-challenge.one.example.org.", &value);
    srv.state.set_txt("_acme-challenge.two.example.org.", "unrelated");
    srv.state.set_txt("_acme-challenge.two.example.org.", &value);
    srv.state.set_txt("_acme-challenge.bad.example.org.", "unrelated");
    let cases: &[(&str, Option<ErrorKind>)] = &[
        ("one.example.org", None),
        ("two.example.org", None),
        ("*.one.example.org", None),
        ("bad.example.org", Some(ErrorKind::IncorrectResponse)),
        ("missing.example.org", Some(ErrorKind::Unauthorized)),
    ];
    for (name, expected) in cases {
        let identifier = Identifier::dns(*name).without_wildcard();
        let (_, problem) = va.validate(&identifier, "dns-01", "token123", KEY_AUTHORIZATION, None).await;
        assert_eq!(problem.as_ref().map(|p| p.kind), *expected, "{name}: {problem:?}");
    }
}

async fn serve(pki: &TestPki, srv: &RunningServer) -> SocketAddr {
    let config = config(pki, srv);
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(quarry_va::serve(config, listener, std::future::pending()));
    addr
}

#[tokio::test]
async fn the_ra_may_call_over_grpc_and_the_wfe_may_not() {
    quarry_core::install_crypto_provider();
    let pki = TestPki::new();
    let srv = challenge_server().await;
    srv.state.add_http01("good", KEY_AUTHORIZATION);
    let addr = serve(&pki, &srv).await;
    let request = || quarry_proto::va::DcvRequest {
        identifier: Some((&Identifier::dns("a.example.org")).into()),
        challenge_type: "http-01".into(),
        token: "good".into(),
        expected_key_authorization: KEY_AUTHORIZATION.into(),
        authorization_id: 1,
        account_id: 1,
    };
    let mut ra = quarry_proto::va::va_client::VaClient::new(pki.channel("ra", "va", addr));
    let result = ra.do_dcv(request()).await.expect("dcv").into_inner();
    assert!(result.problem.is_none(), "{:?}", result.problem);
    assert_eq!(result.perspective, "primary");
    assert!(!result.records.is_empty());
    let mut wfe = quarry_proto::va::va_client::VaClient::new(pki.channel("wfe", "va", addr));
    assert_eq!(wfe.do_dcv(request()).await.unwrap_err().code(), tonic::Code::PermissionDenied);
}
