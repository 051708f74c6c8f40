//! The HTTP server of every listener that faces clients (the wfe's ACME port and CRLs, metrics, test responders):
//! connections bounded in time and number, so that nobody can hold the server without sending requests — a TLS
//! handshake timeout, a header read timeout (slow loris), an idle timeout, a request timeout, a cap on connections
//! overall and per client address, a body size limit, and accept errors backed off (`tcp`). Handlers find the client's
//! address as [`axum::extract::ConnectInfo<SocketAddr>`], as trusted proxies report it ([`crate::client_addr`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::DefaultBodyLimit;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::client_addr::{self, ProxyHeader, TrustedProxies};
use crate::tcp::AcceptBackoff;

mod connection;

use connection::{Activity, ClientCounts, ClientSlot, InFlight, Watched};

/// A listener's limits and whom it believes about client addresses (`[listener]` in a service's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// From the accepted connection to a finished TLS handshake (and PROXY header).
    pub handshake_timeout_ms: u64,
    /// From the first byte of a request to the end of its header section (HTTP/1).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving is closed after this.
    pub idle_timeout_ms: u64,
    /// One request, its body read and its answer written, takes at most this (above the handlers' own deadlines).
    pub request_timeout_ms: u64,
    /// Connections open at once; past it a new one is closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (trusted proxies are exempt: their clients are counted
    /// by the address they declare in a PROXY header).
    pub max_connections_per_client: usize,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Proxies (CIDRs) whose `X-Forwarded-For`, or PROXY header, names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Trusted proxies open each connection with a PROXY protocol v2 header (and `X-Forwarded-For` is ignored).
    pub proxy_protocol: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 90_000,
            max_connections: 4_096,
            max_connections_per_client: 64,
            max_body_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

/// Descriptors kept out of every listener's reach: the process's gRPC connections, database pool, files.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the process's open-file limit to its hard limit (a server's descriptors are its connections); returns
/// the limit now in force, `None` when unlimited.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), maximum) = (limit.current, limit.maximum)
        && maximum.is_none_or(|maximum| current < maximum)
    {
        let raised = Rlimit { current: maximum, maximum };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%err, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The connections a listener may hold: its configured cap, within the process's open-file limit — raised to its
/// hard limit first, as a server should — less [`RESERVED_DESCRIPTORS`]. Past the limit, accepting would fail with
/// "too many open files" for every client instead of refusing the newest connection.
fn connection_cap(listener: &'static str, configured: usize) -> usize {
    let Some(soft) = raise_open_file_limit() else { return configured.max(1) };
    let room = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1);
    if configured > room {
        tracing::warn!(
            listener,
            configured,
            open_file_limit = soft,
            cap = room,
            "max_connections lowered to fit the open-file limit"
        );
        return room;
    }
    configured.max(1)
}

/// A body declared past the limit is still read (and dropped) up to this size before it is refused.
const DRAIN_LIMIT: u64 = 1 << 20;

/// How long connections get to finish their requests after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown`, then lets open connections finish
/// their requests for a while. `name` labels the listener's metrics and logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let server = Arc::new(Server {
        name,
        trusted: TrustedProxies::new(config.trusted_proxies.clone()),
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        router: router.layer(DefaultBodyLimit::max(config.max_body_bytes)),
        slots: Arc::new(Semaphore::new(connection_cap(name, config.max_connections))),
        per_client: ClientCounts::new(config.max_connections_per_client.max(1)),
        draining: CancellationToken::new(),
        config,
    });
    let tasks = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                if let Some(admitted) = server.admit(peer) {
                    tasks.spawn(server.clone().connection(stream, peer, admitted));
                }
            }
            Err(err) => backoff.failed(name, &err).await,
        }
    }
    drop(listener);
    server.draining.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::info!(listener = name, "connections still open after the drain period are closed");
    }
}

struct Server {
    name: &'static str,
    config: ListenerConfig,
    trusted: TrustedProxies,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    slots: Arc<Semaphore>,
    per_client: Arc<ClientCounts>,
    draining: CancellationToken,
}

