//! gRPC plumbing shared by every service: mutual-TLS servers (whose certificates follow their files, `tls`),
//! per-service client-name allowlists, the health service, calls measured on both sides, deadlines carried from the
//! ACME request, and `Problem` across the wire. The client side (channels, health checks) is in `client`.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::service::{Interceptor, Routes};
use tonic::transport::Server;
use tonic::{Code, Request, Status};

use crate::config::{ConfigError, GrpcServerConfig, TlsFiles};
use crate::error::{ErrorKind, Problem, SubProblem};
use crate::tls::MutualTls;

pub(crate) mod client;
mod connection;
mod measured;
mod streams;

pub use client::{Channel, TraceContext, channel, check_health, health_status};
pub use connection::ReplicaConnection;
pub use measured::{Measured, Side};

/// The longest a gRPC client may take over its TLS handshake.
const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// gRPC servers ping each connection this often…
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// …and close it when a ping goes unanswered this long.
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata key carrying an [`ErrorKind`] name.
const ERROR_KIND_KEY: &str = "quarry-error-kind";
/// Binary metadata key carrying JSON subproblems.
const SUBPROBLEMS_KEY: &str = "quarry-subproblems-bin";
/// Metadata key carrying a problem's `Retry-After` seconds.
const RETRY_AFTER_KEY: &str = "quarry-retry-after";
/// Metadata key carrying the ACME client's IP address, from the wfe (for the per-IP rate limits).
const CLIENT_IP_KEY: &str = "quarry-client-ip";

/// Tells the callee which IP address the ACME client connected from.
pub fn set_client_ip<T>(request: &mut Request<T>, ip: std::net::IpAddr) {
    if let Ok(value) = MetadataValue::try_from(ip.to_string()) {
        request.metadata_mut().insert(CLIENT_IP_KEY, value);
    }
}

/// The ACME client's IP address, as the wfe passed it.
pub fn client_ip<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request.metadata().get(CLIENT_IP_KEY)?.to_str().ok()?.parse().ok()
}

/// Failures to set up or run a gRPC server or client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds the server's configured address (port 0 picks a free port; the listener tells which).
pub async fn bind(config: &GrpcServerConfig) -> Result<TcpListener, GrpcError> {
    TcpListener::bind(config.listen).await.map_err(|source| GrpcError::Bind { addr: config.listen, source })
}

/// Serves `routes` over mutual TLS on `listener` until `shutdown` completes, with the health service
/// reporting every name in `service_names` as serving.
///
/// Each service in `routes` must already be wrapped in its [`ClientAllowlist`]: the transport only
/// proves that a client holds a certificate from the internal CA, not which service may call what.
pub async fn serve(
    listener: TcpListener,
    tls: &TlsFiles,
    routes: Routes,
    service_names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    serve_checked(listener, tls, routes, service_names, None::<fn() -> std::future::Ready<bool>>, shutdown).await
}

/// How often a server with a readiness check asks it.
const READINESS_PERIOD: Duration = Duration::from_secs(5);

