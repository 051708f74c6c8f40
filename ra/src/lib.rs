//! The registration authority: the orchestrator. It applies policy to accounts and orders, reuses orders and
//! valid authorizations, dispatches validation to the va in the background, and drives finalization through the
//! ca; everything it decides is stored through the sa.
//!
//! `registrar` holds the state every use case shares and `service` serves it as the
//! `quarry.ra.v1.RegistrationAuthority` gRPC service, handing each call to its use case: `accounts`, `orders`,
//! `authorizations` (validation included, with `validations`, those under way here), `finalization` and
//! `revocation`. `recovery` takes over work a crashed
//! replica left mid-way, and `badkeys` revokes the certificates of blocked keys.

mod accounts;
mod authorizations;
mod badkeys;
mod error;
mod finalization;
pub mod keypolicy;
pub mod limits;
mod orders;
mod recovery;
mod registrar;
mod revocation;
mod service;
mod validations;

use std::collections::BTreeMap;
use std::future::Future;

use quarry_core::IdentifierType;
use quarry_core::config::{ConfigVersion, GrpcClientConfig, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_core::model::ChallengeType;
use quarry_proto::ra::registration_authority_server::RegistrationAuthorityServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::server::NamedService;

pub use badkeys::{BAD_KEY_PERIOD, BadKeyReport};
pub use error::Error;
pub use recovery::{SWEEP_PERIOD, SweepReport};
pub use registrar::Registrar;

/// The ra's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and client allowlist.
    pub grpc: GrpcServerConfig,
    /// This service's mutual-TLS identity and the internal CA.
    pub tls: TlsFiles,
    /// Which replica of its service this is, so that its calls keep to its lane (`quarry_core::lane`); without it
    /// they go round robin.
    #[serde(default)]
    pub lane: Option<quarry_core::config::LaneConfig>,
    /// The sa (both its services).
    pub sa: GrpcClientConfig,
    pub va: GrpcClientConfig,
    pub ca: GrpcClientConfig,
    /// The validation profiles clients may ask for by name (draft-aaron-acme-profiles): every one the wfe advertises
    /// is here, and the ca has a certificate profile of each name (`quarry_core::profile`).
    #[serde(default = "default_profiles")]
    pub profiles: BTreeMap<String, ValidationProfile>,
    /// The profile of orders that name none.
    #[serde(default = "default_profile")]
    pub default_profile: String,
    /// Accept IP identifiers that are not public unicast addresses (loopback, private, link-local…): only for a
    /// developer's machine, where every challenge responder is on loopback.
    #[serde(default)]
    pub allow_non_public_ip_identifiers: bool,
    /// The challenge types offered for non-wildcard names, in order.
    #[serde(default = "default_challenge_types")]
    pub challenge_types: Vec<String>,
    /// The most a background validation may take.
    #[serde(default = "default_timeout_ms")]
    pub validation_timeout_ms: u64,
    /// The most issuance may take (in the background when `async_finalize`, else when the caller sets no deadline).
    #[serde(default = "default_timeout_ms")]
    pub finalize_timeout_ms: u64,
    /// The URL of an account is this prefix followed by its id (the wfe's `{base_url}/acme/acct/`): CAA
    /// `accounturi` parameters (RFC 8657) are compared with it.
    pub account_uri_prefix: String,
    /// At finalize, CAA is checked again for every authorization validated longer ago than this (the Baseline
    /// Requirements allow 8 hours; Boulder uses 7).
    #[serde(default = "default_caa_recheck_after_secs")]
    pub caa_recheck_after_secs: i64,
    /// Names refused whatever the validation (the same in every environment).
    #[serde(default)]
    pub blocklists: quarry_core::policy::Blocklists,
    /// The rate limits: the environment's limits file and the store.
    pub rate_limits: limits::RateLimitsConfig,
    /// Answer finalize with the `processing` order at once and issue in the background (RFC 8555 §7.4: the client
    /// polls the order, told when by `Retry-After`), instead of answering once the certificate exists.
    #[serde(default)]
    pub async_finalize: bool,
    /// Provocations for client test suites (quarry dev only: refused in any other environment).
    #[serde(default)]
    pub client_testing: ClientTesting,
}

