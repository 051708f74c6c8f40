//! A peer service reached through every one of its replicas: the addresses discovery finds (re-resolved as replicas
//! come and go), one lazily connecting mutual-TLS channel per replica, each call sent to the next replica in the
//! caller's lane (its share of the replicas, `lane`; round robin without one) that is not failing, and a failed call
//! retried on another replica when running it twice is harmless.
//!
//! A replica is "failing" after a transport failure (refused connection, reset stream, broken connection) or an
//! `unavailable` answer; it is skipped for a back-off that doubles with each failure (up to half a minute) and tried
//! again after it, so a restarted replica is back in the rotation within moments of answering again.
//!
//! Which calls are retried: an idempotent RPC (the proto files say which) after any of those failures, on another
//! replica, while its deadline lasts; any RPC when the request surely never reached a server (the connection was
//! refused, or the server refused the stream before reading it). Answers — problems, not-found, invalid arguments —
//! are never retried.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tonic::{Code, Request, Response, Status};

use crate::config::{GrpcClientConfig, TlsFiles};
use crate::discovery::{Discovery, Target};
use crate::grpc::GrpcError;
use crate::grpc::client::{Channel, ClientTls, check_health, client_tls, replica_channel};
use crate::lane::Lane;

/// The most attempts one call makes, across replicas.
const MAX_ATTEMPTS: usize = 3;
/// A failing replica is skipped this long after its first failure, twice as long after each further one…
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// …up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Before trying a replica already tried in this call (every replica has failed it), wait this long times the
/// attempt number: a replica being restarted gets a moment.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Whether an RPC may safely run twice; the proto files mark each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    /// Running it twice has the effect of running it once (reads; writes that are conditional or keyed): retried on
    /// another replica after any transport failure or `unavailable` answer.
    Idempotent,
    /// Retried only when the request surely never reached a server.
    NotIdempotent,
}

/// What a failed call says about the replica and about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The replica answered (a problem, not found, a refused argument…): it is healthy, and the answer stands.
    Answered,
    /// The replica answered that it cannot serve now (its database is down, it is stopping).
    Unavailable,
    /// The request never reached a server: connection refused, or the stream refused before it was read.
    NotSent,
    /// The connection broke while the request was out: it may or may not have run.
    Broken,
    /// The deadline passed.
    TimedOut,
}

/// Classifies a failed call's status.
pub fn classify(status: &Status) -> Failure {
    if let Some(kind) = crate::grpc::problem_kind(status) {
        return if kind == crate::ErrorKind::Unavailable { Failure::Unavailable } else { Failure::Answered };
    }
    let message = status.message();
    match status.code() {
        Code::DeadlineExceeded => Failure::TimedOut,
        // tonic's own client timeout.
        Code::Cancelled if message.contains("Timeout expired") => Failure::TimedOut,
        Code::Unavailable
            if message.contains("tcp connect error")
                || message.contains("error trying to connect")
                || message.contains("Connection refused")
                || message.contains("REFUSED_STREAM")
                || message.contains("refused stream") =>
        {
            Failure::NotSent
        }
        Code::Unavailable | Code::Cancelled | Code::Unknown => Failure::Broken,
        Code::Internal if message.starts_with("h2 protocol error") || message.contains("transport error") => {
            Failure::Broken
        }
        _ => Failure::Answered,
    }
}

fn may_retry(idempotence: Idempotence, failure: Failure) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::Unavailable | Failure::Broken => idempotence == Idempotence::Idempotent,
        Failure::Answered | Failure::TimedOut => false,
    }
}

/// One replica of the peer.
struct Replica {
    addr: SocketAddr,
    channel: Channel,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures.
    failures: u32,
    /// Skipped until then.
    down_until: Option<Instant>,
}

impl Replica {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Two plain fields, each written whole: a poisoned lock still guards a sound value.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When it may be tried again; `None`: now.
    fn down_until(&self, now: Instant) -> Option<Instant> {
        self.health().down_until.filter(|until| *until > now)
    }

