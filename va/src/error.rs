//! The va's start-up and infrastructure errors.

/// Why the va could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
}
