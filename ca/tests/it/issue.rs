//! IssueCertificate over gRPC: what is issued, what the sa is told, and what is refused.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quarry_ca::issuance::{Issuer, issuer_id};
use quarry_core::{ErrorKind, Problem};
use quarry_proto::ca::{IssueCertificateRequest, IssueCertificateResponse};
use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::Code;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::fake_sa::serial_of;
use crate::{SERIAL_PREFIX, Stack, read_cert};

const ACCOUNT_ID: i64 = 7;
const ORDER_ID: i64 = 9;

pub(crate) fn csr(key: &KeyPair, names: &[&str]) -> Vec<u8> {
    csr_with_common_name(key, None, names)
}

fn csr_with_common_name(key: &KeyPair, common_name: Option<&str>, names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(common_name) = common_name {
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    }
    params.serialize_request(key).expect("csr").der().to_vec()
}

fn p256_csr(names: &[&str]) -> Vec<u8> {
    csr(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256"), names)
}

pub(crate) fn request(csr: Vec<u8>, profile: &str) -> IssueCertificateRequest {
    IssueCertificateRequest {
        csr,
        account_id: ACCOUNT_ID,
        order_id: ORDER_ID,
        profile: profile.to_owned(),
        processing_by: String::new(),
    }
}

async fn issue(stack: &Stack, request: IssueCertificateRequest) -> Result<IssueCertificateResponse, Problem> {
    stack.client("ra").issue_certificate(request).await.map(tonic::Response::into_inner).map_err(Problem::from)
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty());
    cert
}

