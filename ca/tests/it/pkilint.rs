//! Every certificate, precertificate and CRL the ca signs passes pkilint (the CA/Browser Forum and RFC 5280 linter
//! from PyPI, which the test command installs), for every profile and both issuer key types.

use std::path::{Path, PathBuf};

use quarry_proto::ca::crl_generator_client::CrlGeneratorClient;
use quarry_proto::ca::generate_crl_request::Payload;
use quarry_proto::ca::{CrlEntry, CrlMetadata, GenerateCrlRequest};
use rcgen::KeyPair;

use crate::Stack;
use crate::issue::{csr, request};

/// Where pkilint's commands are: `QUARRY_PKILINT` (a directory), else the `PATH`.
fn pkilint(command: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_PKILINT") {
        return Path::new(&dir).join(command);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(command))
        .find(|path| path.exists());
    on_path.unwrap_or_else(|| {
        panic!("{command} not found: install pkilint (scripts/test.sh does) or set QUARRY_PKILINT to its bin directory")
    })
}

/// What `classic` keeps for compatibility and the CA/Browser Forum discourages: these are what it promises, and the
/// only findings allowed, only for it.
const CLASSIC_WARNINGS: &[&str] = &[
    "cabf.serverauth.dv.common_name_attribute_present",
    "cabf.serverauth.subscriber_rsa_digitalsignature_and_keyencipherment_present",
    "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
];

/// Runs a pkilint command on `der`; returns its findings of WARNING and above as "code (SEVERITY): detail" lines.
pub(crate) fn lint(command: &str, args: &[&str], der: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("document.der");
    std::fs::write(&file, der).expect("write document");
    let output = std::process::Command::new(pkilint(command))
        .arg("lint")
        .args(args)
        .args(["-s", "WARNING", "--document-format", "DER"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {command}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // TEXT output: "Validator @ location" lines, each followed by indented findings.
    let findings: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(
        output.status.success() || !findings.is_empty(),
        "{command} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    findings
}

/// The findings of a certificate or precertificate of `profile` that its profile does not explain.
fn unexpected(profile: &str, findings: Vec<String>) -> Vec<String> {
    let allowed = |finding: &String| {
        profile == "classic" && CLASSIC_WARNINGS.iter().any(|code| finding.starts_with(&format!("{code} (WARNING)")))
    };
    findings.into_iter().filter(|f| !allowed(f)).collect()
}

#[tokio::test]
async fn every_profile_and_key_type_passes_pkilint() {
    let stack = Stack::start().await;
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa");
    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
    let mut failures = Vec::new();
    for profile in ["classic", "tlsserver", "shortlived"] {
        for (label, key) in [("rsa", &rsa), ("p256", &p256), ("p384", &p384)] {
            let names = ["lint.example.com", "www.lint.example.com"];
            let request = request(csr(key, &names), profile);
            let issued = stack.client("ra").issue_certificate(request).await.expect("issued").into_inner();
            let findings = lint("lint_cabf_serverauth_cert", &["-t", "DV-FINAL-CERTIFICATE"], &issued.der);
            failures.extend(unexpected(profile, findings).into_iter().map(|f| format!("{profile}/{label}: {f}")));
            // The precertificate, as the CT logs received it.
            let precertificate = stack.publisher.logs[0].precertificates().pop().expect("a precertificate");
            let findings = lint("lint_cabf_serverauth_cert", &["-t", "DV-PRE-CERTIFICATE"], &precertificate);
            failures.extend(unexpected(profile, findings).into_iter().map(|f| format!("{profile}/{label} pre: {f}")));
        }
    }

    // A CRL shard of each issuer, with entries of every reason a subscriber CRL may carry (serials ending in 03:
    // shard 3 of the ca's 128, as the ca requires).
    let issuers = [stack.pki.issuer_cert(), stack.pki.rsa_issuer_cert()];
    for issuer in issuers {
        let der = crate::read_cert(&issuer);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("issuer");
        let issuer_id = quarry_core::certificate::issuer_id(cert.subject().as_raw());
        let mut messages = vec![GenerateCrlRequest {
            payload: Some(Payload::Metadata(CrlMetadata {
                issuer_id,
                shard: 3,
                this_update: quarry_core::clock::now(),
            })),
        }];
        for (index, reason) in [0, 1, 3, 4, 5, 9].into_iter().enumerate() {
            messages.push(GenerateCrlRequest {
                payload: Some(Payload::Entry(CrlEntry {
                    serial: format!("01{index:02x}aabbccddeeff00112203"),
                    reason,
                    revoked_at: quarry_core::clock::now() - 60,
                })),
            });
        }
        let channel = stack.pki.channel("crl-updater", "ca", stack.addr);
        let mut chunks = CrlGeneratorClient::new(channel)
            .generate_crl(futures::stream::iter(messages))
            .await
            .expect("CRL signed")
            .into_inner();
        let mut crl = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            crl.extend_from_slice(&chunk.expect("chunk").chunk);
        }
        for finding in lint("lint_crl", &["-t", "CRL", "-p", "BR"], &crl) {
            failures.push(format!("CRL of {}: {finding}", issuer.display()));
        }
    }
    assert!(failures.is_empty(), "pkilint findings:\n{}", failures.join("\n"));
}