    fn succeeded(&self) {
        let mut health = self.health();
        health.failures = 0;
        health.down_until = None;
    }

    fn failed(&self) {
        let mut health = self.health();
        health.failures = health.failures.saturating_add(1);
        health.down_until = Some(Instant::now() + backoff(health.failures));
    }
}

/// How long a replica is skipped after its `failures`-th consecutive failure.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << (failures.clamp(1, 8) - 1)).min(MAX_BACKOFF)
}

/// Every replica of one peer service; cheap to clone (clones share replicas and their health).
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.inner.name).field("replicas", &self.replicas()).finish()
    }
}

struct Inner {
    /// The peer's certificate name, which also names it in logs and metrics.
    name: String,
    tls: ClientTls,
    timeout: Duration,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    /// Becomes true once the first resolution has finished.
    resolved: watch::Sender<bool>,
    /// Asks the resolution task for an early look-up.
    resolve_soon: Arc<Notify>,
    /// Calls picked so far: the turn that, with the lane, says which replica comes first.
    next: AtomicUsize,
    lane: Lane,
}

impl Peer {
    /// The peer `config` names, called round robin; a name is resolved in the background, now and every few seconds.
    pub fn new(config: &GrpcClientConfig, tls: &TlsFiles) -> Result<Self, GrpcError> {
        Self::in_lane(config, tls, &Lane::default())
    }

