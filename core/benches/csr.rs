//! CSR parsing and its checks (self-signature, key, names), as the ra does it at every finalize, per key type.
//! `cargo bench -p quarry-core --bench csr`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_core::csr::parse_csr;
use rcgen::{CertificateParams, KeyPair};

fn rsa_2048() -> KeyPair {
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa generation");
    let pkcs8 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("pkcs8");
    KeyPair::try_from(pkcs8.as_ref()).expect("rcgen takes the key")
}

fn csr_parsing(c: &mut Criterion) {
    let names: Vec<String> = (0..3).map(|i| format!("host{i}.example.com")).collect();
    let keys = [
        ("p256", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256")),
        ("p384", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384")),
        ("rsa2048", rsa_2048()),
    ];
    let mut group = c.benchmark_group("csr_parse_and_check");
    for (label, key) in &keys {
        let der = CertificateParams::new(names.clone()).expect("params").serialize_request(key).expect("csr");
        let der = der.der().to_vec();
        group.bench_function(*label, |b| {
            b.iter(|| {
                let csr = parse_csr(std::hint::black_box(&der)).expect("parses");
                assert_eq!(csr.dns_names.len(), 3);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, csr_parsing);
criterion_main!(benches);
