//! The publisher crate's error type: start-up failures.

/// Everything that can go wrong in the publisher outside an RPC's answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A log's settings that parse but cannot be used; `log` names it.
    #[error("log {log:?}: {reason}")]
    Log { log: String, reason: String },
    /// The SCT policy cannot be met by the configured logs.
    #[error("SCT policy: {0}")]
    Policy(String),
    /// The logs' extra trust anchors (`log_ca`) did not load.
    #[error(transparent)]
    LogRoots(#[from] quarry_core::http_client::HttpClientError),
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
}
