//! http-01 validation (RFC 8555 §8.3): fetch the key authorization over plain HTTP from the name's addresses,
//! following a bounded number of redirects, and compare it byte for byte.
//!
//! The va opens its own TCP connections (IPv6 addresses first, then IPv4) so that it decides, and records, which
//! address is used; hyper only speaks HTTP/1.1 over them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::addresses::{AddressPolicy, connect_error};
use crate::resolver::Resolver;
use crate::tlsalpn01::permissive_client_config;
use crate::validator::{Attempt, Validator};

/// What a fetch may do; the va's configuration supplies it.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// The port every plain-HTTP request goes to, redirects included.
    pub port: u16,
    /// The only port an https redirect may go to (443 on the Internet).
    pub https_port: u16,
    pub max_redirects: usize,
    /// A larger response body fails validation.
    pub max_body_bytes: usize,
    /// How long one address may take to accept the connection before the next is tried.
    pub connect_timeout: Duration,
    pub perspective: String,
    pub addresses: AddressPolicy,
}

/// How much of a response body a problem detail quotes.
const QUOTE_LEN: usize = 100;
/// Bounds the memory a server can make hyper spend on the status line and headers (hyper's minimum).
const MAX_HEADER_BUFFER: usize = 8 * 1024;
const USER_AGENT: &str = "quarry-va";

/// Fetches `/.well-known/acme-challenge/{token}` from the identifier.
pub struct Http01Validator {
    resolver: Arc<dyn Resolver>,
    policy: HttpPolicy,
    tls: tokio_rustls::TlsConnector,
}

impl Http01Validator {
    pub fn new(resolver: Arc<dyn Resolver>, policy: HttpPolicy) -> Self {
        let tls = permissive_client_config(vec![b"http/1.1".to_vec()]);
        Self { resolver, policy, tls: tokio_rustls::TlsConnector::from(Arc::new(tls)) }
    }

    fn port(&self, target: &Target) -> u16 {
        if target.https { self.policy.https_port } else { self.policy.port }
    }
}

#[tonic::async_trait]
impl Validator for Http01Validator {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Http01
    }

    async fn validate(&self, attempt: Attempt<'_>, records: &mut Vec<ValidationRecord>) -> Result<(), Problem> {
        let identifier = attempt.identifier;
        if identifier.is_wildcard() {
            return Err(Problem::malformed("http-01 cannot validate a wildcard identifier; use dns-01"));
        }
        let mut target = Target { https: false, host: identifier.value.clone(), path: challenge_path(attempt.token) };
        for _ in 0..=self.policy.max_redirects {
            let url = target.url(self.port(&target));
            let record = push(
                records,
                ValidationRecord {
                    hostname: target.host.clone(),
                    port: self.port(&target).to_string(),
                    url: url.clone(),
                    resolver_addresses: self.resolver.addresses(),
                    perspective: self.policy.perspective.clone(),
                    ..Default::default()
                },
            );
            match self.fetch(&target, &url, record).await? {
                Hop::Body(body) => return compare(&url, &body, attempt.key_authorization),
                Hop::Redirect(location) => target = follow(identifier, &target, &url, &location, &self.policy)?,
            }
        }
        Err(Problem::new(
            ErrorKind::Connection,
            format!(
                "Too many redirects (more than {}) fetching {}",
                self.policy.max_redirects,
                challenge_url(identifier, attempt.token, self.policy.port)
            ),
        ))
    }
}

fn push(records: &mut Vec<ValidationRecord>, record: ValidationRecord) -> &mut ValidationRecord {
    records.push(record);
    let last = records.len() - 1;
    &mut records[last]
}

fn challenge_path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

fn challenge_url(identifier: &Identifier, token: &str, port: u16) -> String {
    format!("http://{}{}", authority(&identifier.value, port), challenge_path(token))
}

/// Where the next request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// https rather than http.
    https: bool,
    /// A DNS name, or an IP address without brackets.
    host: String,
    /// Origin-form: path and query.
    path: String,
}

