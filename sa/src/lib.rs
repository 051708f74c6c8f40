//! The storage authority: the only database client. It serves a read-only gRPC service (for the wfe) and a
//! read-write one (for the ra and the ca), over SQLite or PostgreSQL.

mod config;
mod error;
pub mod queries;
mod requests;
mod server;
pub mod status;
pub mod store;

use std::future::Future;

use quarry_core::grpc::ClientAllowlist;
use quarry_proto::sa::storage_authority_read_only_server::StorageAuthorityReadOnlyServer;
use quarry_proto::sa::storage_authority_server::StorageAuthorityServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;

pub use config::{ClientTesting, Config};
pub use error::Error;
pub use server::Storage;
pub use store::Store;
pub use store::certificates::{Precertificate, StoredCertificate};
pub use store::controls::RateLimitOverride;
pub use store::crl_shards::{ShardLease, StoredCrl};
pub use store::recovery::{StuckItem, StuckSince};
pub use store::renewal_info::RenewalInfoOverride;
pub use store::revocation::RevokedCertificate;

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

/// The sa as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "sa";
    type Config = Config;
    type Error = Error;

    fn telemetry(config: &Config) -> &quarry_core::telemetry::TelemetryConfig {
        &config.telemetry
    }

    fn validate(config: &Config) -> Result<(), String> {
        config.validate().map_err(|err| err.to_string())
    }

    fn run(
        config: Config,
        shutdown: tokio_util::sync::WaitForCancellationFutureOwned,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        run(config, shutdown)
    }
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
