//! The challenge test server's programmable state: mock DNS data, http-01 responses, tls-alpn-01 key
//! authorizations and the request history.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::subject::Subject;

/// Events of one kind kept per host; the oldest go first, so a dev stack that runs for days stays bounded.
const HISTORY_LIMIT: usize = 1000;

/// One CAA record: `flags tag "value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaPolicy {
    /// 128 marks the property critical; pebble-challtestsrv always sends 0.
    pub flags: u8,
    pub tag: String,
    pub value: String,
}

impl CaaPolicy {
    /// A non-critical policy, as pebble-challtestsrv creates them.
    pub fn new(tag: impl Into<String>, value: impl Into<String>) -> Self {
        Self { flags: 0, tag: tag.into(), value: value.into() }
    }
}

/// A request the http-01 responder received; the field names are pebble-challtestsrv's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestEvent {
    /// Path and query of the request.
    #[serde(rename = "URL")]
    pub url: String,
    /// The Host header as sent, port included.
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "HTTPS")]
    pub https: bool,
    /// SNI of an HTTPS request; always empty, as the responder speaks plain HTTP only.
    #[serde(rename = "ServerName")]
    pub server_name: String,
}

/// A question the DNS server received; shaped like the miekg/dns `Question` pebble-challtestsrv serialises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRequestEvent {
    #[serde(rename = "Question")]
    pub question: DnsQuestion,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuestion {
    /// The name as it was asked, with its trailing dot.
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Qtype")]
    pub qtype: u16,
    #[serde(rename = "Qclass")]
    pub qclass: u16,
}

/// A ClientHello the tls-alpn-01 responder received; the field names are pebble-challtestsrv's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsAlpnRequestEvent {
    /// The SNI value as sent (a reverse-DNS name for an IP address); empty without SNI.
    #[serde(rename = "ServerName")]
    pub server_name: String,
    /// The ALPN protocols offered, in the client's order.
    #[serde(rename = "SupportedProtos")]
    pub supported_protos: Vec<String>,
}

/// Which request history `clear_request_history` empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Http,
    Dns,
    /// tls-alpn-01 ClientHellos (`tlsalpn` in the management API).
    TlsAlpn,
}

/// The server's shared state: a cheap, cloneable handle used by the DNS server, the http-01 responder, the
/// management API and Rust tests alike.
///
/// Host names are matched case-insensitively and with or without a trailing dot.
#[derive(Clone, Default)]
pub struct ChallTestSrv {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) default_ipv4: Option<Ipv4Addr>,
    pub(crate) default_ipv6: Option<Ipv6Addr>,
    pub(crate) a: HashMap<String, Vec<Ipv4Addr>>,
    pub(crate) aaaa: HashMap<String, Vec<Ipv6Addr>>,
    pub(crate) caa: HashMap<String, Vec<CaaPolicy>>,
    /// Targets are kept as validated absolute names, so answering never has to fail on them.
    pub(crate) cname: HashMap<String, Name>,
    pub(crate) servfail: HashSet<String>,
    pub(crate) txt: HashMap<String, Vec<String>>,
    pub(crate) http01: HashMap<String, String>,
    pub(crate) redirects: HashMap<String, String>,
    /// Key authorizations by [`tls_key`].
    pub(crate) tlsalpn01: HashMap<String, String>,
    http_history: HashMap<String, VecDeque<HttpRequestEvent>>,
    dns_history: HashMap<String, VecDeque<DnsRequestEvent>>,
    tlsalpn_history: HashMap<String, VecDeque<TlsAlpnRequestEvent>>,
}

/// The key a host is stored under: lower case, no trailing dot, no surrounding blanks.
pub(crate) fn host_key(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The key a tls-alpn-01 host is stored under: an IP address in its canonical text form, else [`host_key`].
fn tls_key(host: &str) -> String {
    let trimmed = host.trim().trim_start_matches('[').trim_end_matches(']');
    match trimmed.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host_key(host),
    }
}

fn push_bounded<T>(history: &mut HashMap<String, VecDeque<T>>, key: String, event: T) {
    let events = history.entry(key).or_default();
    if events.len() >= HISTORY_LIMIT {
        events.pop_front();
    }
    events.push_back(event);
}

/// Strips the port from a Host header value, bracketed IPv6 literals included.
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        // More than one colon without brackets is a bare IPv6 literal, not host:port.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Parses a CNAME target into the absolute name the DNS server answers with.
pub(crate) fn parse_target(target: &str) -> Result<Name, Error> {
    let key = host_key(target);
    if key.is_empty() {
        return Err(Error::InvalidInput(format!("CNAME target {target:?} is empty")));
    }
    Name::from_ascii(format!("{key}."))
        .map_err(|err| Error::InvalidInput(format!("CNAME target {target:?} is not a DNS name: {err}")))
}

/// Checks a CAA tag against RFC 8659's syntax, which is also what DNS clients accept when decoding.
pub(crate) fn check_caa_tag(tag: &str) -> Result<(), Error> {
    if (1..=15).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("CAA tag {tag:?} must be 1 to 15 ASCII letters and digits")))
    }
}

