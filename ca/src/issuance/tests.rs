//! Tests of issuance against the dev hierarchy: contents, chain validation, and the refusals.

use quarry_core::csr::parse_csr;
use rcgen::KeyPair;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use quarry_ceremony::{DevPki, ensure_dev_pki};
use quarry_testkit::verify::{cert_der, parse, verify_server};

const NINETY_DAYS: Duration = Duration::days(90);

struct Fixture {
    _dir: tempfile::TempDir,
    pki: DevPki,
    issuer: Issuer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &[]).expect("dev pki");
    let issuer = Issuer::from_pem_files(&pki.intermediate_pem, &pki.intermediate_key).expect("issuer");
    Fixture { _dir: dir, pki, issuer }
}

fn rsa_2048() -> KeyPair {
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa generation");
    let pkcs8 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("pkcs8");
    KeyPair::try_from(pkcs8.as_ref()).expect("rcgen accepts the aws-lc-rs rsa key")
}

fn csr_for(key: &KeyPair, names: &[&str]) -> ParsedCsr {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let der = CertificateParams::new(names).expect("params").serialize_request(key).expect("csr").der().to_vec();
    parse_csr(&der).expect("csr parses")
}

fn request(csr: ParsedCsr, serial: &[u8]) -> IssueRequest {
    IssueRequest {
        dns_names: csr.dns_names.clone(),
        ip_addresses: csr.ip_addresses.clone(),
        csr,
        serial: serial.to_vec(),
        not_before: OffsetDateTime::now_utc(),
        profile: CertProfile::CLASSIC,
        crl_url: "http://c.quarry.example.com/e1/7.crl".into(),
        issuer_url: "http://i.quarry.example.com/e1.der".into(),
    }
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().expect("san").expect("san present").value;
    san.general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject().iter_common_name().next().map(|cn| cn.as_str().expect("cn text").to_owned())
}

#[test]
fn issues_for_p256_p384_and_rsa_keys() {
    let f = fixture();
    let root = cert_der(&f.pki.root_pem);
    let intermediate_der = f.issuer.certificate_der().to_vec();
    let intermediate = parse(&intermediate_der);
    let cases: [(&str, KeyPair, bool); 3] = [
        ("p256", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256"), false),
        ("p384", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384"), false),
        ("rsa2048", rsa_2048(), true),
    ];
    for (label, key, key_encipherment) in cases {
        let csr = csr_for(&key, &["www.example.com", "example.com"]);
        let serial = random_serial(0x42).expect("serial");
        let req = request(csr, &serial);
        let (want_not_before, want_not_after) = req.validity_window().expect("window");
        let der = issue_certificate(&f.issuer, &req).unwrap_or_else(|e| panic!("{label}: {e}"));
        let cert = parse(&der);

        assert_eq!(dns_sans(&cert), ["www.example.com", "example.com"], "{label}");
        assert_eq!(common_name(&cert).as_deref(), Some("www.example.com"), "{label}");
        assert_eq!(cert.raw_serial(), serial.as_slice(), "{label}");
        assert_eq!(cert.raw_serial()[0], 0x42);
        assert_eq!(cert.issuer().as_raw(), f.issuer.subject_der(), "{label}");
        assert_eq!(cert.public_key().raw, req.csr.spki_der.as_slice(), "{label}");

        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        assert_eq!((not_before, not_after), (want_not_before, want_not_after), "{label}");
        let backdate = req.not_before - not_before;
        assert!(backdate >= BACKDATE && backdate < BACKDATE + Duration::SECOND, "{label}: backdated {backdate}");
        assert_eq!(not_after - not_before, NINETY_DAYS - Duration::SECOND, "{label}");

        let bc = cert.basic_constraints().expect("bc").expect("bc present");
        assert!(!bc.value.ca && bc.critical, "{label}");
        let ku = cert.key_usage().expect("ku").expect("ku present").value;
        assert!(ku.digital_signature(), "{label}");
        assert_eq!(ku.key_encipherment(), key_encipherment, "{label}");
        assert!(!ku.key_cert_sign(), "{label}");
        let eku = cert.extended_key_usage().expect("eku").expect("eku present").value;
        assert!(eku.server_auth && eku.client_auth, "{label}");

        let intermediate_ski = intermediate
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
                _ => None,
            })
            .expect("intermediate ski");
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            })
            .expect("aki");
        assert_eq!(aki, intermediate_ski, "{label}");
        assert!(
            cert.extensions().iter().any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_))),
            "{label}: ski"
        );

        cert.verify_signature(Some(intermediate.public_key())).expect("signed by the intermediate");
        for name in ["www.example.com", "example.com"] {
            verify_server(&root, &[&intermediate_der], &der, name).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
        }
        assert!(verify_server(&root, &[&intermediate_der], &der, "other.example.com").is_err());
    }
}

