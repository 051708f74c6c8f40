//! `quarry ceremony` for staging and production from the one ceremony file the project ships: the two hierarchies
//! differ in names (and keys, serials, dates) only, each issues certificates that chain to its own root, the PKI
//! sections configure the ca, and everything passes pkilint.

use std::path::Path;

use quarry_ca::issuance::{CertProfile, IssueRequest, Issuer, issue_certificate, random_serial};
use quarry_ceremony::hierarchy::{CeremonyConfig, CeremonyOutput, run_ceremony};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::issue::verify_chain;
use crate::pkilint::lint;
use crate::read_cert;

fn ceremony_file() -> CeremonyConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ceremony/quarry.toml");
    quarry_core::config::load(&path).expect("the shipped ceremony file parses")
}

/// What of a CA certificate must be equal between environments: everything but names, keys, serials and dates.
fn shape(der: &[u8]) -> (String, i64, Vec<(String, bool)>, String) {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    let extensions =
        cert.extensions().iter().map(|e| (e.oid.to_id_string(), e.critical)).collect::<Vec<(String, bool)>>();
    let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    (
        cert.public_key().algorithm.algorithm.to_id_string(),
        validity,
        extensions,
        cert.signature_algorithm.algorithm.to_id_string(),
    )
}

fn names(der: &[u8]) -> (String, String) {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    (cert.subject().to_string(), cert.issuer().to_string())
}

fn run(environment: &str, out: &Path) -> CeremonyOutput {
    run_ceremony(&ceremony_file(), environment, out, None).unwrap_or_else(|e| panic!("{environment}: {e}"))
}

#[test]
fn staging_and_production_differ_only_in_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = run("staging", &dir.path().join("staging"));
    let production = run("production", &dir.path().join("production"));

    let pairs = std::iter::once((staging.root_pem.clone(), production.root_pem.clone())).chain(
        staging
            .intermediates
            .iter()
            .zip(&production.intermediates)
            .map(|((_, s, _), (_, p, _))| (s.clone(), p.clone())),
    );
    for (staging_pem, production_pem) in pairs {
        let (staging_der, production_der) = (read_cert(&staging_pem), read_cert(&production_pem));
        assert_eq!(shape(&staging_der), shape(&production_der), "{}", staging_pem.display());
        let (staging_subject, staging_issuer) = names(&staging_der);
        let (production_subject, production_issuer) = names(&production_der);
        assert_eq!(staging_subject.replace("(STAGING) ", ""), production_subject);
        assert_eq!(staging_issuer.replace("(STAGING) ", ""), production_issuer);
        assert!(staging_subject.contains("CN=(STAGING) Quarry"), "{staging_subject}");
        assert!(!production_subject.contains("STAGING"), "{production_subject}");
    }
    let production_root = names(&read_cert(&production.root_pem)).0;
    assert_eq!(production_root, "C=US, O=Quarry, CN=Quarry Root X1");

    // The PKI sections differ in paths and URLs only, and configure the ca's issuers.
    for (label, output) in [("staging", &staging), ("production", &production)] {
        let text = std::fs::read_to_string(output.pki_dir.join("ca.toml")).expect("ca section");
        let section: toml::Table = toml::from_str(&text).expect("toml");
        let issuers: Vec<quarry_ca::IssuerConfig> =
            section["issuers"].clone().try_into().unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(issuers.len(), 2);
        for (configured, (_, cert, key)) in issuers.iter().zip(&output.intermediates) {
            assert_eq!((&configured.cert, configured.key.as_ref()), (cert, Some(key)));
        }
        // The URLs the ceremony writes are the ones the environment's overlay serves.
        let overlay_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/env/{label}/ca.toml"));
        let overlay: toml::Table =
            toml::from_str(&std::fs::read_to_string(overlay_path).expect("overlay")).expect("toml");
        for (index, issuer) in issuers.iter().enumerate() {
            let configured = &overlay["issuers"][index];
            assert_eq!(Some(issuer.crl_url_prefix.as_str()), configured["crl_url_prefix"].as_str(), "{label}");
            assert_eq!(Some(issuer.issuer_url.as_str()), configured["issuer_url"].as_str(), "{label}");
        }
        for file in ["wfe.toml", "crl-updater.toml"] {
            let text = std::fs::read_to_string(output.pki_dir.join(file)).expect("section");
            toml::from_str::<toml::Table>(&text).unwrap_or_else(|e| panic!("{label} {file}: {e}"));
        }
    }

    // Each hierarchy issues: ECDSA E1 and RSA R1 certificates chain to their own root only.
    for (output, other_root) in [(&staging, &production.root_pem), (&production, &staging.root_pem)] {
        let root = read_cert(&output.root_pem);
        for (name, cert, key) in &output.intermediates {
            let issuer = Issuer::from_pem_files(cert, key).unwrap_or_else(|e| panic!("{name}: {e}"));
            let subscriber = rcgen::KeyPair::generate().expect("key");
            let csr = rcgen::CertificateParams::new(vec!["hierarchy.example.com".to_owned()])
                .expect("params")
                .serialize_request(&subscriber)
                .expect("csr");
            let csr = quarry_core::csr::parse_csr(csr.der()).expect("csr parses");
            let request = IssueRequest {
                dns_names: csr.dns_names.clone(),
                ip_addresses: Vec::new(),
                csr,
                serial: random_serial(1).expect("serial").to_vec(),
                not_before: time::OffsetDateTime::now_utc(),
                profile: CertProfile::CLASSIC,
                crl_url: format!("http://c.quarry.example.com/{name}/0.crl"),
                issuer_url: format!("http://i.quarry.example.com/{name}.der"),
            };
            let leaf = issue_certificate(&issuer, &request).unwrap_or_else(|e| panic!("{name}: {e}"));
            let chain = vec![issuer.certificate_der().to_vec()];
            verify_chain(&root, &chain, &leaf, "hierarchy.example.com").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(verify_chain(&read_cert(other_root), &chain, &leaf, "hierarchy.example.com").is_err());
        }
    }

    // pkilint: the roots as roots, the intermediates as TLS issuing CAs.
    let mut findings = Vec::new();
    for output in [&staging, &production] {
        findings.extend(lint("lint_cabf_serverauth_cert", &["-t", "ROOT-CA"], &read_cert(&output.root_pem)));
        for (_, cert, _) in &output.intermediates {
            findings.extend(lint(
                "lint_cabf_serverauth_cert",
                &["-t", "INTERNAL-UNCONSTRAINED-TLS-CA"],
                &read_cert(cert),
            ));
        }
    }
    assert!(findings.is_empty(), "pkilint: {findings:#?}");
}

