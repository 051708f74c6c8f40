//! What the HTTP server keeps for each connection: its place in its client's share of connections, and when it last
//! moved bytes or had a request in flight (the idle timeout).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections open per client address.
pub(super) struct ClientCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One connection's place in its client's count, given back when it closes.
pub(super) struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl ClientCounts {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { counts: Mutex::default(), max })
    }

    pub(super) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are being answered.
pub(super) struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle — no request in flight, no bytes moved — for `limit`.
    pub(super) async fn idle_for(self: &Arc<Self>, limit: Duration) {
        loop {
            let now = self.started.elapsed();
            let quiet = now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= limit {
                return;
            }
            tokio::time::sleep(limit.saturating_sub(quiet).max(Duration::from_millis(100))).await;
        }
    }
}

/// A request being answered: the connection is not idle meanwhile.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records its activity.
pub(super) struct Watched<S> {
    inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S) -> Self {
        let activity =
            Arc::new(Activity { started: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) });
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_gets_its_share_of_connections_and_gives_them_back() {
        let counts = Arc::new(ClientCounts { counts: Mutex::default(), max: 2 });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.enter(ip).unwrap();
        let _second = counts.enter(ip).unwrap();
        assert!(counts.enter(ip).is_none());
        assert!(counts.enter("192.0.2.2".parse().unwrap()).is_some(), "another client has its own share");
        drop(first);
        assert!(counts.enter(ip).is_some());
    }
}
