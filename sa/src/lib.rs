//! The storage authority: the only database client. It serves a read-only gRPC service (for the wfe) and a
//! read-write one (for the ra and the ca), over SQLite or PostgreSQL.

mod controls;
mod error;
mod history;
pub mod queries;
mod recovery;
mod server;
pub mod status;
pub mod store;

pub use recovery::{StuckItem, StuckSince};

use std::future::Future;

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_proto::sa::storage_authority_read_only_server::StorageAuthorityReadOnlyServer;
use quarry_proto::sa::storage_authority_server::StorageAuthorityServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::server::NamedService;

pub use controls::{RateLimitOverride, RenewalInfoOverride};
pub use error::Error;
pub use history::{Precertificate, RevokedCertificate, ShardLease, StoredCrl};
pub use server::Storage;
pub use store::Store;

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
    /// Connections in the pool (SQLite uses at most two: it has one writer).
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
    pub fn validate(&self) -> Result<(), Error> {
        quarry_core::crl::check_shard_count(self.crl_shards)
            .map_err(|why| quarry_core::config::ConfigError::Invalid(format!("crl_shards {why}")).into())
    }
}

fn pool_settings(config: &Config) -> store::PoolSettings {
    store::PoolSettings {
        max_connections: config.max_connections,
        statement_timeout: std::time::Duration::from_millis(config.statement_timeout_ms),
    }
}

/// Brings the database's schema up to date and returns: a deployment's migration step (the Helm chart's Job), so
/// that a new release's schema is in place before its first sa starts. The sa also migrates at start-up.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    Store::open(&config.database_url, pool_settings(config)).await?;
    Ok(())
}

/// Binds the configured address and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener = quarry_core::grpc::bind(&config.grpc).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 themselves).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let settings = pool_settings(&config);
    let store = Store::open(&config.database_url, settings).await?.with_crl_shards(config.crl_shards);
    let gauges = store.clone();
    let database = store.clone();
    let pool_gauges = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            ticks.tick().await;
            gauges.record_pool_gauges();
        }
    });
    if config.client_testing != ClientTesting::default() {
        tracing::warn!(knobs = ?config.client_testing, "client-testing knobs are on: this sa takes test-only writes");
    }
    let storage = match &config.read_replica_url {
        Some(url) => Storage::with_replica(store, Store::open_replica(url, settings).await?),
        None => Storage::new(store),
    }
    .with_client_testing(config.client_testing.clone());
    let read_only = <StorageAuthorityReadOnlyServer<Storage> as NamedService>::NAME;
    let read_write = <StorageAuthorityServer<Storage> as NamedService>::NAME;
    let routes = tonic::service::Routes::new(StorageAuthorityReadOnlyServer::with_interceptor(
        storage.clone(),
        ClientAllowlist::for_service(&config.grpc, read_only)?,
    ))
    .add_service(StorageAuthorityServer::with_interceptor(
        storage,
        ClientAllowlist::for_service(&config.grpc, read_write)?,
    ));
    tracing::info!(addr = ?listener.local_addr().ok(), "sa listening");
    // Ready while the database answers.
    let ready = move || {
        let database = database.clone();
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(3), database.ping()).await.is_ok_and(|r| r.is_ok())
        }
    };
    let names = [read_only, read_write];
    let served = quarry_core::grpc::serve_checked(listener, &config.tls, routes, &names, Some(ready), shutdown).await;
    pool_gauges.abort();
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "version = 1\ndatabase_url = \"sqlite::memory:\"\n{extra}\n[grpc]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n"
        );
        quarry_core::config::parse(&text, "test").expect("parses")
    }

    #[test]
    fn the_crl_shard_count_is_checked_by_the_shared_rule() {
        assert_eq!(config("").crl_shards, quarry_core::crl::DEFAULT_SHARDS);
        config("").validate().expect("the default is valid");
        for bad in [0, -4, quarry_core::crl::MAX_SHARDS + 1] {
            let err = config(&format!("crl_shards = {bad}")).validate().expect_err("refused").to_string();
            assert!(
                err.contains(&format!("crl_shards must be between 1 and {}", quarry_core::crl::MAX_SHARDS)),
                "{err}"
            );
        }
    }
}