#[test]
fn an_existing_root_is_reused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = run("staging", &dir.path().join("first"));
    let mut config = ceremony_file();
    let staging = config.environments.get_mut("staging").expect("staging");
    staging.existing_root = Some(quarry_ceremony::hierarchy::ExistingRoot {
        cert: first.root_pem.clone(),
        key: Some(first.root_pem.with_file_name("root.key.pem")),
    });
    let second = run_ceremony(&config, "staging", &dir.path().join("second"), Some(Path::new("/etc/quarry/pki")))
        .expect("second ceremony");
    assert_eq!(second.root_pem, first.root_pem);
    assert!(!dir.path().join("second/root.pem").exists(), "no new root");
    let root = read_cert(&first.root_pem);
    let (_, root_cert) = X509Certificate::from_der(&root).expect("root");
    for (_, cert, _) in &second.intermediates {
        let der = read_cert(cert);
        let (_, intermediate) = X509Certificate::from_der(&der).expect("intermediate");
        intermediate.verify_signature(Some(root_cert.public_key())).expect("signed by the existing root");
    }
    let section = std::fs::read_to_string(second.pki_dir.join("ca.toml")).expect("ca section");
    assert!(section.contains("cert = \"/etc/quarry/pki/e1.pem\""), "{section}");

    let mut mismatched = ceremony_file();
    mismatched.environments.get_mut("staging").expect("staging").existing_root =
        Some(quarry_ceremony::hierarchy::ExistingRoot {
            cert: first.root_pem.clone(),
            key: Some(first.intermediates[0].2.clone()),
        });
    let err = run_ceremony(&mismatched, "staging", &dir.path().join("third"), None).expect_err("another key");
    assert!(err.to_string().contains("does not match"), "{err}");

    let again = run_ceremony(&ceremony_file(), "staging", &dir.path().join("first"), None).expect_err("overwrite");
    assert!(again.to_string().contains("never overwrites"), "{again}");
    let unknown = run_ceremony(&ceremony_file(), "qa", &dir.path().join("qa"), None).expect_err("unknown env");
    assert!(unknown.to_string().contains("no environment \"qa\""), "{unknown}");
}
