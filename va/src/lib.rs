//! The validation authority: proves control of identifiers by http-01 and dns-01 (RFC 8555 §8) and tls-alpn-01
//! (RFC 8737; RFC 8738 for IP addresses), against a configured DNS resolver and configurable ports. It answers the
//! ra's `DoDCV`; a failed validation is a result, not an RPC error.

mod addresses;
pub mod caa;
mod dns01;
mod dns_exchange;
mod error;
mod http01;
pub mod quorum;
mod remote;
pub mod resolver;
mod tlsalpn01;
mod validator;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::config::{ConfigError, ConfigVersion, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_core::lane::Lane;
use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_proto::va::va_server::{Va, VaServer};
use quarry_proto::va::{CaaRequest, DcvRequest, ValidationResult};
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

pub use addresses::AddressPolicy;
pub use dns01::Dns01Validator;
pub use error::Error;
pub use http01::{Http01Validator, HttpPolicy};
pub use remote::{RemoteConfig, RemoteVa};
pub use tlsalpn01::{TlsAlpnPolicy, Tlsalpn01Validator, reverse_dns_name};
pub use validator::{Attempt, Validator};

use resolver::{DnsResolver, Resolver};

/// The va's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Configuration format version; must be 1.
    pub version: ConfigVersion,
    /// Log format and span export (`[telemetry]`); the binary sets it up before the service starts.
    #[serde(default)]
    pub telemetry: quarry_core::telemetry::TelemetryConfig,
    /// Listen address and client allowlist (the ra calls `quarry.va.v1.VA`).
    pub grpc: GrpcServerConfig,
    /// This service's mutual-TLS identity and the internal CA.
    pub tls: TlsFiles,
    /// Which replica of its service this is, so that its calls keep to its lane (`quarry_core::lane`); without it
    /// they go round robin.
    #[serde(default)]
    pub lane: Option<quarry_core::config::LaneConfig>,
    /// The one DNS server every lookup goes to (UDP, TCP when truncated); the system configuration is never read.
    pub dns_resolver: SocketAddr,
    /// The port http-01 connects to, redirects included (80 on the Internet).
    #[serde(default = "default_http01_port")]
    pub http01_port: u16,
    /// The only port an http-01 redirect to https may go to (443 on the Internet).
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// The port tls-alpn-01 connects to (443 on the Internet).
    #[serde(default = "default_tls_alpn01_port")]
    pub tls_alpn01_port: u16,
    /// This va's name in validation records and results.
    #[serde(default = "default_perspective")]
    pub perspective: String,
    /// The regional Internet registry this va runs in; a remote va echoes it so the primary can count RIRs.
    #[serde(default)]
    pub rir: String,
    /// Remote perspectives (multi-perspective validation): a validation that passes here passes only if the quorum
    /// of them agrees. None, or at least two (one can never satisfy the rule of two RIRs).
    #[serde(default)]
    pub remotes: Vec<RemoteConfig>,
    /// The most one validation may take, in milliseconds (less when the caller's deadline is nearer).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The most redirects http-01 follows.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// The domains that identify this CA in CAA `issue`/`issuewild` records (RFC 8659), e.g. `letsencrypt.org`;
    /// without them every CAA record set denies issuance.
    #[serde(default)]
    pub caa_identities: Vec<String>,
    /// Validate against private, loopback, link-local and other reserved addresses: only on a developer's machine,
    /// where every responder is on loopback (the dev overlay sets it; staging and production must not).
    #[serde(default)]
    pub allow_non_public_addresses: bool,
    /// The largest http-01 response body accepted, in bytes; a larger one fails validation.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Provocations for client test suites (quarry dev only: refused in any other environment).
    #[serde(default)]
    pub client_testing: ClientTesting,
}

/// `[client_testing]` of the va (Pebble's `PEBBLE_VA_*`). Every key off is production behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTesting {
    /// Before each validation, wait a whole number of seconds drawn below this one (Pebble's
    /// `PEBBLE_VA_SLEEPTIME`, on unless `PEBBLE_VA_NOSLEEP`), so that a client meets `processing` and must poll.
    #[serde(default)]
    pub sleep_max_secs: u64,
    /// Every validation passes without contacting anything, CAA included (Pebble's `PEBBLE_VA_ALWAYS_VALID`).
    #[serde(default)]
    pub always_valid: bool,
}

