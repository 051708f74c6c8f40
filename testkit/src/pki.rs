//! A throwaway PKI for tests: an internal CA with a certificate per service, and an issuing hierarchy; and CAs a test
//! holds the key of, to issue renewed certificates or to stand up a new internal CA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

use quarry_ceremony::{DevPki, ensure_dev_pki};
use quarry_core::config::{GrpcClientConfig, GrpcServerConfig, ServiceAccess, TlsFiles};

/// Every name `TestPki` issues an internal certificate for; "intruder" is on no allowlist.
pub const SERVICE_NAMES: &[&str] =
    &["wfe", "ra", "sa", "ca", "va", "nonce", "publisher", "crl-updater", "admin", "intruder"];

/// Certificates and keys in a temporary directory, removed when dropped.
pub struct TestPki {
    dir: tempfile::TempDir,
    dev: DevPki,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Generates the whole PKI; panics on failure since a test cannot go on without it.
    pub fn new() -> Self {
        quarry_core::install_crypto_provider();
        let dir = tempfile::tempdir().expect("create temporary PKI directory");
        let dev = ensure_dev_pki(dir.path(), SERVICE_NAMES).expect("generate test PKI");
        Self { dir, dev }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated files, as `quarry dev` sees them.
    pub fn dev(&self) -> &DevPki {
        &self.dev
    }

    /// The mutual-TLS identity of `service` (`<service>.quarry`) and the internal CA.
    pub fn tls(&self, service: &str) -> TlsFiles {
        let (cert, key) = self.dev.service_cert(service);
        TlsFiles::new(cert, key, &self.dev.internal_ca_pem)
    }

    /// A server on 127.0.0.1:0 allowing, per gRPC service name, the listed short client names.
    pub fn server_config(&self, allow: &[(&str, &[&str])]) -> GrpcServerConfig {
        let services: BTreeMap<String, ServiceAccess> = allow
            .iter()
            .map(|(service, clients)| {
                let client_names = clients.iter().map(|c| format!("{c}.quarry")).collect();
                ((*service).to_owned(), ServiceAccess { client_names })
            })
            .collect();
        GrpcServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), services }
    }

    /// How to reach `service` listening at `addr`.
    pub fn client_config(&self, service: &str, addr: SocketAddr) -> GrpcClientConfig {
        GrpcClientConfig::at(format!("https://{addr}"), format!("{service}.quarry"))
    }

    /// A channel to `server` at `addr` presenting `client`'s certificate.
    pub fn channel(&self, client: &str, server: &str, addr: SocketAddr) -> quarry_core::grpc::Channel {
        quarry_core::grpc::channel(&self.client_config(server, addr), &self.tls(client)).expect("build test channel")
    }

    pub fn issuer_cert(&self) -> PathBuf {
        self.dev.intermediate_pem.clone()
    }

    pub fn issuer_key(&self) -> PathBuf {
        self.dev.intermediate_key.clone()
    }

    pub fn rsa_issuer_cert(&self) -> PathBuf {
        self.dev.rsa_intermediate_pem.clone()
    }

    pub fn rsa_issuer_key(&self) -> PathBuf {
        self.dev.rsa_intermediate_key.clone()
    }

    /// The ca's issuers in tests: the ECDSA and the RSA intermediate, both active for every profile.
    pub fn issuers(&self) -> Vec<quarry_ca::IssuerConfig> {
        [(self.issuer_cert(), self.issuer_key(), "e1"), (self.rsa_issuer_cert(), self.rsa_issuer_key(), "r1")]
            .into_iter()
            .map(|(cert, key, name)| quarry_ca::IssuerConfig {
                cert,
                key: Some(key),
                pkcs11: None,
                issuer_url: format!("http://i.quarry.example.com/{name}.der"),
                crl_url_prefix: format!("http://c.quarry.example.com/{name}/"),
                active: true,
                profiles: Vec::new(),
            })
            .collect()
    }

    pub fn root_cert(&self) -> PathBuf {
        self.dev.root_pem.clone()
    }

    /// The internal CA every service certificate of this PKI comes from, to issue more (a renewal).
    pub fn internal_ca(&self) -> TestCa {
        let cert_pem = std::fs::read_to_string(&self.dev.internal_ca_pem).expect("read the internal CA");
        // The dev PKI keeps each key next to its certificate: `NAME.pem`, `NAME.key.pem`.
        let key_pem =
            std::fs::read_to_string(self.dev.internal_ca_pem.with_extension("key.pem")).expect("read its key");
        let key = KeyPair::from_pem(&key_pem).expect("parse the internal CA key");
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).expect("use the internal CA");
        TestCa { issuer, cert_pem }
    }
}

/// A certificate authority whose key the test holds.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its new key, in PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate (DER), to compare with what a peer presented.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new self-signed CA, valid for a day.
    pub fn generate(common_name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = validity(CertificateParams::default());
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert_pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Self { issuer: Issuer::new(params, key), cert_pem }
    }

    /// Its certificate (PEM): what a trust bundle holds.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `names` (DNS names or IP addresses) with a new P-256 key, for servers and clients, valid
    /// for a day.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = validity(CertificateParams::new(names.clone()).expect("valid names"));
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).expect("random serial");
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer).expect("sign the certificate");
        IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A certificate for the service `service` (`<service>.quarry`), as the internal CA issues it.
    pub fn issue_service(&self, service: &str) -> IssuedCert {
        self.issue(&[&format!("{service}.quarry")])
    }

    /// A TLS client that trusts this CA only and presents no certificate (an ACME client of the wfe).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.expect("CA certificate")).expect("trust the CA");
        }
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
    }
}

/// Valid from an hour ago (clocks differ) for a day.
fn validity(mut params: CertificateParams) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    params
}
