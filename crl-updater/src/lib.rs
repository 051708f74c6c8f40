//! Quarry's crl-updater: keeps every CRL shard of every issuer fresh. Each pass leases shards from the sa (so that
//! several updaters never sign the same shard at once), reads the shard's revoked certificates, has the ca sign the
//! CRL over a stream, checks it, and stores it in the sa, from where the wfe serves it at the URL the certificates
//! name.

use std::future::Future;
use std::path::PathBuf;

use quarry_core::config::{ConfigVersion, GrpcClientConfig, TlsFiles};
use serde::Deserialize;

mod error;
pub mod updater;

pub use error::Error;

/// The crl-updater's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Configuration format version; must be 1.
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// This service's mTLS certificate and key, and the internal CA.
    pub tls: TlsFiles,
    /// The sa (its read-only and read-write services share one address).
    pub sa: GrpcClientConfig,
    /// The ca's CRL generator.
    pub ca: GrpcClientConfig,
    /// The issuers whose shards are kept; each certificate, PEM.
    pub issuers: Vec<PathBuf>,
    /// Shards per issuer (`quarry_core::crl`): must equal the sa's and the ca's `crl_shards`. The sa refuses a lease
    /// at another count and the ca a CRL entry of another shard, naming both counts: no CRL is stored, the updates
    /// count as failed (so that the CRL alerts fire), and later passes try again.
    #[serde(default = "default_shards")]
    pub shards: i64,
    /// How often shards are looked at, in seconds: a revocation appears in its shard's CRL within one period.
    pub update_period_secs: u64,
    /// A shard without new revocations is signed anew once its CRL is this old, in seconds (0: every period). Keep
    /// it well under the CRLs' validity (the ca's, nine days by default).
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// How long a leased shard stays reserved for this updater, in seconds; a crashed updater's leases lapse.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_shards() -> i64 {
    quarry_core::crl::DEFAULT_SHARDS
}

fn default_lease_secs() -> u64 {
    600
}

fn default_max_age_secs() -> u64 {
    6 * 3_600
}

/// Runs update passes until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let updater = updater::Updater::new(&config)?;
    updater.run(shutdown).await;
    Ok(())
}

/// The crl-updater as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "crl-updater";
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
