//! Quarry's certificate authority: the only crate that reads signing keys.
//!
//! `issuance` signs end-entity certificates with a configured intermediate, `service` serves that as the
//! `quarry.ca.v1.CertificateAuthority` gRPC service (serials reserved and certificates stored through the sa). The
//! ceremony that makes its keys and certificates is its own crate, `quarry-ceremony`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use quarry_core::config::{ConfigVersion, GrpcClientConfig, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_core::lane::Lane;
use quarry_core::peer::Peer;
use quarry_proto::client::{PublisherClient, SaClient};
use serde::Deserialize;

pub mod crl;
mod crl_service;
mod error;
pub mod extensions;
pub mod files;
mod final_submissions;
pub mod issuance;
pub mod lint;
pub mod pkcs11;
mod service;
pub mod signer;

pub use error::Error;
pub use files::certificate_pem;

use crl_service::CrlService;
use service::CaService;

/// The profile a request names when it names none (`quarry_core::profile`, shared with the ra).
pub use quarry_core::profile::DEFAULT_PROFILE;

/// The ca's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Configuration format version; must be 1.
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and the client names allowed to call `quarry.ca.v1.CertificateAuthority`.
    pub grpc: GrpcServerConfig,
    /// This service's mTLS certificate and key, and the internal CA.
    pub tls: TlsFiles,
    /// Which replica of its service this is, so that its calls keep to its lane (`quarry_core::lane`); without it
    /// they go round robin.
    #[serde(default)]
    pub lane: Option<quarry_core::config::LaneConfig>,
    /// The sa's read-write service, where serials are reserved and certificates stored.
    pub sa: GrpcClientConfig,
    /// The publisher, which gets the SCTs every certificate embeds from Certificate Transparency logs.
    pub publisher: GrpcClientConfig,
    /// First byte of every serial (0x01–0x7f), so that serials of different CA instances never collide.
    #[serde(default = "default_serial_prefix")]
    pub serial_prefix: u8,
    /// Issuing certificates with their keys. A certificate is signed by an active issuer that serves its profile,
    /// of the CSR key's kind (ECDSA or RSA) when there is one, chosen at random among those.
    pub issuers: Vec<IssuerConfig>,
    /// Certificate profiles by name: every profile of the ra (and so every one the wfe advertises) has one here.
    #[serde(default = "default_profiles")]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// CRL shards per issuer (`quarry_core::crl`): must equal the sa's `crl_shards` and the crl-updater's `shards`.
    #[serde(default = "default_crl_shards")]
    pub crl_shards: i64,
    /// The profile used when a request names none; must be one of `profiles`.
    #[serde(default = "default_profile_name")]
    pub default_profile: String,
    /// How long each CRL is valid (nextUpdate − thisUpdate), in seconds; at most ten days.
    #[serde(default = "default_crl_validity_secs")]
    pub crl_validity_secs: u64,
    /// Provocations for client test suites (quarry dev only: refused in any other environment).
    #[serde(default)]
    pub client_testing: ClientTesting,
}

/// `[client_testing]` of the ca. Absent, production behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTesting {
    /// Sign every certificate with an issuer of this key type, whatever the subscriber's key (Pebble's
    /// `keyAlgorithm`, which makes all its CA keys of one type): `"ecdsa"` or `"rsa"`.
    #[serde(default)]
    pub issuer_key_type: Option<IssuerKeyType>,
}

/// The key type of an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKeyType {
    Ecdsa,
    Rsa,
}

/// One issuing intermediate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The intermediate certificate, PEM.
    pub cert: PathBuf,
    /// Its private key in a PEM file (PKCS#8, SEC1 or PKCS#1); or else `pkcs11`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Its private key on a PKCS#11 token.
    #[serde(default)]
    pub pkcs11: Option<pkcs11::Pkcs11Config>,
    /// Where this issuer's certificate can be downloaded: the Authority Information Access caIssuers URL of every
    /// certificate it signs.
    pub issuer_url: String,
    /// Every certificate's CRL distribution point is this prefix followed by its shard and `.crl`.
    pub crl_url_prefix: String,
    /// Whether it signs new certificates; an inactive issuer is kept for its CRLs until its certificates expire.
    #[serde(default = "default_true")]
    pub active: bool,
    /// The profiles it serves; empty means all of them.
    #[serde(default)]
    pub profiles: Vec<String>,
}

/// What a certificate profile changes in the certificates issued under it (Boulder's `certProfiles`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The certificate's validity period in seconds, notBefore and notAfter included.
    pub validity_secs: u64,
    /// Whether the subject carries a commonName (the first name that fits in 64 characters).
    #[serde(default = "default_true")]
    pub include_common_name: bool,
    /// Leave keyEncipherment out of RSA certificates' key usage.
    #[serde(default)]
    pub omit_key_encipherment: bool,
    /// Leave clientAuth out of the extended key usage.
    #[serde(default)]
    pub omit_client_auth: bool,
    /// Leave out the subjectKeyIdentifier.
    #[serde(default)]
    pub omit_subject_key_id: bool,
}