/// What an admitted connection holds until it closes.
struct Admitted {
    _slot: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
    /// The peer is a trusted proxy.
    from_proxy: bool,
    /// `quarry_http_connections_open`, counted down when the connection ends, however it ends.
    open: metrics::Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl Server {
    fn admit(&self, peer: SocketAddr) -> Option<Admitted> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refused("max_connections");
            return None;
        };
        let peer_ip = client_addr::canonical(peer.ip());
        let from_proxy = self.trusted.contains(peer_ip);
        let client = if from_proxy {
            None
        } else {
            let Some(client) = self.per_client.enter(peer_ip) else {
                self.refused("max_connections_per_client");
                return None;
            };
            Some(client)
        };
        let open = metrics::gauge!("quarry_http_connections_open", "listener" => self.name);
        open.increment(1.0);
        Some(Admitted { _slot: slot, _client: client, from_proxy, open })
    }

    fn refused(&self, reason: &'static str) {
        metrics::counter!("quarry_http_connections_refused_total", "listener" => self.name, "reason" => reason)
            .increment(1);
    }

    fn closed(&self, reason: &'static str) {
        metrics::counter!("quarry_http_connections_closed_total", "listener" => self.name, "reason" => reason)
            .increment(1);
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, mut admitted: Admitted) {
        crate::tcp::no_delay(&mut stream);
        let handshake_by = tokio::time::Instant::now() + self.ms(self.config.handshake_timeout_ms);
        let mut client = SocketAddr::new(client_addr::canonical(peer.ip()), peer.port());
        if admitted.from_proxy && self.config.proxy_protocol {
            match tokio::time::timeout_at(handshake_by, read_proxy_header(&mut stream)).await {
                Ok(Ok(ProxyHeader::Proxied { source })) => {
                    client = source;
                    match self.per_client.enter(source.ip()) {
                        Some(slot) => admitted._client = Some(slot),
                        None => return self.refused("max_connections_per_client"),
                    }
                }
                Ok(Ok(ProxyHeader::Local)) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "PROXY header refused");
                    return self.closed("proxy_header");
                }
                Err(_) => return self.closed("handshake_timeout"),
            }
        }
        let watched = Watched::new(stream);
        let activity = watched.activity.clone();
        match &self.tls {
            Some(acceptor) => match tokio::time::timeout_at(handshake_by, acceptor.accept(watched)).await {
                Ok(Ok(tls)) => self.serve_http(tls, client, admitted.from_proxy, activity).await,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    self.closed("handshake_failed");
                }
                Err(_) => self.closed("handshake_timeout"),
            },
            None => self.serve_http(watched, client, admitted.from_proxy, activity).await,
        }
    }

    async fn serve_http<IO>(&self, io: IO, client: SocketAddr, from_proxy: bool, activity: Arc<Activity>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let believe_forwarded = from_proxy && !self.config.proxy_protocol;
        let (router, trusted, timeout) =
            (self.router.clone(), self.trusted.clone(), self.ms(self.config.request_timeout_ms));
        let max_body = self.config.max_body_bytes;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let address = if believe_forwarded {
                let values = request.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
                let values: Vec<&str> = values.collect();
                SocketAddr::new(trusted.forwarded_client(client.ip(), values.into_iter()), client.port())
            } else {
                client
            };
            request.extensions_mut().insert(ConnectInfo(address));
            let declared_len =
                request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let (router, in_flight) = (router.clone(), InFlight::enter(&requests));
            async move {
                if let Some(len) = declared_len.filter(|len| *len > max_body as u64) {
                    // Read (and dropped) first, up to a point, so that the client is not still sending when the
                    // answer comes and the connection closes: a reset would lose the answer.
                    if len <= DRAIN_LIMIT {
                        let mut body = request.into_body();
                        let drained = async { while let Some(Ok(_)) = body.frame().await {} };
                        let _ = tokio::time::timeout(timeout, drained).await;
                    }
                    return Ok::<_, Infallible>(body_too_large(max_body));
                }
                let answer = tokio::time::timeout(timeout, router.oneshot(request.map(axum::body::Body::new))).await;
                drop(in_flight);
                Ok(match answer {
                    // A body past the limit without a Content-Length is refused by the extractor, in plain text.
                    Ok(Ok(response))
                        if response.status() == http::StatusCode::PAYLOAD_TOO_LARGE && !is_problem(&response) =>
                    {
                        body_too_large(max_body)
                    }
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => problem(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "serverInternal",
                        format!("the request was not completed within {} s", timeout.as_secs()),
                    ),
                })
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.ms(self.config.header_read_timeout_ms))
            .max_buf_size(64 * 1024);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(64).max_header_list_size(64 * 1024);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = activity.idle_for(self.ms(self.config.idle_timeout_ms));
        tokio::pin!(idle);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%client, %err, "connection ended with an error");
                }
                return;
            }
            () = &mut idle => {
                self.closed("idle");
                return;
            }
            () = self.draining.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            _ = connection => {}
            () = idle => {}
        }
    }

    fn ms(&self, ms: u64) -> Duration {
        Duration::from_millis(ms.max(1))
    }
}

/// Reads a PROXY protocol v2 header, exactly its bytes and nothing of what follows.
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<ProxyHeader> {
    let invalid = |err: client_addr::ProxyHeaderError| io::Error::new(io::ErrorKind::InvalidData, err);
    let mut header = vec![0u8; client_addr::PROXY_V2_PREFIX_LEN];
    stream.read_exact(&mut header).await?;
    let prefix: &[u8; client_addr::PROXY_V2_PREFIX_LEN] =
        header[..].try_into().map_err(|_| io::ErrorKind::InvalidData)?;
    let len = client_addr::proxy_v2_block_len(prefix).map_err(invalid)?;
    header.resize(client_addr::PROXY_V2_PREFIX_LEN + len, 0);
    stream.read_exact(&mut header[client_addr::PROXY_V2_PREFIX_LEN..]).await?;
    client_addr::parse_proxy_v2(&header).map_err(invalid)
}

