//! Certificate signing per issuer and subscriber key type, in the steps the ca takes for one certificate: build and
//! lint the precertificate, sign it (and check the signature), then sign the final certificate with SCTs (and check
//! it again). `cargo bench -p quarry-ca --bench signing`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_ca::issuance::{
    CertProfile, IssueRequest, Issuer, prepare_precertificate, random_serial, sign_final_certificate,
    sign_precertificate,
};
use quarry_ceremony::ensure_dev_pki;
use quarry_core::csr::parse_csr;
use rcgen::{CertificateParams, KeyPair};

fn rsa_2048() -> KeyPair {
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa generation");
    let pkcs8 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("pkcs8");
    KeyPair::try_from(pkcs8.as_ref()).expect("rcgen takes the key")
}

fn request(key: &KeyPair) -> IssueRequest {
    let names = vec!["www.example.com".to_owned(), "example.com".to_owned()];
    let der = CertificateParams::new(names).expect("params").serialize_request(key).expect("csr").der().to_vec();
    let csr = parse_csr(&der).expect("csr parses");
    IssueRequest {
        dns_names: csr.dns_names.clone(),
        ip_addresses: csr.ip_addresses.clone(),
        csr,
        serial: random_serial(0x42).expect("serial").to_vec(),
        not_before: time::OffsetDateTime::now_utc(),
        profile: CertProfile::CLASSIC,
        crl_url: "http://c.quarry.example/e1/7.crl".into(),
        issuer_url: "http://i.quarry.example/e1.der".into(),
    }
}

fn signing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ensure_dev_pki(dir.path(), &[]).expect("dev pki");
    // The dev hierarchy's issuers: E1 (ECDSA P-384) for ECDSA keys, R1 (RSA) for RSA keys, as in production.
    let e1 = Issuer::from_pem_files(&pki.intermediate_pem, &pki.intermediate_key).expect("E1");
    let r1 = Issuer::from_pem_files(&pki.rsa_intermediate_pem, &pki.rsa_intermediate_key).expect("R1");
    // Two SCTs' worth of bytes: the final certificate's size is what matters here, not their validity.
    let scts = vec![vec![0_u8; 119], vec![1_u8; 119]];
    let cases = [
        ("e1_p256", &e1, KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256")),
        ("e1_p384", &e1, KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384")),
        ("r1_rsa2048", &r1, rsa_2048()),
    ];
    let mut group = c.benchmark_group("issue_precertificate_and_certificate");
    group.sample_size(30);
    for (label, issuer, key) in &cases {
        let req = request(key);
        group.bench_function(*label, |b| {
            b.iter(|| {
                let prepared = prepare_precertificate(issuer, &req).expect("lints clean");
                let precertificate = sign_precertificate(issuer, &prepared).expect("signs");
                sign_final_certificate(issuer, &precertificate, &scts).expect("signs the final certificate")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
