//! Attacks on a running `quarry dev` through its public ACME port, each followed by a real client getting a
//! certificate: what an attacker sends must cost the CA a bounded amount and leave other clients served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::full_stack::{Stack, children, csr_for, issue_via_http01, logs, metric};

/// Source addresses the attack comes from (all of 127.0.0.0/8 is loopback): the real client uses 127.0.0.1.
const IDLE_SOURCES: u8 = 30;
/// Connections opened from each source: past the wfe's per-client cap (64), so some are refused at once.
const IDLE_PER_SOURCE: usize = 70;
const SLOW_LORIS: usize = 40;

/// A TCP connection to `target` from the loopback address `source`.
async fn connect_from(source: IpAddr, target: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await.ok()?.ok()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

/// Whether the server has closed `stream` (a read sees the end, or a reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(wait, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// A TLS connection that sends a request's header lines one per second, never finishing them (slow loris); returns
/// how long the server kept it open (at most `limit`).
async fn slow_loris(target: SocketAddr, tls: Arc<rustls::ClientConfig>, limit: Duration) -> Duration {
    let started = Instant::now();
    let Some(tcp) = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99)), target).await else {
        return Duration::ZERO;
    };
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(tls).connect(name, tcp)).await
    else {
        return started.elapsed();
    };
    if stream.write_all(b"POST /acme/new-order HTTP/1.1\r\nHost: localhost\r\n").await.is_err() {
        return started.elapsed();
    }
    for line in 0..limit.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let header = format!("X-Slow-{line}: {}\r\n", "a".repeat(16));
        if stream.write_all(header.as_bytes()).await.is_err() || stream.flush().await.is_err() {
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(10), stream.read(&mut byte)).await {
            break;
        }
    }
    started.elapsed()
}

/// Finding 2 of the security review: a connection that never sent a ClientHello was still open after 35 s and one
/// trickling header lines after 65 s. Now thousands of idle connections from thirty addresses, and slow-loris
/// connections, are cut by the per-client cap and the handshake and header timeouts, the wfe's file descriptors stay
/// bounded, and a real client gets its certificate meanwhile.
#[tokio::test]
async fn thousands_of_idle_and_slow_connections_do_not_stop_a_client() {
    let metrics_base = crate::full_stack::free_port_range();
    let stack = Stack::start_with_args(None, None, &["--metrics-base-port".into(), metrics_base.to_string()]).await;
    let wfe = children(stack._process.id().expect("quarry dev runs"))
        .into_iter()
        .find(|(_, service)| service == "wfe")
        .map(|(pid, _)| pid)
        .expect("the wfe process");
    let authority = stack.directory_url.trim_start_matches("https://").split('/').next().expect("authority");
    let port = authority.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the directory URL's port");
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let baseline = open_fds(wfe);

    let attack_started = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for source in 2..2 + IDLE_SOURCES {
        opening.spawn(async move {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source));
            let mut held = Vec::new();
            for _ in 0..IDLE_PER_SOURCE {
                held.extend(connect_from(source, target).await);
            }
            held
        });
    }
    let mut idle: Vec<TcpStream> = Vec::new();
    while let Some(held) = opening.join_next().await {
        idle.extend(held.expect("opener"));
    }
    assert!(idle.len() >= IDLE_SOURCES as usize * 64, "only {} idle connections opened", idle.len());
    let tls = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&stack.tls_ca_pem).expect("dev HTTPS CA");
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("PEM")).expect("root");
        }
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
    };
    let loris: Vec<_> =
        (0..SLOW_LORIS).map(|_| tokio::spawn(slow_loris(target, tls.clone(), Duration::from_secs(30)))).collect();

    // Each source holds at most 64 of its connections (the rest were closed at once), and the wfe's descriptors
    // follow.
    let held_fds = open_fds(wfe);
    let cap = IDLE_SOURCES as usize * 64 + SLOW_LORIS;
    assert!(held_fds <= baseline + cap + 50, "the wfe holds {held_fds} descriptors (baseline {baseline})");

    // Meanwhile a real client is served.
    let account = stack.instant_acme_account().await;
    let names = ["besieged.quarry-test.org"];
    issue_via_http01(&stack, &account, &names, &csr_for(&names)).await;

    // The handshake timeout (10 s) closes every idle connection; the header timeout (10 s) every slow loris.
    let mut still_open = 0;
    for stream in idle.iter_mut() {
        let left = Duration::from_secs(20).saturating_sub(attack_started.elapsed()).max(Duration::from_millis(5));
        if closed_within(stream, left).await {
            continue;
        }
        // A connection that overflowed the listen queue is established on this side only (the kernel dropped it
        // unseen, the server never accepted it): a byte sent on it is answered with a reset. One the server holds
        // would wait for the rest of a ClientHello.
        if stream.write_all(b"\x16").await.is_ok() && !closed_within(stream, Duration::from_secs(1)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "idle connections outlived the handshake timeout");
    for task in loris {
        let held = task.await.expect("slow loris");
        assert!(held < Duration::from_secs(20), "a slow loris was kept {held:?}: {}", logs(stack.dir.path()));
    }
    let opened = idle.len();
    drop(idle);
    let mut settled = open_fds(wfe);
    for _ in 0..50 {
        if settled <= baseline + 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = open_fds(wfe);
    }
    assert!(settled <= baseline + 20, "the wfe still holds {settled} descriptors (baseline {baseline})");

    let (_, body) = crate::full_stack::http_get(&format!("http://127.0.0.1:{}/metrics", metrics_base + 9)).await;
    let text = String::from_utf8_lossy(&body);
    let closed =
        |reason| metric(&text, "quarry_http_connections_closed_total", &[("listener", "acme"), ("reason", reason)]);
    let refused = metric(&text, "quarry_http_connections_refused_total", &[("reason", "max_connections_per_client")]);
    assert!(refused >= (opened - IDLE_SOURCES as usize * 64) as f64, "refused {refused} of {opened}");
    assert!(closed("handshake_timeout") >= (IDLE_SOURCES as usize * 64) as f64 * 0.9, "{text}");
}