fn default_http01_port() -> u16 {
    80
}
fn default_https_port() -> u16 {
    443
}
fn default_tls_alpn01_port() -> u16 {
    443
}
fn default_perspective() -> String {
    "primary".to_owned()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_redirects() -> usize {
    10
}
fn default_max_body_bytes() -> usize {
    128 * 1024
}

/// Longest validation timeout accepted: anything longer would outlive any ACME client's patience.
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// A key authorization is two base64url SHA-256 values and a dot (87 bytes); a smaller cap could never pass.
const MIN_BODY_BYTES: usize = 128;
/// Kept back from the caller's deadline so that a timed-out validation's result still reaches it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

impl Config {
    /// Checks the settings serde cannot: ports, the timeout, the body cap and the perspective name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        if let Some(lane) = &self.lane {
            lane.validate()?;
        }
        if self.dns_resolver.port() == 0 {
            return invalid(format!("dns_resolver {} needs a port", self.dns_resolver));
        }
        if self.http01_port == 0 {
            return invalid("http01_port must not be 0".to_owned());
        }
        if self.tls_alpn01_port == 0 {
            return invalid("tls_alpn01_port must not be 0".to_owned());
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return invalid(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, not {}", self.timeout_ms));
        }
        if self.max_body_bytes < MIN_BODY_BYTES {
            return invalid(format!("max_body_bytes must be at least {MIN_BODY_BYTES}, not {}", self.max_body_bytes));
        }
        if self.perspective.trim().is_empty() {
            return invalid("perspective must not be empty".to_owned());
        }
        if self.remotes.len() == 1 {
            return invalid(
                "remotes: one remote perspective can never pass the quorum; configure none or two or more".to_owned(),
            );
        }
        if let Some(remote) = self.remotes.iter().find(|r| r.perspective.trim().is_empty() || r.rir.trim().is_empty()) {
            return invalid(format!("remotes: {:?} needs a perspective and an RIR", remote.grpc.address));
        }
        if self.caa_identities.is_empty() || self.caa_identities.iter().any(|id| id.trim().is_empty()) {
            return invalid("caa_identities must name this CA's CAA domains (e.g. [\"letsencrypt.org\"])".to_owned());
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Binds the configured address and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    config.validate()?;
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
    // Two attempts per question, each at most a quarter of a validation's time (UDP and a TCP retry together); the
    // validation's own timeout bounds a CAA climb's several questions.
    let resolver = DnsResolver::new(config.dns_resolver, config.timeout() / 4);
    let lane = Lane::new(config.lane.as_ref())?;
    let remotes = config
        .remotes
        .iter()
        .map(|remote| RemoteVa::connect(remote, &config.tls, &lane))
        .collect::<Result<Vec<_>, _>>()?;
    let authority = ValidationAuthority::new(&config, Arc::new(resolver)).with_remotes(remotes);
    let name = <VaServer<ValidationAuthority> as NamedService>::NAME;
    let allowlist = ClientAllowlist::for_service(&config.grpc, name)?;
    let service = VaServer::with_interceptor(authority, allowlist);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        resolver = %config.dns_resolver,
        http01_port = config.http01_port,
        tls_alpn01_port = config.tls_alpn01_port,
        perspective = %config.perspective,
        "va listening"
    );
    quarry_core::grpc::serve(listener, &config.tls, tonic::service::Routes::new(service), &[name], shutdown).await?;
    Ok(())
}

/// Runs validations with one [`Validator`] per challenge type; the gRPC `VA` service.
#[derive(Clone)]
pub struct ValidationAuthority {
    validators: Arc<[Arc<dyn Validator>]>,
    perspective: String,
    timeout: Duration,
    /// `None` answers every CAA check with an internal error (an authority built for DCV tests only).
    caa: Option<CaaLookup>,
    rir: String,
    remotes: Arc<[RemoteVa]>,
    client_testing: ClientTesting,
}

/// Where CAA records are looked up, and the CA's identities in them.
#[derive(Clone)]
struct CaaLookup {
    resolver: Arc<dyn Resolver>,
    identities: Arc<[String]>,
}

impl ValidationAuthority {
    /// The http-01, dns-01 and tls-alpn-01 validators of `config`, looking names up through `resolver`.
    pub fn new(config: &Config, resolver: Arc<dyn Resolver>) -> Self {
        let http = HttpPolicy {
            port: config.http01_port,
            https_port: config.https_port,
            max_redirects: config.max_redirects,
            max_body_bytes: config.max_body_bytes,
            // An unreachable IPv6 address leaves the IPv4 addresses the other half.
            connect_timeout: config.timeout() / 2,
            perspective: config.perspective.clone(),
            addresses: AddressPolicy { allow_non_public: config.allow_non_public_addresses },
        };
        let tls = TlsAlpnPolicy {
            port: config.tls_alpn01_port,
            // As for http-01: an unreachable IPv6 address leaves the IPv4 addresses the other half.
            connect_timeout: config.timeout() / 2,
            perspective: config.perspective.clone(),
            addresses: AddressPolicy { allow_non_public: config.allow_non_public_addresses },
        };
        let validators: Vec<Arc<dyn Validator>> = vec![
            Arc::new(Http01Validator::new(resolver.clone(), http)),
            Arc::new(Tlsalpn01Validator::new(resolver.clone(), tls)),
            Arc::new(Dns01Validator::new(resolver.clone(), config.perspective.clone())),
        ];
        let mut authority = Self::with_validators(config.perspective.clone(), config.timeout(), validators)
            .with_caa(resolver, config.caa_identities.clone());
        authority.rir = config.rir.clone();
        if config.client_testing != ClientTesting::default() {
            tracing::warn!(knobs = ?config.client_testing, "client-testing knobs are on: this va misbehaves on purpose");
        }
        authority.client_testing = config.client_testing.clone();
        authority
    }

    /// A primary: what passes here must also pass the quorum of `remotes`.
    pub fn with_remotes(mut self, remotes: Vec<RemoteVa>) -> Self {
        self.remotes = remotes.into();
        self
    }

    /// CAA checks look records up through `resolver` and accept `identities` as this CA's.
    pub fn with_caa(mut self, resolver: Arc<dyn Resolver>, identities: Vec<String>) -> Self {
        self.caa = Some(CaaLookup { resolver, identities: identities.into() });
        self
    }

    /// Checks CAA for `identifier` (without `*.`) within the configured timeout and never past `deadline`. IP
    /// identifiers have no CAA (RFC 8738 §9): they always pass.
    pub async fn check_caa(
        &self,
        identifier: &Identifier,
        wildcard: bool,
        validation_method: &str,
        account_uri: &str,
        deadline: Option<Instant>,
    ) -> Option<Problem> {
        if identifier.kind == quarry_core::IdentifierType::Ip {
            return None;
        }
        let Some(CaaLookup { resolver, identities }) = &self.caa else {
            return Some(Problem::internal("this validation authority does not check CAA"));
        };
        let check = caa::CaaCheck { name: &identifier.value, wildcard, validation_method, account_uri };
        match tokio::time::timeout(self.budget(deadline), caa::check(resolver.as_ref(), check, identities)).await {
            Ok(outcome) => outcome.err(),
            Err(_) => Some(Problem::new(ErrorKind::Dns, "CAA lookups timed out")),
        }
    }

    /// The time one check may take: the configured timeout, less when the caller's deadline is nearer.
    fn budget(&self, deadline: Option<Instant>) -> Duration {
        match deadline {
            Some(deadline) => {
                deadline.saturating_duration_since(Instant::now()).saturating_sub(DEADLINE_MARGIN).min(self.timeout)
            }
            None => self.timeout,
        }
    }

    /// An authority using exactly `validators` (the first one for each challenge type counts).
    pub fn with_validators(
        perspective: impl Into<String>,
        timeout: Duration,
        validators: Vec<Arc<dyn Validator>>,
    ) -> Self {
        Self {
            validators: validators.into(),
            perspective: perspective.into(),
            timeout,
            caa: None,
            rir: String::new(),
            remotes: Arc::new([]),
            client_testing: ClientTesting::default(),
        }
    }

    /// This authority's perspective name.
    pub fn perspective(&self) -> &str {
        &self.perspective
    }

    /// Validates one challenge within the configured timeout and never past `deadline`; the records say what was
    /// tried, the problem (`None` when it passed) why it failed.
    pub async fn validate(
        &self,
        identifier: &Identifier,
        challenge_type: &str,
        token: &str,
        key_authorization: &str,
        deadline: Option<Instant>,
    ) -> (Vec<ValidationRecord>, Option<Problem>) {
        let mut records = Vec::new();
        let validator = ChallengeType::parse(challenge_type)
            .and_then(|kind| self.validators.iter().find(|v| v.challenge_type() == kind));
        let Some(validator) = validator else {
            let shown: String = challenge_type.chars().take(32).collect();
            return (records, Some(Problem::malformed(format!("challenge type {shown:?} is not supported"))));
        };
        let budget = self.budget(deadline);
        let attempt = Attempt { identifier, token, key_authorization };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(budget, validator.validate(attempt, &mut records)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Problem::new(ErrorKind::Connection, "validation timed out")),
        };
        // This perspective's own outcome (the primary's quorum with the remotes is the ra's business).
        let challenge = validator.challenge_type().as_str();
        let result = outcome.as_ref().err().map_or("valid", |problem| problem.kind.as_str());
        metrics::counter!(
            "quarry_validations_total",
            "challenge" => challenge,
            "perspective" => self.perspective.clone(),
            "result" => result,
        )
        .increment(1);
        metrics::histogram!("quarry_validation_duration_seconds", "challenge" => challenge, "perspective" => self.perspective.clone())
            .record(started.elapsed().as_secs_f64());
        (records, outcome.err())
    }
}

