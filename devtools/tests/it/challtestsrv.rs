//! The challenge test server driven over its management API, checked with a real DNS resolver and HTTP requests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use quarry_testkit::challtestsrv::{CaaPolicy, ChallTestSrv, Config, RunningServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every network step of a test is bounded by this.
const STEP: Duration = Duration::from_secs(10);

async fn start() -> RunningServer {
    ChallTestSrv::start(Config::ephemeral()).await.expect("start the challenge test server")
}

struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 exchange on a fresh connection, written by hand so the test sees exactly what is on the wire.
async fn http(addr: SocketAddr, method: &str, path: &str, host: &str, body: &str) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the response");
        String::from_utf8(raw).expect("a UTF-8 response")
    };
    let raw = tokio::time::timeout(STEP, exchange).await.expect("HTTP exchange timed out");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response head");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    HttpResponse { status, head: head.to_owned(), body: body.to_owned() }
}

/// POSTs `body` to the management API, returning the status and body.
async fn manage(server: &RunningServer, path: &str, body: Value) -> (u16, String) {
    let response = http(server.management_addr, "POST", path, "localhost", &body.to_string()).await;
    (response.status, response.body)
}

/// Like `manage`, for calls that must succeed with an empty body.
async fn manage_ok(server: &RunningServer, path: &str, body: Value) {
    let (status, response) = manage(server, path, body.clone()).await;
    assert_eq!((status, response.as_str()), (200, ""), "POST {path} {body}");
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// A resolver that asks only the challenge test server, over one transport, and caches nothing.
fn resolver(server: &RunningServer, transport: Transport) -> TokioResolver {
    let addr = server.dns_addr.expect("a DNS server");
    let mut connection = match transport {
        Transport::Udp => ConnectionConfig::udp(),
        Transport::Tcp => ConnectionConfig::tcp(),
    };
    connection.port = addr.port();
    let name_server = NameServerConfig::new(addr.ip(), true, vec![connection]);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![name_server]), TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .expect("build the resolver")
}

async fn lookup(resolver: &TokioResolver, name: &str, qtype: RecordType) -> Result<Vec<RData>, NetError> {
    let result = tokio::time::timeout(STEP, resolver.lookup(name, qtype)).await.expect("DNS lookup timed out");
    result.map(|lookup| lookup.answers().iter().map(|record| record.data.clone()).collect())
}

async fn ipv4s(resolver: &TokioResolver, name: &str) -> Vec<Ipv4Addr> {
    match lookup(resolver, name, RecordType::A).await {
        Ok(answers) => {
            answers.into_iter().filter_map(|rdata| if let RData::A(a) = rdata { Some(a.0) } else { None }).collect()
        }
        Err(err) if err.is_no_records_found() => Vec::new(),
        Err(err) => panic!("A lookup of {name} failed: {err}"),
    }
}

async fn ipv6s(resolver: &TokioResolver, name: &str) -> Vec<Ipv6Addr> {
    match lookup(resolver, name, RecordType::AAAA).await {
        Ok(answers) => {
            answers.into_iter().filter_map(|rdata| if let RData::AAAA(a) = rdata { Some(a.0) } else { None }).collect()
        }
        Err(err) if err.is_no_records_found() => Vec::new(),
        Err(err) => panic!("AAAA lookup of {name} failed: {err}"),
    }
}

async fn txts(resolver: &TokioResolver, name: &str) -> Vec<String> {
    let mut values: Vec<String> = match lookup(resolver, name, RecordType::TXT).await {
        Ok(answers) => answers
            .into_iter()
            .filter_map(|rdata| match rdata {
                RData::TXT(txt) => Some(String::from_utf8(txt.txt_data.concat()).expect("UTF-8 TXT")),
                _ => None,
            })
            .collect(),
        Err(err) if err.is_no_records_found() => Vec::new(),
        Err(err) => panic!("TXT lookup of {name} failed: {err}"),
    };
    values.sort();
    values
}

