//! One replica's HTTP/2 connection, shared by every call to it: opened when first needed and again when lost, each
//! call's HEADERS and DATA queued on it by the caller's own task.
//!
//! tonic's `Channel` put two more tasks on the way of every call: a buffer task in front of the connection (each call
//! went to it through a queue, and it handed the call to hyper's), and hyper's, which runs a request body in a task
//! of its own (the body's "pipe", waiting for the send window the connection's task assigns). Each is one more task
//! woken and polled per call; on this project's two-core machines, where a service's processes take turns, about
//! 1.5 % of the stack's CPU for the buffer alone. Here the callers share h2's `SendRequest`, and a unary call's
//! frames are queued as the call is made: h2 keeps data sent beyond the window until the window opens. What of a body
//! is not ready at once (a streaming request), or comes after its first 64 KiB, is sent by a task of its own, as
//! the window allows.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::uri::{Authority, Scheme, Uri};
use hyper::body::Body as HttpBody;
use tokio::net::TcpStream;
use tonic::Status;
use tonic::body::Body;

use rustls::pki_types::ServerName;

use super::GrpcError;
use super::streams::{ResponseBody, pipe, queue_ready_frames};
use crate::config::{ConfigError, TlsFiles};
use crate::tls::MutualTls;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Idle or not, a connection is pinged this often, so that a replica gone without a word (its node lost) is noticed
/// before a call waits on it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Opening a connection (TCP and the TLS handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 windows, the largest header block taken, the streams opened before the server's settings say how many it
/// takes, and the data kept per stream beyond its window, as hyper's client sets them (h2's own windows are 64 KiB).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;

/// The connection to one replica, opened lazily (services may start in any order); cheap to clone, clones share it.
/// It sets no timeout on calls: each carries its deadline (`grpc-timeout`), which the caller also enforces.
#[derive(Clone)]
pub struct ReplicaConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConnection").field("addr", &self.shared.addr).finish()
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

/// What a connection runs over.
enum Transport {
    /// Mutual TLS, as between every service.
    Tls(ClientTls),
    /// Plain TCP whose writes are counted: for the tests of what a call writes.
    #[cfg(test)]
    CountedWrites(Arc<std::sync::atomic::AtomicUsize>),
}

struct Shared {
    addr: SocketAddr,
    /// The URI's authority every request carries (`:authority`).
    authority: Authority,
    transport: Transport,
    /// The connection opened last, if any.
    open: Mutex<Option<Open>>,
    /// Held while a connection is being opened, so that callers finding none open one between them; it keeps when
    /// the last attempt failed and why, so that callers who waited for that attempt share its answer.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// An open connection: h2's handle to it, and whether its task has ended.
#[derive(Clone)]
struct Open {
    sender: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Arc<AtomicBool>,
}

impl Open {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl ReplicaConnection {
    pub(crate) fn new(addr: SocketAddr, tls: ClientTls) -> Self {
        Self::over(addr, Transport::Tls(tls))
    }