/// Validates like a TLS client that trusts only the dev root.
pub(crate) fn verify_chain(root: &[u8], chain: &[Vec<u8>], leaf: &[u8], name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let intermediates: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let name = ServerName::try_from(name.to_owned()).expect("name");
    verifier.verify_server_cert(&CertificateDer::from(leaf), &intermediates, &name, &[], UnixTime::now()).map(|_| ())
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn issues_a_p256_certificate_and_records_it_in_the_sa() {
    let stack = Stack::start().await;
    let before = unix_now();
    let response =
        issue(&stack, request(p256_csr(&["www.example.com", "example.com"]), "classic")).await.expect("issued");

    let cert = parse(&response.der);
    assert_eq!(response.serial, hex::encode(cert.raw_serial()));
    assert_eq!(cert.raw_serial().len(), 18);
    assert_eq!(cert.raw_serial()[0], SERIAL_PREFIX);
    let issuer = Issuer::from_pem_files(&stack.pki.issuer_cert(), &stack.pki.issuer_key()).expect("issuer");
    assert_eq!(response.chain, vec![issuer.certificate_der().to_vec()]);
    assert_eq!(cert.issuer().as_raw(), issuer.subject_der());
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    assert_eq!(cn.as_deref(), Some("www.example.com"));
    let validity = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
    assert_eq!(validity, time::Duration::days(90) - time::Duration::SECOND);

    // The CRL distribution point names the certificate's shard, computed as the sa files revocations; the AIA
    // caIssuers URL says where the issuer's certificate is.
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let mut crl_urls = Vec::new();
    let mut issuer_urls = Vec::new();
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                for point in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                        crl_urls.extend(names.iter().filter_map(|n| match n {
                            GeneralName::URI(uri) => Some(uri.to_string()),
                            _ => None,
                        }));
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                issuer_urls.extend(aia.accessdescs.iter().filter_map(|d| match &d.access_location {
                    GeneralName::URI(uri) if d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.2" => {
                        Some(uri.to_string())
                    }
                    _ => None,
                }));
            }
            _ => {}
        }
    }
    let shard = quarry_core::crl::shard(&response.serial, quarry_core::crl::DEFAULT_SHARDS);
    assert_eq!(crl_urls, [format!("{}{shard}.crl", quarry_testkit::stack::CRL_URL_PREFIX)]);
    assert_eq!(issuer_urls, [quarry_testkit::stack::ISSUER_URL]);

    let root = read_cert(&stack.pki.root_cert());
    for name in ["www.example.com", "example.com"] {
        verify_chain(&root, &response.chain, &response.der, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // Two writes to the sa: the precertificate with its serial's reservation for the order, then the certificate
    // with its order, which the sa finalizes in the same write.
    let recorded = stack.sa.0.recorded();
    assert!(recorded.serial_attempts.is_empty(), "no AddSerial: {:?}", recorded.serial_attempts);
    assert_eq!(recorded.precertificates.len(), 1);
    let reserved = &recorded.precertificates[0];
    assert_eq!((reserved.account_id, reserved.order_id), (ACCOUNT_ID, ORDER_ID));
    assert_eq!(serial_of(&reserved.der), response.serial);
    assert!((before..=unix_now()).contains(&reserved.issued));
    assert_eq!(reserved.expires, cert.validity().not_after.timestamp());
    assert_eq!(recorded.certificates.len(), 1);
    let stored = &recorded.certificates[0];
    assert_eq!((stored.account_id, stored.order_id, stored.expires), (ACCOUNT_ID, ORDER_ID, 0));
    assert_eq!(stored.der, response.der);
    assert_eq!(stored.issuer_id, issuer_id(&issuer));
    assert_eq!(stored.issued, reserved.issued);
    assert!(response.order_finalized, "the sa said it finalized the order");
}

/// During a rolling update the ca may meet an sa that predates reserving a serial with its precertificate: that sa
/// refuses the precertificate as never reserved, and the ca reserves the serial with AddSerial first, as it used to
/// (a serial taken there is drawn again too). Such an sa does not say it finalized the order, nor then does the ca.
#[tokio::test]
async fn an_older_sa_has_the_serial_reserved_first() {
    let stack = Stack::start().await;
    stack.sa.0.older.store(true, Ordering::SeqCst);
    stack.sa.0.duplicates.store(1, Ordering::SeqCst);
    let response = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("issued");
    assert!(!response.order_finalized);
    let recorded = stack.sa.0.recorded();
    assert_eq!(recorded.serial_attempts.len(), 2, "{:?}", recorded.serial_attempts);
    assert_eq!(recorded.serials.len(), 1);
    let reserved = &recorded.serials[0];
    assert_eq!((reserved.account_id, reserved.order_id), (ACCOUNT_ID, ORDER_ID));
    assert_eq!(reserved.serial, response.serial);
    assert_eq!(reserved.expires, parse(&response.der).validity().not_after.timestamp());
    assert_eq!(recorded.precertificate_attempts.len(), 3, "each serial tried alone first");
    assert_eq!(recorded.precertificates.len(), 1);
    assert_eq!(serial_of(&recorded.precertificates[0].der), response.serial);
    assert_eq!(recorded.certificates.len(), 1);
}

#[tokio::test]
async fn profiles_choose_validity_and_common_name() {
    let stack = Stack::start().await;
    for (profile, hours, has_cn) in
        [("", 90 * 24, true), ("classic", 90 * 24, true), ("tlsserver", 45 * 24, false), ("shortlived", 160, false)]
    {
        let response = issue(&stack, request(p256_csr(&["a.example"]), profile)).await.expect(profile);
        let cert = parse(&response.der);
        let validity = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert_eq!(validity, time::Duration::hours(hours) - time::Duration::SECOND, "{profile:?}");
        assert_eq!(cert.subject().iter_common_name().next().is_some(), has_cn, "{profile:?}");
    }
}

#[tokio::test]
async fn the_common_name_is_certified_and_stays_the_common_name() {
    let stack = Stack::start().await;
    let key = KeyPair::generate().expect("key");
    let csr = csr_with_common_name(&key, Some("CN.Example.com"), &["a.example.com", "cn.example.com"]);
    let response = issue(&stack, request(csr, "classic")).await.expect("issued");
    let cert = parse(&response.der);
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    assert_eq!(cn.as_deref(), Some("cn.example.com"));
    let san = cert.subject_alternative_name().expect("san").expect("san present").value;
    let names: Vec<String> = san
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["cn.example.com", "a.example.com"]);
}

#[tokio::test]
async fn unknown_profile_is_invalid_profile() {
    let stack = Stack::start().await;
    let problem = issue(&stack, request(p256_csr(&["a.example"]), "forever")).await.expect_err("unknown profile");
    assert_eq!(problem.kind, ErrorKind::InvalidProfile);
    assert!(problem.detail.contains("forever"), "{}", problem.detail);
    assert!(stack.sa.0.recorded().precertificate_attempts.is_empty());
}

#[tokio::test]
async fn bad_csrs_are_bad_csr_and_reserve_nothing() {
    let stack = Stack::start().await;
    let good = p256_csr(&["a.example"]);
    let mut tampered_signature = good.clone();
    let last = tampered_signature.len() - 1;
    tampered_signature[last] ^= 0x01;
    let mut tampered_name = good.clone();
    let at = tampered_name.windows(9).position(|w| w == b"a.example").expect("name in csr");
    tampered_name[at] = b'b';
    let p521 = csr(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("p521"), &["a.example"]);
    let no_names = csr(&KeyPair::generate().expect("key"), &[]);
    let sentence_common_name = csr_with_common_name(&KeyPair::generate().expect("key"), Some("my web site"), &[]);
    let bad_san = csr(&KeyPair::generate().expect("key"), &["a..example"]);

    let cases: [(&str, Vec<u8>); 8] = [
        ("empty", Vec::new()),
        ("garbage", b"certainly not a csr".to_vec()),
        ("tampered signature", tampered_signature),
        ("tampered name", tampered_name),
        ("p-521 key", p521),
        ("no names", no_names),
        ("common name that is no dns name", sentence_common_name),
        ("malformed dns name", bad_san),
    ];
    for (label, csr) in cases {
        let problem = issue(&stack, request(csr, "classic")).await.expect_err(label);
        assert_eq!(problem.kind, ErrorKind::BadCsr, "{label}: {problem}");
    }
    assert!(stack.sa.0.recorded().precertificate_attempts.is_empty());
}

