//! Tests of the dev PKI ceremony: layout, certificate contents, chains, and reuse across runs.

use std::collections::BTreeMap;

use super::*;
use quarry_testkit::verify::{cert_der, parse, verify_client, verify_server};

const SERVICES: &[&str] = &["wfe", "ra", "sa", "ca", "va", "nonce", "admin"];

/// The names of the files whose contents changed between two snapshots.
fn changed_files(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    before
        .iter()
        .filter(|(path, contents)| after.get(*path) != Some(*contents))
        .filter_map(|(path, _)| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Every file under `dir` with its contents, to tell what a run changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["webpki", "internal", "https", "ct"] {
        for entry in std::fs::read_dir(dir.join(sub)).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_file() {
                out.insert(path.clone(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

fn common_name(der: &[u8]) -> String {
    let cert = parse(der);
    cert.subject().iter_common_name().next().expect("cn").as_str().expect("cn text").to_owned()
}

#[test]
fn generates_the_whole_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), SERVICES).expect("dev pki");
    let d = dir.path();

    let mut expected: Vec<PathBuf> = [
        "webpki/root.pem",
        "webpki/root.key.pem",
        "webpki/intermediate-e1.pem",
        "webpki/intermediate-e1.key.pem",
        "internal/internal-ca.pem",
        "internal/internal-ca.key.pem",
        "webpki/intermediate-r1.pem",
        "webpki/intermediate-r1.key.pem",
        "https/ca.pem",
        "https/ca.key.pem",
        "https/wfe.pem",
        "https/wfe.key.pem",
        "ct/ct-log-a.key.pem",
        "ct/ct-log-b.key.pem",
        "internal/nonce-prefix.key",
    ]
    .iter()
    .map(|p| d.join(p))
    .collect();
    for s in SERVICES {
        expected.push(d.join(format!("internal/{s}.pem")));
        expected.push(d.join(format!("internal/{s}.key.pem")));
    }
    expected.sort();
    let written: Vec<PathBuf> = snapshot(d).into_keys().collect();
    assert_eq!(written, expected);

    assert_eq!(pki.root_pem, d.join("webpki/root.pem"));
    assert_eq!(pki.intermediate_pem, d.join("webpki/intermediate-e1.pem"));
    assert_eq!(pki.intermediate_key, d.join("webpki/intermediate-e1.key.pem"));
    assert_eq!(pki.internal_ca_pem, d.join("internal/internal-ca.pem"));
    assert_eq!(pki.https_ca_pem, d.join("https/ca.pem"));
    assert_eq!(pki.https_cert, d.join("https/wfe.pem"));
    assert_eq!(pki.https_key, d.join("https/wfe.key.pem"));
    assert_eq!(pki.service_cert("ca"), (d.join("internal/ca.pem"), d.join("internal/ca.key.pem")));
}

#[cfg(unix)]
#[test]
fn private_keys_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    ensure_dev_pki(dir.path(), &["ra"]).expect("dev pki");
    for (path, _) in snapshot(dir.path()) {
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        let is_key = path.to_string_lossy().ends_with(".key.pem") || path.to_string_lossy().ends_with(".key");
        assert_eq!(mode == 0o600, is_key, "{} has mode {mode:o}", path.display());
    }
}

#[test]
fn issuing_hierarchy_matches_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &[]).expect("dev pki");
    let root_der = cert_der(&pki.root_pem);
    let intermediate_der = cert_der(&pki.intermediate_pem);
    let root = parse(&root_der);
    let intermediate = parse(&intermediate_der);

    for (cert, cn, path_len, years) in
        [(&root, "(DEV) Quarry Root X1", 1, 10), (&intermediate, "(DEV) Quarry Intermediate E1", 0, 5)]
    {
        assert_eq!(cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()), Some(cn));
        assert_eq!(cert.subject().iter_organization().next().and_then(|a| a.as_str().ok()), Some("Quarry"));
        let bc = cert.basic_constraints().expect("bc").expect("bc present").value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(path_len));
        let ku = cert.key_usage().expect("ku").expect("ku present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let lifetime = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert!((lifetime.whole_days() - 365 * years).abs() <= 3, "{cn} lives {lifetime}");
        assert!(cert.public_key().parsed().expect("spki").key_size() == 384, "{cn} is P-384");
    }
    assert_eq!(intermediate.issuer().as_raw(), root.subject().as_raw());
    intermediate.verify_signature(Some(root.public_key())).expect("intermediate signed by root");
    root.verify_signature(None).expect("root is self-signed");

    let key = files::read_key(&pki.intermediate_key).expect("intermediate key");
    assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), intermediate.public_key().raw);
}