#[test]
fn ed25519_keys_never_reach_the_signer() {
    // A parsed CSR can only hold a key Quarry accepts (`quarry_jose::Jwk`), so the signer never sees one.
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let mut params = CertificateParams::new(vec!["ed.example".to_owned()]).expect("params");
    params.distinguished_name = DistinguishedName::new();
    let der = params.serialize_request(&ed25519).expect("csr").der().to_vec();
    assert!(matches!(parse_csr(&der), Err(quarry_core::csr::CsrError::UnsupportedKey(_))));
}

#[test]
fn ip_address_certificates_validate_for_their_addresses() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let csr = csr_for(&key, &["192.0.2.7", "2001:db8::7"]);
    assert!(csr.dns_names.is_empty());
    let der = issue_certificate(&f.issuer, &request(csr, &random_serial(1).expect("serial"))).expect("issued");
    let cert = parse(&der);
    assert_eq!(common_name(&cert), None);
    // With an empty subject the SAN extension carries the identity and must be critical (RFC 5280 4.2.1.6).
    assert!(cert.subject_alternative_name().expect("san").expect("san present").critical);
    let root = cert_der(&f.pki.root_pem);
    for ip in ["192.0.2.7", "2001:db8::7"] {
        verify_server(&root, &[f.issuer.certificate_der()], &der, ip).unwrap_or_else(|e| panic!("{ip}: {e}"));
    }
}

#[test]
fn common_name_is_the_first_name_that_fits() {
    let f = fixture();
    let long = format!("{}.example.com", "a".repeat(60));
    let cases: [(&[&str], bool, Option<&str>); 4] = [
        (&["a.example", "b.example"], true, Some("a.example")),
        (&["a.example", "b.example"], false, None),
        (&[long.as_str(), "short.example"], true, Some("short.example")),
        (&[long.as_str()], true, None),
    ];
    for (names, include, want) in cases {
        let key = KeyPair::generate().expect("key");
        let mut req = request(csr_for(&key, names), &[0x33; 18]);
        req.profile.include_common_name = include;
        let der = issue_certificate(&f.issuer, &req).expect("issued");
        let cert = parse(&der);
        assert_eq!(common_name(&cert).as_deref(), want, "{names:?} include={include}");
        assert_eq!(cert.subject().as_raw().len() <= 2, want.is_none(), "{names:?}: subject is empty without a cn");
    }
}

#[test]
fn names_are_deduplicated() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let mut req = request(csr_for(&key, &["a.example"]), &random_serial(0x10).expect("serial"));
    req.dns_names = vec!["a.example".into(), "b.example".into(), "a.example".into()];
    let der = issue_certificate(&f.issuer, &req).expect("issued");
    assert_eq!(dns_sans(&parse(&der)), ["a.example", "b.example"]);
}

