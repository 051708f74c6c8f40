//! The wfe's start-up and infrastructure errors.

/// Why the wfe could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
}