    fn over(addr: SocketAddr, transport: Transport) -> Self {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is a URI authority");
        Self {
            shared: Arc::new(Shared {
                addr,
                authority,
                transport,
                open: Mutex::new(None),
                opening: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl tower::Service<http::Request<Body>> for ReplicaConnection {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: a call opens the connection itself if it must, and h2 queues streams past the peer's limit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let (mut parts, body) = request.into_parts();
        parts.uri = shared.absolute(&parts.uri);
        let head = http::Request::from_parts(parts, ());
        // Queued on the open connection now, while the caller's task runs, when there is one. The head is kept
        // (a few shared header values) in case that connection turns out to have ended.
        let started = match shared.current() {
            Some(open) => start(open, head.clone(), body),
            None => Err(NotStarted { body, refused: None }),
        };
        Box::pin(async move {
            let response = match started {
                Ok(response) => response,
                // h2 refused the stream for the request alone (a header it does not take): so would another connection.
                Err(NotStarted { refused: Some(Refused::Request(error)), .. }) => return Err(error),
                // No connection, or h2 found it failed before opening the stream: the request never left.
                Err(NotStarted { body, .. }) => {
                    shared.forget_closed();
                    let open = shared.connected().await?;
                    start(open, head, body).map_err(|not| match not.refused {
                        Some(Refused::Request(error) | Refused::Connection(error)) => error,
                        None => "no connection".into(),
                    })?
                }
            };
            let response = response.await?;
            Ok(response.map(ResponseBody::new))
        })
    }
}

/// A request whose stream was not opened, with its body (not yet polled) and why.
struct NotStarted {
    body: Body,
    /// `None`: there was no connection to open it on.
    refused: Option<Refused>,
}

/// Why h2 refused to open a stream.
enum Refused {
    /// The connection has failed (it is marked ended).
    Connection(BoxError),
    /// Something about the request alone.
    Request(BoxError),
}

/// Opens a stream for `head` on `open` and queues `body`'s frames that are ready now; the rest of a body not finished
/// then is sent by a task of its own. When h2 finds the connection failed, the connection is marked ended.
fn start(open: Open, head: http::Request<()>, mut body: Body) -> Result<h2::client::ResponseFuture, NotStarted> {
    let mut sender = open.sender.clone();
    let ends_now = body.is_end_stream();
    let (response, mut stream) = match sender.send_request(head, ends_now) {
        Ok(started) => started,
        Err(error) => {
            // A clone has no stream pending: `poll_ready` fails only on a connection error.
            let refused = if let Some(Err(_)) = futures::future::poll_fn(|cx| sender.poll_ready(cx)).now_or_never() {
                open.closed.store(true, Ordering::Release);
                Refused::Connection(Box::new(error))
            } else {
                Refused::Request(Box::new(error))
            };
            return Err(NotStarted { body, refused: Some(refused) });
        }
    };
    // A body that fails resets the stream, and the response says so.
    if !ends_now && queue_ready_frames(&mut body, &mut stream) == Ok(false) {
        tokio::spawn(pipe(body, stream));
    }
    Ok(response)
}

impl Shared {
    /// `uri` (a path, as tonic's clients make it) with this replica's scheme and authority.
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        // An `Option` replaced whole: a poisoned lock still guards a sound value.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection, if there is one that has not ended.
    fn current(&self) -> Option<Open> {
        self.open().as_ref().filter(|open| !open.is_closed()).cloned()
    }

    /// Forgets the connection if it has ended, so that the next caller opens another.
    fn forget_closed(&self) {
        let mut open = self.open();
        if open.as_ref().is_some_and(Open::is_closed) {
            *open = None;
        }
    }

    /// The open connection, opening one if none is open. A caller who waited while another opened one that failed
    /// gets that failure rather than trying again at once.
    async fn connected(&self) -> Result<Open, BoxError> {
        let waiting_since = Instant::now();
        let mut last_failure = self.opening.lock().await;
        if let Some(open) = self.current() {
            return Ok(open);
        }
        if let Some((at, why)) = last_failure.as_ref()
            && *at >= waiting_since
        {
            return Err(Box::new(Status::unavailable(why.clone())));
        }
        let why = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(open)) => {
                *last_failure = None;
                *self.open() = Some(open.clone());
                return Ok(open);
            }
            Ok(Err(why)) => why,
            Err(_) => format!("error trying to connect to {}: no connection within {CONNECT_TIMEOUT:?}", self.addr),
        };
        *last_failure = Some((Instant::now(), why.clone()));
        // `peer::classify` knows from "tcp connect error" and "error trying to connect" that the request never left.
        Err(Box::new(Status::unavailable(why)))
    }

    /// Opens a connection: TCP, then TLS with the identity in the files at that moment (tonic's own TLS would keep
    /// the identity it was built with for the life of the process), then HTTP/2.
    async fn connect(&self) -> Result<Open, String> {
        let addr = self.addr;
        let mut stream = TcpStream::connect(addr).await.map_err(|err| format!("tcp connect error: {err} ({addr})"))?;
        crate::tcp::no_delay(&mut stream);
        match &self.transport {
            Transport::Tls(tls) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|err| format!("error trying to connect to {addr}: TLS handshake: {err}"))?;
                http2(stream, addr).await
            }
            #[cfg(test)]
            Transport::CountedWrites(writes) => http2(tests::CountedWrites::new(stream, writes), addr).await,
        }
    }
}

/// Starts HTTP/2 over `io` to the replica at `addr`, and spawns the connection's task: it runs until the connection
/// fails, a ping goes unanswered, or nothing uses the connection any more (h2 closes it once the last handle and the
/// last stream are gone).
async fn http2<T>(io: T, addr: SocketAddr) -> Result<Open, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|err| format!("error trying to connect to {addr}: HTTP/2 handshake: {err}"))?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    let ended = Arc::clone(&closed);
    tokio::spawn(async move {
        let why = tokio::select! {
            result = &mut connection => result.err().map_or_else(|| "closed".to_owned(), |err| err.to_string()),
            why = keep_alive(ping_pong) => why.to_owned(),
        };
        ended.store(true, Ordering::Release);
        tracing::debug!(%addr, %why, "connection to a replica ended");
    });
    Ok(Open { sender, closed })
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`] until one goes unanswered for [`KEEP_ALIVE_TIMEOUT`]: why it stopped.
async fn keep_alive(ping_pong: Option<h2::PingPong>) -> &'static str {
    let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "a ping failed",
            Err(_) => return "a ping went unanswered",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpListener;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// A socket that counts the writes that reach it.
    pub(super) struct CountedWrites {
        io: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountedWrites {
        pub(super) fn new(io: TcpStream, writes: &Arc<AtomicUsize>) -> Self {
            Self { io, writes: Arc::clone(writes) }
        }

        fn counted(&self, written: &Poll<std::io::Result<usize>>) {
            if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl AsyncRead for CountedWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountedWrites {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            self.counted(&written);
            written
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            self.counted(&written);
            written
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A connection whose writes are counted, to a loopback listener that serves each connection with `serve`.
    async fn counted_connection<F, Fut>(serve: F) -> (ReplicaConnection, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        let writes = Arc::new(AtomicUsize::new(0));
        (ReplicaConnection::over(addr, Transport::CountedWrites(Arc::clone(&writes))), writes)
    }

    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write() {
        let (reporter, health) = tonic_health::server::health_reporter();
        // Long enough that the request's DATA frame passes h2's 256-byte threshold for chaining a frame's bytes.
        let service = "quarry.test.".repeat(30);
        reporter.set_service_status(&service, tonic_health::ServingStatus::Serving).await;
        let (connection, writes) = counted_connection(move |stream| {
            let server = tonic::transport::Server::builder().add_service(health.clone());
            async move {
                let _ = server.serve_with_incoming(futures::stream::iter([Ok::<_, std::io::Error>(stream)])).await;
            }
        })
        .await;
        let mut client = HealthClient::new(connection);
        let check = HealthCheckRequest { service: service.clone() };
        tokio::time::timeout(Duration::from_secs(10), client.check(check.clone()))
            .await
            .expect("in time")
            .expect("the first check, opening the connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = writes.load(Ordering::SeqCst);
        for _ in 0..20 {
            tokio::time::timeout(Duration::from_secs(10), client.check(check.clone()))
                .await
                .expect("in time")
                .expect("a check");
        }
        // HEADERS and one DATA frame carrying END_STREAM, in one write; nothing else.
        assert_eq!(writes.load(Ordering::SeqCst) - before, 20, "writes for 20 calls");
    }

    #[tokio::test]
    async fn a_body_not_ready_at_once_is_sent_as_it_comes_and_long_bodies_pass_both_windows() {
        // Echoes each request's body.
        let (connection, _) = counted_connection(|stream| async move {
            let echo = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), echo)
                .await;
        })
        .await;
        // Three MiB, more than either side's window: the first MiB ready at once, the rest a moment later.
        let chunk = |byte: u8| Bytes::from(vec![byte; 1024 * 1024]);
        let (more, frames) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        more.send(Ok(Frame::data(chunk(1)))).await.unwrap();
        let body = Body::new(StreamBody::new(tokio_stream_of(frames)));
        let mut connection = connection;
        let call = tower::Service::call(&mut connection, http::Request::post("/echo").body(body).unwrap());
        let feeding = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            more.send(Ok(Frame::data(chunk(2)))).await.unwrap();
            more.send(Ok(Frame::data(chunk(3)))).await.unwrap();
        });
        let response =
            tokio::time::timeout(Duration::from_secs(10), call).await.expect("answered").expect("a response");
        let echoed = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("the whole body")
            .expect("no error")
            .to_bytes();
        feeding.await.unwrap();
        assert_eq!(echoed.len(), 3 * 1024 * 1024);
        assert!(echoed[..1024 * 1024].iter().all(|b| *b == 1) && echoed[2 * 1024 * 1024..].iter().all(|b| *b == 3));
    }

    /// The frames sent on `frames`, as a stream that ends when the sender is dropped.
    fn tokio_stream_of<T: Send + 'static>(
        mut frames: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| frames.poll_recv(cx))
    }
}
