//! The publisher as a real gRPC server over mutual TLS, in front of fake CT logs on loopback: SCTs are verified
//! and selected by the policy, and down, slow or lying logs are survived only while the policy still holds.

use std::time::{Duration, Instant};

use quarry_core::ct::{LogEntry, Sct};
use quarry_proto::publisher::SubmitRequest;
use quarry_proto::publisher::publisher_client::PublisherClient;
use quarry_publisher::{Config, LogConfig};
use quarry_testkit::ctlog::FakeCtLog;
use quarry_testkit::pki::TestPki;
use std::net::SocketAddr;

use quarry_core::grpc::Channel;
use tonic::Code;

/// A log, and what the publisher is told its key is (a lying log: another log's key).
struct TestLog {
    log: FakeCtLog,
    operator: &'static str,
    configured_key: Option<String>,
}

fn log(operator: &'static str) -> TestLog {
    TestLog { log: FakeCtLog::new(), operator, configured_key: None }
}

/// Starts the publisher; returns a client presenting the ca's certificate, and the address.
async fn start_at(pki: &TestPki, logs: &[TestLog], timeout_ms: u64) -> (PublisherClient<Channel>, SocketAddr) {
    let mut configs = Vec::new();
    for (index, test_log) in logs.iter().enumerate() {
        configs.push(LogConfig {
            name: format!("log-{index}"),
            url: test_log.log.start().await,
            operator: test_log.operator.to_owned(),
            public_key: test_log.configured_key.clone().unwrap_or_else(|| test_log.log.public_key_base64()),
            submit_final: true,
        });
    }
    let config = Config {
        telemetry: Default::default(),
        version: quarry_core::config::ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(quarry_publisher::SERVICE_NAME, &["ca"])]),
        tls: pki.tls("publisher"),
        logs: configs,
        min_scts: 2,
        min_operators: 2,
        submit_timeout_ms: timeout_ms,
        log_ca: None,
    };
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(quarry_publisher::serve(config, listener, std::future::pending()));
    (PublisherClient::new(pki.channel("ca", "publisher", addr)), addr)
}

async fn start(pki: &TestPki, logs: &[TestLog], timeout_ms: u64) -> PublisherClient<Channel> {
    start_at(pki, logs, timeout_ms).await.0
}

/// The test PKI's issuer, as the ca loads it.
fn issuer(pki: &TestPki) -> quarry_ca::issuance::Issuer {
    quarry_ca::issuance::Issuer::from_pem_files(&pki.issuer_cert(), &pki.issuer_key()).expect("issuer")
}

/// A precertificate chain from the test PKI's issuer: (precertificate, issuer).
fn precertificate_chain(pki: &TestPki) -> Vec<Vec<u8>> {
    precertificate_chain_by(&issuer(pki))
}