impl Target {
    fn url(&self, port: u16) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", authority_for(&self.host, port, self.https), self.path)
    }
}

enum Hop {
    Body(Bytes),
    Redirect(String),
}

/// The Host header value: no port when it is the scheme's default, brackets around IPv6 literals.
fn authority_for(host: &str, port: u16, https: bool) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    };
    let default = if https { 443 } else { 80 };
    if port == default { host } else { format!("{host}:{port}") }
}

/// The Host header value of a plain-HTTP request.
fn authority(host: &str, port: u16) -> String {
    authority_for(host, port, false)
}

/// Stops the connection task however the request ends, including when the whole validation is abandoned.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Http01Validator {
    /// One request: resolve (unless the host is an IP address), connect to the first address that accepts,
    /// and read the response.
    async fn fetch(&self, target: &Target, url: &str, record: &mut ValidationRecord) -> Result<Hop, Problem> {
        let addresses = match target.host.parse::<IpAddr>() {
            // An IP identifier, or a redirect of one to an IP address: nothing to resolve.
            Ok(ip) => {
                self.policy.addresses.check(ip)?;
                vec![ip]
            }
            Err(_) => {
                let (ips, resolved) = self.policy.addresses.resolve(self.resolver.as_ref(), &target.host).await?;
                record.addresses_resolved = resolved.iter().map(IpAddr::to_string).collect();
                ips
            }
        };
        let mut ordered: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv6).collect();
        ordered.extend(addresses.iter().copied().filter(IpAddr::is_ipv4));
        let mut failures = Vec::new();
        for ip in ordered {
            record.addresses_tried.push(ip.to_string());
            let addr = SocketAddr::new(ip, self.port(target));
            match tokio::time::timeout(self.policy.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(mut stream)) => {
                    record.address_used = ip.to_string();
                    quarry_core::tcp::no_delay(&mut stream);
                    if !target.https {
                        return self.request(stream, ip, target, url).await;
                    }
                    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|_| {
                        Problem::new(ErrorKind::Connection, format!("Fetching {url}: not a valid TLS server name"))
                    })?;
                    let handshake = tokio::time::timeout(self.policy.connect_timeout, self.tls.connect(name, stream));
                    return match handshake.await {
                        Ok(Ok(tls)) => self.request(tls, ip, target, url).await,
                        Ok(Err(err)) => Err(Problem::new(
                            ErrorKind::Tls,
                            format!("{ip}: Fetching {url}: TLS handshake failed: {}", tls_error(&err)),
                        )),
                        Err(_) => Err(Problem::new(
                            ErrorKind::Connection,
                            format!("{ip}: Fetching {url}: Timeout during TLS handshake"),
                        )),
                    };
                }
                Ok(Err(err)) => failures.push(format!("{ip}: Fetching {url}: {}", connect_error(&err))),
                Err(_) => {
                    failures.push(format!("{ip}: Fetching {url}: Timeout during connect (likely firewall problem)"))
                }
            }
        }
        Err(Problem::new(ErrorKind::Connection, failures.join("; ")))
    }

    async fn request<S>(&self, stream: S, ip: IpAddr, target: &Target, url: &str) -> Result<Hop, Problem>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |what: &str| Problem::new(ErrorKind::Connection, format!("{ip}: Fetching {url}: {what}"));
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADER_BUFFER)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|_| failed("Connection failed"))?;
        let _connection = AbortOnDrop(tokio::spawn(async move {
            // Its errors surface through the request and the body below.
            let _ = connection.await;
        }));
        let request = http::Request::get(target.path.as_str())
            .header(http::header::HOST, authority_for(&target.host, self.port(target), target.https))
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "*/*")
            .body(Empty::<Bytes>::new())
            .map_err(|_| failed("Invalid request path"))?;
        let response = sender.send_request(request).await.map_err(|err| failed(&http_error(&err)))?;
        let status = response.status();
        if status.is_redirection() {
            let location =
                response.headers().get(http::header::LOCATION).and_then(|value| value.to_str().ok()).ok_or_else(
                    || failed(&format!("Redirect ({}) without a valid Location header", status.as_u16())),
                )?;
            return Ok(Hop::Redirect(location.to_owned()));
        }
        if status != http::StatusCode::OK {
            return Err(Problem::new(
                ErrorKind::Unauthorized,
                format!("Invalid response from {url}: {}", status.as_u16()),
            ));
        }
        match Limited::new(response.into_body(), self.policy.max_body_bytes).collect().await {
            Ok(body) => Ok(Hop::Body(body.to_bytes())),
            Err(err) if err.is::<LengthLimitError>() => Err(Problem::new(
                ErrorKind::Unauthorized,
                format!("Invalid response from {url}: body larger than {} bytes", self.policy.max_body_bytes),
            )),
            Err(_) => Err(failed("Connection closed while reading the response body")),
        }
    }
}