#[test]
fn refuses_to_outlive_the_issuer() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let mut req = request(csr_for(&key, &["a.example"]), &random_serial(0x10).expect("serial"));
    req.profile.validity = Duration::days(6 * 365);
    let err = issue_certificate(&f.issuer, &req).expect_err("past the issuer's notAfter");
    match err {
        Error::PastIssuerExpiry { not_after, issuer_not_after } => {
            assert!(not_after > issuer_not_after);
            assert_eq!(issuer_not_after, f.issuer.not_after());
        }
        other => panic!("unexpected {other}"),
    }
    // Ending exactly at the issuer's notAfter is still allowed.
    let (not_before, _) = req.validity_window().expect("window");
    req.profile.validity = f.issuer.not_after() - not_before + Duration::SECOND;
    issue_certificate(&f.issuer, &req).expect("ends with the issuer");
}

#[test]
fn refuses_bad_requests() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let base = request(csr_for(&key, &["a.example"]), &random_serial(0x10).expect("serial"));
    let mut cases: Vec<(&str, IssueRequest)> = Vec::new();
    for (label, serial) in
        [("empty serial", vec![]), ("leading zero", vec![0x00, 0x01]), ("negative", vec![0x80]), ("long", vec![1; 21])]
    {
        let mut req = base.clone();
        req.serial = serial;
        cases.push((label, req));
    }
    let mut req = base.clone();
    req.dns_names.clear();
    cases.push(("no names", req));
    let mut req = base.clone();
    req.dns_names = vec![String::new()];
    cases.push(("empty name", req));
    let mut req = base.clone();
    req.dns_names = vec!["bücher.example".into()];
    cases.push(("non-ascii name", req));
    let mut req = base.clone();
    req.profile.validity = Duration::ZERO;
    cases.push(("zero validity", req));

    for (label, req) in cases {
        let err = issue_certificate(&f.issuer, &req).expect_err(label);
        assert!(matches!(err, Error::Serial(_) | Error::Request(_)), "{label}: {err}");
    }
}

#[test]
fn the_linting_copy_must_say_what_was_asked() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let req = request(csr_for(&key, &["a.example"]), &random_serial(0x10).expect("serial"));
    let prepared = prepare_precertificate(&f.issuer, &req).expect("prepared");
    let copy = parse(&prepared.linting_copy);
    let (not_before, not_after) = req.validity_window().expect("window");
    check_matches_request(&f.issuer, &req, &copy, not_before, not_after).expect("consistent");

    let mut other_serial = req.clone();
    other_serial.serial[1] ^= 1;
    assert!(matches!(
        check_matches_request(&f.issuer, &other_serial, &copy, not_before, not_after),
        Err(Error::SelfCheck(_))
    ));
    let mut other_key = req.clone();
    other_key.csr = csr_for(&KeyPair::generate().expect("key"), &["a.example"]);
    assert!(matches!(
        check_matches_request(&f.issuer, &other_key, &copy, not_before, not_after),
        Err(Error::SelfCheck(_))
    ));
    let root = Issuer::from_pem_files(&f.pki.root_pem, &f.pki.root_pem.with_file_name("root.key.pem")).expect("root");
    assert!(matches!(check_matches_request(&root, &req, &copy, not_before, not_after), Err(Error::SelfCheck(_))));
}

