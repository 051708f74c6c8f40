//! The ca crate's error type: start-up, key-material and issuance failures.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Everything that can go wrong in the ca outside an RPC's client-facing answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("certificate {}: {detail}", path.display())]
    Certificate { path: PathBuf, detail: String },
    #[error("private key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
    #[error("serial prefix {0:#04x} is outside 0x01..=0x7f")]
    SerialPrefix(u8),
    #[error("invalid serial: {0}")]
    Serial(String),
    #[error("invalid issuance request: {0}")]
    Request(String),
    #[error("unsupported subject public key: {0}")]
    UnsupportedKey(String),
    #[error("certificate would expire at {not_after}, after its issuer does at {issuer_not_after}")]
    PastIssuerExpiry { not_after: OffsetDateTime, issuer_not_after: OffsetDateTime },
    #[error("issued certificate failed its self-check: {0}")]
    SelfCheck(String),
    #[error("certificate failed a lint: {0}")]
    Lint(String),
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
}
