//! What every TCP server of the CA shares, HTTP and gRPC alike: the one option each request/response socket sets,
//! and the backoff of a listener whose accepts fail.

use std::io;
use std::time::{Duration, Instant};

/// Turns Nagle's algorithm off: requests and replies here are small and end one side's turn, so holding the last
/// segment until the peer's delayed ACK only adds latency (it halved the stack's throughput). For servers, pass it
/// to `axum::serve::ListenerExt::tap_io`.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY");
    }
}

/// Accept errors (out of file descriptors, mostly) back off from 5 ms to 1 s, and are logged once a second at most.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    wait: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    pub(crate) fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }

    /// The wait after one more failure.
    fn next_wait(&mut self) -> Duration {
        self.wait = (self.wait * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        self.wait
    }

    pub(crate) async fn failed(&mut self, listener: &'static str, err: &io::Error) {
        self.next_wait();
        metrics::counter!("quarry_http_accept_errors_total", "listener" => listener).increment(1);
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(listener, %err, also_failed = self.unlogged, backoff = ?self.wait, "accept failed");
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(self.wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_to_a_second() {
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u64> = (0..10).map(|_| backoff.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000], "not a spin");
        backoff.succeeded();
        assert_eq!(backoff.next_wait(), Duration::from_millis(5));
    }
}
