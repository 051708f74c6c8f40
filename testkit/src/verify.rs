//! Certificates checked as a peer would: PEM files read back, chains validated with webpki as a TLS client or
//! server does.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub fn cert_der(path: &Path) -> Vec<u8> {
    quarry_ca::files::read_certificate(path).expect("certificate file")
}

pub fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty());
    cert
}

fn roots(root_der: &[u8]) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).expect("trust anchor");
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Validates `leaf` (via `intermediates`) up to `root_der` as a TLS server certificate for `name`, with webpki.
pub fn verify_server(root_der: &[u8], intermediates: &[&[u8]], leaf: &[u8], name: &str) -> Result<(), String> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(root_der), provider())
        .build()
        .expect("server verifier");
    let intermediates: Vec<CertificateDer<'_>> = intermediates.iter().map(|d| CertificateDer::from(*d)).collect();
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    verifier
        .verify_server_cert(&CertificateDer::from(leaf), &intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Validates `leaf` up to `root_der` as a TLS client certificate, with webpki.
pub fn verify_client(root_der: &[u8], leaf: &[u8]) -> Result<(), String> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(root_der), provider())
        .build()
        .expect("client verifier");
    verifier
        .verify_client_cert(&CertificateDer::from(leaf), &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
