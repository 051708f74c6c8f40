//! The ca with its issuer keys on a PKCS#11 token (SoftHSM): `quarry ceremony` generates the staging hierarchy's
//! keys on the token, and the ca, configured by the ceremony's PKI section, issues ECDSA and RSA certificates with
//! embedded SCTs and signs CRLs, every signature made by the token.
//!
//! Its own test binary: a process initialises one PKCS#11 module, once. SoftHSM reads its configuration from
//! `SOFTHSM2_CONF`, which the test command points at a private token directory.

#[path = "../it/fake_sa.rs"]
mod fake_sa;

use std::path::Path;
use std::process::Command;

use futures::StreamExt as _;
use quarry_ca::{Config, IssuerConfig, ProfileConfig};
use quarry_ceremony::hierarchy::{CeremonyConfig, CeremonyToken, run_ceremony};
use quarry_core::config::ConfigVersion;
use quarry_proto::ca::IssueCertificateRequest;
use quarry_proto::ca::certificate_authority_client::CertificateAuthorityClient;
use quarry_proto::ca::crl_generator_client::CrlGeneratorClient;
use quarry_proto::ca::generate_crl_request::Payload;
use quarry_proto::ca::{CrlEntry, CrlMetadata, GenerateCrlRequest};
use quarry_testkit::ctlog::TestPublisher;
use quarry_testkit::pki::TestPki;
use x509_parser::prelude::FromDer;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";

/// A fresh token with a random label; returns the label.
fn init_token() -> String {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "set SOFTHSM2_CONF to a SoftHSM configuration with a private token directory (scripts/test.sh does)"
    );
    assert!(Path::new(MODULE).exists(), "{MODULE} is missing: apt-get install softhsm2 (scripts/test.sh does)");
    let mut random = [0u8; 6];
    aws_lc_rs::rand::fill(&mut random).expect("random");
    let label = format!("quarry-{}", hex::encode(random));
    let status = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &label, "--pin", PIN, "--so-pin", "5678"])
        .status()
        .expect("run softhsm2-util");
    assert!(status.success(), "softhsm2-util --init-token failed");
    label
}

fn read_cert(path: &Path) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).expect("certificate pem").to_vec()
}

#[tokio::test]
async fn a_token_hierarchy_issues_certificates_and_crls() {
    let token_label = init_token();
    let dir = tempfile::tempdir().expect("tempdir");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, PIN).expect("pin file");

    // The shipped ceremony file, with staging's keys generated on the token.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ceremony/quarry.toml");
    let mut ceremony: CeremonyConfig = quarry_core::config::load(&path).expect("ceremony file");
    ceremony.environments.get_mut("staging").expect("staging").pkcs11 =
        Some(CeremonyToken { module: MODULE.into(), token_label: token_label.clone(), pin_file: pin_file.clone() });
    let output = run_ceremony(&ceremony, "staging", &dir.path().join("staging"), None).expect("ceremony on the token");
    assert!(!dir.path().join("staging/root.key.pem").exists(), "no key leaves the token");
    assert!(output.intermediates.iter().all(|(_, _, key)| key.as_os_str().is_empty()));
    let root = read_cert(&output.root_pem);
    let (_, root_cert) = x509_parser::certificate::X509Certificate::from_der(&root).expect("root");
    root_cert.verify_signature(None).expect("the token's root key signed the root");

    // The ca, configured by the ceremony's PKI section.
    let section: toml::Table =
        toml::from_str(&std::fs::read_to_string(output.pki_dir.join("ca.toml")).expect("section")).expect("toml");
    let issuers: Vec<IssuerConfig> = section["issuers"].clone().try_into().expect("issuers");
    assert!(issuers.iter().all(|i| i.key.is_none() && i.pkcs11.as_ref().is_some_and(|t| t.token_label == token_label)));
    let pki = TestPki::new();
    let sa = fake_sa::Handle::default();
    let (sa_addr, _stop_sa) = fake_sa::start(&pki, sa.clone()).await;
    let publisher = TestPublisher::start(&pki).await;
    let config = Config {
        telemetry: Default::default(),
        lane: None,
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[
            (quarry_proto::ca::certificate_authority_server::SERVICE_NAME, &["ra"]),
            (quarry_proto::ca::crl_generator_server::SERVICE_NAME, &["crl-updater"]),
        ]),
        tls: pki.tls("ca"),
        sa: pki.client_config("sa", sa_addr),
        publisher: pki.client_config("publisher", publisher.addr),
        serial_prefix: 1,
        issuers,
        profiles: [("classic".to_owned(), ProfileConfig::classic())].into(),
        crl_shards: quarry_core::crl::DEFAULT_SHARDS,
        default_profile: "classic".into(),
        crl_validity_secs: 9 * 86_400,
        client_testing: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(quarry_ca::serve(config, listener, std::future::pending()));

    let mut ca = CertificateAuthorityClient::new(pki.channel("ra", "ca", addr));
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let p256 = rcgen::KeyPair::generate().expect("p256");
    for (label, key, intermediate) in [("p256", &p256, "e1"), ("rsa", &rsa, "r1")] {
        let mut params = rcgen::CertificateParams::new(vec!["hsm.example.com".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(key).expect("csr").der().to_vec();
        let request = IssueCertificateRequest {
            csr,
            account_id: 1,
            order_id: 1,
            profile: "classic".into(),
            processing_by: String::new(),
        };
        let issued = ca.issue_certificate(request).await.unwrap_or_else(|e| panic!("{label}: {e}")).into_inner();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der).expect("leaf");
        let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issued.chain[0]).expect("issuer");
        assert!(issuer.subject().to_string().contains(&format!("(STAGING) Quarry {}", intermediate.to_uppercase())));
        cert.verify_signature(Some(issuer.public_key())).expect("the token's intermediate key signed it");
        issuer.verify_signature(Some(root_cert.public_key())).expect("chains to the token root");
        assert_eq!(quarry_core::ct::embedded_scts(&issued.der).expect("SCTs").len(), 2, "{label}");

        // A CRL from the same token key, of the certificate's shard (the ca refuses an entry of another).
        let issuer_id = quarry_core::certificate::issuer_id(issuer.subject().as_raw());
        let messages = vec![
            GenerateCrlRequest {
                payload: Some(Payload::Metadata(CrlMetadata {
                    issuer_id,
                    shard: quarry_core::crl::shard(&issued.serial, quarry_core::crl::DEFAULT_SHARDS),
                    this_update: quarry_core::clock::now(),
                })),
            },
            GenerateCrlRequest {
                payload: Some(Payload::Entry(CrlEntry {
                    serial: issued.serial.clone(),
                    reason: 1,
                    revoked_at: quarry_core::clock::now(),
                })),
            },
        ];
        let mut chunks = CrlGeneratorClient::new(pki.channel("crl-updater", "ca", addr))
            .generate_crl(futures::stream::iter(messages))
            .await
            .expect("CRL")
            .into_inner();
        let mut crl = Vec::new();
        while let Some(chunk) = chunks.next().await {
            crl.extend_from_slice(&chunk.expect("chunk").chunk);
        }
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).expect("CRL parses");
        crl.verify_signature(issuer.public_key()).expect("the token signed the CRL");
        assert_eq!(crl.iter_revoked_certificates().count(), 1);
    }
}
