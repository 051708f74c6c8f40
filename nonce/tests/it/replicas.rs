//! Several nonce replicas behind one typed client, as a wfe reaches them: found through a static list or the DNS,
//! balanced, each nonce redeemed where it was minted, and a replica that stops or leaves the DNS dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use quarry_core::config::{GrpcClientConfig, LaneConfig};
use quarry_core::lane::{Lane, Position};
use quarry_core::peer::Peer;
use quarry_proto::client::NonceClient;
use quarry_testkit::challtestsrv::{ChallTestSrv, Config as DnsConfig};
use quarry_testkit::pki::TestPki;

use crate::{PREFIX_KEY, Running, config};

/// Starts a replica listening on `ip` at `port` (0: any).
async fn replica_on(pki: &TestPki, ip: Ipv4Addr, port: u16) -> Running {
    let mut config = config(pki);
    config.grpc.listen = SocketAddr::from((ip, port));
    Running::start(config).await
}

/// Two replicas on 127.0.0.2 and 127.0.0.3 with the same port, as a headless Service's pods share one; a few
/// tries, since the port the first got may be taken on the second address.
async fn two_replicas_on_one_port(pki: &TestPki) -> (Running, Running) {
    for _ in 0..10 {
        let first = replica_on(pki, Ipv4Addr::new(127, 0, 0, 2), 0).await;
        let port = first.addr.port();
        if tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 3), port)).await.is_ok() {
            let second = replica_on(pki, Ipv4Addr::new(127, 0, 0, 3), port).await;
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn client(pki: &TestPki, config: GrpcClientConfig) -> NonceClient {
    NonceClient::new(Peer::new(&config, &pki.tls("wfe")).expect("peer"), PREFIX_KEY.as_bytes())
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(5))
}

#[tokio::test]
async fn calls_are_balanced_and_nonces_go_back_to_their_replica() {
    let pki = TestPki::new();
    let (a, b) = (replica_on(&pki, Ipv4Addr::LOCALHOST, 0).await, replica_on(&pki, Ipv4Addr::LOCALHOST, 0).await);
    let config = GrpcClientConfig {
        address: vec![format!("https://{}", a.addr), format!("https://{}", b.addr)],
        ..pki.client_config("nonce", a.addr)
    };
    let nonces = client(&pki, config);
    let mut minted = Vec::new();
    for _ in 0..4 {
        minted.extend(nonces.nonce_batch(1, deadline()).await.expect("batch"));
    }
    for replica in [&a, &b] {
        assert_eq!(minted.iter().filter(|n| n.starts_with(&replica.prefix)).count(), 2, "{minted:?}");
    }
    for nonce in &minted {
        assert!(nonces.redeem(nonce, deadline()).await.expect("redeem"), "{nonce}");
        assert!(!nonces.redeem(nonce, deadline()).await.expect("replay"), "{nonce}");
    }

    // One replica gone: minting carries on at the other, and the gone one's nonces cannot be redeemed.
    let of_b = nonces.nonce_batch(1, deadline()).await.expect("batch");
    let of_b =
        if of_b[0].starts_with(&b.prefix) { of_b } else { nonces.nonce_batch(1, deadline()).await.expect("batch") };
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        let nonce = nonces.nonce_batch(1, deadline()).await.expect("a replica is left").remove(0);
        assert!(nonce.starts_with(&a.prefix), "{nonce}");
    }
    assert!(nonces.redeem(&of_b[0], deadline()).await.is_err(), "the gone replica cannot redeem");
}

