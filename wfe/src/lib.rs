//! The web front end: the only component that speaks HTTP to ACME clients. It verifies every JWS, redeems
//! nonces, forwards to the ra and the sa's read-only service over gRPC, and renders RFC 8555 resources and
//! problem documents.

pub mod accounts;
mod crl;
mod error;
mod expiring;
mod extract;
mod handlers;
mod hold;
pub mod issued_certificates;
mod nonce_stock;
mod payloads;
mod post;
pub mod problem;
mod render;
mod renewal;
mod reply;
pub mod shown_authorizations;
mod state;
mod testing;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use quarry_core::config::{ConfigVersion, GrpcClientConfig, TlsFiles};
use quarry_core::http_server::{self, ListenerConfig};
use serde::Deserialize;
use tokio::net::TcpListener;

pub use crl::CrlConfig;
pub use error::Error;
pub use payloads::parse_payloads;
pub use state::NONCE_BATCH;
pub use testing::ClientTesting;

/// The wfe's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// This service's mutual-TLS identity for its gRPC calls, and the internal CA.
    pub tls: TlsFiles,
    /// Which replica of its service this is, so that its calls keep to its lane (`quarry_core::lane`); without it
    /// they go round robin.
    #[serde(default)]
    pub lane: Option<quarry_core::config::LaneConfig>,
    /// The ra.
    pub ra: GrpcClientConfig,
    /// The sa (its read-only service).
    pub sa: GrpcClientConfig,
    /// The nonce service's replicas. Every nonce starts with the prefix of the replica that minted it, derived from
    /// the replica's address with `nonce_prefix_key`, and is redeemed there.
    pub nonce: GrpcClientConfig,
    /// The secret from which the nonce replicas and every wfe derive each replica's prefix (the same in all of them;
    /// at least 16 bytes): a mounted secret.
    pub nonce_prefix_key: String,
    /// Where ACME clients connect.
    pub listen: SocketAddr,
    /// That listener's bounds (timeouts, connection caps, body size) and trusted proxies (`[listener]`).
    #[serde(default)]
    pub listener: ListenerConfig,
    /// The wfe's HTTPS certificate chain (PEM); without it the wfe serves plain HTTP. It and its key are read again
    /// when they change (checked every `tls.reload_interval_ms`).
    #[serde(default)]
    pub https_cert: Option<PathBuf>,
    /// The HTTPS certificate's private key (PEM).
    #[serde(default)]
    pub https_key: Option<PathBuf>,
    /// The URL clients reach the wfe at, e.g. `https://acme.example.org`; every URL the wfe emits and every JWS
    /// `url` it accepts starts with it.
    pub base_url: String,
    /// PEM files of issuer chains: the one whose first certificate issued a leaf is served after it.
    #[serde(default)]
    pub chains: Vec<PathBuf>,
    /// The deadline of one ACME request, passed on to every gRPC call it makes.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The deadline of a finalization, which waits for signing and the CT logs: at least the ra's
    /// `finalize_timeout_ms`, and under the listener's `request_timeout_ms`.
    #[serde(default = "default_finalize_timeout_ms")]
    pub finalize_timeout_ms: u64,
    /// The longest `Retry-After` given with processing orders (and challenges, unless `authz_retry_after_secs` says
    /// otherwise). With held polls on, the value given follows what the holds measure of the work (at least one
    /// second); with them off, it is this.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u64,
    /// The longest `Retry-After` given with processing authorizations and challenges, when it is not
    /// `retry_after_secs`.
    #[serde(default)]
    pub authz_retry_after_secs: Option<u64>,
    /// How long a POST-as-GET of an order being issued, or of an authorization or challenge being validated, waits
    /// for that work to settle before answering (re-reading it from the sa); 0 answers at once. A challenge's answer
    /// waits as long at the ra, whose validation then takes its fuse in the sa only if it outlasts the wait (0: the
    /// fuse is taken first, a write more per validation). At most 5000, and under `request_timeout_ms`.
    #[serde(default = "default_hold_processing_ms")]
    pub hold_processing_ms: u64,
    /// How many order URLs one page of an account's orders list holds (RFC 8555 §7.1.2.1); 1 to 1000, the most the
    /// sa reads for one page.
    #[serde(default = "default_orders_per_page")]
    pub orders_per_page: u32,
    /// The directory's `meta` object.
    #[serde(default)]
    pub directory_meta: DirectoryMeta,
    /// External account binding (RFC 8555 §7.3.4).
    #[serde(default)]
    pub external_account_binding: ExternalAccountBindingConfig,
    /// The CRL distribution points, served over plain HTTP on their own address.
    #[serde(default)]
    pub crl: Option<CrlConfig>,
    /// How long accounts read from the sa are reused (`[account_cache]`).
    #[serde(default)]
    pub account_cache: accounts::AccountCacheConfig,
    /// How long an authorization just created, shown or validated for its client is kept for the request that
    /// follows (`[authorization_cache]`).
    #[serde(default)]
    pub authorization_cache: shown_authorizations::AuthorizationCacheConfig,
    /// How long a certificate a finalize answer issued is kept for its download (`[certificate_cache]`).
    #[serde(default)]
    pub certificate_cache: issued_certificates::CertificateCacheConfig,
    /// Provocations for client test suites (quarry dev only: refused in any other environment).
    #[serde(default)]
    pub client_testing: ClientTesting,
}

