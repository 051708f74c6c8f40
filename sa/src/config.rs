//! The sa's configuration file: the service's listener and identity, its database, and the client-testing knobs.

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use serde::Deserialize;

/// The sa's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and per-service client allowlists.
    pub grpc: GrpcServerConfig,
    /// This service's mutual-TLS identity and the internal CA.
    pub tls: TlsFiles,
    /// `sqlite:///path/to/quarry.db?mode=rwc` (the file and its directory are created when missing) or
    /// `postgres://user@host:port/database` (the database must exist; the schema is migrated at start-up).
    pub database_url: String,
    /// Connections in the pool (SQLite uses one for writes and at most two for reads, whatever this says).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A read replica of the same database for the read-only service; rows it lacks are read from the primary.
    #[serde(default)]
    pub read_replica_url: Option<String>,
    /// CRL shards per issuer (`quarry_core::crl`): must equal the ca's `crl_shards` and the crl-updater's `shards`.
    #[serde(default = "default_crl_shards")]
    pub crl_shards: i64,
    /// The longest one statement may run (and one connection may be waited for), in milliseconds.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Provocations for client test suites (quarry dev only: refused in any other environment).
    #[serde(default)]
    pub client_testing: ClientTesting,
}

/// `[client_testing]` of the sa. Every key off is production behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTesting {
    /// Take renewal-information answers for certificates (`SetRenewalInfoOverride`, Pebble's `set-renewal-info`,
    /// which `quarry dev`'s management API forwards); off, the write is refused. Kept in the database, so that every
    /// wfe replica serves the same answer.
    #[serde(default)]
    pub renewal_info_overrides: bool,
}

fn default_crl_shards() -> i64 {
    quarry_core::crl::DEFAULT_SHARDS
}
fn default_statement_timeout_ms() -> u64 {
    5_000
}

fn default_max_connections() -> u32 {
    8
}

impl Config {
    /// Checks what serde cannot: the CRL shard count (the ca and the crl-updater check theirs by the same rule).
    pub fn validate(&self) -> Result<(), crate::Error> {
        quarry_core::crl::check_shard_count(self.crl_shards)
            .map_err(|why| quarry_core::config::ConfigError::Invalid(format!("crl_shards {why}")).into())
    }
}
