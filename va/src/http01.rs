//! http-01 validation (RFC 8555 §8.3): fetch the key authorization over plain HTTP from the name's addresses,
//! following a bounded number of redirects, and compare it byte for byte.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use quarry_core::model::ValidationRecord;
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};

use crate::resolver::{LookupError, Resolver};

/// What a fetch may do; the va's configuration supplies it.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    pub port: u16,
    pub max_redirects: usize,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    pub perspective: String,
}

/// How much of a response body a problem detail quotes.
const QUOTE_LEN: usize = 100;

enum Hop {
    Done(Bytes),
    Redirect(String),
}

/// Validates `identifier` by fetching `/.well-known/acme-challenge/{token}`; records every request made.
pub async fn validate(
    resolver: &dyn Resolver,
    policy: &HttpPolicy,
    identifier: &Identifier,
    token: &str,
    expected: &str,
    records: &mut Vec<ValidationRecord>,
) -> Result<(), Problem> {
    let mut host = identifier.value.clone();
    let mut path = format!("/.well-known/acme-challenge/{token}");
    for _ in 0..=policy.max_redirects {
        let url = format!("http://{}{path}", authority(&host, policy.port));
        let mut record = ValidationRecord {
            hostname: host.clone(),
            port: policy.port.to_string(),
            url: url.clone(),
            resolver_addresses: resolver.addresses(),
            perspective: policy.perspective.clone(),
            ..Default::default()
        };
        let outcome = fetch_hop(resolver, policy, identifier.kind, &host, &path, &url, &mut record).await;
        records.push(record);
        match outcome? {
            Hop::Done(body) => return compare(&body, expected),
            Hop::Redirect(location) => {
                let (next_host, next_path) = follow(&host, &location, policy.port)?;
                host = next_host;
                path = next_path;
            }
        }
    }
    Err(Problem::new(ErrorKind::Connection, format!("too many redirects (more than {})", policy.max_redirects)))
}

fn authority(host: &str, port: u16) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    };
    if port == 80 { host } else { format!("{host}:{port}") }
}

async fn fetch_hop(
    resolver: &dyn Resolver,
    policy: &HttpPolicy,
    kind: IdentifierType,
    host: &str,
    path: &str,
    url: &str,
    record: &mut ValidationRecord,
) -> Result<Hop, Problem> {
    let addresses = match host.parse::<IpAddr>() {
        Ok(ip) if kind == IdentifierType::Ip => vec![ip],
        _ => match resolver.lookup_ips(host).await {
            Ok(ips) => ips,
            Err(LookupError::NotFound) => {
                return Err(Problem::new(ErrorKind::Dns, format!("no valid A or AAAA records for {host}")));
            }
            Err(LookupError::Failed(why)) => {
                return Err(Problem::new(
                    ErrorKind::Dns,
                    format!("DNS problem looking up A and AAAA for {host}: {why}"),
                ));
            }
        },
    };
    record.addresses_resolved = addresses.iter().map(IpAddr::to_string).collect();
    // IPv6 first, then IPv4, as RFC 8555's deployments (and Boulder) do.
    let mut ordered: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv6).collect();
    ordered.extend(addresses.iter().copied().filter(IpAddr::is_ipv4));
    let mut last_error = String::new();
    for ip in ordered {
        record.addresses_tried.push(ip.to_string());
        let addr = SocketAddr::new(ip, policy.port);
        match tokio::time::timeout(policy.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                record.address_used = ip.to_string();
                return request(stream, policy, host, path, url).await;
            }
            Ok(Err(err)) => last_error = format!("{addr}: {}", connect_error(&err)),
            Err(_) => last_error = format!("{addr}: timeout during connect"),
        }
    }
    Err(Problem::new(ErrorKind::Connection, format!("could not connect to {host}: {last_error}")))
}

fn connect_error(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused",
        std::io::ErrorKind::ConnectionReset => "connection reset by peer",
        std::io::ErrorKind::TimedOut => "timeout during connect",
        _ => "connection failed",
    }
}