#[test]
fn precertificate_and_final_certificate_share_their_tbs() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let req = request(csr_for(&key, &["a.example", "b.example"]), &random_serial(0x10).expect("serial"));
    let prepared = prepare_precertificate(&f.issuer, &req).expect("prepared");
    // The linting copy is signed by a throwaway key, not the issuer, but its TBS is the precertificate's.
    let issuer_cert = parse(f.issuer.certificate_der());
    assert!(parse(&prepared.linting_copy).verify_signature(Some(issuer_cert.public_key())).is_err());
    let precertificate = sign_precertificate(&f.issuer, &prepared).expect("precertificate");
    assert_eq!(der::split_signed(&precertificate).unwrap().tbs, der::split_signed(&prepared.linting_copy).unwrap().tbs);
    let precert = parse(&precertificate);
    precert.verify_signature(Some(issuer_cert.public_key())).expect("signed by the issuer");
    let poison =
        precert.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.11129.2.4.3").expect("poison");
    assert!(poison.critical);

    let scts = vec![b"first sct".to_vec(), b"second sct".to_vec()];
    let final_der = sign_final_certificate(&f.issuer, &precertificate, &scts).expect("final");
    let final_cert = parse(&final_der);
    final_cert.verify_signature(Some(issuer_cert.public_key())).expect("signed by the issuer");
    assert!(!ct::is_precertificate(&final_der).unwrap());
    let embedded = der::extension_value(der::split_signed(&final_der).unwrap().tbs, ct::SCT_LIST_OID).unwrap().unwrap();
    assert_eq!(der::read_exact(embedded, der::TAG_OCTET_STRING).unwrap().content, ct::encode_sct_list(&scts));
    let (final_entry, _) = ct::LogEntry::of_final_certificate(&final_der, f.issuer.spki_der()).unwrap();
    let (precert_entry, _) = ct::LogEntry::of_precertificate(&precertificate, f.issuer.spki_der()).unwrap();
    assert_eq!(final_entry, precert_entry, "RFC 6962 §3.1");

    // Without SCTs the poison just goes.
    let bare = sign_final_certificate(&f.issuer, &precertificate, &[]).expect("final without SCTs");
    assert_eq!(der::split_signed(&bare).unwrap().tbs, precert_entry.as_slice());

    // Only a precertificate of this issuer, intact, is turned into a certificate.
    let mut tampered = precertificate.clone();
    let at = tampered.windows(9).position(|w| w == b"a.example").expect("name in der");
    tampered[at] = b'c';
    assert!(matches!(sign_final_certificate(&f.issuer, &tampered, &scts), Err(Error::Request(_))));
    let root = Issuer::from_pem_files(&f.pki.root_pem, &f.pki.root_pem.with_file_name("root.key.pem")).expect("root");
    assert!(matches!(sign_final_certificate(&root, &precertificate, &scts), Err(Error::Request(_))));

    // Another ca replica (the same issuer, none of this one's memory) verifies the precertificate instead.
    let replica = Issuer::from_pem_files(&f.pki.intermediate_pem, &f.pki.intermediate_key).expect("issuer");
    let from_replica = sign_final_certificate(&replica, &precertificate, &scts).expect("final");
    assert_eq!(der::split_signed(&from_replica).unwrap().tbs, der::split_signed(&final_der).unwrap().tbs);
    assert!(matches!(sign_final_certificate(&replica, &tampered, &scts), Err(Error::Request(_))));
}

#[test]
fn profiles_shape_the_certificate() {
    let f = fixture();
    let tlsserver = CertProfile {
        validity: Duration::days(45),
        include_common_name: false,
        key_encipherment: false,
        client_auth: false,
        subject_key_id: false,
    };
    for (label, profile, rsa_key_encipherment) in
        [("classic", CertProfile::CLASSIC, true), ("tlsserver", tlsserver, false)]
    {
        let mut req = request(csr_for(&rsa_2048(), &["a.example"]), &random_serial(0x10).expect("serial"));
        req.profile = profile;
        let der = issue_certificate(&f.issuer, &req).unwrap_or_else(|e| panic!("{label}: {e}"));
        let cert = parse(&der);
        let has = |oid: &str| cert.extensions().iter().any(|e| e.oid.to_id_string() == oid);
        assert_eq!(common_name(&cert).is_some(), profile.include_common_name, "{label}");
        assert_eq!(has("2.5.29.14"), profile.subject_key_id, "{label}: SKID");
        let bc = cert.basic_constraints().expect("bc").expect("bc present in every profile");
        assert!(bc.critical && !bc.value.ca, "{label}");
        let ku = cert.key_usage().expect("ku").expect("ku").value;
        assert_eq!(ku.key_encipherment(), rsa_key_encipherment, "{label}");
        let eku = cert.extended_key_usage().expect("eku").expect("eku").value;
        assert_eq!((eku.server_auth, eku.client_auth), (true, profile.client_auth), "{label}");
        let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp() + 1;
        assert_eq!(validity, profile.validity.whole_seconds(), "{label}");
        for oid in ["2.5.29.31", "1.3.6.1.5.5.7.1.1", "2.5.29.32"] {
            assert!(has(oid), "{label}: {oid} in every certificate");
        }
    }
}

