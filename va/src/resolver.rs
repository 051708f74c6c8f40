//! DNS lookups the va needs, behind a trait so tests and later perspectives can substitute their own.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist, or has no records of the type asked for.
    NotFound,
    /// The resolver failed (SERVFAIL, timeout, refused...); the text says how.
    Failed(String),
}

/// The lookups domain validation makes.
#[tonic::async_trait]
pub trait Resolver: Send + Sync {
    /// A and AAAA records of `name`.
    async fn lookup_ips(&self, name: &str) -> Result<Vec<IpAddr>, LookupError>;
    /// TXT records of `name`, each record's strings joined.
    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, LookupError>;
    /// The resolver addresses, for validation records.
    fn addresses(&self) -> Vec<String>;
}

/// A stub resolver asking exactly one configured server (UDP, then TCP when truncated), caching nothing.
pub struct DnsResolver {
    resolver: TokioResolver,
    server: SocketAddr,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

fn classify(err: NetError) -> LookupError {
    if err.is_nx_domain() || err.is_no_records_found() {
        LookupError::NotFound
    } else {
        LookupError::Failed(err.to_string())
    }
}

impl DnsResolver {
    pub fn new(server: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
            .into_iter()
            .map(|mut connection| {
                connection.port = server.port();
                connection
            })
            .collect();
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        name_server.connections = connections;
        let config = ResolverConfig::from_name_servers(vec![name_server]);
        let mut options = ResolverOpts::default();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = 0;
        options.timeout = timeout;
        options.attempts = 2;
        options.ndots = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { resolver, server })
    }
}

#[tonic::async_trait]
impl Resolver for DnsResolver {
    async fn lookup_ips(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let lookup = self.resolver.lookup_ip(fqdn(name)).await.map_err(classify)?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if ips.is_empty() { Err(LookupError::NotFound) } else { Ok(ips) }
    }

    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let lookup = self.resolver.txt_lookup(fqdn(name)).await.map_err(classify)?;
        let values: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => {
                    Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part).into_owned()).collect::<String>())
                }
                _ => None,
            })
            .collect();
        if values.is_empty() { Err(LookupError::NotFound) } else { Ok(values) }
    }

    fn addresses(&self) -> Vec<String> {
        vec![self.server.to_string()]
    }
}
