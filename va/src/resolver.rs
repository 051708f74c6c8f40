//! DNS lookups the va needs, behind a trait so tests and later perspectives can substitute their own.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::{RData, Record, RecordType};

use crate::dns_exchange::DnsExchange;
pub use crate::dns_exchange::LookupError;

/// One CAA resource record, as a lookup returns it (RFC 8659 §4.1); `caa` decides what a set of them allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    /// The issuer-critical flag: an unknown tag marked critical forbids issuance.
    pub critical: bool,
    pub tag: String,
    pub value: String,
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
    exchange: DnsExchange,
    server: SocketAddr,
}

impl DnsResolver {
    /// `query_timeout` bounds each query attempt (two attempts are made).
    pub fn new(server: SocketAddr, query_timeout: Duration) -> Self {
        Self { exchange: DnsExchange::new(server, query_timeout, 2), server }
    }

    /// The records of `record_type` for `name`, CNAMEs followed.
    async fn records(&self, name: &str, record_type: RecordType) -> Result<Vec<Record>, LookupError> {
        self.exchange.lookup(&fqdn(name), record_type).await
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

/// The answer section of a DNS response in wire format, parsed as the va's exchange parses a reply; `None` when it
/// does not parse. The `dns_answers` fuzzer's entry.
pub fn decode_answers(wire: &[u8]) -> Option<Vec<Record>> {
    let message = hickory_proto::op::Message::from_vec(wire).ok()?;
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

#[tonic::async_trait]
impl Resolver for DnsResolver {
    /// A and AAAA asked at once; either failing is forgiven when the other has addresses (as hickory's and
    /// Boulder's resolvers do), so a server that fumbles AAAA does not fail an IPv4-only name.
    async fn lookup_ips(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let (v4, v6) = tokio::join!(self.records(name, RecordType::A), self.records(name, RecordType::AAAA));
        let ips: Vec<IpAddr> = [&v4, &v6]
            .into_iter()
            .flat_map(|found| found.iter().flatten())
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect();
        if !ips.is_empty() {
            return Ok(ips);
        }
        match (v4, v6) {
            (Err(LookupError::Failed(why)), _) | (_, Err(LookupError::Failed(why))) => Err(LookupError::Failed(why)),
            _ => Err(LookupError::NotFound),
        }
    }

    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let values = txt_values(&self.records(name, RecordType::TXT).await?);
        if values.is_empty() { Err(LookupError::NotFound) } else { Ok(values) }
    }

    async fn lookup_caa(&self, name: &str) -> Result<Vec<CaaRecord>, LookupError> {
        Ok(caa_records(&self.records(name, RecordType::CAA).await?))
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
}
