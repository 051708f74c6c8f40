//! One replica's HTTP/2 connection, shared by every call to it: opened when first needed and again when lost, each
//! call handed straight to hyper's connection task.
//!
//! tonic's `Channel` puts a buffer task in front of the connection so that the channel can be cloned: each call went
//! to that task through a queue, and the task handed it to the connection's — one more task woken and polled per
//! call, about 1.5 % of the stack's CPU by the profiles, for a queue hyper already has (its `SendRequest` is cheap to
//! clone and sends without waiting). Here the callers share the connection's `SendRequest` behind a lock held only to
//! send, and take turns opening a connection when there is none.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::body::Body;

use super::client::ClientTls;
use super::coalesced_writes::CoalescedWrites;

type BoxError = Box<dyn StdError + Send + Sync>;
type Sender = SendRequest<Body>;

/// Idle connections are pinged this often, so that a replica gone without a word (its node lost) is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Opening a connection (TCP and the TLS handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

struct Shared {
    addr: SocketAddr,
    /// The URI's authority every request carries (`:authority`).
    authority: Authority,
    tls: ClientTls,
    /// The open connection's sender, if one is open.
    sender: Mutex<Option<Sender>>,
    /// Held while a connection is being opened, so that callers finding none open one between them; it keeps when
    /// the last attempt failed and why, so that callers who waited for that attempt share its answer.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl ReplicaConnection {
    pub(crate) fn new(addr: SocketAddr, tls: ClientTls) -> Self {
        let authority = Authority::try_from(addr.to_string()).expect("a socket address is a URI authority");
        Self {
            shared: Arc::new(Shared {
                addr,
                authority,
                tls,
                sender: Mutex::new(None),
                opening: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl tower::Service<http::Request<Body>> for ReplicaConnection {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: a call opens the connection itself if it must, and hyper queues what it cannot send yet.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        *request.uri_mut() = shared.absolute(request.uri());
        // Handed to the connection now, while the caller's task runs, when one is open.
        let sent = match shared.open_sender() {
            Some(mut sender) => Ok(sender.try_send_request(request)),
            None => Err(request),
        };
        Box::pin(async move {
            let request = match sent {
                Err(request) => request,
                Ok(sent) => match sent.await {
                    Ok(response) => return Ok(response),
                    Err(mut error) => match error.take_message() {
                        // It never reached the connection (closed since): it goes on a new one.
                        Some(request) => request,
                        None => return Err(error.into_error().into()),
                    },
                },
            };
            let mut sender = shared.connected().await?;
            Ok(sender.send_request(request).await?)
        })
    }
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

    fn sender(&self) -> std::sync::MutexGuard<'_, Option<Sender>> {
        // An `Option` replaced whole: a poisoned lock still guards a sound value.
        self.sender.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sender on the open connection, if there is one that is not closed.
    fn open_sender(&self) -> Option<Sender> {
        self.sender().as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    /// The open connection's sender, opening a connection if none is open. A caller who waited while another opened
    /// one that failed gets that failure rather than trying again at once.
    async fn connected(&self) -> Result<Sender, BoxError> {
        let waiting_since = Instant::now();
        let mut last_failure = self.opening.lock().await;
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        if let Some((at, why)) = last_failure.as_ref()
            && *at >= waiting_since
        {
            return Err(Box::new(Status::unavailable(why.clone())));
        }
        let why = match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(Ok(sender)) => {
                *last_failure = None;
                *self.sender() = Some(sender.clone());
                return Ok(sender);
            }
            Ok(Err(why)) => why,
            Err(_) => format!("error trying to connect to {}: no connection within {CONNECT_TIMEOUT:?}", self.addr),
        };
        *last_failure = Some((Instant::now(), why.clone()));
        // `peer::classify` knows from "tcp connect error" and "error trying to connect" that the request never left.
        Err(Box::new(Status::unavailable(why)))
    }

    /// Opens a connection: TCP, then TLS with the identity in the files at that moment (tonic's own TLS would keep
    /// the identity it was built with for the life of the process), then HTTP/2, whose task is spawned.
    async fn open(&self) -> Result<Sender, String> {
        let addr = self.addr;
        let mut stream = TcpStream::connect(addr).await.map_err(|err| format!("tcp connect error: {err} ({addr})"))?;
        crate::tcp::no_delay(&mut stream);
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls.config));
        let stream = connector
            .connect(self.tls.server_name.clone(), stream)
            .await
            .map_err(|err| format!("error trying to connect to {addr}: TLS handshake: {err}"))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .handshake(TokioIo::new(CoalescedWrites::new(stream)))
            .await
            .map_err(|err| format!("error trying to connect to {addr}: HTTP/2 handshake: {err}"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%addr, %err, "connection to a replica ended");
            }
        });
        Ok(sender)
    }
}