    /// The peer `config` names, each call sent first to the replica `lane` says.
    pub fn in_lane(config: &GrpcClientConfig, tls: &TlsFiles, lane: &Lane) -> Result<Self, GrpcError> {
        let target = Target::parse(&config.address)?;
        let tls = client_tls(&config.server_name, tls)?;
        let (resolved, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: config.server_name.clone(),
            tls,
            timeout: Duration::from_millis(config.timeout_ms),
            replicas: RwLock::default(),
            resolved,
            resolve_soon: Arc::default(),
            next: AtomicUsize::new(0),
            lane: lane.clone(),
        });
        match target.fixed() {
            Some(addrs) => {
                inner.set_replicas(addrs)?;
                inner.resolved.send_replace(true);
            }
            None => {
                let discovery = Discovery::new(config.dns_resolver)?;
                tokio::spawn(keep_resolving(Arc::downgrade(&inner), target, discovery));
            }
        }
        Ok(Self { inner })
    }

    /// The peer's certificate name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The replicas known now.
    pub fn replicas(&self) -> Vec<SocketAddr> {
        self.inner.current().iter().map(|replica| replica.addr).collect()
    }

    /// Waits (until `deadline`) for the first resolution, so that a call made right after start-up finds replicas.
    async fn wait_resolved(&self, deadline: Instant) {
        let mut resolved = self.inner.resolved.subscribe();
        let _ = tokio::time::timeout_at(deadline.into(), resolved.wait_for(|done| *done)).await;
    }

    /// The replica for the next attempt: the lane's for this turn, or the next after it that is not failing and not
    /// yet tried in this call; else the untried one back soonest; else, every replica having been tried, the one back
    /// soonest.
    fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Replica>> {
        let replicas = self.inner.current();
        if replicas.is_empty() {
            return None;
        }
        let now = Instant::now();
        let count = replicas.len();
        let start = self.inner.lane.replica(self.inner.next.fetch_add(1, Ordering::Relaxed), count);
        let in_turn = (0..count).map(|offset| &replicas[(start + offset) % count]);
        let untried = |replica: &&Arc<Replica>| !tried.contains(&replica.addr);
        if let Some(replica) = in_turn.clone().filter(untried).find(|replica| replica.down_until(now).is_none()) {
            return Some(Arc::clone(replica));
        }
        let soonest = |replica: &&Arc<Replica>| replica.down_until(now);
        in_turn.clone().filter(untried).min_by_key(soonest).or_else(|| in_turn.min_by_key(soonest)).cloned()
    }

    /// Makes a call — `call(channel, request)` — on a replica, retrying on another as `idempotence` allows, within
    /// `deadline` (the configured timeout when the caller has none). `rpc` names the call in logs and metrics.
    pub async fn call<M, R, F, Fut>(
        &self,
        rpc: &'static str,
        idempotence: Idempotence,
        message: &M,
        deadline: Option<Instant>,
        mut call: F,
    ) -> Result<R, Status>
    where
        M: Clone,
        F: FnMut(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.timeout);
        self.wait_resolved(deadline).await;
        let mut tried = Vec::with_capacity(MAX_ATTEMPTS);
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            let Some(replica) = self.pick(&tried) else { break };
            if tried.contains(&replica.addr) {
                // Every replica has failed this call once: give a restarting one a moment, within the deadline.
                let pause = RETRY_PAUSE.saturating_mul(attempt as u32);
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            let request = crate::grpc::request_with_deadline(message.clone(), Some(deadline));
            let status = match within(deadline, call(replica.channel.clone(), request)).await {
                Ok(response) => {
                    replica.succeeded();
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let failure = classify(&status);
            if matches!(failure, Failure::Answered | Failure::TimedOut) {
                return Err(status);
            }
            self.inner.failed(&replica, rpc, failure, &status);
            if !may_retry(idempotence, failure) || Instant::now() >= deadline {
                return Err(status);
            }
            metrics::counter!("quarry_grpc_client_retries_total", "peer" => self.inner.name.clone(), "rpc" => rpc)
                .increment(1);
            tried.push(replica.addr);
            last = Some(status);
        }
        Err(last.unwrap_or_else(|| Status::unavailable(format!("no replica of {} is known", self.inner.name))))
    }

    /// Makes a call on the replica at `addr` only (a nonce goes back to the replica that minted it), never retried.
    pub async fn call_at<M, R, F, Fut>(
        &self,
        addr: SocketAddr,
        rpc: &'static str,
        message: M,
        deadline: Option<Instant>,
        call: F,
    ) -> Result<R, Status>
    where
        F: FnOnce(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let Some(replica) = self.inner.current().iter().find(|replica| replica.addr == addr).cloned() else {
            return Err(Status::unavailable(format!("{addr} is no longer a replica of {}", self.inner.name)));
        };
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.timeout);
        let request = crate::grpc::request_with_deadline(message, Some(deadline));
        match within(deadline, call(replica.channel.clone(), request)).await {
            Ok(response) => {
                replica.succeeded();
                Ok(response.into_inner())
            }
            Err(status) => {
                let failure = classify(&status);
                if !matches!(failure, Failure::Answered | Failure::TimedOut) {
                    self.inner.failed(&replica, rpc, failure, &status);
                }
                Err(status)
            }
        }
    }

    /// Whether some replica reports `service` as serving (gRPC health); the error says how each one fails.
    pub async fn check_health(&self, service: &str, deadline: Option<Instant>) -> Result<(), String> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.timeout);
        self.wait_resolved(deadline).await;
        let replicas = self.inner.current();
        if replicas.is_empty() {
            return Err(format!("no replica of {} is known", self.inner.name));
        }
        let checks = replicas.iter().map(|replica| async move {
            let health = check_health(replica.channel.clone(), service, Some(deadline)).await;
            (replica.addr, health)
        });
        let results = futures::future::join_all(checks).await;
        if results.iter().any(|(_, health)| health.is_ok()) {
            return Ok(());
        }
        Err(results
            .iter()
            .map(|(addr, health)| format!("{addr} {}", health.as_ref().err().map_or("", String::as_str)))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

impl Inner {
    fn current(&self) -> Arc<Vec<Arc<Replica>>> {
        // Replaced whole, never mutated in place: a poisoned lock still guards a sound list.
        Arc::clone(&self.replicas.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn failed(&self, replica: &Replica, rpc: &'static str, failure: Failure, status: &Status) {
        replica.failed();
        self.resolve_soon.notify_one();
        metrics::counter!("quarry_grpc_client_replica_failures_total", "peer" => self.name.clone()).increment(1);
        tracing::warn!(peer = %self.name, replica = %replica.addr, rpc, ?failure, code = ?status.code(), message = status.message(), "replica failed a call");
    }

    /// Makes `addrs` the replicas, keeping the channel and health of those already known.
    fn set_replicas(&self, addrs: Vec<SocketAddr>) -> Result<(), GrpcError> {
        let current = self.current();
        if current.iter().map(|replica| replica.addr).eq(addrs.iter().copied()) {
            return Ok(());
        }
        let mut replicas = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            match current.iter().find(|replica| replica.addr == *addr) {
                Some(known) => replicas.push(Arc::clone(known)),
                None => replicas.push(Arc::new(Replica {
                    addr: *addr,
                    channel: replica_channel(*addr, self.tls.clone())?,
                    health: Mutex::default(),
                })),
            }
        }
        tracing::info!(peer = %self.name, replicas = ?addrs, "replicas changed");
        metrics::gauge!("quarry_grpc_client_replicas", "peer" => self.name.clone()).set(replicas.len() as f64);
        *self.replicas.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(replicas);
        Ok(())
    }
}

/// `call`, or `deadline_exceeded` once `deadline` has passed: the peer is told the deadline too, but a peer that
/// hangs must not hold the caller longer.
async fn within<R>(
    deadline: Instant,
    call: impl Future<Output = Result<Response<R>, Status>>,
) -> Result<Response<R>, Status> {
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call's deadline passed")))
}

/// Keeps the peer's replicas as the DNS lists them until the peer is dropped; a failed or empty look-up keeps the
/// replicas known before it.
async fn keep_resolving(inner: Weak<Inner>, target: Target, discovery: Discovery) {
    let Some(resolve_soon) = inner.upgrade().map(|inner| Arc::clone(&inner.resolve_soon)) else { return };
    crate::discovery::keep_resolving(target, discovery, resolve_soon, |result| {
        let Some(peer) = inner.upgrade() else { return false };
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                if let Err(err) = peer.set_replicas(addrs) {
                    tracing::error!(peer = %peer.name, %err, "cannot use the replicas found");
                }
            }
            Ok(_) => tracing::warn!(peer = %peer.name, "the DNS lists no replica; keeping those known"),
            Err(err) => tracing::warn!(peer = %peer.name, %err, "cannot look the replicas up; keeping those known"),
        }
        peer.resolved.send_replace(true);
        true
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_they_say_about_the_replica() {
        let answered = Status::from(crate::Problem::not_found("no such order"));
        let refused_by_peer = Status::from(crate::Problem::new(crate::ErrorKind::Unavailable, "database down"));
        let cases = [
            (answered, Failure::Answered),
            (refused_by_peer, Failure::Unavailable),
            (Status::unavailable("tcp connect error: Connection refused (os error 111)"), Failure::NotSent),
            (Status::unavailable("h2 protocol error: stream error received: refused stream"), Failure::NotSent),
            (Status::unknown("transport error"), Failure::Broken),
            (Status::unavailable("connection reset"), Failure::Broken),
            (Status::cancelled("Timeout expired"), Failure::TimedOut),
            (Status::deadline_exceeded("slow"), Failure::TimedOut),
            (Status::invalid_argument("bad"), Failure::Answered),
            (Status::internal("a bug"), Failure::Answered),
        ];
        for (status, expected) in cases {
            assert_eq!(classify(&status), expected, "{status:?}");
        }
    }

    #[test]
    fn only_idempotent_calls_are_retried_after_they_may_have_run() {
        use Failure::*;
        use Idempotence::*;
        assert!(may_retry(NotIdempotent, NotSent));
        assert!(!may_retry(NotIdempotent, Broken));
        assert!(!may_retry(NotIdempotent, Unavailable));
        assert!(may_retry(Idempotent, Broken));
        assert!(may_retry(Idempotent, Unavailable));
        assert!(!may_retry(Idempotent, Answered));
        assert!(!may_retry(Idempotent, TimedOut));
    }

    #[test]
    fn back_off_doubles_up_to_its_bound() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
