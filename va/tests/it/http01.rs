//! http-01 through the challenge test server's DNS and http-01 responder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use quarry_core::{ErrorKind, Identifier};
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as ChallConfig};
use quarry_testkit::pki::TestPki;

use crate::{Expect, KEY_AUTHORIZATION, MAX_REDIRECTS, authority, challenge_server, check, config, silent_server};

const PREFIX: &str = "/.well-known/acme-challenge/";

struct Case {
    identifier: Identifier,
    token: &'static str,
    expect: Expect,
    records: usize,
}

fn dns(name: &str, token: &'static str, expect: Expect, records: usize) -> Case {
    Case { identifier: Identifier::dns(name), token, expect, records }
}

#[tokio::test]
async fn http01_outcomes() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let config = config(&pki, &srv);
    let va = authority(&config);
    let port = config.http01_port;
    let state = &srv.state;
    state.add_http01("good", KEY_AUTHORIZATION);
    state.add_http01("padded", &format!("{KEY_AUTHORIZATION} \r\n\t"));
    state.add_http01("wrong", "something.else");
    state.add_http01("big", &"x".repeat(4096));
    state.add_redirect(&format!("{PREFIX}hop"), &format!("{PREFIX}good"));
    state.add_redirect(&format!("{PREFIX}hophost"), &format!("http://b.example.org:{port}{PREFIX}good"));
    state.add_redirect(&format!("{PREFIX}otherport"), &format!("http://a.example.org:{}/x", port + 1));
    state.add_redirect(&format!("{PREFIX}tohttps"), &format!("https://a.example.org:{port}/x"));
    state.add_redirect(&format!("{PREFIX}loop"), &format!("{PREFIX}loop"));
    state.set_servfail("broken.example.org");
    state.add_aaaa("dual.example.org", [Ipv6Addr::LOCALHOST]);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

    let cases = [
        dns("a.example.org", "good", Expect::Pass, 1),
        dns("A.Example.Org", "padded", Expect::Pass, 1),
        dns("a.example.org", "wrong", Expect::Fail(ErrorKind::IncorrectResponse, "got \"something.else\""), 1),
        dns("a.example.org", "missing", Expect::Fail(ErrorKind::Unauthorized, "Invalid response from http://"), 1),
        dns("a.example.org", "big", Expect::Fail(ErrorKind::Unauthorized, "larger than 1024 bytes"), 1),
        dns("a.example.org", "hop", Expect::Pass, 2),
        dns("a.example.org", "hophost", Expect::Pass, 2),
        dns("a.example.org", "otherport", Expect::Fail(ErrorKind::Connection, "is not allowed, only port"), 1),
        dns("a.example.org", "tohttps", Expect::Fail(ErrorKind::Connection, "is not allowed, only port 443"), 1),
        dns("a.example.org", "loop", Expect::Fail(ErrorKind::Connection, "Too many redirects"), MAX_REDIRECTS + 1),
        dns("broken.example.org", "good", Expect::Fail(ErrorKind::Dns, "SERVFAIL"), 1),
        dns("dual.example.org", "good", Expect::Pass, 1),
        dns("*.a.example.org", "good", Expect::Fail(ErrorKind::Malformed, "wildcard"), 0),
        Case { identifier: Identifier::ip(loopback), token: "good", expect: Expect::Pass, records: 1 },
    ];
    for case in &cases {
        let name = format!("{}/{}", case.identifier.value, case.token);
        let (records, problem) = va.validate(&case.identifier, "http-01", case.token, KEY_AUTHORIZATION, None).await;
        check(&name, case.expect, &records, &problem);
        assert_eq!(records.len(), case.records, "{name}: {records:?}");
        if let Some(first) = records.first() {
            assert_eq!(first.port, port.to_string(), "{name}");
            assert_eq!(first.perspective, "primary", "{name}");
            assert_eq!(first.resolver_addresses, [config.dns_resolver.to_string()], "{name}");
            assert!(first.url.starts_with("http://"), "{name}: {}", first.url);
        }
        if matches!(case.expect, Expect::Pass) {
            assert_eq!(records.last().unwrap().address_used, "127.0.0.1", "{name}");
        }
    }

    // One failure in full: the detail and the record of the request.
    let (records, problem) = va.validate(&Identifier::dns("a.example.org"), "http-01", "absent", "x", None).await;
    let expected = format!("Invalid response from http://a.example.org:{port}{PREFIX}absent: 404");
    assert_eq!(problem.unwrap().detail, expected);
    assert_eq!(records[0].url, format!("http://a.example.org:{port}{PREFIX}absent"));
    assert_eq!(records[0].hostname, "a.example.org");
    assert_eq!(records[0].addresses_resolved, ["127.0.0.1"]);
}