/// `[client_testing]` of the ra. Every key absent is production behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTesting {
    /// The percentage of an account's valid authorizations reused by a new order, drawn per identifier (Pebble's
    /// `PEBBLE_AUTHZREUSE`); absent, every reusable one is (production).
    #[serde(default, deserialize_with = "optional_percent")]
    pub authz_reuse_percent: Option<u8>,
    /// Keep every finalized order `processing` this long before issuing (finalize answers at once, as with
    /// `async_finalize`), so that a client must poll the order.
    #[serde(default)]
    pub finalize_delay_secs: u64,
}

fn optional_percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    quarry_core::testing::percent(deserializer).map(Some)
}

/// What a profile decides in the ra: lifetimes, how many and which identifiers an order may hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationProfile {
    /// How long a new authorization may stay pending (at most 29 days, as Boulder allows).
    pub pending_authorization_lifetime_secs: i64,
    /// How long a validated authorization stays valid and reusable (at most 89 days).
    pub valid_authorization_lifetime_secs: i64,
    /// How long an order lives at most.
    pub order_lifetime_secs: i64,
    /// The most identifiers one order may hold (at most 100).
    pub max_names: usize,
    /// The identifier types an order may hold.
    #[serde(default = "default_identifier_types")]
    pub identifier_types: Vec<IdentifierType>,
}

const DAY: i64 = 86_400;
const MAX_PENDING_LIFETIME: i64 = 29 * DAY;
const MAX_VALID_LIFETIME: i64 = 89 * DAY;
const MAX_NAMES: usize = 100;

impl ValidationProfile {
    /// Let's Encrypt's `classic` profile: week-long orders, 30-day authorization reuse, 100 DNS names.
    pub fn classic() -> Self {
        Self {
            pending_authorization_lifetime_secs: 7 * DAY,
            valid_authorization_lifetime_secs: 30 * DAY,
            order_lifetime_secs: 7 * DAY,
            max_names: MAX_NAMES,
            identifier_types: default_identifier_types(),
        }
    }

    fn check(&self, name: &str) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::Invalid(format!("profile {name:?}: {why}")));
        let lifetimes = [
            ("pending_authorization_lifetime_secs", self.pending_authorization_lifetime_secs, MAX_PENDING_LIFETIME),
            ("valid_authorization_lifetime_secs", self.valid_authorization_lifetime_secs, MAX_VALID_LIFETIME),
            ("order_lifetime_secs", self.order_lifetime_secs, MAX_VALID_LIFETIME),
        ];
        for (field, value, max) in lifetimes {
            if !(1..=max).contains(&value) {
                return invalid(format!("{field} must be between 1 and {max}, not {value}"));
            }
        }
        if !(1..=MAX_NAMES).contains(&self.max_names) {
            return invalid(format!("max_names must be between 1 and {MAX_NAMES}, not {}", self.max_names));
        }
        if self.identifier_types.is_empty() {
            return invalid("identifier_types must not be empty".to_owned());
        }
        Ok(())
    }
}

fn default_identifier_types() -> Vec<IdentifierType> {
    vec![IdentifierType::Dns]
}
fn default_profiles() -> BTreeMap<String, ValidationProfile> {
    BTreeMap::from([(quarry_core::profile::DEFAULT_PROFILE.to_owned(), ValidationProfile::classic())])
}
fn default_profile() -> String {
    quarry_core::profile::DEFAULT_PROFILE.to_owned()
}
fn default_challenge_types() -> Vec<String> {
    vec!["http-01".to_owned(), "dns-01".to_owned()]
}
fn default_caa_recheck_after_secs() -> i64 {
    7 * 3_600
}
fn default_timeout_ms() -> u64 {
    60_000
}

