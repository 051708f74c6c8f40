//! The nonce crate's error type: start-up failures and the rare failure to mint.

/// Everything that can go wrong in the nonce service outside an RPC's client-facing answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value that parses but cannot be used; `key` names it.
    #[error("invalid {key}: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    #[error("every nonce counter value has been used; restart the service")]
    CounterExhausted,
    #[error(transparent)]
    Config(#[from] quarry_core::config::ConfigError),
    #[error(transparent)]
    Grpc(#[from] quarry_core::grpc::GrpcError),
}