/// As [`serve`], with the health service following `ready` (asked at start and every few seconds): while it says
/// no, the server and each of its services report NOT_SERVING, so that probes and load balancers take it out.
pub async fn serve_checked<C, F>(
    listener: TcpListener,
    tls: &TlsFiles,
    routes: Routes,
    service_names: &[&str],
    ready: Option<C>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError>
where
    C: Fn() -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    let acceptor = TlsAcceptor::from(MutualTls::open(tls)?.server_config());
    let (reporter, health) = tonic_health::server::health_reporter();
    let names: Vec<String> =
        std::iter::once(String::new()).chain(service_names.iter().map(|n| (*n).to_owned())).collect();
    for name in &names {
        reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    let readiness = ready.map(|ready| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(READINESS_PERIOD);
            let mut was_ready = true;
            loop {
                ticks.tick().await;
                let is_ready = ready().await;
                if is_ready != was_ready {
                    tracing::warn!(ready = is_ready, "readiness changed");
                    let status = if is_ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    for name in &names {
                        reporter.set_service_status(name, status).await;
                    }
                    was_ready = is_ready;
                }
            }
        })
    });
    let routes = routes.add_service(health);
    // A peer that stops answering pings is dropped (and one that never finishes its handshake, in `handshaken`).
    let served = Server::builder()
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .layer(tower::layer::layer_fn(|inner| Measured { inner, side: Side::Server }))
        // One span per call, continuing the caller's trace where spans are exported; elsewhere at debug level, for
        // log lines only (`telemetry::spans_exported`).
        .trace_fn(|request| {
            let rpc = request.uri().path();
            if !crate::telemetry::spans_exported() {
                return tracing::debug_span!("grpc", rpc = %rpc);
            }
            let span = tracing::info_span!("grpc", rpc = %rpc);
            crate::telemetry::continue_trace(&span, request.headers());
            span
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(handshaken(listener, acceptor), shutdown)
        .await;
    if let Some(readiness) = readiness {
        readiness.abort();
    }
    served?;
    Ok(())
}

/// The connections accepted on `listener` once their TLS handshake is done, each handshake running on its own and
/// given [`GRPC_HANDSHAKE_TIMEOUT`], so that a client that never finishes holds up nobody. tonic reads the client's
/// certificates from each stream (its `TlsConnectInfo`), which is how the [`ClientAllowlist`] sees them. Dropping the
/// stream closes the listener and abandons the handshakes under way.
fn handshaken(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<tokio_rustls::server::TlsStream<TcpStream>, std::convert::Infallible>> {
    type Handshake = Result<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>, tokio::time::error::Elapsed>;
    struct Accepting {
        listener: TcpListener,
        acceptor: TlsAcceptor,
        handshakes: JoinSet<(SocketAddr, Handshake)>,
        backoff: crate::tcp::AcceptBackoff,
    }
    let state = Accepting { listener, acceptor, handshakes: JoinSet::new(), backoff: Default::default() };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            tokio::select! {
                accepted = state.listener.accept() => match accepted {
                    Ok((mut stream, peer)) => {
                        state.backoff.succeeded();
                        // Small request/response exchanges: Nagle's algorithm would hold a reply's last segment
                        // for the peer's delayed ACK.
                        crate::tcp::no_delay(&mut stream);
                        let handshake = tokio::time::timeout(GRPC_HANDSHAKE_TIMEOUT, state.acceptor.accept(stream));
                        state.handshakes.spawn(async move { (peer, handshake.await) });
                    }
                    Err(err) => state.backoff.failed("grpc", &err).await,
                },
                Some(done) = state.handshakes.join_next() => match done {
                    Ok((_, Ok(Ok(stream)))) => return Some((Ok(stream), state)),
                    Ok((peer, Ok(Err(err)))) => tracing::debug!(%peer, %err, "gRPC TLS handshake failed"),
                    Ok((peer, Err(_))) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                    Err(err) => tracing::debug!(%err, "gRPC TLS handshake task ended"),
                },
            }
        }
    })
}

/// Every gRPC server answers with its build in this header (health checks included): which build a replica runs.
pub const VERSION_HEADER: &str = "quarry-version";

fn version_header() -> http::HeaderValue {
    static VALUE: std::sync::OnceLock<http::HeaderValue> = std::sync::OnceLock::new();
    VALUE
        .get_or_init(|| {
            let described = crate::build::get().describe();
            http::HeaderValue::from_str(&described).unwrap_or(http::HeaderValue::from_static("unknown"))
        })
        .clone()
}