/// The MAC keys handed out for external account binding, and whether a new account must present one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccountBindingConfig {
    /// Refuse new accounts without a binding (`meta.externalAccountRequired`).
    #[serde(default)]
    pub required: bool,
    /// Key identifier → MAC key (unpadded base64url, at least 16 bytes): secrets, set by an environment's overlay.
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, String>,
    /// Let one key bind any number of accounts; by default a key binds the first account created with it, and a
    /// second new-account with it is `unauthorized` (a leaked key cannot mint accounts for whoever holds it).
    #[serde(default)]
    pub reuse: bool,
}

/// The directory's `meta` (RFC 8555 §7.1.1, and profiles from draft-aaron-acme-profiles).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryMeta {
    #[serde(default)]
    pub terms_of_service: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub caa_identities: Vec<String>,
    /// Profile name → description. Every name advertised is one of the ra's profiles (`quarry_core::profile`).
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, String>,
}

impl Config {
    /// Checks the values whose rules the wfe shares with other services: the names of the profiles it advertises.
    /// Everything else is checked as the state is built.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(lane) = &self.lane {
            lane.validate().map_err(|err| Error::Config(err.to_string()))?;
        }
        for name in self.directory_meta.profiles.keys() {
            quarry_core::profile::check_name(name)
                .map_err(|why| Error::Config(format!("directory_meta.profiles: {why}")))?;
        }
        Ok(())
    }
}

fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_finalize_timeout_ms() -> u64 {
    60_000
}
fn default_retry_after() -> u64 {
    3
}
fn default_hold_processing_ms() -> u64 {
    1_500
}
fn default_orders_per_page() -> u32 {
    100
}

/// Binds the configured address and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 themselves).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let state = state::Wfe::new(&config)?;
    if let Some(crl) = &config.crl {
        let crl_router = crl::router(crl, state.sa().clone())?;
        let crl_listener =
            TcpListener::bind(crl.listen).await.map_err(|source| Error::Bind { addr: crl.listen, source })?;
        tracing::info!(addr = ?crl_listener.local_addr().ok(), "CRLs served");
        // It stops with the process; a CRL download needs no draining.
        tokio::spawn(http_server::serve(
            "crl",
            crl_listener,
            None,
            crl_router,
            config.listener.clone(),
            std::future::pending(),
        ));
    }
    let router = handlers::router(state);
    tracing::info!(addr = ?listener.local_addr().ok(), base_url = %config.base_url, "wfe listening");
    let tls = match (&config.https_cert, &config.https_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key, config.tls.reload_interval())?),
        (None, None) => None,
        _ => return Err(Error::Config("https_cert and https_key must be set together".into())),
    };
    http_server::serve("acme", listener, tls, router, config.listener, shutdown).await;
    Ok(())
}

/// The HTTPS listener's TLS: the certificate in the files when each handshake begins (a renewal is picked up within
/// `reload_interval`, without a restart).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    reload_interval: std::time::Duration,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certificate = quarry_core::tls::ReloadingCertificate::open(cert, key, reload_interval)
        .map_err(|e| Error::Config(format!("HTTPS certificate and key: {e}")))?;
    let mut server = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(certificate));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The wfe as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "wfe";
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

    /// A configuration with `extra` top-level keys.
    fn config_with(extra: &str) -> Config {
        let peer =
            |name: &str| format!("[{name}]\naddress = \"https://127.0.0.1:1\"\nserver_name = \"{name}.quarry\"\n");
        let text = format!(
            "version = 1\nnonce_prefix_key = \"a test stack's prefix key\"\nlisten = \"127.0.0.1:0\"\n\
             base_url = \"https://acme.test\"\n{extra}\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n\
             {}{}{}[directory_meta.profiles]\nclassic = \"90 days\"\n",
            peer("ra"),
            peer("sa"),
            peer("nonce")
        );
        quarry_core::config::parse(&text, "test").expect("parses")
    }

    #[test]
    fn a_poll_is_held_a_few_seconds_at_most() {
        assert_eq!(config_with("").hold_processing_ms, 1_500);
        let refusal = |extra: &str| state::Wfe::new(&config_with(extra)).err().map(|err| err.to_string());
        let too_long = refusal("hold_processing_ms = 5001").expect("refused");
        assert!(too_long.contains("hold_processing_ms must be at most 5000"), "{too_long}");
        let past_deadline = refusal("hold_processing_ms = 2000\nrequest_timeout_ms = 2000").expect("refused");
        assert!(past_deadline.contains("under request_timeout_ms"), "{past_deadline}");
    }

    #[test]
    fn advertised_profile_names_follow_the_shared_rule() {
        let mut config = config_with("");
        config.validate().expect("valid");
        config.directory_meta.profiles.insert(String::new(), "a profile without a name".into());
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("directory_meta.profiles: profile name \"\""), "{err}");
    }
}
