//! A process's lane: which replica of its own service it is (its rank among the replicas its configuration or the DNS
//! lists), so that its calls keep to its share of each peer's replicas instead of spreading every certificate's calls
//! over all of them.
//!
//! Why: a certificate costs about twenty calls between services. Spread round robin, they wake every replica of every
//! service, each switching in and out for a fraction of the work; kept to a lane, with two replicas of everything they
//! wake half as many processes, each doing more per wake-up. On the benchmark's two cores that saved 4.3 % of the CPU
//! per certificate (docs/performance.md, "Lanes built").
//!
//! The share: caller `r` of `n` owns the slice `[r/n, (r+1)/n)` of its peer's `m` replicas laid end to end, and its
//! call `k` goes to replica `(r·m + k mod m) / n`. Every replica of the peer gets the same part of all callers' calls,
//! whatever `n` and `m` are; with as many callers as replicas each caller uses one replica, with more callers than
//! replicas a slice spans one or two, and with fewer it spans `m / n` rounded up, or one more. A replica that fails
//! is skipped as under round robin (`peer`), and a process that cannot place itself (no `[lane]` configured, or not
//! among those listed yet) calls round robin. Both lists are in address order (a configured list sorted as the DNS's
//! answers are), so every replica ranks itself and its peers alike.
//!
//! A process whose own address is unspecified (`0.0.0.0:PORT`: a container on a bridge network, whose address nobody
//! knew when its configuration was written) finds itself in the list instead: it is the one listed replica on its
//! port whose address is one of this host's (its IPv4 one on a dual-stack network). Where several are (replicas on
//! one machine's loopback) or none, it calls round robin.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{ConfigError, LaneConfig};
use crate::discovery::{Discovery, Target};

impl LaneConfig {
    /// Refuses a `replicas` address that is not one a peer's could be (here rather than beside the configuration's
    /// type, which the address parser depends on).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Target::parse(&self.replicas).map(|_| ()).map_err(|err| match err {
            ConfigError::Invalid(why) => ConfigError::Invalid(format!("lane.replicas: {why}")),
            other => other,
        })
    }
}

/// Where this process stands among its service's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its rank, from 0.
    pub rank: usize,
    /// How many replicas its service has.
    pub of: usize,
}

impl Position {
    /// `own`'s place among `replicas` (in address order, as every replica sees them: `Target::fixed` and the DNS's
    /// answers are both sorted).
    pub fn of_address(own: SocketAddr, replicas: &[SocketAddr]) -> Option<Self> {
        let rank = replicas.iter().position(|replica| *replica == own)?;
        Some(Self { rank, of: replicas.len() })
    }

    /// The replica (an index into `replicas` of them) for this caller's call number `turn`.
    pub fn replica(self, turn: usize, replicas: usize) -> usize {
        (self.rank * replicas + turn % replicas) / self.of
    }
}

/// Which of `replicas` this process is: `own` itself, or, when `own`'s address is unspecified, the one listed replica
/// on `own`'s port whose address `is_local`. On a dual-stack network each replica is listed with an IPv4 and an IPv6
/// address, both its own: it takes its IPv4 one (a `0.0.0.0` listener has no other; `[::]` takes IPv6 only where no
/// IPv4 address is listed), so that every replica ranks by the same family, as pods given their IPv4 `pod_ip` do.
/// None when several remain (every loopback address is this host's), since a guess could put two replicas in one
/// lane.
fn own_among(own: SocketAddr, replicas: &[SocketAddr], is_local: impl Fn(IpAddr) -> bool) -> Option<SocketAddr> {
    if !own.ip().is_unspecified() {
        return Some(own);
    }
    let on_port = || replicas.iter().filter(|replica| replica.port() == own.port());
    let ipv4_listed = on_port().any(SocketAddr::is_ipv4);
    let family = |replica: &&SocketAddr| replica.is_ipv4() == (own.is_ipv4() || ipv4_listed);
    let mut mine = on_port().filter(family).filter(|replica| is_local(replica.ip()));
    match (mine.next(), mine.next()) {
        (Some(only), None) => Some(*only),
        _ => None,
    }
}

