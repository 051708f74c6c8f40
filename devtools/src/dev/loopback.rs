//! Where the replicas of a stack on one host listen: replica `i` of a service on its own loopback address,
//! 127.0.0.(1 + i), and a load balancer in front of several wfes. `quarry dev` and the compose stack on the host's
//! network both lay their replicas out this way.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use quarry::env;

use super::supervisor::Health;

/// The most replicas of a service: each takes a loopback address of its own.
pub(super) const MAX_REPLICAS: usize = 8;

/// The loopback address of replica `index` of a service.
pub fn replica_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + index as u8)
}

/// Where the replicas of a stack on one host listen (`quarry dev`, the compose stack on the host's network): replica
/// `i` of a service on 127.0.0.(1 + i) at its service's port; with several wfes, a load balancer takes the ACME and
/// CRL addresses and wfe `i` listens on 127.0.0.(2 + i) at their ports.
#[derive(Debug, Clone, Copy)]
pub struct LoopbackLayout {
    pub replicas: usize,
    pub grpc_base_port: u16,
    pub acme: SocketAddr,
    pub crl: SocketAddr,
}

impl LoopbackLayout {
    /// Where replica `index` of the wfe serves ACME and CRLs.
    pub fn wfe_addrs(&self, index: usize) -> (SocketAddr, SocketAddr) {
        if self.replicas == 1 {
            return (self.acme, self.crl);
        }
        let ip = IpAddr::V4(replica_ip(index + 1));
        (SocketAddr::new(ip, self.acme.port()), SocketAddr::new(ip, self.crl.port()))
    }

    /// Every wfe's ACME address as a URL, separated by commas: the wfes' `${wfe_addresses}`, which each places itself
    /// in for its lane.
    pub fn wfe_addresses(&self) -> String {
        (0..self.replicas).map(|index| format!("https://{}", self.wfe_addrs(index).0)).collect::<Vec<_>>().join(",")
    }

    /// The wfes' ACME and CRL addresses, for the load balancer in front of them (none for a lone wfe).
    pub fn balanced(&self) -> Vec<(SocketAddr, Vec<String>)> {
        if self.replicas == 1 {
            return Vec::new();
        }
        let wfes = |pick: fn((SocketAddr, SocketAddr)) -> SocketAddr| -> Vec<String> {
            (0..self.replicas).map(|index| pick(self.wfe_addrs(index)).to_string()).collect()
        };
        vec![(self.acme, wfes(|(acme, _)| acme)), (self.crl, wfes(|(_, crl)| crl))]
    }

    /// Sets the placeholders replica `index` of `service` differs in: where it listens.
    pub fn replica_vars(&self, service: &str, index: usize, vars: &mut BTreeMap<&'static str, String>) {
        if service == "wfe" {
            let (acme, crl) = self.wfe_addrs(index);
            vars.insert("acme_listen", acme.to_string());
            vars.insert("crl_listen", crl.to_string());
        } else if let Some(listen) = env::listen_placeholder(service) {
            let port = env::grpc_port(self.grpc_base_port, service);
            vars.insert(listen, SocketAddr::new(replica_ip(index).into(), port).to_string());
        }
    }

    /// How a supervisor learns that replica `index` of `service` is ready.
    pub(super) fn health(&self, service: &str, index: usize) -> Health {
        match service {
            "wfe" => Health::Https { addr: self.wfe_addrs(index).0 },
            "crl-updater" => Health::Running,
            other => Health::Grpc {
                addr: SocketAddr::new(replica_ip(index).into(), env::grpc_port(self.grpc_base_port, other)),
                server_name: format!("{other}.quarry"),
            },
        }
    }
}
