//! The validation authority: proves control of identifiers by http-01 and dns-01 (RFC 8555 §8), against a
//! configured DNS resolver and configurable ports. It answers the ra's `DoDCV`; a failed validation is a result,
//! not an RPC error.

mod dns01;
mod error;
mod http01;
pub mod resolver;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::config::{ConfigVersion, GrpcServerConfig, TlsFiles};
use quarry_core::grpc::ClientAllowlist;
use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_proto::va::va_server::{Va, VaServer};
use quarry_proto::va::{DcvRequest, ValidationResult};
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

pub use error::Error;
pub use http01::HttpPolicy;
use resolver::{DnsResolver, Resolver};

/// The va's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: ConfigVersion,
    /// Listen address and client allowlist.
    pub grpc: GrpcServerConfig,
    /// This service's mutual-TLS identity and the internal CA.
    pub tls: TlsFiles,
    /// The one DNS server every lookup goes to (UDP, TCP when truncated).
    pub dns_resolver: SocketAddr,
    /// The port http-01 connects to (80 on the Internet).
    #[serde(default = "default_http01_port")]
    pub http01_port: u16,
    /// The port tls-alpn-01 will connect to (443 on the Internet).
    #[serde(default = "default_tls_alpn01_port")]
    pub tls_alpn01_port: u16,
    /// This va's name in validation records.
    #[serde(default = "default_perspective")]
    pub perspective: String,
    /// The most one validation may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The most redirects http-01 follows.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// The largest http-01 response body accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_http01_port() -> u16 {
    80
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
    let timeout = Duration::from_millis(config.timeout_ms);
    let resolver = DnsResolver::new(config.dns_resolver, timeout / 2).map_err(Error::Resolver)?;
    let validator = Validator::new(&config, Arc::new(resolver));
    let name = <VaServer<Validator> as NamedService>::NAME;
    let allowlist = ClientAllowlist::for_service(&config.grpc, name)?;
    let service = VaServer::with_interceptor(validator, allowlist);
    tracing::info!(addr = ?listener.local_addr().ok(), resolver = %config.dns_resolver, "va listening");
    quarry_core::grpc::serve(listener, &config.tls, tonic::service::Routes::new(service), &[name], shutdown).await?;
    Ok(())
}

/// Runs validations; cheap to clone into each request.
#[derive(Clone)]
pub struct Validator {
    resolver: Arc<dyn Resolver>,
    http: HttpPolicy,
    timeout: Duration,
}

impl Validator {
    pub fn new(config: &Config, resolver: Arc<dyn Resolver>) -> Self {
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = HttpPolicy {
            port: config.http01_port,
            max_redirects: config.max_redirects,
            max_body_bytes: config.max_body_bytes,
            connect_timeout: timeout / 2,
            perspective: config.perspective.clone(),
        };
        Self { resolver, http, timeout }
    }

    /// Validates one challenge, never past `deadline`; the records say what was tried.
    pub async fn validate(
        &self,
        identifier: &Identifier,
        challenge: &str,
        token: &str,
        key_authorization: &str,
        deadline: Option<Instant>,
    ) -> (Vec<ValidationRecord>, Option<Problem>) {
        let mut records = Vec::new();
        let budget = deadline.map_or(self.timeout, |d| d.saturating_duration_since(Instant::now()).min(self.timeout));
        let work = async {
            match ChallengeType::parse(challenge) {
                Some(ChallengeType::Http01) => {
                    http01::validate(&*self.resolver, &self.http, identifier, token, key_authorization, &mut records)
                        .await
                }
                Some(ChallengeType::Dns01) => {
                    dns01::validate(
                        &*self.resolver,
                        &self.http.perspective,
                        identifier,
                        key_authorization,
                        &mut records,
                    )
                    .await
                }
                _ => Err(Problem::malformed(format!("challenge type {challenge:?} is not supported"))),
            }
        };
        let outcome = match tokio::time::timeout(budget, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Problem::new(ErrorKind::Connection, "validation timed out")),
        };
        (records, outcome.err())
    }
}

#[tonic::async_trait]
impl Va for Validator {
    async fn do_dcv(&self, request: Request<DcvRequest>) -> Result<Response<ValidationResult>, Status> {
        let deadline = quarry_core::grpc::incoming_deadline(&request);
        let dcv = request.into_inner();
        let identifier = dcv
            .identifier
            .as_ref()
            .ok_or_else(|| Problem::malformed("validation request without an identifier"))
            .and_then(Identifier::try_from)?;
        let (records, problem) = self
            .validate(&identifier, &dcv.challenge_type, &dcv.token, &dcv.expected_key_authorization, deadline)
            .await;
        tracing::info!(
            authorization_id = dcv.authorization_id,
            identifier = %identifier.value,
            challenge = %dcv.challenge_type,
            passed = problem.is_none(),
            problem = problem.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            "validation finished"
        );
        Ok(Response::new(ValidationResult {
            records: quarry_proto::convert::records_to_pb(&records),
            problem: quarry_proto::convert::problem_to_pb(&problem),
            perspective: self.http.perspective.clone(),
            rir: String::new(),
        }))
    }
}