fn http_error(err: &hyper::Error) -> String {
    if err.is_parse_too_large() {
        "Response headers too large".to_owned()
    } else if err.is_parse() {
        "Malformed HTTP response".to_owned()
    } else if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
        "Connection closed before a complete response".to_owned()
    } else {
        "Error getting validation data".to_owned()
    }
}

/// Why a TLS handshake failed, in words rather than the library's debug output.
fn tls_error(err: &std::io::Error) -> String {
    match err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => format!("the server sent the alert {alert:?}"),
        Some(rustls::Error::NoApplicationProtocol) => "no common application protocol".to_owned(),
        Some(_) => "the handshake was refused".to_owned(),
        None => connect_error(err).to_owned(),
    }
}

/// Resolves a Location header against the current target: http on the validation port, or https on the https
/// port, as Boulder follows them.
fn follow(
    identifier: &Identifier,
    current: &Target,
    url: &str,
    location: &str,
    policy: &HttpPolicy,
) -> Result<Target, Problem> {
    let refuse = |why: String| Err(Problem::new(ErrorKind::Connection, format!("Fetching {url}: {why}")));
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok(Target { https: current.https, host: current.host.clone(), path: location.to_owned() });
    }
    let shown: String = location.chars().take(QUOTE_LEN).collect();
    let Ok(uri) = location.parse::<http::Uri>() else { return refuse(format!("invalid redirect target {shown:?}")) };
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return refuse(format!("redirect to {shown:?}: only http and https redirects are followed")),
    };
    let Some(host) = uri.host() else { return refuse(format!("redirect to {shown:?} has no host")) };
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return refuse(format!("redirect to {shown:?} has no host"));
    }
    if host.parse::<IpAddr>().is_ok() && identifier.kind == IdentifierType::Dns {
        return refuse(format!("redirect to {shown:?}: redirects to IP addresses are not followed for DNS names"));
    }
    let (allowed, default) = if https { (policy.https_port, 443) } else { (policy.port, 80) };
    let target_port = uri.port_u16().unwrap_or(default);
    if target_port != allowed {
        return refuse(format!("redirect to {shown:?}: port {target_port} is not allowed, only port {allowed}"));
    }
    let path = uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target { https, host, path })
}