#[tonic::async_trait]
impl Va for ValidationAuthority {
    async fn do_dcv(&self, request: Request<DcvRequest>) -> Result<Response<ValidationResult>, Status> {
        let deadline = quarry_core::grpc::incoming_deadline(&request);
        let dcv = request.into_inner();
        let identifier = dcv
            .identifier
            .as_ref()
            .ok_or_else(|| Problem::malformed("validation request without an identifier"))
            .and_then(Identifier::try_from)?;
        if let Some(caa) = &dcv.caa
            && caa.identifier != dcv.identifier
        {
            return Err(Problem::malformed("the CAA check names another identifier than the validation").into());
        }
        let started = Instant::now();
        if self.client_testing.sleep_max_secs > 0 {
            let sleep = Duration::from_secs(quarry_core::testing::below(self.client_testing.sleep_max_secs));
            tokio::time::sleep(sleep.min(self.budget(deadline))).await;
        }
        let unchecked = self.client_testing.always_valid;
        let (records, problem) = if unchecked {
            // Pebble's PEBBLE_VA_ALWAYS_VALID: nothing is contacted, CAA and the remote perspectives included.
            let record = ValidationRecord {
                hostname: identifier.value.clone(),
                perspective: self.perspective.clone(),
                ..ValidationRecord::default()
            };
            (vec![record], None)
        } else {
            self.prove_control(&identifier, &dcv, deadline).await?
        };
        tracing::info!(
            authorization_id = dcv.authorization_id,
            account_id = dcv.account_id,
            identifier = %identifier.value,
            challenge = %dcv.challenge_type,
            caa = dcv.caa.is_some(),
            unchecked,
            passed = problem.is_none(),
            problem = problem.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "validation finished"
        );
        Ok(Response::new(ValidationResult {
            records: quarry_proto::convert::records_to_pb(&records),
            problem: quarry_proto::convert::problem_to_pb(&problem),
            perspective: self.perspective.clone(),
            rir: self.rir.clone(),
            caa_checked: dcv.caa.is_some(),
        }))
    }