#[tokio::test]
async fn only_allowlisted_clients_may_call() {
    let stack = Stack::start().await;
    for client in ["wfe", "intruder", "va"] {
        let status = stack
            .client(client)
            .issue_certificate(request(p256_csr(&["a.example"]), "classic"))
            .await
            .expect_err(client);
        assert_eq!(status.code(), Code::PermissionDenied, "{client}: {status:?}");
    }
    assert!(stack.sa.0.recorded().precertificate_attempts.is_empty());
    issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("ra may call");
}

#[tokio::test]
async fn duplicate_serials_are_retried_a_bounded_number_of_times() {
    let stack = Stack::start().await;
    stack.sa.0.duplicates.store(2, Ordering::SeqCst);
    let response = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("third serial works");
    {
        let recorded = stack.sa.0.recorded();
        assert_eq!(recorded.precertificate_attempts.len(), 3);
        let distinct: std::collections::BTreeSet<String> =
            recorded.precertificate_attempts.iter().map(|r| serial_of(&r.der)).collect();
        assert_eq!(distinct.len(), 3, "each attempt draws a new serial, in a linting copy prepared again");
        assert_eq!(recorded.precertificates.len(), 1);
        assert_eq!(serial_of(&recorded.precertificates[0].der), response.serial);
        assert!(recorded.serial_attempts.is_empty());
    }

    stack.sa.0.duplicates.store(3, Ordering::SeqCst);
    let problem = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect_err("no serial left");
    assert_eq!(problem.kind, ErrorKind::ServerInternal);
    let recorded = stack.sa.0.recorded();
    assert_eq!(recorded.precertificate_attempts.len(), 6);
    assert_eq!(recorded.certificates.len(), 1, "nothing signed without a reserved serial");
}

#[tokio::test]
async fn sa_failures_reach_the_caller_as_their_kind() {
    let stack = Stack::start().await;
    // Storing the signed certificate is idempotent: a passing failure is retried, so the certificate is not lost.
    stack.sa.0.storage_failures.store(1, Ordering::SeqCst);
    let issued = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("retried store");
    assert_eq!(stack.sa.0.recorded().certificates.len(), 1);
    assert_eq!(stack.sa.0.recorded().precertificates.last().map(|p| serial_of(&p.der)), Some(issued.serial));
    // A lasting one reaches the caller as its kind.
    stack.sa.0.storage_failures.store(100, Ordering::SeqCst);
    let problem = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect_err("storage fails");
    assert_eq!(problem.kind, ErrorKind::Unavailable);
    assert_eq!(stack.sa.0.recorded().precertificates.len(), 2);
    assert_eq!(stack.sa.0.recorded().certificates.len(), 1);
}

#[tokio::test]
async fn an_unreachable_sa_is_unavailable() {
    // Port 9 (discard) on loopback: nothing listens there in a test environment.
    let stack = Stack::start_with(|config| config.sa.address = vec!["https://127.0.0.1:9".into()]).await;
    let problem = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect_err("no sa");
    assert!(matches!(problem.kind, ErrorKind::Unavailable | ErrorKind::Timeout), "{problem}");
}

#[tokio::test]
async fn rsa_csrs_get_key_encipherment() {
    let stack = Stack::start().await;
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let response = issue(&stack, request(csr(&key, &["rsa.example"]), "classic")).await.expect("issued");
    let cert = parse(&response.der);
    let usage = cert.key_usage().expect("ku").expect("ku present").value;
    assert!(usage.digital_signature() && usage.key_encipherment());
    verify_chain(&read_cert(&stack.pki.root_cert()), &response.chain, &response.der, "rsa.example").expect("chains");
}

