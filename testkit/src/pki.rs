//! A throwaway PKI for tests: an internal CA with a certificate per service, and an issuing hierarchy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quarry_ca::ceremony::{DevPki, ensure_dev_pki};
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
        TlsFiles { cert, key, ca: self.dev.internal_ca_pem.clone() }
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
}
