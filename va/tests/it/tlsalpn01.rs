//! tls-alpn-01 through the challenge test server's DNS and tls-alpn-01 responder, and against hand-made TLS
//! servers presenting certificates that must not pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quarry_core::{ErrorKind, Identifier};
use quarry_testkit::challtestsrv::{RequestKind, RunningServer};
use quarry_testkit::pki::TestPki;
use quarry_va::{Config, ValidationAuthority};
use rcgen::{CertificateParams, CustomExtension, KeyPair, SanType};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{Expect, KEY_AUTHORIZATION, authority, challenge_server, check, config, silent_server};

const ACME_TLS_1: &[u8] = b"acme-tls/1";
const ACME_IDENTIFIER: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 31];
/// Bounds every step a test takes outside the va (whose own timeout bounds validations).
const STEP: Duration = Duration::from_secs(10);

/// A va whose tls-alpn-01 port is `port`, resolving through `srv`.
fn va_on(pki: &TestPki, srv: &RunningServer, port: u16) -> (Config, ValidationAuthority) {
    let mut config = config(pki, srv);
    config.tls_alpn01_port = port;
    let va = authority(&config);
    (config, va)
}

fn digest(key_authorization: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes()).as_ref().to_vec()
}

/// What a hand-made server's certificate contains.
struct Shape {
    sans: Vec<SanType>,
    /// The acmeIdentifier extension's content and criticality; `None` leaves it out.
    extension: Option<(Vec<u8>, bool)>,
    /// Whether the server negotiates `acme-tls/1`.
    alpn: bool,
    /// Whether the server speaks only TLS 1.2 (otherwise it prefers 1.3).
    tls12: bool,
    /// Whether the server signs the handshake with a key other than its certificate's.
    wrong_key: bool,
}

impl Shape {
    /// What a correct responder for `name` presents.
    fn good(name: &str) -> Self {
        let mut content = vec![0x04, 0x20];
        content.extend(digest(KEY_AUTHORIZATION));
        Self {
            sans: vec![SanType::DnsName(name.try_into().unwrap())],
            extension: Some((content, true)),
            alpn: true,
            tls12: false,
            wrong_key: false,
        }
    }
}

