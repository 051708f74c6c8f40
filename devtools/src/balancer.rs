//! The load balancer in front of the wfe replicas of `quarry dev --replicas N` and of the compose stack (`quarry
//! balance`), as a cloud load balancer stands in front of a Kubernetes Service: each TCP connection (TLS passes
//! through untouched) goes to the next replica in turn, and a replica that refuses connections is skipped, so a
//! killed wfe costs clients at most a reconnect. A backend may be named (`wfe-2:14000`): it is looked up per
//! connection, as containers come and go.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long connecting to one replica may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After an accept error (out of file descriptors…), wait before accepting again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct BalanceArgs {
    /// Where clients connect (repeatable); each listener balances over every backend on its own port.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// A replica, as HOST (the listener's port) or HOST:PORT (repeatable).
    #[arg(long, required = true)]
    backend: Vec<String>,
}

/// Runs `quarry balance` until Ctrl-C or SIGTERM.
pub async fn run(args: BalanceArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let stop = CancellationToken::new();
    for listen in &args.listen {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
        let backends = args
            .backend
            .iter()
            .map(|backend| if backend.contains(':') { backend.clone() } else { format!("{backend}:{}", listen.port()) })
            .collect();
        println!("balancing {listen} over {backends:?}");
        tokio::spawn(serve(listener, backends, stop.clone()));
    }
    quarry_core::shutdown::signal().await;
    stop.cancel();
    Ok(())
}

/// Forwards every connection `listener` accepts to one of `backends` (`HOST:PORT`) until `stop`.
pub async fn serve(listener: TcpListener, backends: Vec<String>, stop: CancellationToken) {
    let backends: Arc<[String]> = backends.into();
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "load balancer: accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (backends, next) = (Arc::clone(&backends), Arc::clone(&next));
        tokio::spawn(async move {
            quarry_core::tcp::no_delay(&mut client);
            let Some(mut upstream) = connect(&backends, &next).await else {
                tracing::warn!(%peer, "load balancer: no wfe replica accepts connections");
                return;
            };
            quarry_core::tcp::no_delay(&mut upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// A connection to the next backend in turn that accepts one.
async fn connect(backends: &[String], next: &AtomicUsize) -> Option<TcpStream> {
    let first = next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..backends.len() {
        let backend = backends[(first + offset) % backends.len()].as_str();
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            return Some(stream);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that first says who it is.
    async fn named_backend(name: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(&[name]).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_dead_replica() {
        let (a, b) = (named_backend(b'a').await, named_backend(b'b').await);
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, [a, dead, b].map(|addr| addr.to_string()).to_vec(), stop.clone()));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut stream = TcpStream::connect(front).await.unwrap();
            let mut name = [0u8];
            stream.read_exact(&mut name).await.unwrap();
            seen.push(name[0]);
        }
        assert_eq!(seen.iter().filter(|n| **n == b'a').count() + seen.iter().filter(|n| **n == b'b').count(), 6);
        assert!(seen.contains(&b'a') && seen.contains(&b'b'), "{seen:?}");
        stop.cancel();
    }
}
