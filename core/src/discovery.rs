//! Where the replicas of a peer service are: the addresses a gRPC client configuration names, and their resolution.
//!
//! An address is `https://HOST:PORT` — an IP literal is one replica, a DNS name is every replica its A and AAAA
//! records list (a headless Kubernetes Service) — or `srv://NAME`, every replica NAME's SRV records list, each with
//! its own port. A configuration may list several; the replicas are their union. Names are looked up through the
//! system's resolver (`/etc/resolv.conf`: the cluster's DNS, with its search domains), or through one configured
//! server.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::ConfigError;

/// One configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A replica at a fixed address.
    Fixed(SocketAddr),
    /// Every address of a DNS name (A and AAAA), all on one port.
    Name { name: String, port: u16 },
    /// Every target of a DNS name's SRV records, each on its own port.
    Srv { name: String },
}

impl Source {
    /// Parses `https://HOST:PORT` or `srv://NAME`; anything else is a configuration error naming the address.
    pub fn parse(address: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Invalid(format!("gRPC address {address:?}: {why}"));
        if let Some(name) = address.strip_prefix("srv://") {
            let name = name.trim_end_matches('/');
            if name.is_empty() || name.contains([':', '/']) {
                return Err(bad("an SRV address is srv://NAME, without port or path"));
            }
            return Ok(Self::Srv { name: name.to_owned() });
        }
        let rest = address.strip_prefix("https://").ok_or_else(|| bad("must start with https:// or srv://"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad("must not have a path"));
        }
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Ok(Self::Fixed(addr));
        }
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("needs a port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        if host.is_empty() || host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("the host is not a DNS name or IP address"));
        }
        Ok(Self::Name { name: host.to_owned(), port })
    }

    fn needs_dns(&self) -> bool {
        !matches!(self, Self::Fixed(_))
    }
}

/// The parsed addresses of one peer service.
#[derive(Debug, Clone)]
pub struct Target {
    sources: Vec<Source>,
}

impl Target {
    pub fn parse(addresses: &[String]) -> Result<Self, ConfigError> {
        if addresses.is_empty() {
            return Err(ConfigError::Invalid("a gRPC client needs at least one address".into()));
        }
        let sources = addresses.iter().map(|a| Source::parse(a)).collect::<Result<_, _>>()?;
        Ok(Self { sources })
    }

    /// Whether resolving needs the DNS (and so is repeated, as replicas come and go).
    pub fn is_dynamic(&self) -> bool {
        self.sources.iter().any(Source::needs_dns)
    }

    /// The fixed addresses, when there is nothing to resolve: sorted and each once, as [`Discovery::resolve`] answers.
    pub fn fixed(&self) -> Option<Vec<SocketAddr>> {
        let fixed: Option<BTreeSet<SocketAddr>> = self
            .sources
            .iter()
            .map(|source| match source {
                Source::Fixed(addr) => Some(*addr),
                _ => None,
            })
            .collect();
        fixed.map(|addrs| addrs.into_iter().collect())
    }
}

/// Resolves targets: the system's resolver, or one configured DNS server.
pub struct Discovery {
    resolver: TokioResolver,
}

impl Discovery {
    /// `server`: the DNS server to ask instead of the system's.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, ConfigError> {
        let invalid = |e: hickory_resolver::net::NetError| ConfigError::Invalid(format!("DNS resolver: {e}"));
        let mut builder = match server {
            Some(server) => TokioResolver::builder_with_config(one_server(server), TokioRuntimeProvider::default()),
            None => TokioResolver::builder_tokio().map_err(invalid)?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Replicas come and go: every resolution asks again rather than trusting a cached answer for its TTL.
        options.cache_size = 0;
        options.timeout = std::time::Duration::from_secs(2);
        options.attempts = 2;
        Ok(Self { resolver: builder.build().map_err(invalid)? })
    }