/// Lets through only calls whose client certificate names one of the allowed clients of a service.
#[derive(Debug, Clone)]
pub struct ClientAllowlist {
    service: Arc<str>,
    allowed: Arc<BTreeSet<String>>,
    /// Client certificates already let through: parsing the certificate on every call was a visible share of a
    /// service's CPU, and a service has a handful of peers.
    admitted: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// More admitted certificates than a service has peers (and their renewals) clear the list.
const ADMITTED_CERTIFICATES: usize = 64;

impl ClientAllowlist {
    /// The allowlist configured for `service`; a service absent from the configuration cannot be served,
    /// so that forgetting an entry fails at start-up instead of opening the service to everyone.
    pub fn for_service(config: &GrpcServerConfig, service: &str) -> Result<Self, ConfigError> {
        let access = config.services.get(service).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "grpc.services.\"{service}\" is missing: list the client names allowed to call it"
            ))
        })?;
        Ok(Self {
            service: service.into(),
            allowed: Arc::new(access.client_names.iter().cloned().collect()),
            admitted: Arc::default(),
        })
    }

    /// Whether a client presenting these certificate names may call the service.
    pub fn allows<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        names.any(|name| self.allowed.contains(name))
    }
}

impl Interceptor for ClientAllowlist {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let Some(leaf) = certs.first() else {
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if admitted.iter().any(|der| der.as_slice() == leaf.as_ref()) {
            return Ok(request);
        }
        let names = certificate_dns_names(leaf);
        if self.allows(names.iter().map(String::as_str)) {
            if admitted.len() >= ADMITTED_CERTIFICATES {
                admitted.clear();
            }
            admitted.push(leaf.to_vec());
            drop(admitted);
            Ok(request)
        } else {
            tracing::warn!(service = %self.service, clients = ?names, "refused a client not on the allowlist");
            Err(Status::permission_denied(format!("client {names:?} may not call {}", self.service)))
        }
    }
}

/// The DNS subject alternative names of a DER certificate.
fn certificate_dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// Wraps a message in a request whose `grpc-timeout` is what remains until `deadline`.
///
/// The value differs on every call, so it is marked never to be indexed: HPACK would otherwise add each one to both
/// ends' header tables, where it pushes out the entries that do repeat (`content-type`, `te`).
pub fn request_with_deadline<T>(message: T, deadline: Option<Instant>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(deadline) = deadline {
        // A deadline already past still goes out with a tiny timeout so the peer fails fast.
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        request.set_timeout(remaining);
        if let Some(value) = request.metadata_mut().get_mut(GRPC_TIMEOUT) {
            value.set_sensitive(true);
        }
    }
    request
}

/// The header that carries a call's deadline (gRPC over HTTP/2).
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The deadline an incoming request carries in its `grpc-timeout` header, if any.
pub fn incoming_deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get(GRPC_TIMEOUT)?.to_str().ok()?;
    // A deadline too far to represent is no deadline (a hostile peer's header must not panic the service).
    parse_grpc_timeout(value).and_then(|timeout| Instant::now().checked_add(timeout))
}

/// A `grpc-timeout` value: at most eight ASCII digits and a unit (the gRPC HTTP/2 spec), anything else ignored.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !(2..=9).contains(&value.len()) || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound | ErrorKind::AccountDoesNotExist => Code::NotFound,
        ErrorKind::Duplicate | ErrorKind::Conflict => Code::AlreadyExists,
        ErrorKind::Unauthorized => Code::PermissionDenied,
        ErrorKind::RateLimited => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::ServerInternal => Code::Internal,
        ErrorKind::OrderNotReady | ErrorKind::Misconfigured => Code::FailedPrecondition,
        _ => Code::InvalidArgument,
    }
}

impl From<Problem> for Status {
    fn from(problem: Problem) -> Self {
        let mut status = Status::new(code_for(problem.kind), problem.detail.clone());
        if let Ok(kind) = MetadataValue::try_from(problem.kind.as_str()) {
            status.metadata_mut().insert(ERROR_KIND_KEY, kind);
        }
        if !problem.subproblems.is_empty()
            && let Ok(json) = serde_json::to_vec(&problem.subproblems)
        {
            status.metadata_mut().insert_bin(SUBPROBLEMS_KEY, BinaryMetadataValue::from_bytes(&json));
        }
        if let Some(seconds) = problem.retry_after_secs {
            status.metadata_mut().insert(RETRY_AFTER_KEY, MetadataValue::from(seconds));
        }
        status
    }
}

