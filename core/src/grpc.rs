//! gRPC plumbing shared by every service: mutual-TLS servers and clients (whose certificates follow their files,
//! [`crate::tls`]), per-service client-name allowlists, the health service, deadlines carried from the ACME request,
//! and `Problem` across the wire.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Status};

use crate::config::{ConfigError, GrpcClientConfig, GrpcServerConfig, TlsFiles};
use crate::error::{ErrorKind, Problem, SubProblem};
use crate::tls::MutualTls;

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

/// A channel to a peer service that carries the caller's trace context in every request, so that one ACME
/// request is one trace across every service.
pub type Channel = InterceptedService<Measured<tonic::transport::Channel>, TraceContext>;

/// Puts the current span's W3C trace context into each outgoing request's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        crate::telemetry::inject_into(request.metadata_mut());
        Ok(request)
    }
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
        // One span per call, continuing the caller's trace.
        .trace_fn(|request| {
            let span = tracing::info_span!("grpc", rpc = %request.uri().path());
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

/// Which end of a call [`Measured`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

/// gRPC calls counted by method and status code and timed until the response headers:
/// `quarry_grpc_server_requests_total` / `quarry_grpc_server_duration_seconds` on every server, and the
/// `quarry_grpc_client_…` pair on every channel to a peer.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    side: Side,
}

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = request.uri().path().to_owned();
        let side = self.side;
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await;
            if let (Side::Server, Ok(response)) = (side, &mut response) {
                response.headers_mut().insert(VERSION_HEADER, version_header());
            }
            // A failed unary call is a trailers-only response: its status is in the headers. Otherwise it succeeded
            // as far as the headers tell.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unavailable,
            };
            let (requests, duration) = match side {
                Side::Server => ("quarry_grpc_server_requests_total", "quarry_grpc_server_duration_seconds"),
                Side::Client => ("quarry_grpc_client_requests_total", "quarry_grpc_client_duration_seconds"),
            };
            metrics::counter!(requests, "rpc" => rpc.clone(), "code" => format!("{code:?}")).increment(1);
            metrics::histogram!(duration, "rpc" => rpc).record(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// Asks a peer's gRPC health service whether `service` is serving; the error says why not, for a health page.
pub async fn check_health(channel: Channel, service: &str, deadline: Option<Instant>) -> Result<(), String> {
    match health_status(channel, service, deadline).await? {
        true => Ok(()),
        false => Err("not serving".to_owned()),
    }
}

/// Whether a peer's health service answers for `service` at all, and if so whether it is serving: a peer that
/// answers "not serving" (its database is down) is alive — a liveness probe must not restart it — but not ready.
pub async fn health_status(channel: Channel, service: &str, deadline: Option<Instant>) -> Result<bool, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let request = request_with_deadline(HealthCheckRequest { service: service.to_owned() }, deadline);
    match HealthClient::new(channel).check(request).await {
        Ok(reply) => Ok(reply.get_ref().status == ServingStatus::Serving as i32),
        Err(status) => Err(format!("unreachable ({:?})", status.code())),
    }
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

/// How a client reaches the replicas of one peer over mutual TLS.
#[derive(Clone, Debug)]
pub(crate) struct ClientTls {
    /// This service's identity and the CA bundle, as they are in their files when a connection opens.
    config: Arc<rustls::ClientConfig>,
    /// The name the peer's certificate must carry.
    server_name: ServerName<'static>,
}

/// The mutual-TLS settings of a client of the peer whose certificate carries `server_name`.
pub(crate) fn client_tls(server_name: &str, tls: &TlsFiles) -> Result<ClientTls, GrpcError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ConfigError::Invalid(format!("server_name {server_name:?} is not a DNS name or an IP address")))?;
    Ok(ClientTls { config: MutualTls::open(tls)?.client_config(), server_name: name })
}

/// Opens a connection to one replica: TCP, then TLS with the identity in the files at that moment. tonic's own
/// TLS would keep the identity it was built with for the life of the process.
#[derive(Clone)]
struct ReplicaConnector {
    addr: SocketAddr,
    tls: ClientTls,
}

impl tower::Service<http::Uri> for ReplicaConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, server_name) = (self.addr, self.tls.server_name.clone());
        let connector = TlsConnector::from(self.tls.config.clone());
        Box::pin(async move {
            // "tcp connect error" is how `peer::classify` knows the request never left, as with tonic's connector.
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|err| std::io::Error::new(err.kind(), format!("tcp connect error: {err}")))?;
            crate::tcp::no_delay(&mut stream);
            let stream = connector
                .connect(server_name, stream)
                .await
                .map_err(|err| std::io::Error::new(err.kind(), format!("TLS handshake with {addr}: {err}")))?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Idle connections are pinged this often, so that a replica gone without a word (its node lost) is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to the replica at `addr`: services may start in any order. It sets no timeout of
/// its own: each call carries its deadline (`grpc-timeout`), which the caller also enforces ([`crate::peer`]), so a
/// validation may take the minute it is given.
pub(crate) fn replica_channel(addr: SocketAddr, tls: ClientTls) -> Result<Channel, GrpcError> {
    // Plain `http`: the URI only addresses the requests, [`ReplicaConnector`] brings the TLS (tonic would refuse an
    // `https` URI without its own). The connect timeout covers the handshake too.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConfigError::Invalid(format!("bad gRPC address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let connector = ReplicaConnector { addr, tls };
    let measured = Measured { inner: endpoint.connect_with_connector_lazy(connector), side: Side::Client };
    Ok(InterceptedService::new(measured, TraceContext))
}

/// A lazily connecting mutual-TLS channel to one replica, named by an IP address (a health probe of one process, a
/// test); services reach their peers through a [`crate::peer::Peer`].
pub fn channel(config: &GrpcClientConfig, tls: &TlsFiles) -> Result<Channel, GrpcError> {
    let target = crate::discovery::Target::parse(&config.address)?;
    let addr = match target.fixed().as_deref() {
        Some([addr]) => *addr,
        _ => {
            return Err(ConfigError::Invalid(format!(
                "{:?}: one replica's address (https://IP:PORT) is needed here",
                config.address
            ))
            .into());
        }
    };
    replica_channel(addr, client_tls(&config.server_name, tls)?)
}

/// Wraps a message in a request whose `grpc-timeout` is what remains until `deadline`.
pub fn request_with_deadline<T>(message: T, deadline: Option<Instant>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(deadline) = deadline {
        // A deadline already past still goes out with a tiny timeout so the peer fails fast.
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        request.set_timeout(remaining);
    }
    request
}

/// The deadline an incoming request carries in its `grpc-timeout` header, if any.
pub fn incoming_deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
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
        ErrorKind::OrderNotReady => Code::FailedPrecondition,
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