/// A problem document (RFC 7807) of ACME's error namespace: what an ACME client can read, from any listener.
fn problem(status: http::StatusCode, kind: &str, detail: String) -> axum::response::Response {
    let body = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status.as_u16(),
    });
    let mut response = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(PROBLEM_JSON));
    response
}

const PROBLEM_JSON: &str = "application/problem+json";

fn body_too_large(max: usize) -> axum::response::Response {
    problem(http::StatusCode::PAYLOAD_TOO_LARGE, "malformed", format!("request body too large (at most {max} bytes)"))
}

fn is_problem(response: &axum::response::Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;

    /// A server on a loopback port answering `GET /` with the client address it was given.
    async fn echo_server(config: ListenerConfig) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = |ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.ip().to_string() };
        let router = axum::Router::new().route("/", axum::routing::get(echo));
        tokio::spawn(serve("test", listener, None, router, config, std::future::pending()));
        addr
    }

    async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Sends `bytes` and reads until the server closes (at most 5 s).
    async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> String {
        stream.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_trusted_proxys_proxy_header_names_the_client_and_no_one_elses_does() {
        let trusted = vec!["127.0.0.1/32".parse().unwrap()];
        let addr =
            echo_server(ListenerConfig { proxy_protocol: true, trusted_proxies: trusted, ..Default::default() }).await;
        let mut header = client_addr::PROXY_V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb]);
        header.extend(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = exchange(&mut connect_from([127, 0, 0, 1], addr).await, &header).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("203.0.113.7"), "{answer}");
        // The same bytes from a peer that is not a trusted proxy are not HTTP: refused, and nobody is 203.0.113.7.
        let answer = exchange(&mut connect_from([127, 0, 0, 2], addr).await, &header).await;
        assert!(!answer.contains("203.0.113.7") && !answer.starts_with("HTTP/1.1 200"), "{answer}");
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = exchange(&mut connect_from([127, 0, 0, 2], addr).await, plain).await;
        assert!(answer.ends_with("127.0.0.2"), "{answer}");
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed() {
        let config = ListenerConfig { header_read_timeout_ms: 300, idle_timeout_ms: 300, ..Default::default() };
        let addr = echo_server(config).await;
        let started = Instant::now();
        // Never a byte: closed once idle.
        let idle = exchange(&mut connect_from([127, 0, 0, 1], addr).await, b"").await;
        assert!(idle.is_empty() && started.elapsed() < Duration::from_secs(3), "{idle} after {:?}", started.elapsed());
        // Half a request's headers, then silence: closed by the header timeout.
        let started = Instant::now();
        let slow = exchange(&mut connect_from([127, 0, 0, 1], addr).await, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        assert!(
            !slow.contains("200") && started.elapsed() < Duration::from_secs(3),
            "{slow} after {:?}",
            started.elapsed()
        );
        // A keep-alive connection answered once, then quiet: closed once idle.
        let started = Instant::now();
        let answered =
            exchange(&mut connect_from([127, 0, 0, 1], addr).await, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answered.starts_with("HTTP/1.1 200") && started.elapsed() < Duration::from_secs(3), "{answered}");
    }

    /// A client address holding its cap of connections gets the next one closed at once; another address is
    /// served meanwhile, and the address is served again once it lets one go.
    #[tokio::test]
    async fn connections_past_the_per_client_cap_are_refused() {
        let addr = echo_server(ListenerConfig { max_connections_per_client: 2, ..Default::default() }).await;
        let keep_alive = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..2 {
            // Answered, so the server has admitted it, and kept open.
            let mut stream = connect_from([127, 0, 0, 3], addr).await;
            stream.write_all(keep_alive).await.unwrap();
            let mut answer = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer[..read.unwrap().unwrap()]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            held.push(stream);
        }
        let close = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let refused = exchange(&mut connect_from([127, 0, 0, 3], addr).await, close).await;
        assert!(refused.is_empty(), "a third connection from the address was served: {refused}");
        let other = exchange(&mut connect_from([127, 0, 0, 4], addr).await, close).await;
        assert!(other.ends_with("127.0.0.4"), "{other}");

        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let again = exchange(&mut connect_from([127, 0, 0, 3], addr).await, close).await;
            if again.ends_with("127.0.0.3") {
                break;
            }
            assert!(Instant::now() < deadline, "the address was not served again after letting one go: {again}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn bodies_past_the_limit_get_a_problem() {
        let addr = echo_server(ListenerConfig { max_body_bytes: 16, ..Default::default() }).await;
        let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\nConnection: close\r\n\r\n01234567890123456";
        let answer = exchange(&mut connect_from([127, 0, 0, 1], addr).await, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("urn:ietf:params:acme:error:malformed"),
            "{answer}"
        );
    }

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let cap = connection_cap("test", usize::MAX);
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(soft) = soft {
            assert!(cap as u64 <= soft.saturating_sub(RESERVED_DESCRIPTORS).max(1), "{cap} within {soft}");
        }
        assert_eq!(connection_cap("test", 8), 8, "a cap within the limit is kept");
    }
}
