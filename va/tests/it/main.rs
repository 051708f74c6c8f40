//! The va against the challenge test server on loopback: http-01, dns-01 and tls-alpn-01 outcomes through real DNS,
//! HTTP and TLS, and the gRPC service over mutual TLS.

mod caa;
mod dns01;
mod grpc;
mod http01;
mod mpic;
mod tls_reload;
mod tlsalpn01;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quarry_core::config::ConfigVersion;
use quarry_core::model::ValidationRecord;
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as ChallConfig, RunningServer};
use quarry_testkit::pki::TestPki;
use quarry_va::resolver::DnsResolver;
use quarry_va::{Config, ValidationAuthority};

const SERVICE: &str = "quarry.va.v1.VA";
const KEY_AUTHORIZATION: &str = "token123.thumbprint456";
const MAX_REDIRECTS: usize = 3;

/// The challenge test server with its default: every name without its own records resolves to 127.0.0.1.
async fn challenge_server() -> RunningServer {
    ChallTestSrv::start(ChallConfig::ephemeral()).await.expect("challenge test server")
}

/// A va pointed at `srv` for DNS and http-01.
fn config(pki: &TestPki, srv: &RunningServer) -> Config {
    Config {
        telemetry: Default::default(),
        lane: None,
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(SERVICE, &["ra"])]),
        tls: pki.tls("va"),
        dns_resolver: srv.dns_addr.expect("dns"),
        http01_port: srv.http01_addr.expect("http01").port(),
        https_port: 443,
        tls_alpn01_port: 443,
        perspective: "primary".into(),
        rir: "ARIN".into(),
        remotes: Vec::new(),
        timeout_ms: 5_000,
        max_redirects: MAX_REDIRECTS,
        max_body_bytes: 1024,
        caa_identities: vec![CA_IDENTITY.into()],
        // Every responder of these tests is on loopback.
        allow_non_public_addresses: true,
        client_testing: Default::default(),
    }
}

/// This CA's identity in CAA records.
const CA_IDENTITY: &str = "quarry.test";

fn authority(config: &Config) -> ValidationAuthority {
    let resolver = DnsResolver::new(config.dns_resolver, Duration::from_secs(1));
    ValidationAuthority::new(config, Arc::new(resolver))
}

/// What one table row expects: pass, or a problem of `kind` whose detail contains `detail`.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Pass,
    Fail(ErrorKind, &'static str),
}

fn check(case: &str, expect: Expect, records: &[ValidationRecord], problem: &Option<Problem>) {
    match (expect, problem) {
        (Expect::Pass, None) => {}
        (Expect::Fail(kind, detail), Some(problem)) => {
            assert_eq!(problem.kind, kind, "{case}: {problem:?}");
            assert!(problem.detail.contains(detail), "{case}: {:?} lacks {detail:?}", problem.detail);
            assert!(!problem.detail.contains("Os {"), "{case}: debug output in {:?}", problem.detail);
        }
        (expect, problem) => panic!("{case}: expected {expect:?}, got {problem:?} with {records:?}"),
    }
}

/// A TCP server that accepts connections and never answers, for timeouts.
async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the tests using it make a handful of connections.
        for _ in 0..16 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_address_policy_refuses_reserved_addresses_unless_allowed() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let strict = Config { allow_non_public_addresses: false, ..config(&pki, &srv) };
    let va = authority(&strict);
    srv.state.add_http01("token123", KEY_AUTHORIZATION);
    let loopback = Identifier::ip("127.0.0.1".parse().unwrap());
    let cases = [
        (
            "a name resolving to loopback",
            Identifier::dns("local.example.org"),
            "http-01",
            ErrorKind::Dns,
            "resolves only to addresses",
        ),
        ("a loopback IP identifier", loopback.clone(), "http-01", ErrorKind::Connection, "is not a public address"),
        ("tls-alpn-01 to loopback", loopback, "tls-alpn-01", ErrorKind::Connection, "is not a public address"),
    ];
    for (what, identifier, challenge, kind, detail) in cases {
        let (_, problem) = va.validate(&identifier, challenge, "token123", KEY_AUTHORIZATION, None).await;
        check(what, Expect::Fail(kind, detail), &[], &problem);
    }
    // The same validation passes where the environment allows loopback.
    let relaxed = authority(&config(&pki, &srv));
    let (_, problem) =
        relaxed.validate(&Identifier::dns("local.example.org"), "http-01", "token123", KEY_AUTHORIZATION, None).await;
    assert!(problem.is_none(), "{problem:?}");
}