async fn request(
    stream: tokio::net::TcpStream,
    policy: &HttpPolicy,
    host: &str,
    path: &str,
    url: &str,
) -> Result<Hop, Problem> {
    let connection_problem = |what: &str| Problem::new(ErrorKind::Connection, format!("fetching {url}: {what}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| connection_problem("HTTP handshake failed"))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority(host, policy.port))
        .header(http::header::USER_AGENT, "quarry-va")
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|_| connection_problem("cannot build the request"))?;
    let response = sender.send_request(request).await.map_err(|_| connection_problem("no valid HTTP response"));
    let response = match response {
        Ok(response) => response,
        Err(problem) => {
            driver.abort();
            return Err(problem);
        }
    };
    let status = response.status();
    if status.is_redirection() {
        driver.abort();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| connection_problem("redirect without a valid Location header"))?;
        return Ok(Hop::Redirect(location.to_owned()));
    }
    let body = Limited::new(response.into_body(), policy.max_body_bytes).collect().await;
    driver.abort();
    let body = body
        .map_err(|_| {
            Problem::new(
                ErrorKind::Unauthorized,
                format!("invalid response from {url}: body larger than {} bytes or cut short", policy.max_body_bytes),
            )
        })?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(Problem::new(ErrorKind::Unauthorized, format!("invalid response from {url}: {}", status.as_u16())));
    }
    Ok(Hop::Done(body))
}

/// Resolves a Location header against the current host; only plain HTTP on the validation port is followed.
fn follow(current_host: &str, location: &str, port: u16) -> Result<(String, String), Problem> {
    let refuse = |why: String| Err(Problem::new(ErrorKind::Connection, why));
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok((current_host.to_owned(), location.to_owned()));
    }
    let Ok(uri) = location.parse::<http::Uri>() else { return refuse(format!("invalid redirect to {location:?}")) };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return refuse(format!("redirect to {location:?}: redirects to https are not supported yet")),
        _ => return refuse(format!("redirect to {location:?}: only http and https redirects are allowed")),
    }
    let Some(host) = uri.host() else { return refuse(format!("redirect to {location:?} has no host")) };
    let target_port = uri.port_u16().unwrap_or(80);
    if target_port != port {
        return refuse(format!("redirect to {location:?}: only port {port} is allowed, not {target_port}"));
    }
    let path = uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(), path))
}

fn compare(body: &[u8], expected: &str) -> Result<(), Problem> {
    let trimmed = body.trim_ascii_end();
    if trimmed == expected.as_bytes() {
        return Ok(());
    }
    let got = String::from_utf8_lossy(&trimmed[..trimmed.len().min(QUOTE_LEN)]).into_owned();
    Err(Problem::new(
        ErrorKind::IncorrectResponse,
        format!(
            "the key authorization file from the server did not match this challenge: expected {expected:?}, got {got:?}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_resolved_against_the_policy() {
        type Case = (&'static str, Result<(&'static str, &'static str), ErrorKind>);
        let cases: &[Case] = &[
            ("/other", Ok(("a.example", "/other"))),
            ("http://b.example:5002/x?y=1", Ok(("b.example", "/x?y=1"))),
            ("http://b.example/x", Err(ErrorKind::Connection)),
            ("https://b.example:5002/x", Err(ErrorKind::Connection)),
            ("ftp://b.example:5002/x", Err(ErrorKind::Connection)),
        ];
        for (location, expected) in cases {
            let got = follow("a.example", location, 5002);
            match expected {
                Ok((host, path)) => assert_eq!(got.unwrap(), (host.to_string(), path.to_string()), "{location}"),
                Err(kind) => assert_eq!(got.unwrap_err().kind, *kind, "{location}"),
            }
        }
    }

    #[test]
    fn bodies_match_with_trailing_whitespace_trimmed() {
        assert!(compare(b"tok.thumb\r\n ", "tok.thumb").is_ok());
        assert!(compare(b" tok.thumb", "tok.thumb").is_err());
        assert_eq!(compare(b"nope", "tok.thumb").unwrap_err().kind, ErrorKind::IncorrectResponse);
    }
}