impl ChallTestSrv {
    /// Empty state answering A queries for any name with `default_ipv4`, AAAA with `default_ipv6`.
    pub fn new(default_ipv4: Option<Ipv4Addr>, default_ipv6: Option<Ipv6Addr>) -> Self {
        let srv = Self::default();
        {
            let mut state = srv.lock();
            state.default_ipv4 = default_ipv4;
            state.default_ipv6 = default_ipv6;
        }
        srv
    }

    /// The lock is never held across an await, and every update leaves the state consistent, so a panic elsewhere
    /// while holding it is no reason to stop serving.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the address A queries without a per-host record get; `None` leaves them unanswered.
    pub fn set_default_ipv4(&self, ip: Option<Ipv4Addr>) {
        self.lock().default_ipv4 = ip;
    }

    /// Sets the address AAAA queries without a per-host record get; `None` leaves them unanswered.
    pub fn set_default_ipv6(&self, ip: Option<Ipv6Addr>) {
        self.lock().default_ipv6 = ip;
    }

    pub fn default_ipv4(&self) -> Option<Ipv4Addr> {
        self.lock().default_ipv4
    }

    pub fn default_ipv6(&self) -> Option<Ipv6Addr> {
        self.lock().default_ipv6
    }

    /// Adds A records for `host`; they replace the default address for it.
    pub fn add_a(&self, host: &str, addresses: impl IntoIterator<Item = Ipv4Addr>) {
        self.lock().a.entry(host_key(host)).or_default().extend(addresses);
    }

    pub fn clear_a(&self, host: &str) {
        self.lock().a.remove(&host_key(host));
    }

    /// Adds AAAA records for `host`; they replace the default address for it.
    pub fn add_aaaa(&self, host: &str, addresses: impl IntoIterator<Item = Ipv6Addr>) {
        self.lock().aaaa.entry(host_key(host)).or_default().extend(addresses);
    }

    pub fn clear_aaaa(&self, host: &str) {
        self.lock().aaaa.remove(&host_key(host));
    }

    /// Adds CAA records for `host`. Fails, adding nothing, if a tag is not 1 to 15 ASCII letters and digits.
    pub fn add_caa(&self, host: &str, policies: impl IntoIterator<Item = CaaPolicy>) -> Result<(), Error> {
        let policies: Vec<CaaPolicy> = policies.into_iter().collect();
        for policy in &policies {
            check_caa_tag(&policy.tag)?;
        }
        self.lock().caa.entry(host_key(host)).or_default().extend(policies);
        Ok(())
    }

    pub fn clear_caa(&self, host: &str) {
        self.lock().caa.remove(&host_key(host));
    }

    /// Makes `host` an alias of `target`, replacing any previous alias. Fails if `target` is not a DNS name.
    pub fn set_cname(&self, host: &str, target: &str) -> Result<(), Error> {
        let target = parse_target(target)?;
        self.lock().cname.insert(host_key(host), target);
        Ok(())
    }

    pub fn clear_cname(&self, host: &str) {
        self.lock().cname.remove(&host_key(host));
    }

    /// Makes every query for `host` (or through an alias to it) fail with SERVFAIL.
    pub fn set_servfail(&self, host: &str) {
        self.lock().servfail.insert(host_key(host));
    }

    pub fn clear_servfail(&self, host: &str) {
        self.lock().servfail.remove(&host_key(host));
    }

    /// Adds a TXT record for `host`; earlier values stay, since a wildcard and its base name share one
    /// `_acme-challenge` name and clients set both.
    pub fn set_txt(&self, host: &str, value: &str) {
        self.lock().txt.entry(host_key(host)).or_default().push(value.to_owned());
    }

    /// Removes every TXT record of `host`.
    pub fn clear_txt(&self, host: &str) {
        self.lock().txt.remove(&host_key(host));
    }

    /// Serves `content` at `/.well-known/acme-challenge/{token}`.
    pub fn add_http01(&self, token: &str, content: &str) {
        self.lock().http01.insert(token.to_owned(), content.to_owned());
    }

    pub fn del_http01(&self, token: &str) {
        self.lock().http01.remove(token);
    }

    /// Answers requests for exactly `path` with a 302 to `target_url`, before any http-01 response.
    pub fn add_redirect(&self, path: &str, target_url: &str) {
        self.lock().redirects.insert(path.to_owned(), target_url.to_owned());
    }

    pub fn del_redirect(&self, path: &str) {
        self.lock().redirects.remove(path);
    }

    /// Answers tls-alpn-01 handshakes for `host` (a DNS name, or an IP address whose reverse-DNS name is the SNI)
    /// with a certificate for `key_authorization`, replacing any earlier one.
    pub fn add_tlsalpn01(&self, host: &str, key_authorization: &str) {
        self.lock().tlsalpn01.insert(tls_key(host), key_authorization.to_owned());
    }

    /// Stops answering tls-alpn-01 handshakes for `host`.
    pub fn del_tlsalpn01(&self, host: &str) {
        self.lock().tlsalpn01.remove(&tls_key(host));
    }