#[tokio::test]
async fn the_csr_key_type_picks_the_intermediate() {
    let stack = Stack::start().await;
    let ecdsa = Issuer::from_pem_files(&stack.pki.issuer_cert(), &stack.pki.issuer_key()).expect("E1");
    let rsa = Issuer::from_pem_files(&stack.pki.rsa_issuer_cert(), &stack.pki.rsa_issuer_key()).expect("R1");
    let rsa_key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let root = read_cert(&stack.pki.root_cert());
    for (label, csr, issuer, signature) in [
        ("p256", p256_csr(&["a.example"]), &ecdsa, x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA384),
        ("rsa", csr(&rsa_key, &["a.example"]), &rsa, x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA),
    ] {
        let response = issue(&stack, request(csr, "classic")).await.unwrap_or_else(|p| panic!("{label}: {p}"));
        assert_eq!(response.chain, vec![issuer.certificate_der().to_vec()], "{label}");
        let cert = parse(&response.der);
        assert_eq!(cert.issuer().as_raw(), issuer.subject_der(), "{label}");
        assert_eq!(cert.signature_algorithm.algorithm, signature, "{label}");
        verify_chain(&root, &response.chain, &response.der, "a.example").unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(stack.sa.0.recorded().certificates.last().expect("stored").issuer_id, issuer_id(issuer));
    }
}

#[tokio::test]
async fn an_inactive_issuer_signs_nothing() {
    let stack = Stack::start_with(|config| config.issuers[0].active = false).await;
    let rsa = Issuer::from_pem_files(&stack.pki.rsa_issuer_cert(), &stack.pki.rsa_issuer_key()).expect("R1");
    // With E1 inactive an ECDSA key falls back to the RSA intermediate.
    let response = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("issued");
    assert_eq!(response.chain, vec![rsa.certificate_der().to_vec()]);
}

#[tokio::test]
async fn every_certificate_embeds_verifying_scts_from_both_operators() {
    let stack = Stack::start().await;
    let response = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect("issued");
    let issuer_spki = parse(&response.chain[0]).public_key().raw.to_vec();
    let scts = quarry_core::ct::embedded_scts(&response.der).expect("sct list parses");
    assert_eq!(scts.len(), 2);
    let (tbs, issuer_key_hash) =
        quarry_core::ct::LogEntry::of_final_certificate(&response.der, &issuer_spki).expect("entry");
    let entry = quarry_core::ct::LogEntry::Precert { issuer_key_hash, tbs: &tbs };
    for log in &stack.publisher.logs {
        let key = log.log_key();
        let sct = scts.iter().find(|sct| sct.log_id == key.log_id()).expect("an SCT from each log");
        key.verify(sct, &entry).expect("the SCT verifies against the log's key");
        let precertificates = log.precertificates();
        assert_eq!(precertificates.len(), 1);
        assert!(quarry_core::ct::is_precertificate(&precertificates[0]).expect("parses"));
    }

    // The precertificate's linting copy was stored before the certificate, under the same serial.
    {
        let recorded = stack.sa.0.recorded();
        assert_eq!(recorded.precertificates.len(), 1);
        let copy = parse(&recorded.precertificates[0].der);
        assert_eq!(hex::encode(copy.raw_serial()), response.serial);
        assert_eq!(recorded.precertificates[0].issuer_id, recorded.certificates[0].issuer_id);
    }

    // The final certificate reaches the logs in the background (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.publisher.logs.iter().any(|log| log.certificates().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "final certificate never submitted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stack.publisher.logs[0].certificates(), vec![response.der.clone()]);
}

/// A publisher older than `SubmitFinalCertificates` answers it `unimplemented`: the ca then sends the final
/// certificate in a call of its own, and the logs get it all the same.
#[tokio::test]
async fn an_older_publisher_gets_the_final_certificate_in_a_call_of_its_own() {
    const BATCH: &str = "/quarry.publisher.v1.Publisher/SubmitFinalCertificates";
    const ONE: &str = "/quarry.publisher.v1.Publisher/SubmitFinalCertificate";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let older = listener.local_addr().expect("address");
    let stack = Stack::start_with(|config| config.publisher.address = vec![format!("https://{older}")]).await;
    let older =
        quarry_testkit::older::OlderRelease::publisher_without_batches(&stack.pki, listener, stack.publisher.addr);
    let older = older.await;
    let response = issue(&stack, request(p256_csr(&["older.example"]), "classic")).await.expect("issued");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.publisher.logs.iter().any(|log| log.certificates().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "final certificate never submitted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for log in &stack.publisher.logs {
        assert_eq!(log.certificates(), vec![response.der.clone()]);
    }
    assert_eq!((older.calls(BATCH), older.calls(ONE)), (1, 1), "asked in a batch, refused, then sent alone");
}

#[tokio::test]
async fn without_enough_scts_nothing_is_issued_but_the_serial_stays_revocable() {
    let stack = Stack::start().await;
    stack.publisher.logs[1].set_failing(true);
    let problem = issue(&stack, request(p256_csr(&["a.example"]), "classic")).await.expect_err("one operator only");
    assert_eq!(problem.kind, ErrorKind::ServerInternal);
    assert!(problem.detail.contains("Certificate Transparency"), "{}", problem.detail);
    let recorded = stack.sa.0.recorded();
    assert_eq!((recorded.precertificates.len(), recorded.certificates.len()), (1, 0));
}
