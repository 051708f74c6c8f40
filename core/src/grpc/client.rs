//! The client side of gRPC: channels to one replica over mutual TLS whose identity follows its files (opened
//! afresh for each connection), every call measured and carrying the caller's trace context, and the health checks
//! a caller asks of a peer. A service reaches its peers' replicas through `peer`, which builds on these channels.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

use super::coalesced_writes::{CoalescedWrites, EndingBodies};
use super::{GrpcError, Measured, Side, request_with_deadline};
use crate::config::{ConfigError, GrpcClientConfig, TlsFiles};
use crate::tls::MutualTls;

/// A channel to a peer service that carries the caller's trace context in every request, so that one ACME
/// request is one trace across every service.
pub type Channel = InterceptedService<Measured<EndingBodies<tonic::transport::Channel>>, TraceContext>;

/// Puts the current span's W3C trace context into each outgoing request's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        crate::telemetry::inject_into(request.metadata_mut());
        Ok(request)
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
    type Response = TokioIo<CoalescedWrites<tokio_rustls::client::TlsStream<TcpStream>>>;
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
            Ok(TokioIo::new(CoalescedWrites::new(stream)))
        })
    }
}

/// Idle connections are pinged this often, so that a replica gone without a word (its node lost) is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to the replica at `addr`: services may start in any order. It sets no timeout of
/// its own: each call carries its deadline (`grpc-timeout`), which the caller also enforces (a `peer::Peer` does), so a
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
    let measured =
        Measured { inner: EndingBodies(endpoint.connect_with_connector_lazy(connector)), side: Side::Client };
    Ok(InterceptedService::new(measured, TraceContext))
}

/// A lazily connecting mutual-TLS channel to one replica, named by an IP address (a health probe of one process, a
/// test); services reach their peers through a `peer::Peer`.
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
