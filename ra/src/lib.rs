//! The registration authority: the orchestrator. It applies policy to accounts and orders, reuses orders and
//! valid authorizations, dispatches validation to the va in the background, and drives finalization through the
//! ca; everything it decides is stored through the sa.

mod error;
pub mod keypolicy;
mod server;

use std::future::Future;

use quarry_core::config::{ConfigVersion, GrpcClientConfig, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_core::model::ChallengeType;
use quarry_proto::ra::registration_authority_server::RegistrationAuthorityServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::server::NamedService;

pub use error::Error;
pub use server::Registrar;

/// The ra's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: ConfigVersion,
    /// Listen address and client allowlist.
    pub grpc: GrpcServerConfig,
    /// This service's mutual-TLS identity and the internal CA.
    pub tls: TlsFiles,
    /// The sa (both its services).
    pub sa: GrpcClientConfig,
    pub va: GrpcClientConfig,
    pub ca: GrpcClientConfig,
    /// How long a new authorization may stay pending.
    #[serde(default = "default_pending_lifetime")]
    pub pending_authorization_lifetime_secs: i64,
    /// How long a validated authorization stays valid (and reusable).
    #[serde(default = "default_valid_lifetime")]
    pub valid_authorization_lifetime_secs: i64,
    /// How long an order lives at most.
    #[serde(default = "default_order_lifetime")]
    pub order_lifetime_secs: i64,
    /// The most identifiers one order may hold.
    #[serde(default = "default_max_names")]
    pub max_names_per_order: usize,
    /// The certificate profiles clients may ask for.
    #[serde(default = "default_profiles")]
    pub profiles: Vec<String>,
    /// The profile of orders that name none.
    #[serde(default = "default_profile")]
    pub default_profile: String,
    /// The challenge types offered for non-wildcard names, in order.
    #[serde(default = "default_challenge_types")]
    pub challenge_types: Vec<String>,
    /// The most a background validation may take.
    #[serde(default = "default_timeout_ms")]
    pub validation_timeout_ms: u64,
    /// The most issuance may take when the caller sets no deadline.
    #[serde(default = "default_timeout_ms")]
    pub finalize_timeout_ms: u64,
}

fn default_pending_lifetime() -> i64 {
    7 * 86_400
}
fn default_valid_lifetime() -> i64 {
    30 * 86_400
}
fn default_order_lifetime() -> i64 {
    7 * 86_400
}
fn default_max_names() -> usize {
    100
}
fn default_profiles() -> Vec<String> {
    vec!["classic".to_owned()]
}
fn default_profile() -> String {
    "classic".to_owned()
}
fn default_challenge_types() -> Vec<String> {
    vec!["http-01".to_owned(), "dns-01".to_owned()]
}
fn default_timeout_ms() -> u64 {
    60_000
}

impl Config {
    /// The configured challenge types, checked.
    fn challenge_types(&self) -> Result<Vec<ChallengeType>, Error> {
        self.challenge_types
            .iter()
            .map(|t| {
                ChallengeType::parse(t).ok_or_else(|| Error::Invalid(format!("challenge_types: unknown type {t:?}")))
            })
            .collect()
    }
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
    if !config.profiles.contains(&config.default_profile) {
        return Err(Error::Invalid(format!("default_profile {:?} is not in profiles", config.default_profile)));
    }
    let challenge_types = config.challenge_types()?;
    let registrar = Registrar::new(&config, challenge_types)?;
    let name = <RegistrationAuthorityServer<Registrar> as NamedService>::NAME;
    let service =
        RegistrationAuthorityServer::with_interceptor(registrar, ClientAllowlist::for_service(&config.grpc, name)?);
    tracing::info!(addr = ?listener.local_addr().ok(), "ra listening");
    quarry_core::grpc::serve(listener, &config.tls, tonic::service::Routes::new(service), &[name], shutdown).await?;
    Ok(())
}