impl Config {
    /// Checks what serde cannot: the profiles (their names by the rule the wfe and the ca share) and the default
    /// profile.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(lane) = &self.lane {
            lane.validate()?;
        }
        if self.profiles.is_empty() {
            return Err(Error::Invalid("profiles must not be empty".to_owned()));
        }
        for (name, profile) in &self.profiles {
            quarry_core::profile::check_name(name).map_err(|why| Error::Invalid(format!("profiles: {why}")))?;
            profile.check(name)?;
        }
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(Error::Invalid(format!("default_profile {:?} is not in profiles", self.default_profile)));
        }
        self.challenge_types().map(|_| ())
    }

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

impl Registrar {
    /// The ra's state from its configuration, checked, with its rate-limit store opened.
    pub async fn open(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let challenge_types = config.challenge_types()?;
        let rate_limits = limits::RateLimits::open(&config.rate_limits).await?;
        Registrar::new(config, challenge_types, rate_limits)
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
    let registrar = Registrar::open(&config).await?;
    registrar.refresh_overrides(std::time::Duration::from_secs(config.rate_limits.overrides_refresh_secs.max(1)));
    let name = <RegistrationAuthorityServer<Registrar> as NamedService>::NAME;
    let service = RegistrationAuthorityServer::with_interceptor(
        registrar.clone(),
        ClientAllowlist::for_service(&config.grpc, name)?,
    );
    tracing::info!(addr = ?listener.local_addr().ok(), "ra listening");
    // On shutdown the server stops accepting, calls in flight get the grace period to finish, and so do the
    // validations and finalizations running in the background, which are recorded as failed past it.
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    // Alive before any work is taken: a heartbeat lapsing later tells the other replicas to take this one's over.
    if let Err(problem) = registrar.heartbeat().await {
        tracing::warn!(%problem, "first heartbeat not recorded");
    }
    registrar.keep_beating(stop.clone());
    registrar.keep_sweeping(SWEEP_PERIOD, stop.clone());
    registrar.keep_revoking_bad_keys(BAD_KEY_PERIOD, stop.clone());
    let drained = {
        let (stop, registrar) = (stop.clone(), registrar.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            registrar.drain_background(SHUTDOWN_GRACE).await;
            registrar.farewell().await;
        })
    };
    let routes = tonic::service::Routes::new(service);
    let names = [name];
    let server = quarry_core::grpc::serve(listener, &config.tls, routes, &names, stop.clone().cancelled_owned());
    let served = tokio::select! {
        served = server => served,
        // An idle peer connection must not hold the ra up past the grace period.
        () = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    };
    served?;
    let _ = drained.await;
    Ok(())
}

/// How long, once told to stop, the ra lets calls in flight and background validations and finalizations finish.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// The ra as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "ra";
    /// The ra bounds its own drain (background validations and finalizations included); this is a backstop.
    const DRAIN_GRACE: std::time::Duration =
        SHUTDOWN_GRACE.saturating_add(quarry_core::service::DRAIN_GRACE.saturating_mul(2));
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

    fn config() -> Config {
        let peer = |name: &str, port: u16| {
            format!("[{name}]\naddress = \"https://127.0.0.1:{port}\"\nserver_name = \"{name}.quarry\"\n")
        };
        let text = format!(
            "version = 1\naccount_uri_prefix = \"https://acme.test/acme/acct/\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n{}{}{}[rate_limits]\nlimits_file = \"l.toml\"\n",
            peer("sa", 1),
            peer("va", 2),
            peer("ca", 3)
        );
        quarry_core::config::parse(&text, "test").expect("parses")
    }

    #[test]
    fn profile_names_and_the_default_follow_the_shared_rule() {
        let config = config();
        assert_eq!(config.default_profile, quarry_core::profile::DEFAULT_PROFILE);
        config.validate().expect("the defaults are valid");

        let mut bad_name = config.clone();
        bad_name.profiles.insert("dotted.name".into(), ValidationProfile::classic());
        let err = bad_name.validate().expect_err("refused").to_string();
        assert!(err.contains("profiles: profile name \"dotted.name\""), "{err}");

        let mut unknown_default = config;
        unknown_default.default_profile = "premium".into();
        let err = unknown_default.validate().expect_err("refused").to_string();
        assert!(err.contains("default_profile \"premium\" is not in profiles"), "{err}");
    }
}
