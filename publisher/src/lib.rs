//! Quarry's publisher: the one service that talks to Certificate Transparency logs.
//!
//! The ca hands it a precertificate chain; it submits to every configured log at once (`log`), keeps the SCTs that
//! verify against each log's key, and answers as soon as they satisfy the SCT policy (`policy`). Which logs, and
//! what suffices, are configuration: part of an environment's PKI section, like its roots.

use std::future::Future;
use std::path::PathBuf;

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use serde::Deserialize;

mod error;
pub mod log;
pub mod policy;
mod service;

pub use error::Error;
pub use service::MOST_FINAL_CERTIFICATES;

/// The full gRPC name of the service, the key of its allowlist in `grpc.services`.
pub const SERVICE_NAME: &str = quarry_proto::publisher::publisher_server::SERVICE_NAME;

/// The publisher's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Configuration format version; must be 1.
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and the client names allowed to call `quarry.publisher.v1.Publisher` (the ca).
    pub grpc: GrpcServerConfig,
    /// This service's mTLS certificate and key, and the internal CA.
    pub tls: TlsFiles,
    /// The CT logs submitted to.
    pub logs: Vec<LogConfig>,
    /// How many SCTs a certificate needs (Chrome's and Apple's policies ask for at least two).
    #[serde(default = "default_two")]
    pub min_scts: usize,
    /// From how many distinct log operators they must come.
    #[serde(default = "default_two")]
    pub min_operators: usize,
    /// How long one submission to one log may take.
    #[serde(default = "default_submit_timeout_ms")]
    pub submit_timeout_ms: u64,
    /// Extra trust anchors (PEM) for logs served over HTTPS, besides the system's.
    #[serde(default)]
    pub log_ca: Option<PathBuf>,
}

/// One CT log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// The log's base URL; `ct/v1/add-pre-chain` and `ct/v1/add-chain` are resolved against it.
    pub url: String,
    /// Who runs the log: SCTs from logs of one operator count as one operator's.
    pub operator: String,
    /// The log's public key: a SubjectPublicKeyInfo, DER, base64 (as log lists publish it).
    pub public_key: String,
    /// Whether final certificates are also submitted to this log.
    #[serde(default = "default_true")]
    pub submit_final: bool,
}

fn default_two() -> usize {
    2
}

fn default_submit_timeout_ms() -> u64 {
    10_000
}

fn default_true() -> bool {
    true
}

/// Binds `config.grpc.listen` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener = quarry_core::grpc::bind(&config.grpc).await?;
    serve(config, listener, shutdown).await
}

/// Serves the publisher on an already bound `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    service::serve(config, listener, shutdown).await
}

/// The publisher as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "publisher";
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