    pub(crate) fn tlsalpn01_key_authorization(&self, subject: &Subject) -> Option<String> {
        let key = match subject {
            Subject::Dns(name) => host_key(name),
            Subject::Ip(ip) => ip.to_string(),
        };
        self.lock().tlsalpn01.get(&key).cloned()
    }

    /// The http-01 responder's requests whose Host header, without its port, is `host`; oldest first.
    pub fn http_request_history(&self, host: &str) -> Vec<HttpRequestEvent> {
        self.lock().http_history.get(&host_key(host)).map(|events| events.iter().cloned().collect()).unwrap_or_default()
    }

    /// The DNS questions asked about `host`; oldest first.
    pub fn dns_request_history(&self, host: &str) -> Vec<DnsRequestEvent> {
        self.lock().dns_history.get(&host_key(host)).map(|events| events.iter().cloned().collect()).unwrap_or_default()
    }

    /// The tls-alpn-01 ClientHellos whose SNI is `host` as sent (an IP address's reverse-DNS name, not the
    /// address); oldest first.
    pub fn tlsalpn01_request_history(&self, host: &str) -> Vec<TlsAlpnRequestEvent> {
        self.lock()
            .tlsalpn_history
            .get(&host_key(host))
            .map(|events| events.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn clear_request_history(&self, host: &str, kind: RequestKind) {
        let key = host_key(host);
        let mut state = self.lock();
        match kind {
            RequestKind::Http => {
                state.http_history.remove(&key);
            }
            RequestKind::Dns => {
                state.dns_history.remove(&key);
            }
            RequestKind::TlsAlpn => {
                state.tlsalpn_history.remove(&key);
            }
        }
    }

    pub(crate) fn record_tlsalpn(&self, event: TlsAlpnRequestEvent) {
        let key = host_key(&event.server_name);
        push_bounded(&mut self.lock().tlsalpn_history, key, event);
    }

    pub(crate) fn record_http(&self, event: HttpRequestEvent) {
        let key = host_key(host_without_port(&event.host));
        push_bounded(&mut self.lock().http_history, key, event);
    }
}

impl State {
    pub(crate) fn record_dns(&mut self, event: DnsRequestEvent) {
        let key = host_key(&event.question.name);
        push_bounded(&mut self.dns_history, key, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_ignore_case_and_the_trailing_dot() {
        assert_eq!(host_key("_ACME-challenge.Example.COM."), "_acme-challenge.example.com");
        assert_eq!(host_key("example.com"), "example.com");
    }

    #[test]
    fn ports_are_stripped_from_host_headers() {
        assert_eq!(host_without_port("example.com:5002"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
    }

    #[test]
    fn history_is_bounded_per_host() {
        let srv = ChallTestSrv::default();
        for i in 0..HISTORY_LIMIT + 5 {
            srv.record_http(HttpRequestEvent {
                url: format!("/{i}"),
                host: "example.com:80".to_owned(),
                https: false,
                server_name: String::new(),
            });
        }
        let history = srv.http_request_history("EXAMPLE.com.");
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history[0].url, "/5");
        srv.clear_request_history("example.com", RequestKind::Http);
        assert!(srv.http_request_history("example.com").is_empty());
    }

    #[test]
    fn tls_alpn_hosts_are_keyed_by_name_or_canonical_address() {
        let srv = ChallTestSrv::default();
        srv.add_tlsalpn01("Example.COM.", "a.b");
        srv.add_tlsalpn01("2001:DB8:0::1", "c.d");
        srv.add_tlsalpn01("[::1]", "e.f");
        let dns = Subject::Dns("example.com".into());
        assert_eq!(srv.tlsalpn01_key_authorization(&dns).as_deref(), Some("a.b"));
        let v6 = Subject::Ip("2001:db8::1".parse().unwrap());
        assert_eq!(srv.tlsalpn01_key_authorization(&v6).as_deref(), Some("c.d"));
        let loopback = Subject::Ip("::1".parse().unwrap());
        assert_eq!(srv.tlsalpn01_key_authorization(&loopback).as_deref(), Some("e.f"));
        srv.del_tlsalpn01("example.com");
        assert_eq!(srv.tlsalpn01_key_authorization(&dns), None);
    }

    #[test]
    fn invalid_caa_tags_and_cname_targets_are_refused() {
        let srv = ChallTestSrv::default();
        assert!(srv.add_caa("example.com", [CaaPolicy::new("issue", "quarry.test")]).is_ok());
        assert!(srv.add_caa("example.com", [CaaPolicy::new("is-sue", "x")]).is_err());
        assert!(srv.add_caa("example.com", [CaaPolicy::new("", "x")]).is_err());
        assert_eq!(srv.lock().caa["example.com"].len(), 1);
        assert!(srv.set_cname("www.example.com", "example.com").is_ok());
        assert!(srv.set_cname("www.example.com", ".").is_err());
        assert!(srv.set_cname("www.example.com", "a..b").is_err());
    }
}