/// Whether `ip` is one of this host's addresses: normally only those can be bound to (Linux refuses any other with
/// `EADDRNOTAVAIL`, unless the network namespace sets `net.ipv4.ip_nonlocal_bind` or its IPv6 twin, off by default in
/// containers and pods: then any address binds, an unspecified own address finds several replicas when several are
/// listed, and the process calls round robin). Binding sends nothing.
pub fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// This process's lane, shared by every peer it calls; cheap to clone. The default has no position: round robin.
#[derive(Debug, Clone, Default)]
pub struct Lane {
    /// `rank << 32 | of`; 0 while unplaced.
    position: Arc<AtomicU64>,
}

impl Lane {
    /// The lane `config` describes, or none (round robin) without it. A list of addresses places the process now; a
    /// name is looked up in the background, now and as replicas come and go.
    pub fn new(config: Option<&LaneConfig>) -> Result<Self, ConfigError> {
        let lane = Self::default();
        let Some(config) = config else { return Ok(lane) };
        let target = Target::parse(&config.replicas)?;
        match target.fixed() {
            Some(replicas) => {
                lane.place(config.own, Ok(replicas), true);
            }
            None => {
                let discovery = Discovery::new(config.dns_resolver)?;
                tokio::spawn(keep_placing(Arc::downgrade(&lane.position), config.own, target, discovery));
            }
        }
        Ok(lane)
    }

    /// Where this process stands now, if it knows.
    pub fn position(&self) -> Option<Position> {
        let packed = self.position.load(Ordering::Relaxed);
        (packed != 0).then_some(Position { rank: (packed >> 32) as usize, of: (packed & 0xffff_ffff) as usize })
    }

    /// The replica (an index into `replicas` of them) for call number `turn`: its share, or round robin.
    pub fn replica(&self, turn: usize, replicas: usize) -> usize {
        match self.position() {
            Some(position) => position.replica(turn, replicas),
            None => turn % replicas,
        }
    }

    /// Takes the place `own` has among `found`; returns whether it has one. Logged and exported when it changes, and
    /// the `first` time either way.
    fn place(&self, own: SocketAddr, found: Result<Vec<SocketAddr>, String>, first: bool) -> bool {
        set_position(&self.position, own, found, first).placed
    }
}

/// What one look-up did to the lane.
struct Placement {
    placed: bool,
    changed: bool,
}

fn set_position(cell: &AtomicU64, own: SocketAddr, found: Result<Vec<SocketAddr>, String>, first: bool) -> Placement {
    // A failed look-up keeps the place known before it.
    let Ok(replicas) = found else { return Placement { placed: cell.load(Ordering::Relaxed) != 0, changed: false } };
    let mine = own_among(own, &replicas, is_local);
    let position = mine.and_then(|mine| Position::of_address(mine, &replicas));
    let packed = position.map_or(0, |p| ((p.rank as u64) << 32) | p.of as u64);
    let changed = cell.swap(packed, Ordering::Relaxed) != packed;
    if changed || first {
        // Where each replica stands, for whoever checks that the lanes are as the replica counts say: -1 unplaced.
        metrics::gauge!("quarry_lane_rank").set(position.map_or(-1.0, |p| p.rank as f64));
        metrics::gauge!("quarry_lane_replicas").set(position.map_or(0.0, |p| p.of as f64));
        match (mine, position) {
            (Some(mine), Some(p)) => tracing::info!(
                own = %mine, rank = p.rank, replicas = p.of,
                "this replica's lane: its share of each peer"
            ),
            _ if own.ip().is_unspecified() => tracing::warn!(
                %own, ?replicas,
                "none or several of its service's replicas on this port have one of this host's addresses, so this \
                 replica cannot tell which it is: its calls go round robin"
            ),
            _ => tracing::warn!(
                %own, ?replicas,
                "this replica is not among its service's replicas (yet): its calls go round robin"
            ),
        }
    }
    Placement { placed: packed != 0, changed }
}

/// After a change of place (a start, a rollout, a scale), replicas come and go for a while, each listed once ready:
/// the list is looked at every second for this long, not every refresh, so that a place taken from a partial list
/// does not last.
const SETTLING: Duration = Duration::from_secs(30);