#[test]
fn service_certificates_chain_to_the_internal_ca_for_both_directions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), SERVICES).expect("dev pki");
    let ca_der = cert_der(&pki.internal_ca_pem);
    for service in SERVICES {
        let (cert_path, key_path) = pki.service_cert(service);
        let der = cert_der(&cert_path);
        let name = format!("{service}.quarry");
        verify_server(&ca_der, &[], &der, &name).expect("valid server certificate");
        verify_client(&ca_der, &der).expect("valid client certificate");
        assert!(verify_server(&ca_der, &[], &der, "other.quarry").is_err());
        assert_eq!(common_name(&der), name);
        let cert = parse(&der);
        assert_eq!(cert.public_key().parsed().expect("spki").key_size(), 256);
        let lifetime = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert_eq!(lifetime.whole_days(), 365);
        let key = files::read_key(&key_path).expect("service key");
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), cert.public_key().raw);
    }
    // The "ca" service and the internal CA must not share files.
    assert_ne!(cert_der(&pki.service_cert("ca").0), ca_der);
}

#[test]
fn https_certificate_covers_loopback_names_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &[]).expect("dev pki");
    let ca_der = cert_der(&pki.https_ca_pem);
    let der = cert_der(&pki.https_cert);
    assert_eq!(common_name(&ca_der), "(DEV) Quarry HTTPS CA");
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify_server(&ca_der, &[], &der, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify_server(&ca_der, &[], &der, "example.com").is_err());
    // Server-only: the wfe's HTTPS certificate is no client identity.
    let cert = parse(&der);
    let eku = cert.extended_key_usage().expect("eku").expect("eku present").value;
    assert!(eku.server_auth && !eku.client_auth);
}

#[test]
fn a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ensure_dev_pki(dir.path(), SERVICES).expect("first run");
    let before = snapshot(dir.path());
    let second = ensure_dev_pki(dir.path(), SERVICES).expect("second run");
    assert_eq!(first, second);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_new_service_gets_a_certificate_from_the_existing_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &["ra"]).expect("first run");
    let before = snapshot(dir.path());
    ensure_dev_pki(dir.path(), &["ra", "va"]).expect("second run");
    let after = snapshot(dir.path());
    for (path, contents) in &before {
        assert_eq!(after.get(path), Some(contents), "{} changed", path.display());
    }
    let va = cert_der(&pki.service_cert("va").0);
    verify_server(&cert_der(&pki.internal_ca_pem), &[], &va, "va.quarry").expect("va chains to the existing ca");
}

#[test]
fn a_lost_parent_reissues_its_children_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &["ra"]).expect("first run");
    let before = snapshot(dir.path());

    std::fs::remove_file(&pki.root_pem).expect("remove root");
    ensure_dev_pki(dir.path(), &["ra"]).expect("second run");
    let after = snapshot(dir.path());
    let changed = changed_files(&before, &after);
    let reissued = [
        "intermediate-e1.key.pem",
        "intermediate-e1.pem",
        "intermediate-r1.key.pem",
        "intermediate-r1.pem",
        "root.key.pem",
        "root.pem",
    ];
    assert_eq!(changed, reissued);
    let root = cert_der(&pki.root_pem);
    let intermediate = cert_der(&pki.intermediate_pem);
    parse(&intermediate).verify_signature(Some(parse(&root).public_key())).expect("new intermediate under new root");
}

#[test]
fn a_lost_leaf_is_reissued_under_the_same_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &["ra"]).expect("first run");
    let ca_before = std::fs::read(&pki.internal_ca_pem).expect("ca");
    std::fs::remove_file(pki.service_cert("ra").1).expect("remove key");
    ensure_dev_pki(dir.path(), &["ra"]).expect("second run");
    assert_eq!(std::fs::read(&pki.internal_ca_pem).expect("ca"), ca_before);
    let ca = cert_der(&pki.internal_ca_pem);
    verify_server(&ca, &[], &cert_der(&pki.service_cert("ra").0), "ra.quarry").expect("reissued under the same ca");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &["ra", "va"]).expect("first run");
    std::fs::copy(pki.service_cert("va").1, pki.service_cert("ra").1).expect("swap key");
    let err = ensure_dev_pki(dir.path(), &["ra", "va"]).expect_err("mismatch");
    assert!(matches!(err, Error::Certificate { .. }), "{err}");
}

