//! One replica's connection as its callers share it: opened once for many concurrent calls, opened again once lost,
//! and a replica that cannot be reached (nothing listening, the wrong certificate) failing calls as never sent, which
//! lets a caller try even a call that is not idempotent on another replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_core::peer::{Failure, classify};
use quarry_proto::core::Empty;
use quarry_proto::nonce::nonce_service_client::NonceServiceClient;
use quarry_testkit::pki::TestPki;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{Running, config};

/// A loopback relay to a replica that counts the connections it is asked for and those the client closed, and can
/// drop every one it carries.
struct CountingRelay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_by_the_client: Arc<AtomicUsize>,
    carried: Arc<Mutex<JoinSet<()>>>,
}

impl CountingRelay {
    async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (accepted, closed_by_the_client) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let carried = Arc::new(Mutex::new(JoinSet::new()));
        let (counter, closed, connections) =
            (Arc::clone(&accepted), Arc::clone(&closed_by_the_client), Arc::clone(&carried));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let closed = Arc::clone(&closed);
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { addr, accepted, closed_by_the_client, carried }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection carried so far, as a replica's node lost would.
    fn drop_connections(&self) {
        self.carried.lock().unwrap().abort_all();
    }
}

/// Mints `count` nonces at once through clones of `client`, each call on its own task.
async fn concurrent_nonces(client: &NonceServiceClient<quarry_core::grpc::Channel>, count: usize) -> Vec<String> {
    let mut calls = JoinSet::new();
    for _ in 0..count {
        let mut client = client.clone();
        calls.spawn(async move {
            let call = tokio::time::timeout(Duration::from_secs(10), client.nonce(Empty {}));
            call.await.expect("answered in time").map(|answer| answer.into_inner().nonce)
        });
    }
    let mut nonces = Vec::with_capacity(count);
    while let Some(answer) = calls.join_next().await {
        nonces.push(answer.expect("the call's task").expect("a nonce"));
    }
    nonces
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_and_a_lost_one_is_opened_again() {
    let pki = TestPki::new();
    let nonce_service = Running::start(config(&pki)).await;
    let relay = CountingRelay::to(nonce_service.addr).await;
    let client = NonceServiceClient::new(pki.channel("wfe", "nonce", relay.addr));
    assert_eq!(relay.accepted(), 0, "a channel connects when first called, not before");

    // Every call finds no connection open; one of them opens it, the others wait for it.
    assert_eq!(concurrent_nonces(&client, 32).await.len(), 32);
    assert_eq!(relay.accepted(), 1, "the concurrent calls opened one connection between them");
    assert_eq!(concurrent_nonces(&client, 8).await.len(), 8);
    assert_eq!(relay.accepted(), 1, "later calls use it too");

    // The connection is lost between calls: the next call opens another rather than failing.
    relay.drop_connections();
    let started = Instant::now();
    let mut client_after = client.clone();
    loop {
        // The channel learns of the loss when its connection reads the end of the stream, a moment later; a call
        // made before then may fail as sent on a broken connection, never as answered.
        match tokio::time::timeout(Duration::from_secs(10), client_after.nonce(Empty {})).await.expect("in time") {
            Ok(_) => break,
            Err(status) => assert_eq!(classify(&status), Failure::Broken, "{status:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no new connection after the first was lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.accepted(), 2, "one new connection");
    assert_eq!(concurrent_nonces(&client, 8).await.len(), 8);
    assert_eq!(relay.accepted(), 2, "shared as the first was");

    // Nobody uses the channel any more (a replica gone from the DNS): its connection is closed.
    drop((client, client_after));
    let started = Instant::now();
    while relay.closed_by_the_client.load(Ordering::SeqCst) < 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the connection outlived every user of it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replica_that_cannot_be_reached_fails_calls_as_never_sent() {
    let pki = TestPki::new();
    let nothing_listens = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let nonce_service = Running::start(config(&pki)).await;
    // Nothing listening; a replica whose certificate is not the one asked for (the handshake fails).
    let cases = [
        ("refused", pki.channel("wfe", "nonce", nothing_listens)),
        ("wrong certificate", pki.channel("wfe", "ra", nonce_service.addr)),
    ];
    for (case, channel) in cases {
        let client = NonceServiceClient::new(channel);
        let mut calls = JoinSet::new();
        for _ in 0..8 {
            let mut client = client.clone();
            calls.spawn(async move {
                let call = tokio::time::timeout(Duration::from_secs(10), client.nonce(Empty {}));
                call.await.expect("failed in time").expect_err("unreachable")
            });
        }
        while let Some(status) = calls.join_next().await {
            let status = status.expect("the call's task");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{case}: {status:?}");
            assert_eq!(classify(&status), Failure::NotSent, "{case}: {status:?}");
        }
    }
}