#[test]
fn an_rsa_issuer_signs_with_sha256_with_rsa() {
    let f = fixture();
    let issuer = Issuer::from_pem_files(&f.pki.rsa_intermediate_pem, &f.pki.rsa_intermediate_key).expect("rsa issuer");
    assert_eq!(issuer.key_algorithm(), KeyAlgorithm::Rsa);
    assert!(issuer.signs_slowly());
    let req = request(csr_for(&rsa_2048(), &["a.example"]), &random_serial(0x10).expect("serial"));
    let der = issue_certificate(&issuer, &req).expect("issued");
    let cert = parse(&der);
    assert_eq!(cert.signature_algorithm.algorithm, x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA);
    let root = cert_der(&f.pki.root_pem);
    verify_server(&root, &[issuer.certificate_der()], &der, "a.example").expect("validates under the root");
}

#[test]
fn random_serials_have_the_prefix_and_136_random_bits() {
    let a = random_serial(0x01).expect("serial");
    let b = random_serial(0x7f).expect("serial");
    assert_eq!((a.len(), a[0], b[0]), (18, 0x01, 0x7f));
    assert_ne!(a[1..], b[1..]);
    for prefix in [0x00, 0x80, 0xff] {
        assert!(matches!(random_serial(prefix), Err(Error::SerialPrefix(p)) if p == prefix));
    }
}

#[test]
fn issuer_exposes_its_certificate_facts() {
    let f = fixture();
    assert_eq!(f.issuer.key_algorithm(), KeyAlgorithm::EcdsaP384);
    assert!(f.issuer.subject().contains("(DEV) Quarry Intermediate E1"), "{}", f.issuer.subject());
    let lifetime = f.issuer.not_after() - f.issuer.not_before();
    assert!((lifetime.whole_days() - 5 * 365).abs() <= 3);
    assert_eq!(f.issuer.certificate_der(), cert_der(&f.pki.intermediate_pem));
    assert_eq!(parse(f.issuer.certificate_der()).subject().as_raw(), f.issuer.subject_der());
    assert!(!format!("{:?}", f.issuer).contains("PRIVATE"));
}

#[test]
fn issuer_loading_refuses_wrong_keys_and_leaf_certificates() {
    let f = fixture();
    let err = Issuer::from_pem_files(&f.pki.intermediate_pem, &f.pki.root_pem.with_file_name("root.key.pem"))
        .expect_err("root key with intermediate certificate");
    assert!(err.to_string().contains("does not match"), "{err}");

    let err = Issuer::from_pem_files(&f.pki.https_cert, &f.pki.https_key).expect_err("leaf as issuer");
    assert!(err.to_string().contains("not a ca"), "{err}");

    let err = Issuer::from_pem_files(&f.pki.intermediate_key, &f.pki.intermediate_key).expect_err("key as cert");
    assert!(matches!(err, Error::Pem { .. }), "{err}");

    let missing = f.pki.root_pem.with_file_name("missing.pem");
    assert!(matches!(Issuer::from_pem_files(&missing, &f.pki.intermediate_key), Err(Error::Io { .. })));
}