    /// Every replica address of `target`, sorted; the error says which name failed and why.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        let mut found = BTreeSet::new();
        for source in &target.sources {
            match source {
                Source::Fixed(addr) => {
                    found.insert(*addr);
                }
                Source::Name { name, port } => {
                    let ips = self.resolver.lookup_ip(name.as_str()).await.map_err(|e| format!("{name}: {e}"))?;
                    found.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port)));
                }
                Source::Srv { name } => {
                    let lookup = self
                        .resolver
                        .lookup(name.as_str(), RecordType::SRV)
                        .await
                        .map_err(|e| format!("{name}: {e}"))?;
                    for record in lookup.answers() {
                        let RData::SRV(srv) = &record.data else { continue };
                        let host = srv.target.to_utf8();
                        let ips = self.resolver.lookup_ip(host.as_str()).await.map_err(|e| format!("{host}: {e}"))?;
                        found.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port)));
                    }
                }
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// How often a target named in the DNS is looked up again; a caller may ask for an early look-up.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(15);
/// Look-ups asked for early come at most this often.
const MIN_REFRESH_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// Looks `target` up now, then every [`REFRESH`] or when `soon` is notified (at most every [`MIN_REFRESH_GAP`]),
/// handing each outcome to `found`, until `found` answers `false` (whoever wanted the answers is gone).
pub async fn keep_resolving(
    target: Target,
    discovery: Discovery,
    soon: std::sync::Arc<tokio::sync::Notify>,
    mut found: impl FnMut(Result<Vec<SocketAddr>, String>) -> bool,
) {
    loop {
        if !found(discovery.resolve(&target).await) {
            return;
        }
        let _ = tokio::time::timeout(REFRESH, soon.notified()).await;
        tokio::time::sleep(MIN_REFRESH_GAP).await;
    }
}

/// A resolver configuration that asks `server` alone, over UDP and then TCP, on its port.
fn one_server(server: SocketAddr) -> ResolverConfig {
    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
        .into_iter()
        .map(|mut connection| {
            connection.port = server.port();
            connection
        })
        .collect();
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    name_server.connections = connections;
    ResolverConfig::from_name_servers(vec![name_server])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_sources() {
        let cases: &[(&str, Option<Source>)] = &[
            ("https://127.0.0.2:9302", Some(Source::Fixed("127.0.0.2:9302".parse().unwrap()))),
            ("https://[::1]:9302/", Some(Source::Fixed("[::1]:9302".parse().unwrap()))),
            (
                "https://quarry-sa.quarry.svc.cluster.local:9302",
                Some(Source::Name { name: "quarry-sa.quarry.svc.cluster.local".into(), port: 9302 }),
            ),
            ("srv://_grpc._tcp.quarry-sa.svc", Some(Source::Srv { name: "_grpc._tcp.quarry-sa.svc".into() })),
            ("http://127.0.0.1:1", None),
            ("https://sa.quarry", None),
            ("https://sa.quarry:x", None),
            ("https://127.0.0.1:1/path", None),
            ("srv://name:53", None),
            ("srv://", None),
        ];
        for (address, expected) in cases {
            assert_eq!(Source::parse(address).ok(), *expected, "{address}");
        }
    }

    #[test]
    fn targets_are_fixed_only_without_names() {
        let fixed = Target::parse(&["https://127.0.0.2:1".into(), "https://127.0.0.3:1".into()]).unwrap();
        assert!(!fixed.is_dynamic());
        assert_eq!(fixed.fixed().unwrap().len(), 2);
        let unsorted =
            Target::parse(&["https://127.0.0.3:1".into(), "https://127.0.0.2:1".into(), "https://127.0.0.3:1".into()]);
        let expected: Vec<SocketAddr> = vec!["127.0.0.2:1".parse().unwrap(), "127.0.0.3:1".parse().unwrap()];
        assert_eq!(unsorted.unwrap().fixed().unwrap(), expected, "sorted and each once, as the DNS's answers");
        let named = Target::parse(&["https://127.0.0.2:1".into(), "https://sa.local:1".into()]).unwrap();
        assert!(named.is_dynamic());
        assert!(named.fixed().is_none());
        assert!(Target::parse(&[]).is_err());
    }
}