impl ProfileConfig {
    /// Let's Encrypt's `classic`: 90 days, commonName, keyEncipherment for RSA, clientAuth, SKID.
    pub fn classic() -> Self {
        Self {
            validity_secs: 90 * 86_400,
            include_common_name: true,
            omit_key_encipherment: false,
            omit_client_auth: false,
            omit_subject_key_id: false,
        }
    }

    /// Let's Encrypt's `tlsserver`: 45 days, and none of the legacy parts (commonName, keyEncipherment, clientAuth,
    /// SKID).
    pub fn tlsserver() -> Self {
        Self {
            validity_secs: 45 * 86_400,
            include_common_name: false,
            omit_key_encipherment: true,
            omit_client_auth: true,
            omit_subject_key_id: true,
        }
    }

    /// Let's Encrypt's `shortlived`: `tlsserver` for 160 hours.
    pub fn shortlived() -> Self {
        Self { validity_secs: 160 * 3_600, ..Self::tlsserver() }
    }
}

fn default_crl_shards() -> i64 {
    quarry_core::crl::DEFAULT_SHARDS
}

/// Boulder's CRL validity: nine days, a day inside the Baseline Requirements' ten.
fn default_crl_validity_secs() -> u64 {
    9 * 86_400
}

fn default_serial_prefix() -> u8 {
    1
}

fn default_profile_name() -> String {
    DEFAULT_PROFILE.to_owned()
}

fn default_true() -> bool {
    true
}

/// Let's Encrypt's classic profile: 90 days, with a commonName.
fn default_profiles() -> BTreeMap<String, ProfileConfig> {
    BTreeMap::from([(DEFAULT_PROFILE.to_owned(), ProfileConfig::classic())])
}

impl Config {
    /// Checks the values whose rules the ca shares with other services: the CRL shard count and the profile names.
    /// Everything else is checked as the issuers and profiles are loaded.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| Error::Config(quarry_core::config::ConfigError::Invalid(message));
        if let Some(lane) = &self.lane {
            lane.validate()?;
        }
        quarry_core::crl::check_shard_count(self.crl_shards).map_err(|why| invalid(format!("crl_shards {why}")))?;
        for name in self.profiles.keys() {
            quarry_core::profile::check_name(name).map_err(|why| invalid(format!("profiles: {why}")))?;
        }
        Ok(())
    }
}

/// Binds `config.grpc.listen` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let listener = quarry_core::grpc::bind(&config.grpc).await?;
    serve(config, listener, shutdown).await
}

/// Serves the ca on an already bound `listener` until `shutdown` completes: the `CertificateAuthority` service and
/// the `CrlGenerator` service, which signs with the same loaded issuers.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let ca_allowlist = ClientAllowlist::for_service(&config.grpc, service::SERVICE_NAME)?;
    let crl_allowlist = ClientAllowlist::for_service(&config.grpc, crl_service::SERVICE_NAME)?;
    let lane = Lane::new(config.lane.as_ref())?;
    let sa = SaClient::new(Peer::in_lane(&config.sa, &config.tls, &lane)?);
    let publisher = PublisherClient::new(Peer::in_lane(&config.publisher, &config.tls, &lane)?);
    let ca = CaService::new(&config, sa, publisher)?;
    let crl = CrlService::new(ca.issuers(), config.crl_shards, config.crl_validity_secs)?;
    let routes = tonic::service::Routes::new(ca.into_server(ca_allowlist)).add_service(crl.into_server(crl_allowlist));
    tracing::info!(addr = ?listener.local_addr().ok(), "ca listening");
    let names = [service::SERVICE_NAME, crl_service::SERVICE_NAME];
    quarry_core::grpc::serve(listener, &config.tls, routes, &names, shutdown).await?;
    Ok(())
}

/// The ca as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "ca";
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
            "version = 1\n{extra}\n[grpc]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n\
             [sa]\naddress = \"https://127.0.0.1:1\"\nserver_name = \"sa.quarry\"\n\
             [publisher]\naddress = \"https://127.0.0.1:2\"\nserver_name = \"publisher.quarry\"\n\
             [[issuers]]\ncert = \"i.pem\"\nkey = \"i.key.pem\"\nissuer_url = \"http://i.test/e1.der\"\n\
             crl_url_prefix = \"http://c.test/e1/\"\n"
        );
        quarry_core::config::parse(&text, "test").expect("parses")
    }

    #[test]
    fn shared_rules_are_checked_before_anything_is_loaded() {
        config("").validate().expect("the defaults are valid");
        let err = config("crl_shards = 0").validate().expect_err("refused").to_string();
        assert!(err.contains("crl_shards must be between 1 and"), "{err}");
        let mut bad_name = config("");
        bad_name.profiles.insert("two words".into(), ProfileConfig::classic());
        let err = bad_name.validate().expect_err("refused").to_string();
        assert!(err.contains("profiles: profile name \"two words\""), "{err}");
    }
}