#[tokio::test]
async fn replicas_are_found_in_the_dns_and_dropped_when_they_leave_it() {
    let pki = TestPki::new();
    let dns = ChallTestSrv::start(DnsConfig { default_ipv4: None, ..DnsConfig::ephemeral() }).await.expect("dns");
    let (a, b) = two_replicas_on_one_port(&pki).await;
    let name = "nonce.quarry.test";
    dns.state.add_a(name, [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]);
    let config = GrpcClientConfig {
        address: vec![format!("https://{name}:{}", a.addr.port())],
        dns_resolver: dns.dns_addr,
        ..pki.client_config("nonce", a.addr)
    };
    let nonces = client(&pki, config);
    let mut prefixes = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let nonce = nonces.nonce_batch(1, deadline()).await.expect("batch").remove(0);
        assert!(nonces.redeem(&nonce, deadline()).await.expect("redeem"), "{nonce}");
        prefixes.insert(nonce[..8].to_owned());
    }
    assert_eq!(prefixes, [a.prefix.clone(), b.prefix.clone()].into(), "both replicas serve");

    // The second leaves the DNS and stops, as a pod does: the failure it causes makes the client look again.
    dns.state.clear_a(name);
    dns.state.add_a(name, [Ipv4Addr::new(127, 0, 0, 2)]);
    drop(b);
    let started = Instant::now();
    while nonces.peer().replicas() != [a.addr] {
        assert!(started.elapsed() < Duration::from_secs(10), "still {:?}", nonces.peer().replicas());
        let _ = nonces.nonce_batch(1, deadline()).await.expect("a replica is left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica of a caller's service at `rank` among `of`, placed by a configured list (127.0.0.1, .2, … on one port).
fn lane_at(rank: u8, of: u8) -> Lane {
    let config = LaneConfig {
        replicas: (1..=of).map(|last| format!("https://127.0.0.{last}:8443")).collect(),
        own: SocketAddr::from((Ipv4Addr::new(127, 0, 0, rank + 1), 8443)),
        dns_resolver: None,
    };
    Lane::new(Some(&config)).expect("lane")
}

/// The prefixes of `count` nonces `nonces` mints one at a time.
async fn minted_by(nonces: &NonceClient, count: usize) -> Vec<String> {
    let mut prefixes = Vec::with_capacity(count);
    for _ in 0..count {
        let nonce = nonces.nonce_batch(1, deadline()).await.expect("batch").remove(0);
        prefixes.push(nonce[..8].to_owned());
    }
    prefixes
}

#[tokio::test]
async fn each_caller_keeps_to_its_lane_and_leaves_it_only_while_its_replica_fails() {
    let pki = TestPki::new();
    let (a, b) = (replica_on(&pki, Ipv4Addr::LOCALHOST, 0).await, replica_on(&pki, Ipv4Addr::LOCALHOST, 0).await);
    // A peer's replicas are in address order, whatever order the configuration lists them in.
    let (a, b) = if a.addr < b.addr { (a, b) } else { (b, a) };
    let config = GrpcClientConfig {
        address: vec![format!("https://{}", b.addr), format!("https://{}", a.addr)],
        ..pki.client_config("nonce", a.addr)
    };
    let in_lane = |lane: &Lane| {
        let peer = Peer::in_lane(&config, &pki.tls("wfe"), lane).expect("peer");
        NonceClient::new(peer, PREFIX_KEY.as_bytes())
    };
    let (first, second) = (in_lane(&lane_at(0, 2)), in_lane(&lane_at(1, 2)));
    assert_eq!(minted_by(&first, 6).await, vec![a.prefix.clone(); 6], "the first caller's share: the first replica");
    assert_eq!(minted_by(&second, 6).await, vec![b.prefix.clone(); 6], "the second's: the second");
    // A third caller of three shares both replicas; a lone caller's lane is every replica, in turn.
    let middle = minted_by(&in_lane(&lane_at(1, 3)), 4).await;
    assert_eq!(middle, [&a.prefix, &b.prefix, &a.prefix, &b.prefix].map(String::clone), "{middle:?}");
    let lone = minted_by(&in_lane(&lane_at(0, 1)), 4).await;
    assert_eq!(lone, [&a.prefix, &b.prefix, &a.prefix, &b.prefix].map(String::clone), "{lone:?}");

    // The first replica stops: its callers go to the other rather than fail.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(minted_by(&first, 4).await, vec![b.prefix.clone(); 4], "failed over");
}

#[tokio::test]
async fn a_replica_finds_its_lane_in_the_dns_once_it_is_listed() {
    let dns = ChallTestSrv::start(DnsConfig { default_ipv4: None, ..DnsConfig::ephemeral() }).await.expect("dns");
    let name = "wfe.quarry.test";
    dns.state.add_a(name, [Ipv4Addr::new(127, 0, 0, 2)]);
    let config = LaneConfig {
        replicas: vec![format!("https://{name}:8443")],
        own: SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), 8443)),
        dns_resolver: dns.dns_addr,
    };
    let lane = Lane::new(Some(&config)).expect("lane");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lane.position(), None, "not listed yet (a pod not ready): round robin");
    dns.state.clear_a(name);
    dns.state.add_a(name, [Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 2)]);
    let started = Instant::now();
    while lane.position().is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "not placed once listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lane.position(), Some(Position { rank: 1, of: 2 }), "ranked by address, as every replica ranks");
}

/// A container on a bridge network listens on `0.0.0.0` and its peers are listed by name (`quarry compose-init`'s
/// configuration): it places itself as the one listed replica whose address is its own.
#[tokio::test]
async fn a_replica_listening_everywhere_finds_itself_among_named_replicas() {
    let dns = ChallTestSrv::start(DnsConfig { default_ipv4: None, ..DnsConfig::ephemeral() }).await.expect("dns");
    // The other container's address is on no interface here (TEST-NET-1: looked at, never dialled).
    dns.state.add_a("ra-2.quarry.test", [Ipv4Addr::new(192, 0, 2, 7)]);
    dns.state.add_a("ra.quarry.test", [Ipv4Addr::new(127, 0, 0, 1)]);
    let config = LaneConfig {
        replicas: vec!["https://ra.quarry.test:9309".into(), "https://ra-2.quarry.test:9309".into()],
        own: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9309)),
        dns_resolver: dns.dns_addr,
    };
    let lane = Lane::new(Some(&config)).expect("lane");
    if quarry_core::lane::is_local(Ipv4Addr::new(192, 0, 2, 7).into()) {
        // Every address binds here (`ip_nonlocal_bind`, which `core::lane`'s own test pins `is_local` to), so the
        // lane cannot tell its own from the other's: round robin, as documented.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(lane.position(), None);
        return;
    }
    let started = Instant::now();
    while lane.position().is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "did not find itself");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lane.position(), Some(Position { rank: 0, of: 2 }), "127.0.0.1 ranks before 192.0.2.7");

    // Were both names this host's (two replicas on one machine's loopback), it could not tell which it is.
    dns.state.clear_a("ra-2.quarry.test");
    dns.state.add_a("ra-2.quarry.test", [Ipv4Addr::new(127, 0, 0, 2)]);
    let started = Instant::now();
    while lane.position().is_some() {
        assert!(started.elapsed() < Duration::from_secs(5), "still placed: {:?}", lane.position());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and stays so through the next looks (one a second while unplaced).
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(lane.position(), None, "placed again although both addresses are this host's");
}
