//! Quarry's nonce service: mints and redeems the anti-replay nonces every ACME POST carries (RFC 8555 §6.5).
//!
//! `source` is the pure mint/redeem logic; `service` serves one source as `quarry.nonce.v1.NonceService`. Each
//! nonce starts with this instance's prefix so that the wfe can send a redeem to the instance that minted it.

use std::future::Future;

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use serde::{Deserialize, Deserializer};

mod error;
mod service;
pub mod source;

pub use error::Error;
pub use source::{NONCE_LEN, NonceSource, PREFIX_LEN, Refusal, check_prefix};

/// The default bound on remembered redeemed nonces: a few MiB at most.
pub const DEFAULT_MAX_USED: usize = 65_536;

/// The full gRPC name of the service, the key of its allowlist in `grpc.services`.
pub const SERVICE_NAME: &str = quarry_proto::nonce::nonce_service_server::SERVICE_NAME;

/// The nonce service's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Configuration format version; must be 1.
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and the client names allowed to call `quarry.nonce.v1.NonceService` (the wfe).
    pub grpc: GrpcServerConfig,
    /// This service's mTLS certificate and key, and the internal CA.
    pub tls: TlsFiles,
    /// Eight base64url characters naming this instance; every nonce it mints starts with them. Required.
    #[serde(deserialize_with = "deserialize_prefix")]
    pub prefix: String,
    /// How many redeemed nonces are remembered (at least 1); bounds memory. Beyond it the oldest are forgotten and
    /// every nonce minted before them, redeemed or not, is refused.
    #[serde(default = "default_max_used")]
    pub max_used: usize,
}

fn default_max_used() -> usize {
    DEFAULT_MAX_USED
}

/// Refuses a bad prefix when the file is read, so that the error points at the line.
fn deserialize_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    check_prefix(&prefix).map_err(|reason| serde::de::Error::custom(format!("invalid prefix: {reason}")))?;
    Ok(prefix)
}

/// Binds `config.grpc.listen` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener = quarry_core::grpc::bind(&config.grpc).await?;
    serve(config, listener, shutdown).await
}

/// Serves the nonce service on an already bound `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    service::serve(config, listener, shutdown).await
}