fn compare(url: &str, body: &[u8], expected: &str) -> Result<(), Problem> {
    let trimmed = body.trim_ascii_end();
    if trimmed == expected.as_bytes() {
        return Ok(());
    }
    let got = String::from_utf8_lossy(&trimmed[..trimmed.len().min(QUOTE_LEN)]).into_owned();
    let expected: String = expected.chars().take(QUOTE_LEN).collect();
    tracing::debug!(url, "key authorization mismatch");
    Err(Problem::new(
        ErrorKind::IncorrectResponse,
        format!(
            "The key authorization file from the server did not match this challenge: expected {expected:?} got {got:?}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(port: u16, https_port: u16) -> HttpPolicy {
        HttpPolicy {
            port,
            https_port,
            max_redirects: 10,
            max_body_bytes: 1024,
            connect_timeout: Duration::from_secs(1),
            perspective: "primary".into(),
            addresses: AddressPolicy::default(),
        }
    }

    #[test]
    fn redirects_are_resolved_against_the_policy() {
        type Case = (&'static str, Result<(&'static str, &'static str), ErrorKind>);
        let cases: &[Case] = &[
            ("/other", Ok(("a.example", "/other"))),
            ("http://B.example:5002/x?y=1", Ok(("b.example", "/x?y=1"))),
            ("http://b.example.:5002", Ok(("b.example", "/"))),
            ("http://b.example/x", Err(ErrorKind::Connection)),
            ("https://b.example:5002/x", Err(ErrorKind::Connection)),
            ("https://b.example:5001/x", Ok(("b.example", "/x"))),
            ("https://b.example/x", Err(ErrorKind::Connection)),
            ("ftp://b.example:5002/x", Err(ErrorKind::Connection)),
            ("//b.example:5002/x", Err(ErrorKind::Connection)),
            ("http://192.0.2.1:5002/x", Err(ErrorKind::Connection)),
            ("not a url", Err(ErrorKind::Connection)),
        ];
        let current = Target { https: false, host: "a.example".into(), path: "/p".into() };
        let policy = policy(5002, 5001);
        for (location, expected) in cases {
            let got = follow(&Identifier::dns("a.example"), &current, "http://a.example/p", location, &policy);
            match expected {
                Ok((host, path)) => {
                    let got = got.unwrap();
                    assert_eq!((got.host.as_str(), got.path.as_str()), (*host, *path), "{location}");
                    assert_eq!(got.https, location.starts_with("https"), "{location}");
                }
                Err(kind) => assert_eq!(got.unwrap_err().kind, *kind, "{location}"),
            }
        }
    }

    #[test]
    fn ip_identifiers_may_redirect_to_ip_addresses() {
        let identifier = Identifier::ip("192.0.2.1".parse().unwrap());
        let current = Target { https: false, host: "192.0.2.1".into(), path: "/p".into() };
        let policy = policy(80, 443);
        let target = follow(&identifier, &current, "http://192.0.2.1/p", "http://[2001:db8::1]/q", &policy).unwrap();
        assert_eq!(target, Target { https: false, host: "2001:db8::1".into(), path: "/q".into() });
        assert_eq!(target.url(80), "http://[2001:db8::1]/q");
        let secure = follow(&identifier, &current, "http://192.0.2.1/p", "https://192.0.2.1/r", &policy).unwrap();
        assert_eq!(secure.url(443), "https://192.0.2.1/r");
    }

    #[test]
    fn host_headers_omit_the_default_port() {
        let cases = [
            ("example.com", 80, "example.com"),
            ("example.com", 5002, "example.com:5002"),
            ("2001:db8::1", 80, "[2001:db8::1]"),
            ("127.0.0.1", 8080, "127.0.0.1:8080"),
        ];
        for (host, port, expected) in cases {
            assert_eq!(authority(host, port), expected);
        }
    }

    #[test]
    fn bodies_match_with_trailing_whitespace_trimmed() {
        let url = "http://a.example/.well-known/acme-challenge/tok";
        assert!(compare(url, b"tok.thumb\r\n \t", "tok.thumb").is_ok());
        assert!(compare(url, b" tok.thumb", "tok.thumb").is_err());
        let problem = compare(url, "x".repeat(500).as_bytes(), "tok.thumb").unwrap_err();
        assert_eq!(problem.kind, ErrorKind::IncorrectResponse);
        assert!(problem.detail.contains(&format!("got \"{}\"", "x".repeat(QUOTE_LEN))), "{}", problem.detail);
        assert!(!problem.detail.contains(&"x".repeat(QUOTE_LEN + 1)));
    }
}