#[tokio::test]
async fn ipv6_addresses_are_tried_first_then_ipv4() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let va = authority(&config(&pki, &srv));
    srv.state.add_http01("good", KEY_AUTHORIZATION);
    srv.state.add_aaaa("dual.example.org", [Ipv6Addr::LOCALHOST]);
    let (records, problem) =
        va.validate(&Identifier::dns("dual.example.org"), "http-01", "good", KEY_AUTHORIZATION, None).await;
    assert!(problem.is_none(), "{problem:?}");
    let record = &records[0];
    assert_eq!(record.addresses_tried, ["::1", "127.0.0.1"]);
    assert_eq!(record.address_used, "127.0.0.1");
    let mut resolved = record.addresses_resolved.clone();
    resolved.sort();
    assert_eq!(resolved, ["127.0.0.1", "::1"]);
}

#[tokio::test]
async fn requests_carry_the_name_without_the_port_80_and_the_ip_for_ip_identifiers() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let port = srv.http01_addr.unwrap().port();
    let va = authority(&config(&pki, &srv));
    srv.state.add_http01("good", KEY_AUTHORIZATION);
    for identifier in [Identifier::dns("host.example.org"), Identifier::ip(IpAddr::V4(Ipv4Addr::LOCALHOST))] {
        let (_, problem) = va.validate(&identifier, "http-01", "good", KEY_AUTHORIZATION, None).await;
        assert!(problem.is_none(), "{problem:?}");
        let history = srv.state.http_request_history(&identifier.value);
        assert_eq!(history.len(), 1, "{}", identifier.value);
        assert_eq!(history[0].url, format!("{PREFIX}good"));
        assert_eq!(history[0].host, format!("{}:{port}", identifier.value));
    }
}

#[tokio::test]
async fn names_without_addresses_are_a_dns_problem() {
    let pki = TestPki::new();
    let srv = ChallTestSrv::start(ChallConfig { default_ipv4: None, default_ipv6: None, ..ChallConfig::ephemeral() })
        .await
        .expect("challenge test server");
    let va = authority(&config(&pki, &srv));
    let (records, problem) = va.validate(&Identifier::dns("nowhere.example.org"), "http-01", "t", "t.k", None).await;
    check(
        "nowhere",
        Expect::Fail(ErrorKind::Dns, "no valid A or AAAA records for nowhere.example.org"),
        &records,
        &problem,
    );
    assert!(records[0].addresses_tried.is_empty());
}

#[tokio::test]
async fn nothing_listening_is_a_connection_problem() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let mut config = config(&pki, &srv);
    config.http01_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let va = authority(&config);
    let (records, problem) = va.validate(&Identifier::dns("a.example.org"), "http-01", "t", "t.x", None).await;
    check("refused", Expect::Fail(ErrorKind::Connection, "127.0.0.1: Fetching http://"), &records, &problem);
    assert!(problem.unwrap().detail.ends_with("Connection refused"));
    assert_eq!(records[0].addresses_tried, ["127.0.0.1"]);
    assert_eq!(records[0].address_used, "");
}

#[tokio::test]
async fn a_server_that_never_answers_times_the_validation_out() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let (silent, _task) = silent_server().await;
    let mut config = config(&pki, &srv);
    config.http01_port = silent.port();
    config.timeout_ms = 300;
    let va = authority(&config);
    let started = std::time::Instant::now();
    let (records, problem) = va.validate(&Identifier::dns("a.example.org"), "http-01", "t", "t.x", None).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
    check("silent", Expect::Fail(ErrorKind::Connection, "validation timed out"), &records, &problem);
    // The record of the request cut short still says where it went.
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].address_used, "127.0.0.1");
}

/// An HTTPS server with a self-signed certificate that answers every request with `body` (what a redirect to https
/// reaches); serves until the test's runtime ends.
async fn https_server(body: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.example.org".to_owned()]).unwrap().self_signed(&key).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                // One request, read up to the end of its headers (bounded by the buffer's growth below).
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn redirects_to_https_are_followed_on_the_https_port_only() {
    let pki = TestPki::new();
    let srv = challenge_server().await;
    let https_port = https_server(KEY_AUTHORIZATION).await;
    let config = crate::Config { https_port, ..config(&pki, &srv) };
    let va = authority(&config);
    srv.state.add_redirect(&format!("{PREFIX}secure"), &format!("https://a.example.org:{https_port}/elsewhere"));
    srv.state.add_redirect(&format!("{PREFIX}wrongport"), &format!("https://a.example.org:{}/x", https_port + 1));
    let identifier = Identifier::dns("a.example.org");
    let (records, problem) = va.validate(&identifier, "http-01", "secure", KEY_AUTHORIZATION, None).await;
    check("https redirect", Expect::Pass, &records, &problem);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].url, format!("https://a.example.org:{https_port}/elsewhere"));
    assert_eq!(records[1].port, https_port.to_string());
    let (records, problem) = va.validate(&identifier, "http-01", "wrongport", KEY_AUTHORIZATION, None).await;
    check("https on another port", Expect::Fail(ErrorKind::Connection, "is not allowed"), &records, &problem);
}