fn is_servfail(err: &NetError) -> bool {
    matches!(err, NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)))
}

#[tokio::test]
async fn a_queries_get_the_default_address_or_the_added_ones() {
    let server = start().await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let resolver = resolver(&server, transport);
        assert_eq!(ipv4s(&resolver, "anything.example.").await, [Ipv4Addr::LOCALHOST]);
        assert_eq!(ipv4s(&resolver, "Mixed-Case.Example.ORG.").await, [Ipv4Addr::LOCALHOST]);
    }
    let resolver = resolver(&server, Transport::Udp);

    manage_ok(&server, "/add-a", json!({"host": "host.example", "addresses": ["192.0.2.1"]})).await;
    manage_ok(&server, "/add-a", json!({"host": "HOST.example.", "addresses": ["192.0.2.2"]})).await;
    let mut addresses = ipv4s(&resolver, "host.example.").await;
    addresses.sort();
    assert_eq!(addresses, [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]);
    assert_eq!(ipv4s(&resolver, "other.example.").await, [Ipv4Addr::LOCALHOST]);

    manage_ok(&server, "/clear-a", json!({"host": "host.example."})).await;
    assert_eq!(ipv4s(&resolver, "host.example.").await, [Ipv4Addr::LOCALHOST]);

    manage_ok(&server, "/set-default-ipv4", json!({"ip": "198.51.100.7"})).await;
    assert_eq!(ipv4s(&resolver, "host.example.").await, [Ipv4Addr::new(198, 51, 100, 7)]);
    manage_ok(&server, "/set-default-ipv4", json!({"ip": ""})).await;
    assert!(ipv4s(&resolver, "host.example.").await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn aaaa_queries_are_empty_until_an_address_is_set() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    assert!(ipv6s(&resolver, "v6.example.").await.is_empty());

    manage_ok(&server, "/set-default-ipv6", json!({"ip": "::1"})).await;
    assert_eq!(ipv6s(&resolver, "v6.example.").await, [Ipv6Addr::LOCALHOST]);

    manage_ok(&server, "/add-aaaa", json!({"host": "v6.example", "addresses": ["2001:db8::1"]})).await;
    assert_eq!(ipv6s(&resolver, "v6.example.").await, ["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
    manage_ok(&server, "/clear-aaaa", json!({"host": "v6.example"})).await;
    manage_ok(&server, "/set-default-ipv6", json!({"ip": ""})).await;
    assert!(ipv6s(&resolver, "v6.example.").await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn txt_values_accumulate_until_cleared() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    let name = "_acme-challenge.example.com.";
    assert!(txts(&resolver, name).await.is_empty());

    // A wildcard and its base name: two values under one name, set with and without the trailing dot.
    manage_ok(&server, "/set-txt", json!({"host": name, "value": "first-digest"})).await;
    manage_ok(&server, "/set-txt", json!({"host": "_ACME-challenge.example.com", "value": "second-digest"})).await;
    assert_eq!(txts(&resolver, name).await, ["first-digest", "second-digest"]);
    assert_eq!(txts(&resolver_tcp(&server), name).await, ["first-digest", "second-digest"]);

    // A value longer than one character-string comes back whole.
    let long = "v".repeat(400);
    manage_ok(&server, "/set-txt", json!({"host": "long.example.com.", "value": long})).await;
    assert_eq!(txts(&resolver, "long.example.com.").await, [long]);

    manage_ok(&server, "/clear-txt", json!({"host": name})).await;
    assert!(txts(&resolver, name).await.is_empty());
    server.shutdown().await;
}

fn resolver_tcp(server: &RunningServer) -> TokioResolver {
    resolver(server, Transport::Tcp)
}

#[tokio::test]
async fn caa_records_are_encoded_with_flags_tag_and_value() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    assert!(lookup(&resolver, "caa.example.", RecordType::CAA).await.unwrap_err().is_no_records_found());

    let policies = json!([
        {"tag": "issue", "value": "quarry.test"},
        {"tag": "issuewild", "value": ";"},
        {"flags": 128, "tag": "tbs", "value": "unknown"},
    ]);
    manage_ok(&server, "/add-caa", json!({"host": "caa.example", "policies": policies})).await;
    let mut records: Vec<(u8, String, Vec<u8>)> = lookup(&resolver, "caa.example.", RecordType::CAA)
        .await
        .expect("CAA lookup")
        .into_iter()
        .filter_map(|rdata| match rdata {
            RData::CAA(caa) => Some((caa.flags(), caa.tag.clone(), caa.value.clone())),
            _ => None,
        })
        .collect();
    records.sort();
    assert_eq!(
        records,
        [
            (0, "issue".to_owned(), b"quarry.test".to_vec()),
            (0, "issuewild".to_owned(), b";".to_vec()),
            (128, "tbs".to_owned(), b"unknown".to_vec()),
        ]
    );

    manage_ok(&server, "/clear-caa", json!({"host": "caa.example."})).await;
    assert!(lookup(&resolver, "caa.example.", RecordType::CAA).await.unwrap_err().is_no_records_found());

    // In-process, through the same state.
    server.state.add_caa("caa.example", [CaaPolicy::new("issue", "other.test")]).unwrap();
    assert_eq!(lookup(&resolver, "caa.example.", RecordType::CAA).await.unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn cnames_are_answered_and_chased() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    manage_ok(&server, "/set-cname", json!({"host": "www.example.net", "target": "web.example.net."})).await;
    manage_ok(&server, "/add-a", json!({"host": "web.example.net", "addresses": ["192.0.2.80"]})).await;

    let answers = lookup(&resolver, "www.example.net.", RecordType::A).await.expect("A lookup through the CNAME");
    assert!(matches!(&answers[0], RData::CNAME(target) if target.0.to_ascii() == "web.example.net."), "{answers:?}");
    assert_eq!(answers[1..], [RData::A(Ipv4Addr::new(192, 0, 2, 80).into())]);

    let answers = lookup(&resolver, "www.example.net.", RecordType::CNAME).await.expect("CNAME lookup");
    assert_eq!(answers.len(), 1);
    assert!(matches!(&answers[0], RData::CNAME(_)));

    // dns-01 delegated by a CNAME, the way clients point _acme-challenge at a validation zone.
    manage_ok(
        &server,
        "/set-cname",
        json!({"host": "_acme-challenge.example.net.", "target": "delegated.example.org"}),
    )
    .await;
    manage_ok(&server, "/set-txt", json!({"host": "delegated.example.org.", "value": "digest"})).await;
    assert_eq!(txts(&resolver, "_acme-challenge.example.net.").await, ["digest"]);

    // Two hops, then the target's default address.
    manage_ok(&server, "/set-cname", json!({"host": "hop.example.net", "target": "www.example.net"})).await;
    let answers = lookup(&resolver, "hop.example.net.", RecordType::A).await.expect("A lookup through two CNAMEs");
    assert_eq!(answers.len(), 3);

    manage_ok(&server, "/clear-cname", json!({"host": "www.example.net"})).await;
    assert_eq!(ipv4s(&resolver, "www.example.net.").await, [Ipv4Addr::LOCALHOST]);
    server.shutdown().await;
}

#[tokio::test]
async fn servfail_hosts_fail_every_query() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    manage_ok(&server, "/set-servfail", json!({"host": "broken.example"})).await;
    manage_ok(&server, "/set-txt", json!({"host": "broken.example", "value": "hidden"})).await;
    for qtype in [RecordType::A, RecordType::TXT, RecordType::CAA] {
        let err = lookup(&resolver, "broken.example.", qtype).await.expect_err("a SERVFAIL host answered");
        assert!(is_servfail(&err), "{qtype}: {err}");
    }
    // Through an alias, too.
    server.state.set_cname("alias.example", "broken.example").unwrap();
    assert!(is_servfail(&lookup(&resolver, "alias.example.", RecordType::A).await.unwrap_err()));

    manage_ok(&server, "/clear-servfail", json!({"host": "BROKEN.example."})).await;
    assert_eq!(txts(&resolver, "broken.example.").await, ["hidden"]);
    server.shutdown().await;
}

#[tokio::test]
async fn dns_questions_are_recorded_per_host() {
    let server = start().await;
    let resolver = resolver(&server, Transport::Udp);
    ipv4s(&resolver, "seen.example.").await;
    txts(&resolver_tcp(&server), "Seen.Example.").await;

    let (status, body) = manage(&server, "/dns-request-history", json!({"host": "seen.example."})).await;
    assert_eq!(status, 200);
    let history: Value = serde_json::from_str(&body).expect("JSON history");
    let questions: Vec<(String, u64, u64)> = history
        .as_array()
        .expect("an array")
        .iter()
        .map(|event| {
            let question = &event["Question"];
            (
                question["Name"].as_str().unwrap().to_ascii_lowercase(),
                question["Qtype"].as_u64().unwrap(),
                question["Qclass"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(questions, [("seen.example.".to_owned(), 1, 1), ("seen.example.".to_owned(), 16, 1)]);
    assert_eq!(server.state.dns_request_history("SEEN.example").len(), 2);

    let (status, _) = manage(&server, "/clear-request-history", json!({"host": "seen.example", "type": "bogus"})).await;
    assert_eq!(status, 400);
    manage_ok(&server, "/clear-request-history", json!({"host": "seen.example", "type": "dns"})).await;
    let (status, body) = manage(&server, "/dns-request-history", json!({"host": "seen.example"})).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    server.shutdown().await;
}

#[tokio::test]
async fn http01_responder_serves_tokens_and_redirects() {
    let server = start().await;
    let addr = server.http01_addr.expect("an http-01 responder");
    let path = "/.well-known/acme-challenge/tok3n";
    assert_eq!(http(addr, "GET", path, "site.example", "").await.status, 404);

    manage_ok(&server, "/add-http01", json!({"token": "tok3n", "content": "tok3n.thumbprint"})).await;
    let response = http(addr, "GET", path, "site.example:5002", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "tok3n.thumbprint");
    assert!(response.header("content-type").unwrap().starts_with("text/plain"), "{}", response.head);
    assert_eq!(http(addr, "GET", "/.well-known/acme-challenge/other", "site.example", "").await.status, 404);

    manage_ok(&server, "/del-http01", json!({"token": "tok3n"})).await;
    assert_eq!(http(addr, "GET", path, "site.example", "").await.status, 404);

    manage_ok(&server, "/add-redirect", json!({"path": path, "targetURL": "http://elsewhere.example/x"})).await;
    let response = http(addr, "GET", path, "site.example", "").await;
    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some("http://elsewhere.example/x"));
    manage_ok(&server, "/del-redirect", json!({"path": path})).await;
    assert_eq!(http(addr, "GET", path, "site.example", "").await.status, 404);

    // In-process, through the same state.
    server.state.add_http01("direct", "direct.thumbprint");
    assert_eq!(http(addr, "GET", "/.well-known/acme-challenge/direct", "x", "").await.body, "direct.thumbprint");

    let (status, body) = manage(&server, "/http-request-history", json!({"host": "SITE.example."})).await;
    assert_eq!(status, 200);
    let history: Vec<Value> = serde_json::from_str(&body).expect("JSON history");
    assert_eq!(history.len(), 6);
    assert_eq!(history[1], json!({"URL": path, "Host": "site.example:5002", "HTTPS": false, "ServerName": ""}));
    manage_ok(&server, "/clear-request-history", json!({"host": "site.example", "type": "http"})).await;
    assert!(server.state.http_request_history("site.example").is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn management_api_refuses_bad_requests() {
    let server = start().await;
    let cases = [
        ("/add-a", "{"),
        ("/add-a", ""),
        ("/add-a", r#"{"host": "h.example", "addresses": []}"#),
        ("/add-a", r#"{"host": "h.example", "addresses": ["::1"]}"#),
        ("/add-aaaa", r#"{"host": "h.example", "addresses": ["127.0.0.1"]}"#),
        ("/add-a", r#"{"addresses": ["127.0.0.1"]}"#),
        ("/set-default-ipv4", r#"{"ip": "not an address"}"#),
        ("/set-txt", r#"{"host": "h.example"}"#),
        ("/set-cname", r#"{"host": "h.example", "target": ""}"#),
        ("/add-caa", r#"{"host": "h.example", "policies": [{"tag": "bad tag!", "value": "x"}]}"#),
        ("/add-caa", r#"{"host": "h.example", "policies": []}"#),
        ("/add-http01", r#"{"token": "t"}"#),
        ("/http-request-history", "{}"),
        ("/clear-request-history", r#"{"host": "h.example"}"#),
    ];
    for (path, body) in cases {
        let response = http(server.management_addr, "POST", path, "localhost", body).await;
        assert_eq!(response.status, 400, "POST {path} {body}");
    }
    assert_eq!(http(server.management_addr, "POST", "/no-such-thing", "localhost", "{}").await.status, 404);
    assert_eq!(http(server.management_addr, "GET", "/add-a", "localhost", "").await.status, 405);
    // Go's encoding/json matches keys whatever their case; clients rely on it.
    manage_ok(&server, "/add-a", json!({"Host": "h.example", "Addresses": ["192.0.2.9"]})).await;
    server.shutdown().await;
}

#[tokio::test]
async fn servers_are_optional_and_shutdown_frees_the_ports() {
    let config = Config { dns_addr: None, http01_addr: None, tlsalpn01_addr: None, ..Config::ephemeral() };
    let server = ChallTestSrv::start(config).await.unwrap();
    assert_eq!((server.dns_addr, server.http01_addr, server.tlsalpn01_addr), (None, None, None));
    assert!(server.management_url().starts_with("http://127.0.0.1:"));
    server.shutdown().await;

    let server = start().await;
    let (dns, http01, management) = (server.dns_addr.unwrap(), server.http01_addr.unwrap(), server.management_addr);
    assert_ne!(dns.port(), 0);
    // Keep a connection open through the shutdown: it must not hold the server up.
    let _idle = TcpStream::connect(management).await.unwrap();
    tokio::time::timeout(STEP, server.shutdown()).await.expect("shutdown timed out");
    let again = Config {
        dns_addr: Some(dns),
        http01_addr: Some(http01),
        tlsalpn01_addr: None,
        management_addr: management,
        default_ipv4: None,
        default_ipv6: None,
    };
    let server = ChallTestSrv::start(again).await.expect("the ports are free again");
    assert_eq!(server.dns_addr, Some(dns));
    drop(server);
}

#[tokio::test]
async fn run_serves_until_its_shutdown_future_resolves() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(quarry_testkit::challtestsrv::run(Config::ephemeral(), async {
        let _ = rx.await;
    }));
    tx.send(()).unwrap();
    tokio::time::timeout(STEP, run).await.expect("run did not return").unwrap().unwrap();

    // A port already taken is reported, not panicked on.
    let taken = tokio::net::TcpListener::bind((IpAddr::from(Ipv4Addr::LOCALHOST), 0)).await.unwrap();
    let config = Config { management_addr: taken.local_addr().unwrap(), ..Config::ephemeral() };
    let err = quarry_testkit::challtestsrv::run(config, async {}).await.unwrap_err();
    assert!(err.to_string().contains("management"), "{err}");
}

/// Accepts any certificate and handshake signature: these tests read the certificate the responder makes.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// One handshake with the tls-alpn-01 responder: the negotiated protocol and the leaf certificate, or the error.
async fn tls_alpn_hello(
    server: &RunningServer,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Option<Vec<u8>>, Vec<u8>), String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let handshake = async {
        let stream = TcpStream::connect(server.tlsalpn01_addr.expect("tls-alpn-01")).await.expect("connect");
        let tls = connector.connect(name, stream).await.map_err(|err| err.to_string())?;
        let (_, connection) = tls.get_ref();
        let leaf = connection.peer_certificates().and_then(|certs| certs.first()).expect("a certificate").to_vec();
        Ok((connection.alpn_protocol().map(<[u8]>::to_vec), leaf))
    };
    tokio::time::timeout(STEP, handshake).await.expect("handshake timed out")
}

#[tokio::test]
async fn tls_alpn01_responder_answers_registered_names_only() {
    let server = start().await;
    let key_authorization = "token.thumbprint";
    manage_ok(&server, "/add-tlsalpn01", json!({"host": "alpn.example", "content": key_authorization})).await;
    manage_ok(&server, "/add-tlsalpn01", json!({"host": "127.0.0.1", "content": key_authorization})).await;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let extension_value = [&[0x04, 0x20][..], digest.as_ref()].concat();

    for (sni, expected_san) in [("alpn.example", None), ("1.0.0.127.in-addr.arpa", Some([127u8, 0, 0, 1]))] {
        let (alpn, leaf) = tls_alpn_hello(&server, sni, &[b"acme-tls/1"]).await.expect("handshake");
        assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]), "{sni}");
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("a certificate");
        let sans = cert.subject_alternative_name().unwrap().expect("subjectAltName").value.general_names.clone();
        match expected_san {
            None => assert_eq!(sans, [x509_parser::extensions::GeneralName::DNSName("alpn.example")]),
            Some(ip) => assert_eq!(sans, [x509_parser::extensions::GeneralName::IPAddress(&ip[..])]),
        }
        let acme = cert.extensions().iter().find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").expect("ext");
        assert!(acme.critical, "{sni}");
        assert_eq!(acme.value, extension_value.as_slice(), "{sni}");
    }

    // No acme-tls/1 offered, an unknown name, or a removed one: no certificate.
    assert!(tls_alpn_hello(&server, "alpn.example", &[b"h2"]).await.is_err());
    assert!(tls_alpn_hello(&server, "alpn.example", &[]).await.is_err());
    assert!(tls_alpn_hello(&server, "unknown.example", &[b"acme-tls/1"]).await.is_err());
    manage_ok(&server, "/del-tlsalpn01", json!({"host": "alpn.example"})).await;
    assert!(tls_alpn_hello(&server, "alpn.example", &[b"acme-tls/1"]).await.is_err());
    let (status, _) = manage(&server, "/add-tlsalpn01", json!({"host": "alpn.example"})).await;
    assert_eq!(status, 400);

    let (status, body) = manage(&server, "/tlsalpn01-request-history", json!({"host": "ALPN.example"})).await;
    assert_eq!(status, 200);
    let history: Value = serde_json::from_str(&body).unwrap();
    let protocols: Vec<&Value> = history.as_array().unwrap().iter().map(|event| &event["SupportedProtos"]).collect();
    assert_eq!(protocols, [&json!(["acme-tls/1"]), &json!(["h2"]), &json!([]), &json!(["acme-tls/1"])]);
    assert!(history.as_array().unwrap().iter().all(|event| event["ServerName"] == "alpn.example"), "{history}");
    manage_ok(&server, "/clear-request-history", json!({"host": "alpn.example", "type": "tlsalpn"})).await;
    assert!(server.state.tlsalpn01_request_history("alpn.example").is_empty());
    server.shutdown().await;
}
