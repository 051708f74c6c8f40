//! DNS lookups the va needs, behind a trait so tests and later perspectives can substitute their own.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

/// One CAA resource record, as a lookup returns it (RFC 8659 §4.1); `caa` decides what a set of them allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    /// The issuer-critical flag: an unknown tag marked critical forbids issuance.
    pub critical: bool,
    pub tag: String,
    pub value: String,
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN), or has no records of the type asked for.
    NotFound,
    /// The resolver failed; the text (`SERVFAIL`, `timeout`, ...) is fit for a problem detail.
    Failed(String),
}

/// The lookups domain validation makes.
#[tonic::async_trait]
pub trait Resolver: Send + Sync {
    /// A and AAAA records of `name`, CNAMEs followed; never empty when `Ok`.
    async fn lookup_ips(&self, name: &str) -> Result<Vec<IpAddr>, LookupError>;
    /// TXT records of `name`, CNAMEs followed, each record's strings concatenated; never empty when `Ok`.
    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, LookupError>;
    /// CAA records of `name` (CNAMEs followed by the server); empty or `NotFound` when it has none.
    async fn lookup_caa(&self, name: &str) -> Result<Vec<CaaRecord>, LookupError>;
    /// The addresses of the servers asked, for validation records.
    fn addresses(&self) -> Vec<String>;
}

/// A stub resolver asking exactly one configured server (UDP, then TCP when truncated): no system configuration,
/// no hosts file, no search domains and no cache, so that every validation sees the DNS as it is now.
pub struct DnsResolver {
    resolver: TokioResolver,
    server: SocketAddr,
}

impl DnsResolver {
    /// `query_timeout` bounds each query attempt (two attempts are made).
    pub fn new(server: SocketAddr, query_timeout: Duration) -> Result<Self, String> {
        let config = quarry_core::discovery::one_server(server);
        let mut options = ResolverOpts::default();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = query_timeout;
        options.attempts = 2;
        // Names are always fully qualified; nothing is ever appended to them.
        options.ndots = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { resolver, server })
    }
}

/// The TXT values of an answer section (which also holds the CNAMEs followed: only TXT data counts), each value's
/// strings joined.
pub fn txt_values(answers: &[Record]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => {
                Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part).into_owned()).collect::<String>())
            }
            _ => None,
        })
        .collect()
}

/// The answer section of a DNS response in wire format, as a resolver receives it; `None` when it does not parse.
pub fn decode_answers(wire: &[u8]) -> Option<Vec<Record>> {
    let message = hickory_resolver::proto::op::Message::from_vec(wire).ok()?;
    Some(message.answers)
}

/// The CAA records of an answer section.
pub fn caa_records(answers: &[Record]) -> Vec<CaaRecord> {
    answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::CAA(caa) => Some(CaaRecord {
                critical: caa.issuer_critical,
                tag: caa.tag.to_string(),
                value: String::from_utf8_lossy(&caa.value).into_owned(),
            }),
            _ => None,
        })
        .collect()
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

fn classify(err: NetError) -> LookupError {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(_)) => LookupError::NotFound,
        NetError::Dns(DnsError::ResponseCode(code)) => LookupError::Failed(response_code_name(code)),
        NetError::Timeout => LookupError::Failed("timeout".to_owned()),
        other => {
            tracing::debug!(error = %other, "dns lookup failed");
            LookupError::Failed("networking error".to_owned())
        }
    }
}

/// The mnemonic operators know from dig, rather than the library's prose.
fn response_code_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        other => format!("rcode {}", u16::from(other)),
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
        let values = txt_values(lookup.answers());
        if values.is_empty() { Err(LookupError::NotFound) } else { Ok(values) }
    }

    async fn lookup_caa(&self, name: &str) -> Result<Vec<CaaRecord>, LookupError> {
        let lookup = self.resolver.lookup(fqdn(name), RecordType::CAA).await.map_err(classify)?;
        Ok(caa_records(lookup.answers()))
    }

    fn addresses(&self) -> Vec<String> {
        vec![self.server.to_string()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_fully_qualified_once() {
        assert_eq!(fqdn("example.com"), "example.com.");
        assert_eq!(fqdn("example.com."), "example.com.");
    }

    #[test]
    fn failures_read_like_dig() {
        assert_eq!(
            classify(NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))),
            LookupError::Failed("SERVFAIL".into())
        );
        assert_eq!(classify(NetError::Timeout), LookupError::Failed("timeout".into()));
        assert_eq!(
            classify(NetError::Msg("socket exploded: 0x1234".into())),
            LookupError::Failed("networking error".into())
        );
    }
}