/// Presents the same certificate whatever the ClientHello says.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A TLS server on loopback presenting one certificate of `shape` to whatever connects; it serves a bounded
/// number of connections.
async fn shaped_server(shape: Shape) -> (SocketAddr, JoinHandle<()>) {
    let mut params = CertificateParams::default();
    params.subject_alt_names = shape.sans;
    if let Some((content, critical)) = shape.extension {
        let mut extension = CustomExtension::from_oid_content(ACME_IDENTIFIER, content);
        extension.set_criticality(critical);
        params.custom_extensions = vec![extension];
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Not `with_single_cert`: its key check parses the certificate with webpki, which refuses a critical
    // acmeIdentifier extension.
    let signer = if shape.wrong_key { KeyPair::generate().unwrap() } else { key };
    let signing_key =
        provider.key_provider.load_private_key(PrivateKeyDer::Pkcs8(signer.serialize_der().into())).unwrap();
    let certified = Arc::new(CertifiedKey::new(chain, signing_key));
    let versions: &[&rustls::SupportedProtocolVersion] =
        if shape.tls12 { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCertificate(certified)));
    if shape.alpn {
        server.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(STEP, async {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls.shutdown().await;
                    }
                })
                .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tlsalpn01_outcomes_through_the_challenge_test_server() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let port = srv.tlsalpn01_addr.expect("tls-alpn-01 responder").port();
    let (config, va) = va_on(&pki, &srv, port);
    let state = &srv.state;
    state.add_tlsalpn01("a.example.org", KEY_AUTHORIZATION);
    state.add_tlsalpn01("127.0.0.1", KEY_AUTHORIZATION);
    state.add_tlsalpn01("wrong.example.org", "other.key");
    state.add_tlsalpn01("dual.example.org", KEY_AUTHORIZATION);
    state.add_aaaa("dual.example.org", [Ipv6Addr::LOCALHOST]);
    state.set_servfail("broken.example.org");
    let loopback = Identifier::ip(IpAddr::V4(Ipv4Addr::LOCALHOST));

    let cases = [
        (Identifier::dns("a.example.org"), Expect::Pass),
        (Identifier::dns("A.Example.Org"), Expect::Pass),
        (loopback.clone(), Expect::Pass),
        (Identifier::dns("dual.example.org"), Expect::Pass),
        (
            Identifier::dns("wrong.example.org"),
            Expect::Fail(ErrorKind::Unauthorized, "Invalid acmeValidationV1 extension value"),
        ),
        (Identifier::dns("missing.example.org"), Expect::Fail(ErrorKind::Tls, "TLS handshake failed")),
        (Identifier::dns("broken.example.org"), Expect::Fail(ErrorKind::Dns, "SERVFAIL")),
        (Identifier::dns("*.a.example.org"), Expect::Fail(ErrorKind::Malformed, "wildcard")),
    ];
    for (identifier, expect) in &cases {
        let name = &identifier.value;
        let (records, problem) = va.validate(identifier, "tls-alpn-01", "token", KEY_AUTHORIZATION, None).await;
        check(name, *expect, &records, &problem);
        if name.starts_with('*') {
            assert!(records.is_empty(), "{name}: {records:?}");
            continue;
        }
        assert_eq!(records.len(), 1, "{name}: {records:?}");
        let record = &records[0];
        assert_eq!(record.hostname, *name);
        assert_eq!(record.port, port.to_string(), "{name}");
        assert_eq!(record.perspective, "primary", "{name}");
        assert!(record.url.is_empty(), "{name}");
        if matches!(expect, Expect::Pass) {
            assert_eq!(record.address_used, "127.0.0.1", "{name}");
            assert_eq!(record.addresses_tried.last().map(String::as_str), Some("127.0.0.1"), "{name}");
        }
        if *identifier == loopback {
            assert!(record.addresses_resolved.is_empty(), "{record:?}");
            assert!(record.resolver_addresses.is_empty(), "{record:?}");
            assert_eq!(record.addresses_tried, ["127.0.0.1"]);
        } else {
            assert_eq!(record.resolver_addresses, [config.dns_resolver.to_string()], "{name}");
        }
    }

    // The IP identifier's SNI is its reverse-DNS name (RFC 8738 §6), with only acme-tls/1 offered.
    let history = state.tlsalpn01_request_history("1.0.0.127.in-addr.arpa");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].supported_protos, ["acme-tls/1"]);
    let history = state.tlsalpn01_request_history("a.example.org");
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history.iter().all(|event| event.server_name == "a.example.org"), "{history:?}");
    state.clear_request_history("a.example.org", RequestKind::TlsAlpn);
    assert!(state.tlsalpn01_request_history("a.example.org").is_empty());

    // IPv6 first: ::1 has no responder, so IPv4 answers.
    let (records, _) =
        va.validate(&Identifier::dns("dual.example.org"), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    assert_eq!(records[0].addresses_tried, ["::1", "127.0.0.1"]);
    let mut resolved = records[0].addresses_resolved.clone();
    resolved.sort();
    assert_eq!(resolved, ["127.0.0.1", "::1"]);

    // Once removed, the name fails the handshake.
    state.del_tlsalpn01("a.example.org");
    let (_, problem) =
        va.validate(&Identifier::dns("a.example.org"), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    assert_eq!(problem.expect("a problem").kind, ErrorKind::Tls);
}

/// One POST to the management API, on a fresh connection; returns the status code.
async fn manage(srv: &RunningServer, path: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(srv.management_addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response)).await.expect("response timed out").unwrap();
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line")
}

