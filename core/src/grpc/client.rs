//! The client side of gRPC: channels to one replica over mutual TLS whose identity follows its files (opened
//! afresh for each connection), every call measured and carrying the caller's trace context, and the health checks
//! a caller asks of a peer. A service reaches its peers' replicas through `peer`, which builds on these channels.

use std::net::SocketAddr;
use std::time::Instant;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use super::connection::ReplicaConnection;
pub(crate) use super::connection::{ClientTls, client_tls};
use super::{GrpcError, Measured, Side, request_with_deadline};
use crate::config::{ConfigError, GrpcClientConfig, TlsFiles};

/// A channel to a peer service that carries the caller's trace context in every request, so that one ACME
/// request is one trace across every service.
pub type Channel = InterceptedService<Measured<ReplicaConnection>, TraceContext>;

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

/// A lazily connecting channel to the replica at `addr`: services may start in any order.
pub(crate) fn replica_channel(addr: SocketAddr, tls: ClientTls) -> Result<Channel, GrpcError> {
    let measured = Measured { inner: ReplicaConnection::new(addr, tls), side: Side::Client };
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
