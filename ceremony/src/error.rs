//! The ceremony crate's error type: what stops a hierarchy or the dev PKI from being made.

use std::path::PathBuf;

/// Why a ceremony did not complete; nothing it wrote before is overwritten by a retry (see each function).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, parsing or writing a key or certificate file, or a PKCS#11 token's failure.
    #[error(transparent)]
    Ca(#[from] quarry_ca::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {}: {detail}", path.display())]
    Certificate { path: PathBuf, detail: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
    /// A ceremony asked for something it must not do (overwrite a file, an impossible validity).
    #[error("invalid ceremony request: {0}")]
    Request(String),
    /// A certificate just made does not verify under its issuer.
    #[error("ceremony certificate failed its self-check: {0}")]
    SelfCheck(String),
    #[error("dev chains: {0}")]
    Chains(String),
    #[error("invalid service name {0:?}: expected a lowercase dns label other than \"internal-ca\"")]
    ServiceName(String),
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
}
