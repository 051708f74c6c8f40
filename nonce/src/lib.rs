//! Quarry's nonce service: mints and redeems the anti-replay nonces every ACME POST carries (RFC 8555 §6.5).
//!
//! `source` is the pure mint/redeem logic; `service` serves one source as `quarry.nonce.v1.NonceService`. Each
//! nonce starts with this replica's prefix, derived from the address the wfe reaches it at with a key every replica
//! and every wfe share ([`quarry_proto::client::nonce_prefix`]), so that a wfe sends each redeem to the replica that
//! minted the nonce and two replicas never share a prefix.

use std::future::Future;

use std::net::SocketAddr;

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use serde::Deserialize;

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
    /// The secret this replica's prefix is derived from, with its address (the same in every nonce replica and
    /// every wfe; at least 16 bytes): a mounted secret.
    pub prefix_key: String,
    /// The address the wfe reaches this replica at (its pod's address and port, e.g. `"${pod_ip}:9301"`; an IPv6
    /// address may go without brackets), from which its prefix is derived; default: the listen address, or the host
    /// name's address when it listens on every address.
    #[serde(default, deserialize_with = "deserialize_advertise")]
    pub advertise: Option<SocketAddr>,
    /// How many redeemed nonces are remembered (at least 1); bounds memory. Beyond it the oldest are forgotten and
    /// every nonce minted before them, redeemed or not, is refused.
    #[serde(default = "default_max_used")]
    pub max_used: usize,
}

fn default_max_used() -> usize {
    DEFAULT_MAX_USED
}

/// `IP:PORT`, with or without brackets around an IPv6 address (a pod's address is filled in without them).
fn deserialize_advertise<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else { return Ok(None) };
    let parsed = quarry_core::config::parse_ip_port(&text);
    parsed.map(Some).ok_or_else(|| serde::de::Error::custom(format!("advertise {text:?} is not IP:PORT")))
}

/// The shortest prefix key: shorter could be guessed, and prefixes forged.
pub const MIN_PREFIX_KEY_LEN: usize = 16;

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

/// The nonce as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "nonce";
    type Config = Config;
    type Error = Error;

    fn telemetry(config: &Config) -> &quarry_core::telemetry::TelemetryConfig {
        &config.telemetry
    }

    fn run(
        config: Config,
        shutdown: tokio_util::sync::WaitForCancellationFutureOwned,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        run(config, shutdown)
    }
}
