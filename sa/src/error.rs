//! The sa's start-up and infrastructure errors.

/// Why the sa could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
    #[error("cannot open the database: {0}")]
    Database(#[from] sqlx::Error),
}
