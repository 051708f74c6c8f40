//! The crl-updater crate's error type: start-up failures.

/// Everything that stops the crl-updater from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("issuer certificate {}: {detail}", path.display())]
    Issuer { path: std::path::PathBuf, detail: String },
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
}