#[test]
fn bad_service_names_are_refused_before_anything_is_written() {
    for name in ["", "../etc", "Ra", "-ra", "ra-", "internal-ca", "a.b", &"x".repeat(64)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ensure_dev_pki(dir.path(), &["ra", name]).expect_err(name);
        assert!(matches!(err, Error::ServiceName(_)), "{name}: {err}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0, "{name}");
    }
}

#[test]
fn a_public_host_is_added_to_the_https_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &["ra"]).expect("first run");
    let before = snapshot(dir.path());
    let hosts = ["ca.dev.example".to_owned(), "192.0.2.7".to_owned()];
    ensure_dev_pki_for_hosts(dir.path(), &["ra"], &hosts).expect("with public hosts");
    let after = snapshot(dir.path());
    let changed = changed_files(&before, &after);
    // The HTTPS CA permits exactly its server's names: both are reissued (the developer fetches the new CA), nothing
    // else is.
    assert_eq!(changed, ["ca.key.pem", "ca.pem", "wfe.key.pem", "wfe.pem"]);
    let https = cert_der(&pki.https_cert);
    let https_ca = cert_der(&pki.https_ca_pem);
    for name in ["localhost", "ca.dev.example"] {
        verify_server(&https_ca, &[], &https, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let sans = parse(&https).subject_alternative_name().expect("san").expect("present").value.general_names.len();
    assert_eq!(sans, 5, "localhost, 127.0.0.1, ::1 and both hosts");
    // The same hosts again, or fewer: nothing changes.
    ensure_dev_pki_for_hosts(dir.path(), &["ra"], &hosts[..1]).expect("again");
    assert_eq!(snapshot(dir.path()), after);
}

#[test]
fn longer_and_alternate_chains_cross_sign_the_same_issuers_and_are_reused() {
    use crate::chains::{ensure_dev_chains, single};
    use rustls_pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let pki = ensure_dev_pki(dir.path(), &["wfe"]).unwrap();
    assert_eq!(ensure_dev_chains(&pki, 1, 0).unwrap(), single(&pki));
    let chains = ensure_dev_chains(&pki, 3, 2).unwrap();
    assert_eq!(chains.len(), 3);
    let e1 = std::fs::read(&pki.intermediate_pem).unwrap();
    let e1 = &CertificateDer::pem_slice_iter(&e1).next().unwrap().unwrap();
    for chain in &chains {
        let pem = std::fs::read(&chain.issuer_chains[0]).unwrap();
        let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem).map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(certs.len(), 3, "E1 again, then two upper intermediates");
        // The same name and key as E1: a leaf of E1 is certified through it.
        assert_eq!(parse(&certs[0]).subject(), parse(e1).subject());
        assert_eq!(parse(&certs[0]).public_key().raw, parse(e1).public_key().raw);
        for pair in certs.windows(2) {
            parse(&pair[0]).verify_signature(Some(parse(&pair[1]).public_key())).expect("each signed by the next");
        }
        let root = files::read_certificate(&chain.root_pem).unwrap();
        parse(&certs[2]).verify_signature(Some(parse(&root).public_key())).expect("the last signed by the root");
    }
    assert_ne!(chains[1].root_pem, chains[2].root_pem);
    let chain_files = || -> BTreeMap<PathBuf, Vec<u8>> {
        let dirs = chains.iter().map(|chain| chain.root_pem.parent().unwrap().to_owned());
        let files = dirs.flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()));
        files.map(|path| (path.clone(), std::fs::read(&path).unwrap())).collect()
    };
    let before = chain_files();
    assert_eq!(ensure_dev_chains(&pki, 3, 2).unwrap(), chains);
    assert!(changed_files(&before, &chain_files()).is_empty(), "a second run keeps every chain");
    assert!(ensure_dev_chains(&pki, 0, 0).is_err() && ensure_dev_chains(&pki, 1, 9).is_err());
}