#[tokio::test]
async fn the_management_api_adds_and_removes_responses() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let (_, va) = va_on(&pki, &srv, srv.tlsalpn01_addr.unwrap().port());
    let identifier = Identifier::dns("managed.example.org");
    let body = format!(r#"{{"host": "managed.example.org", "content": "{KEY_AUTHORIZATION}"}}"#);
    assert_eq!(manage(&srv, "/add-tlsalpn01", &body).await, 200);
    let (_, problem) = va.validate(&identifier, "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    assert!(problem.is_none(), "{problem:?}");
    assert_eq!(manage(&srv, "/add-tlsalpn01", r#"{"host": "managed.example.org"}"#).await, 400);
    assert_eq!(manage(&srv, "/del-tlsalpn01", r#"{"host": "managed.example.org"}"#).await, 200);
    let (_, problem) = va.validate(&identifier, "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    assert_eq!(problem.expect("a problem").kind, ErrorKind::Tls);
    assert_eq!(manage(&srv, "/tlsalpn01-request-history", r#"{"host": "managed.example.org"}"#).await, 200);
    assert_eq!(manage(&srv, "/clear-request-history", r#"{"host": "x", "type": "tlsalpn"}"#).await, 200);
}

#[tokio::test]
async fn certificates_that_do_not_prove_control_are_unauthorized() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let name = "shaped.example.org";
    let good = || Shape::good(name);
    let mut wrong_content = vec![0x04, 0x20];
    wrong_content.extend(digest("other.key"));
    let cases: Vec<(&str, Shape, Expect)> = vec![
        ("good", good(), Expect::Pass),
        ("good over tls 1.2", Shape { tls12: true, ..good() }, Expect::Pass),
        (
            "signed with another key",
            Shape { wrong_key: true, ..good() },
            Expect::Fail(ErrorKind::Tls, "TLS handshake failed"),
        ),
        (
            "signed with another key over tls 1.2",
            Shape { wrong_key: true, tls12: true, ..good() },
            Expect::Fail(ErrorKind::Tls, "TLS handshake failed"),
        ),
        (
            "no alpn",
            Shape { alpn: false, ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "Cannot negotiate ALPN protocol \"acme-tls/1\""),
        ),
        (
            "no extension",
            Shape { extension: None, ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "Missing acmeValidationV1 extension"),
        ),
        (
            "non-critical",
            Shape { extension: good().extension.map(|(content, _)| (content, false)), ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "acmeValidationV1 extension not critical"),
        ),
        (
            "wrong digest",
            Shape { extension: Some((wrong_content, true)), ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "Invalid acmeValidationV1 extension value"),
        ),
        (
            "bare digest",
            Shape { extension: Some((digest(KEY_AUTHORIZATION), true)), ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "Invalid acmeValidationV1 extension value"),
        ),
        (
            "two names",
            Shape {
                sans: vec![
                    SanType::DnsName(name.try_into().unwrap()),
                    SanType::DnsName("other.example.org".try_into().unwrap()),
                ],
                ..good()
            },
            Expect::Fail(ErrorKind::Unauthorized, "containing: shaped.example.org, other.example.org"),
        ),
        (
            "other name",
            Shape { sans: vec![SanType::DnsName("other.example.org".try_into().unwrap())], ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "Received certificate containing: other.example.org"),
        ),
        (
            "ip for a name",
            Shape { sans: vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))], ..good() },
            Expect::Fail(ErrorKind::Unauthorized, "containing: 127.0.0.1"),
        ),
        ("no names", Shape { sans: Vec::new(), ..good() }, Expect::Fail(ErrorKind::Unauthorized, "no names")),
    ];
    for (case, shape, expect) in cases {
        let (addr, task) = shaped_server(shape).await;
        let (_, va) = va_on(&pki, &srv, addr.port());
        let (records, problem) = va.validate(&Identifier::dns(name), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
        check(case, expect, &records, &problem);
        assert_eq!(records.len(), 1, "{case}");
        assert_eq!(records[0].address_used, "127.0.0.1", "{case}");
        if let Some(problem) = &problem {
            assert!(problem.detail.contains(&addr.to_string()), "{case}: {}", problem.detail);
        }
        task.abort();
    }
}

#[tokio::test]
async fn ip_identifiers_need_the_address_as_ip_san() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (case, sans, expect) in [
        ("ip san", vec![SanType::IpAddress(loopback)], Expect::Pass),
        (
            "dns san",
            vec![SanType::DnsName("1.0.0.127.in-addr.arpa".try_into().unwrap())],
            Expect::Fail(ErrorKind::Unauthorized, "containing: 1.0.0.127.in-addr.arpa"),
        ),
    ] {
        let (addr, task) = shaped_server(Shape { sans, ..Shape::good("unused.example.org") }).await;
        let (_, va) = va_on(&pki, &srv, addr.port());
        let (records, problem) =
            va.validate(&Identifier::ip(loopback), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
        check(case, expect, &records, &problem);
        task.abort();
    }
}

#[tokio::test]
async fn unreachable_and_silent_servers_fail_with_connection_and_tls_problems() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    // A port nothing listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let (_, va) = va_on(&pki, &srv, closed);
    let (records, problem) =
        va.validate(&Identifier::dns("a.example.org"), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    check("closed", Expect::Fail(ErrorKind::Connection, "Connection refused"), &records, &problem);
    assert_eq!(records[0].addresses_tried, ["127.0.0.1"]);
    assert!(records[0].address_used.is_empty());

    // A server that accepts and never answers: the handshake is cut off at half the validation timeout.
    let (addr, task) = silent_server().await;
    let (_, va) = va_on(&pki, &srv, addr.port());
    let started = std::time::Instant::now();
    let (_, problem) =
        va.validate(&Identifier::dns("a.example.org"), "tls-alpn-01", "t", KEY_AUTHORIZATION, None).await;
    check("silent", Expect::Fail(ErrorKind::Tls, "timed out"), &[], &problem);
    assert!(started.elapsed() < STEP);
    task.abort();
}