/// Places the process as the DNS lists its service's replicas, until the lane is dropped: every second while it is
/// not listed (a pod not yet ready) and for [`SETTLING`] after its place changed, every refresh otherwise.
async fn keep_placing(cell: Weak<AtomicU64>, own: SocketAddr, target: Target, discovery: Discovery) {
    let soon = Arc::new(Notify::new());
    let again = Arc::clone(&soon);
    let (mut first, mut failing) = (true, false);
    let mut quick_until = Instant::now() + SETTLING;
    crate::discovery::keep_resolving(target, discovery, soon, |found| {
        let Some(cell) = cell.upgrade() else { return false };
        match &found {
            Err(err) if !failing => {
                tracing::warn!(%err, "cannot look this service's replicas up; its place, if it has one, is kept");
            }
            _ => {}
        }
        failing = found.is_err();
        let placement = set_position(&cell, own, found, std::mem::take(&mut first));
        if placement.changed {
            quick_until = Instant::now() + SETTLING;
        }
        if !placement.placed || Instant::now() < quick_until {
            again.notify_one();
        }
        true
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every caller's calls over a whole cycle, counted by the replica they reach.
    fn calls_per_replica(callers: usize, replicas: usize) -> Vec<Vec<usize>> {
        (0..callers)
            .map(|rank| {
                let position = Position { rank, of: callers };
                let mut counts = vec![0; replicas];
                for turn in 0..replicas * 6 {
                    counts[position.replica(turn, replicas)] += 1;
                }
                counts
            })
            .collect()
    }

    #[test]
    fn every_replica_gets_an_equal_share_whatever_the_counts() {
        for callers in 1..=7 {
            for replicas in 1..=7 {
                let counts = calls_per_replica(callers, replicas);
                let totals: Vec<usize> = (0..replicas).map(|j| counts.iter().map(|c| c[j]).sum()).collect();
                assert!(totals.iter().all(|total| *total == totals[0]), "{callers} callers, {replicas}: {totals:?}");
                // Each caller reaches as few replicas as its slice spans: one more than whole replicas at most.
                for (rank, row) in counts.iter().enumerate() {
                    let reached = row.iter().filter(|c| **c > 0).count();
                    let most = replicas.div_ceil(callers) + 1;
                    assert!(reached <= most.min(replicas), "{callers}×{replicas} caller {rank}: {row:?}");
                }
            }
        }
    }

    #[test]
    fn shares_by_example() {
        // (callers, replicas, each caller's calls per replica over a cycle of six turns per replica)
        let cases: &[(usize, usize, &[&[usize]])] = &[
            (2, 2, &[&[12, 0], &[0, 12]]),
            (3, 2, &[&[12, 0], &[6, 6], &[0, 12]]),
            (4, 2, &[&[12, 0], &[12, 0], &[0, 12], &[0, 12]]),
            (1, 2, &[&[6, 6]]),
            (2, 4, &[&[12, 12, 0, 0], &[0, 0, 12, 12]]),
            (2, 3, &[&[12, 6, 0], &[0, 6, 12]]),
        ];
        for (callers, replicas, expected) in cases {
            let counts = calls_per_replica(*callers, *replicas);
            let expected: Vec<Vec<usize>> = expected.iter().map(|row| row.to_vec()).collect();
            assert_eq!(counts, expected, "{callers} callers, {replicas} replicas");
        }
    }

    #[test]
    fn a_process_places_itself_by_its_own_address() {
        let addr = |last: u8| SocketAddr::from(([127, 0, 0, last], 9302));
        let lane = Lane::default();
        assert_eq!(lane.position(), None);
        assert_eq!((0..4).map(|turn| lane.replica(turn, 2)).collect::<Vec<_>>(), [0, 1, 0, 1], "round robin");
        assert!(lane.place(addr(2), Ok(vec![addr(1), addr(2)]), true));
        assert_eq!(lane.position(), Some(Position { rank: 1, of: 2 }));
        assert_eq!((0..4).map(|turn| lane.replica(turn, 2)).collect::<Vec<_>>(), [1, 1, 1, 1]);
        assert!(lane.place(addr(2), Err("the DNS is down".into()), false), "a failed look-up keeps the place");
        assert_eq!(lane.position(), Some(Position { rank: 1, of: 2 }));
        assert!(!lane.place(addr(2), Ok(vec![addr(1), addr(3)]), false), "no longer listed");
        assert_eq!(lane.position(), None);
    }

    #[test]
    fn a_configured_list_places_the_process_at_once() {
        let config = LaneConfig {
            replicas: vec!["https://127.0.0.1:9302".into(), "https://127.0.0.2:9302".into()],
            own: "127.0.0.2:9302".parse().unwrap(),
            dns_resolver: None,
        };
        assert_eq!(Lane::new(Some(&config)).unwrap().position(), Some(Position { rank: 1, of: 2 }));
        assert_eq!(Lane::new(None).unwrap().position(), None);
        let anywhere = LaneConfig { own: "0.0.0.0:9302".parse().unwrap(), ..config.clone() };
        assert_eq!(Lane::new(Some(&anywhere)).unwrap().position(), None, "both loopback addresses are this host's");
        let bad = LaneConfig { replicas: vec!["http://x".into()], ..config };
        assert!(Lane::new(Some(&bad)).is_err());
    }

    #[test]
    fn an_unspecified_own_address_is_the_one_listed_replica_of_this_host() {
        let addr = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let (this, other) = ([192, 0, 2, 9], [192, 0, 2, 7]);
        let is_this = |ip: IpAddr| ip == IpAddr::from(this);
        let anywhere = addr([0, 0, 0, 0], 9309);
        let replicas = [addr(other, 9309), addr(this, 9309)];
        assert_eq!(own_among(anywhere, &replicas, is_this), Some(addr(this, 9309)));
        assert_eq!(Position::of_address(addr(this, 9309), &replicas), Some(Position { rank: 1, of: 2 }));
        let on_ipv6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 9309));
        assert_eq!(own_among(on_ipv6, &replicas, is_this), Some(addr(this, 9309)), "[::] listens on IPv4 too");
        assert_eq!(own_among(addr([0, 0, 0, 0], 9310), &replicas, is_this), None, "another port: another service");
        assert_eq!(own_among(anywhere, &replicas, |_| true), None, "two of this host's: no guess");
        assert_eq!(own_among(anywhere, &replicas, |_| false), None, "not listed (yet)");
        let specific = addr(other, 9309);
        assert_eq!(own_among(specific, &replicas, |_| false), Some(specific), "a given address is taken as it is");
    }

    #[test]
    fn on_a_dual_stack_network_an_unspecified_own_address_is_its_ipv4_one() {
        let v4 = |last: u8| SocketAddr::from(([192, 0, 2, last], 9309));
        let v6 = |last: u16| SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), 9309));
        // Two containers, each listed with both its addresses (sorted: IPv4 first); this one is .9 and ::9.
        let replicas = [v4(7), v4(9), v6(7), v6(9)];
        let is_this = |ip: IpAddr| ip == v4(9).ip() || ip == v6(9).ip();
        let anywhere_v4 = SocketAddr::from(([0, 0, 0, 0], 9309));
        let anywhere_v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 9309));
        assert_eq!(own_among(anywhere_v4, &replicas, is_this), Some(v4(9)));
        assert_eq!(own_among(anywhere_v6, &replicas, is_this), Some(v4(9)), "[::] too, while IPv4 is listed");
        assert_eq!(Position::of_address(v4(9), &replicas), Some(Position { rank: 1, of: 4 }));
        // Ranks 0 and 1 of 4 reach each peer listed the same way by the same family, one container each.
        let other = Position { rank: 0, of: 4 };
        let this = Position { rank: 1, of: 4 };
        assert!((0..8).all(|turn| other.replica(turn, 4) == 0 && this.replica(turn, 4) == 1));
        // An IPv6-only network: [::] takes its IPv6 address; 0.0.0.0 has none to take.
        let ipv6_only = [v6(7), v6(9)];
        assert_eq!(own_among(anywhere_v6, &ipv6_only, is_this), Some(v6(9)));
        assert_eq!(own_among(anywhere_v4, &ipv6_only, is_this), None);
    }

    /// Whether this network namespace lets a process bind any IPv4 address (`net.ipv4.ip_nonlocal_bind`).
    fn binds_any_ipv4_address() -> bool {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").is_ok_and(|value| value.trim() == "1")
    }

    #[test]
    fn only_this_hosts_addresses_are_local() {
        assert!(is_local(IpAddr::from([127, 0, 0, 1])));
        assert!(is_local(IpAddr::from([127, 0, 0, 2])), "the whole of 127.0.0.0/8 is loopback's");
        // TEST-NET-1 is nobody's, unless this host binds any address, which the lane then cannot tell apart.
        assert_eq!(is_local(IpAddr::from([192, 0, 2, 7])), binds_any_ipv4_address());
    }
}
