//! Several nonce replicas behind one typed client, as a wfe reaches them: found through a static list or the DNS,
//! balanced, each nonce redeemed where it was minted, and a replica that stops or leaves the DNS dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use quarry_core::config::GrpcClientConfig;
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