/// A precertificate chain signed by `issuer`: (precertificate, issuer).
fn precertificate_chain_by(issuer: &quarry_ca::issuance::Issuer) -> Vec<Vec<u8>> {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec!["ct.example.com".to_owned()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr");
    let csr = quarry_core::csr::parse_csr(csr.der()).expect("csr");
    let request = quarry_ca::issuance::IssueRequest {
        dns_names: csr.dns_names.clone(),
        ip_addresses: Vec::new(),
        csr,
        serial: quarry_ca::issuance::random_serial(1).expect("serial").to_vec(),
        not_before: time::OffsetDateTime::now_utc(),
        profile: quarry_ca::issuance::CertProfile::CLASSIC,
        crl_url: "http://c.quarry.example.com/e1/0.crl".into(),
        issuer_url: "http://i.quarry.example.com/e1.der".into(),
    };
    let prepared = quarry_ca::issuance::prepare_precertificate(issuer, &request).expect("prepared");
    let precertificate = quarry_ca::issuance::sign_precertificate(issuer, &prepared).expect("precertificate");
    vec![precertificate, issuer.certificate_der().to_vec()]
}

async fn get_scts(client: &mut PublisherClient<Channel>, chain: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, tonic::Status> {
    client.get_scts(SubmitRequest { chain: chain.to_vec() }).await.map(|r| r.into_inner().scts)
}

#[tokio::test]
async fn returns_verified_scts_from_two_operators() {
    let pki = TestPki::new();
    let logs = [log("a"), log("a"), log("b")];
    let mut client = start(&pki, &logs, 5_000).await;
    let chain = precertificate_chain(&pki);
    let scts = get_scts(&mut client, &chain).await.expect("SCTs");
    assert_eq!(scts.len(), 2);
    let (_, issuer) = x509_parser::parse_x509_certificate(&chain[1]).expect("issuer");
    let (tbs, issuer_key_hash) = LogEntry::of_precertificate(&chain[0], issuer.public_key().raw).expect("entry");
    let entry = LogEntry::Precert { issuer_key_hash, tbs: &tbs };
    let mut operators = Vec::new();
    for sct in &scts {
        let sct = Sct::decode(sct).expect("an encoded SCT");
        let signer = logs.iter().find(|l| l.log.log_key().log_id() == sct.log_id).expect("from a configured log");
        signer.log.log_key().verify(&sct, &entry).expect("verifies");
        operators.push(signer.operator);
    }
    operators.sort();
    assert_eq!(operators, ["a", "b"], "one SCT per operator");
}

#[tokio::test]
async fn a_down_log_is_survived_while_the_policy_holds() {
    let pki = TestPki::new();
    let logs = [log("a"), log("b"), log("b")];
    logs[1].log.set_failing(true);
    let mut client = start(&pki, &logs, 5_000).await;
    let chain = precertificate_chain(&pki);
    assert_eq!(get_scts(&mut client, &chain).await.expect("a and the second b suffice").len(), 2);
    logs[0].log.set_failing(true);
    let status = get_scts(&mut client, &chain).await.expect_err("only operator b left");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(quarry_core::Problem::from(status).detail.contains("log-0"), "the detail names the failed logs");
}

#[tokio::test]
async fn a_log_whose_sct_does_not_verify_counts_as_failed() {
    let pki = TestPki::new();
    let impostor = FakeCtLog::new();
    let mut lying = log("b");
    lying.configured_key = Some(impostor.public_key_base64());
    let logs = [log("a"), lying];
    let mut client = start(&pki, &logs, 5_000).await;
    let status = get_scts(&mut client, &precertificate_chain(&pki)).await.expect_err("b's SCT is not b's");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_slow_log_times_out() {
    let pki = TestPki::new();
    let logs = [log("a"), log("b")];
    logs[1].log.set_delay(Duration::from_secs(30));
    let mut client = start(&pki, &logs, 300).await;
    let started = Instant::now();
    let status = get_scts(&mut client, &precertificate_chain(&pki)).await.expect_err("b never answers in time");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the submission timeout");
}

#[tokio::test]
async fn bad_requests_and_strangers_are_refused() {
    let pki = TestPki::new();
    let logs = [log("a"), log("b")];
    let (mut client, addr) = start_at(&pki, &logs, 5_000).await;
    let status = client.get_scts(SubmitRequest { chain: vec![b"one".to_vec()] }).await.expect_err("no issuer");
    assert_eq!(quarry_core::Problem::from(status).kind, quarry_core::ErrorKind::Malformed);
    // Only the ca may ask.
    let mut stranger = PublisherClient::new(pki.channel("ra", "publisher", addr));
    let status = stranger.get_scts(SubmitRequest { chain: precertificate_chain(&pki) }).await.expect_err("ra");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(logs.iter().all(|l| l.log.precertificates().is_empty()), "nothing reached a log");
}

/// Final certificates reach every log that takes them, sent one per call or several in one; a batch holding a chain
/// without its issuer, or more certificates than one call takes, is refused whole, and nothing of it is submitted.
#[tokio::test]
async fn final_certificates_reach_every_log_one_per_call_or_several_in_one() {
    use quarry_proto::publisher::SubmitFinalCertificatesRequest;
    let pki = TestPki::new();
    let logs = [log("a"), log("b")];
    let mut client = start(&pki, &logs, 5_000).await;
    // Three final certificates, each with the SCTs of its precertificate.
    let issuer = issuer(&pki);
    let mut chains: Vec<Vec<Vec<u8>>> = Vec::new();
    for _ in 0..3 {
        let precertificate = precertificate_chain_by(&issuer);
        let scts = get_scts(&mut client, &precertificate).await.expect("SCTs");
        let certificate =
            quarry_ca::issuance::sign_final_certificate(&issuer, &precertificate[0], &scts).expect("final");
        chains.push(vec![certificate, precertificate[1].clone()]);
    }
    let certificates = |chains: &[Vec<Vec<u8>>]| SubmitFinalCertificatesRequest {
        certificates: chains.iter().map(|chain| SubmitRequest { chain: chain.clone() }).collect(),
    };
    let mut bad = chains[1..].to_vec();
    bad.push(vec![b"no issuer".to_vec()]);
    let status = client.submit_final_certificates(certificates(&bad)).await.expect_err("a chain without its issuer");
    assert_eq!(quarry_core::Problem::from(status).kind, quarry_core::ErrorKind::Malformed);
    let too_many = vec![chains[0].clone(); quarry_publisher::MOST_FINAL_CERTIFICATES + 1];
    let status = client.submit_final_certificates(certificates(&too_many)).await.expect_err("too many");
    assert_eq!(quarry_core::Problem::from(status).kind, quarry_core::ErrorKind::Malformed);

    client.submit_final_certificate(SubmitRequest { chain: chains[0].clone() }).await.expect("one");
    client.submit_final_certificates(certificates(&chains[1..])).await.expect("two in one call");
    let leaves: Vec<Vec<u8>> = chains.iter().map(|chain| chain[0].clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for test_log in &logs {
        while test_log.log.certificates().len() < leaves.len() {
            assert!(Instant::now() < deadline, "final certificates never submitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut submitted = test_log.log.certificates();
        submitted.sort();
        let mut expected = leaves.clone();
        expected.sort();
        assert_eq!(submitted, expected, "each once, nothing of the refused batches");
    }
}

#[test]
fn start_up_refuses_a_policy_the_logs_cannot_meet() {
    let pki = TestPki::new();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let one_operator = LogConfig {
        name: "only".into(),
        url: "http://127.0.0.1:1/".into(),
        operator: "a".into(),
        public_key: FakeCtLog::new().public_key_base64(),
        submit_final: true,
    };
    let cases: [(&str, Vec<LogConfig>, usize); 3] = [
        ("one operator", vec![one_operator.clone(), LogConfig { name: "two".into(), ..one_operator.clone() }], 2),
        ("no logs", vec![], 2),
        ("bad key", vec![LogConfig { public_key: "AAAA".into(), ..one_operator.clone() }], 1),
    ];
    for (label, logs, min_operators) in cases {
        let config = Config {
            telemetry: Default::default(),
            version: quarry_core::config::ConfigVersion::CURRENT,
            grpc: pki.server_config(&[(quarry_publisher::SERVICE_NAME, &["ca"])]),
            tls: pki.tls("publisher"),
            logs,
            min_scts: min_operators,
            min_operators,
            submit_timeout_ms: 1_000,
            log_ca: None,
        };
        let result = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tokio::time::timeout(
                Duration::from_secs(5),
                quarry_publisher::serve(config, listener, std::future::pending()),
            )
            .await
        });
        assert!(matches!(result, Ok(Err(_))), "{label}: started anyway");
    }
}