    async fn do_caa(&self, request: Request<CaaRequest>) -> Result<Response<ValidationResult>, Status> {
        let deadline = quarry_core::grpc::incoming_deadline(&request);
        let req = request.into_inner();
        let mut problem = self.caa_problem(&req, deadline).await?;
        if problem.is_none() && !self.remotes.is_empty() {
            problem = remote::corroborate(&self.remotes, deadline, |client, deadline| {
                let request = req.clone();
                async move { client.do_caa(request, deadline).await }
            })
            .await;
        }
        tracing::info!(
            authorization_id = req.authorization_id,
            account_id = req.account_id,
            identifier = req.identifier.as_ref().map(|i| i.value.as_str()).unwrap_or_default(),
            wildcard = req.wildcard,
            passed = problem.is_none(),
            problem = problem.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            "CAA checked"
        );
        Ok(Response::new(ValidationResult {
            records: Vec::new(),
            problem: quarry_proto::convert::problem_to_pb(&problem),
            perspective: self.perspective.clone(),
            rir: self.rir.clone(),
            caa_checked: true,
        }))
    }
}

impl ValidationAuthority {
    /// This perspective's validation of `dcv` and its CAA check side by side, then the remote perspectives'
    /// corroboration once both have passed.
    async fn prove_control(
        &self,
        identifier: &Identifier,
        dcv: &DcvRequest,
        deadline: Option<Instant>,
    ) -> Result<(Vec<ValidationRecord>, Option<Problem>), Problem> {
        // CAA rides in the same call (as in Boulder's PerformValidation before multi-perspective validation split
        // them): one round trip to every perspective instead of two. Its lookups go out with the validation's own,
        // as Boulder's checkCAA ran beside the challenge, so that its DNS answers wait no longer than theirs. A failed
        // validation decides without waiting for CAA (its lookups are dropped), so the problem reported is the same
        // as if CAA were asked only after control was proven.
        let validation = async {
            let (records, problem) = self
                .validate(identifier, &dcv.challenge_type, &dcv.token, &dcv.expected_key_authorization, deadline)
                .await;
            match problem {
                None => Ok(records),
                Some(problem) => Err((records, problem)),
            }
        };
        let caa = async {
            match &dcv.caa {
                Some(caa) => Ok(self.caa_problem(caa, deadline).await),
                None => Ok(Ok(None)),
            }
        };
        let (records, mut problem) = match futures::future::try_join(validation, caa).await {
            Ok((records, caa_verdict)) => (records, caa_verdict?),
            Err((records, problem)) => (records, Some(problem)),
        };
        // Remote perspectives are asked only once this one has passed, as Boulder does.
        if problem.is_none() && !self.remotes.is_empty() {
            problem = remote::corroborate(&self.remotes, deadline, |client, deadline| {
                let request = dcv.clone();
                let caa = dcv.caa.clone();
                async move {
                    let reply = client.do_dcv(request, deadline).await?;
                    match caa {
                        // A remote older than CAA in DoDCV passed without checking it: it is asked apart.
                        Some(caa) if reply.problem.is_none() && !reply.caa_checked => {
                            client.do_caa(caa, deadline).await
                        }
                        _ => Ok(reply),
                    }
                }
            })
            .await;
        }
        Ok((records, problem))
    }

    /// This perspective's CAA verdict on `req`; a request without an identifier is refused.
    async fn caa_problem(&self, req: &CaaRequest, deadline: Option<Instant>) -> Result<Option<Problem>, Problem> {
        let identifier = req
            .identifier
            .as_ref()
            .ok_or_else(|| Problem::malformed("CAA request without an identifier"))
            .and_then(Identifier::try_from)?;
        Ok(self.check_caa(&identifier, req.wildcard, &req.validation_method, &req.account_uri, deadline).await)
    }
}

/// The va as its process runs it: the shape every service shares ([`quarry_core::service`]).
pub struct Process;

impl quarry_core::service::Service for Process {
    const NAME: &'static str = "va";
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

#[cfg(test)]
mod tests;