/// The problem kind a peer's status carries, when the peer answered with a problem (rather than failing without one).
pub fn problem_kind(status: &Status) -> Option<ErrorKind> {
    status.metadata().get(ERROR_KIND_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorKind::parse)
}

impl From<Status> for Problem {
    /// Recovers the peer's problem; a status without one (a transport failure, a peer bug) becomes a generic
    /// problem whose detail never echoes the transport's own message to a client.
    fn from(status: Status) -> Self {
        match problem_kind(&status) {
            Some(kind) => {
                let subproblems = status
                    .metadata()
                    .get_bin(SUBPROBLEMS_KEY)
                    .and_then(|v| v.to_bytes().ok())
                    .and_then(|bytes| serde_json::from_slice::<Vec<SubProblem>>(&bytes).ok())
                    .unwrap_or_default();
                let retry_after_secs =
                    status.metadata().get(RETRY_AFTER_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                Problem { retry_after_secs, ..Problem::new(kind, status.message()).with_subproblems(subproblems) }
            }
            None => {
                tracing::warn!(code = ?status.code(), message = status.message(), "peer failed without a problem");
                match status.code() {
                    Code::DeadlineExceeded | Code::Cancelled => {
                        Problem::new(ErrorKind::Timeout, "an internal request timed out")
                    }
                    Code::Unavailable => Problem::new(ErrorKind::Unavailable, "an internal service is unavailable"),
                    _ => Problem::internal("an internal error occurred"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_survive_a_status_round_trip() {
        let problem =
            Problem::new(ErrorKind::BadCsr, "CSR names differ from the order").with_subproblems(vec![SubProblem {
                kind: ErrorKind::Malformed,
                detail: "x".into(),
                identifier: Some(crate::Identifier::dns("a.example")),
            }]);
        let status = Status::from(problem.clone());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(Problem::from(status), problem);
        let limited = Problem::rate_limited("too many new orders", 36);
        assert_eq!(Problem::from(Status::from(limited.clone())), limited);
    }

    #[test]
    fn foreign_statuses_do_not_leak_their_message() {
        let problem = Problem::from(Status::internal("thread 'x' panicked at src/lib.rs"));
        assert_eq!(problem.kind, ErrorKind::ServerInternal);
        assert!(!problem.detail.contains("panicked"));
        assert_eq!(Problem::from(Status::deadline_exceeded("slow")).kind, ErrorKind::Timeout);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        // More than eight digits, a sign, or non-ASCII: ignored, as the gRPC spec allows no such value.
        for hostile in ["123456789S", "+5S", "-5S", "5\u{0663}S", " 5S"] {
            assert_eq!(parse_grpc_timeout(hostile), None, "{hostile:?}");
        }
        assert_eq!(parse_grpc_timeout("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
    }

    #[test]
    fn a_deadline_goes_out_as_a_timeout_never_indexed() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let request = request_with_deadline((), Some(deadline));
        let value = request.metadata().get(GRPC_TIMEOUT).expect("a grpc-timeout");
        assert!(value.is_sensitive(), "a value that differs on every call must stay out of the HPACK tables");
        let received = incoming_deadline(&request).expect("the timeout parses back");
        assert!(received <= deadline + Duration::from_millis(1) && received + Duration::from_secs(1) > deadline);
        // A deadline already past still goes out, as a tiny timeout; no deadline, no header.
        let past = request_with_deadline((), Instant::now().checked_sub(Duration::from_secs(1)));
        assert!(incoming_deadline(&past).is_some());
        assert!(request_with_deadline((), None).metadata().get(GRPC_TIMEOUT).is_none());
    }

    #[test]
    fn a_hostile_grpc_timeout_header_does_not_panic() {
        for value in ["18446744073709551615H", "99999999H", "99999999999999999999S"] {
            let mut request = Request::new(());
            request.metadata_mut().insert("grpc-timeout", value.parse().unwrap());
            // The overflowing sum used to panic the service; now the deadline is either far away or absent.
            let deadline = incoming_deadline(&request);
            assert!(deadline.is_none_or(|d| d > Instant::now()), "{value}");
        }
    }
}