#[test]
fn signature_algorithm_follows_the_issuer_key() {
    let f = fixture();
    let key = KeyPair::generate().expect("key");
    let der =
        issue_certificate(&f.issuer, &request(csr_for(&key, &["a.example"]), &random_serial(0x10).expect("serial")))
            .expect("issued");
    assert_eq!(f.issuer.key_algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(parse(&der).signature_algorithm.algorithm, x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA384);
}

#[test]
fn issuer_id_is_the_first_seven_bytes_of_the_subject_digest() {
    let f = fixture();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, f.issuer.subject_der());
    let mut be = [0u8; 8];
    be[1..].copy_from_slice(&digest.as_ref()[..7]);
    assert_eq!(issuer_id(&f.issuer), i64::from_be_bytes(be));
    assert!(issuer_id(&f.issuer) > 0);
    let root = Issuer::from_pem_files(&f.pki.root_pem, &f.pki.root_pem.with_file_name("root.key.pem")).expect("root");
    assert_ne!(issuer_id(&root), issuer_id(&f.issuer));
}

/// A key store that holds the issuer's public key (so the issuer loads) but does not sign with its private key.
#[derive(Debug)]
struct FaultyToken {
    issuers: FileSigner,
    fault: Fault,
}

#[derive(Debug)]
enum Fault {
    /// The token has gone away: nothing signs any more.
    Gone,
    /// It signs with another key (a token holding the wrong key, a faulty signer).
    ForeignKey(FileSigner),
}

impl Signer for FaultyToken {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.issuers.subject_public_key_info()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.issuers.algorithm()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.fault {
            Fault::Gone => Err(Error::Rcgen(rcgen::Error::RemoteKeyError)),
            Fault::ForeignKey(other) => other.sign(message),
        }
    }

    fn is_slow(&self) -> bool {
        false
    }

    fn key_store(&self) -> &'static str {
        "pkcs11"
    }
}

#[test]
fn a_key_store_that_fails_to_sign_is_counted_by_issuer_and_store() {
    let f = fixture();
    let key = KeyPair::from_pem(&std::fs::read_to_string(&f.pki.intermediate_key).expect("key")).expect("pem");
    let gone = FaultyToken { issuers: FileSigner::new(key), fault: Fault::Gone };
    let issuer = Issuer::new(cert_der(&f.pki.intermediate_pem), Box::new(gone)).expect("the issuer loads");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..2 {
            issuer.sign_message(b"a to-be-signed", b"an algorithm").expect_err("the token is gone");
        }
    });
    let rendered = handle.render();
    let line = rendered.lines().find(|line| line.starts_with("quarry_signing_errors_total")).expect(&rendered);
    for label in [format!("issuer=\"{}\"", issuer.subject()), "key_store=\"pkcs11\"".into(), "stage=\"sign\"".into()] {
        assert!(line.contains(&label), "{label} missing: {line}");
    }
    assert!(line.ends_with(" 2"), "{line}");
}

#[test]
fn a_signature_that_does_not_verify_with_the_issuers_key_is_refused_and_counted() {
    let f = fixture();
    let key = KeyPair::from_pem(&std::fs::read_to_string(&f.pki.intermediate_key).expect("key")).expect("pem");
    let other = KeyPair::generate_for(key.algorithm()).expect("another key of the same kind");
    let foreign = FaultyToken { issuers: FileSigner::new(key), fault: Fault::ForeignKey(FileSigner::new(other)) };
    let issuer = Issuer::new(cert_der(&f.pki.intermediate_pem), Box::new(foreign)).expect("the issuer loads");
    let leaf_key = KeyPair::generate().expect("key");
    let req = request(csr_for(&leaf_key, &["a.example"]), &random_serial(0x10).expect("serial"));
    let prepared = prepare_precertificate(&issuer, &req).expect("prepared");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let refused = metrics::with_local_recorder(&recorder, || sign_precertificate(&issuer, &prepared));
    match refused {
        Err(Error::SelfCheck(detail)) => assert!(detail.contains("does not verify"), "{detail}"),
        other => panic!("a precertificate the issuer's key does not verify came back: {other:?}"),
    }
    let rendered = handle.render();
    let line = rendered.lines().find(|line| line.starts_with("quarry_signing_errors_total")).expect(&rendered);
    assert!(line.contains("stage=\"self_check\"") && line.ends_with(" 1"), "{line}");
}
