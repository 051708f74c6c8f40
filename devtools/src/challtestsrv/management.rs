//! The management API: pebble-challtestsrv's HTTP interface, so clients' test suites written for it drive Quarry.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::state::{CaaPolicy, ChallTestSrv, RequestKind};

pub(crate) fn router(srv: ChallTestSrv) -> Router {
    Router::new()
        .route("/set-default-ipv4", post(set_default_ipv4))
        .route("/set-default-ipv6", post(set_default_ipv6))
        .route("/add-a", post(add_a))
        .route("/clear-a", post(clear_a))
        .route("/add-aaaa", post(add_aaaa))
        .route("/clear-aaaa", post(clear_aaaa))
        .route("/add-caa", post(add_caa))
        .route("/clear-caa", post(clear_caa))
        .route("/set-cname", post(set_cname))
        .route("/clear-cname", post(clear_cname))
        .route("/set-servfail", post(set_servfail))
        .route("/clear-servfail", post(clear_servfail))
        .route("/set-txt", post(set_txt))
        .route("/clear-txt", post(clear_txt))
        .route("/add-http01", post(add_http01))
        .route("/del-http01", post(del_http01))
        .route("/add-tlsalpn01", post(add_tlsalpn01))
        .route("/del-tlsalpn01", post(del_tlsalpn01))
        // The name pebble-challtestsrv's README gives; its server answers to `del-tlsalpn01`.
        .route("/clear-tlsalpn01", post(del_tlsalpn01))
        .route("/add-redirect", post(add_redirect))
        .route("/del-redirect", post(del_redirect))
        .route("/http-request-history", post(http_request_history))
        .route("/dns-request-history", post(dns_request_history))
        .route("/tlsalpn01-request-history", post(tlsalpn01_request_history))
        .route("/clear-request-history", post(clear_request_history))
        .with_state(srv)
}

/// Parses a JSON body the way Go's encoding/json does for pebble-challtestsrv: object keys match field names
/// whatever their case (`Host` and `host` alike), unknown keys are ignored, missing ones are empty.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    fn lowercase_keys(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k.to_lowercase(), lowercase_keys(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(lowercase_keys).collect()),
            other => other,
        }
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| bad_request(format!("invalid JSON body: {err}")))?;
    // serde would read an array as a struct's fields in order; Go refuses anything but an object.
    if !value.is_object() {
        return Err(bad_request("the body must be a JSON object"));
    }
    serde_json::from_value(lowercase_keys(value)).map_err(|err| bad_request(format!("invalid request: {err}")))
}

/// A refused request: 400, with the reason as the body.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

fn require(field: &str, value: &str) -> Result<(), BadRequest> {
    if value.trim().is_empty() { Err(bad_request(format!("{field} must not be empty"))) } else { Ok(()) }
}

type Reply = Result<Response, BadRequest>;

#[derive(Deserialize, Default)]
#[serde(default)]
struct IpRequest {
    ip: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HostRequest {
    host: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddressesRequest {
    host: String,
    addresses: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CaaRequest {
    host: String,
    policies: Vec<CaaPolicyRequest>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CaaPolicyRequest {
    /// Not in pebble-challtestsrv's API (its records always have flags 0); accepted to test critical properties.
    #[serde(alias = "flag")]
    flags: u8,
    tag: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CnameRequest {
    host: String,
    target: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TxtRequest {
    host: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Http01Request {
    token: String,
    content: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TlsAlpn01Request {
    host: String,
    content: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RedirectRequest {
    path: String,
    /// `targetURL` in pebble-challtestsrv's API; keys arrive lower-cased.
    targeturl: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClearHistoryRequest {
    host: String,
    #[serde(rename = "type")]
    kind: String,
}

/// An empty `ip` clears the default; anything else must be an address of the right family.
fn parse_default<T: std::str::FromStr>(ip: &str) -> Result<Option<T>, BadRequest> {
    let ip = ip.trim();
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse().map(Some).map_err(|_| bad_request(format!("{ip:?} is not an address of the right family")))
}

fn parse_addresses<T: std::str::FromStr>(request: &AddressesRequest) -> Result<Vec<T>, BadRequest> {
    require("host", &request.host)?;
    if request.addresses.is_empty() {
        return Err(bad_request("addresses must not be empty"));
    }
    request
        .addresses
        .iter()
        .map(|ip| ip.trim().parse().map_err(|_| bad_request(format!("{ip:?} is not an address of the right family"))))
        .collect()
}

async fn set_default_ipv4(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: IpRequest = parse(&body)?;
    let ip = parse_default::<Ipv4Addr>(&request.ip)?;
    srv.set_default_ipv4(ip);
    tracing::info!(?ip, "challtestsrv: default IPv4 address set");
    Ok(ok())
}

async fn set_default_ipv6(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: IpRequest = parse(&body)?;
    let ip = parse_default::<Ipv6Addr>(&request.ip)?;
    srv.set_default_ipv6(ip);
    tracing::info!(?ip, "challtestsrv: default IPv6 address set");
    Ok(ok())
}

async fn add_a(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: AddressesRequest = parse(&body)?;
    let addresses = parse_addresses::<Ipv4Addr>(&request)?;
    srv.add_a(&request.host, addresses);
    tracing::info!(host = %request.host, addresses = ?request.addresses, "challtestsrv: A records added");
    Ok(ok())
}

async fn add_aaaa(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: AddressesRequest = parse(&body)?;
    let addresses = parse_addresses::<Ipv6Addr>(&request)?;
    srv.add_aaaa(&request.host, addresses);
    tracing::info!(host = %request.host, addresses = ?request.addresses, "challtestsrv: AAAA records added");
    Ok(ok())
}

/// The handlers that take only a host and forget something about it.
fn clear_host(body: &[u8], what: &str, clear: impl FnOnce(&str)) -> Reply {
    let request: HostRequest = parse(body)?;
    require("host", &request.host)?;
    clear(&request.host);
    tracing::info!(host = %request.host, "challtestsrv: {what} cleared");
    Ok(ok())
}

async fn clear_a(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "A records", |host| srv.clear_a(host))
}

async fn clear_aaaa(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "AAAA records", |host| srv.clear_aaaa(host))
}

async fn clear_caa(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "CAA records", |host| srv.clear_caa(host))
}

async fn clear_cname(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "CNAME record", |host| srv.clear_cname(host))
}

async fn clear_servfail(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "SERVFAIL", |host| srv.clear_servfail(host))
}

async fn clear_txt(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "TXT records", |host| srv.clear_txt(host))
}

async fn set_servfail(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: HostRequest = parse(&body)?;
    require("host", &request.host)?;
    srv.set_servfail(&request.host);
    tracing::info!(host = %request.host, "challtestsrv: SERVFAIL set");
    Ok(ok())
}

async fn add_caa(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: CaaRequest = parse(&body)?;
    require("host", &request.host)?;
    if request.policies.is_empty() {
        return Err(bad_request("policies must not be empty"));
    }
    let policies = request.policies.into_iter().map(|policy| CaaPolicy {
        flags: policy.flags,
        tag: policy.tag,
        value: policy.value,
    });
    srv.add_caa(&request.host, policies).map_err(|err| bad_request(err.to_string()))?;
    tracing::info!(host = %request.host, "challtestsrv: CAA records added");
    Ok(ok())
}

async fn set_cname(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: CnameRequest = parse(&body)?;
    require("host", &request.host)?;
    require("target", &request.target)?;
    srv.set_cname(&request.host, &request.target).map_err(|err| bad_request(err.to_string()))?;
    tracing::info!(host = %request.host, target = %request.target, "challtestsrv: CNAME record set");
    Ok(ok())
}

async fn set_txt(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: TxtRequest = parse(&body)?;
    require("host", &request.host)?;
    require("value", &request.value)?;
    srv.set_txt(&request.host, &request.value);
    tracing::info!(host = %request.host, value = %request.value, "challtestsrv: TXT record added");
    Ok(ok())
}

async fn add_http01(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: Http01Request = parse(&body)?;
    require("token", &request.token)?;
    require("content", &request.content)?;
    srv.add_http01(&request.token, &request.content);
    tracing::info!(token = %request.token, "challtestsrv: http-01 response added");
    Ok(ok())
}

async fn del_http01(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: Http01Request = parse(&body)?;
    require("token", &request.token)?;
    srv.del_http01(&request.token);
    tracing::info!(token = %request.token, "challtestsrv: http-01 response removed");
    Ok(ok())
}

async fn add_tlsalpn01(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: TlsAlpn01Request = parse(&body)?;
    require("host", &request.host)?;
    require("content", &request.content)?;
    srv.add_tlsalpn01(&request.host, &request.content);
    tracing::info!(host = %request.host, "challtestsrv: tls-alpn-01 key authorization added");
    Ok(ok())
}

async fn del_tlsalpn01(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    clear_host(&body, "tls-alpn-01 key authorization", |host| srv.del_tlsalpn01(host))
}

async fn add_redirect(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: RedirectRequest = parse(&body)?;
    require("path", &request.path)?;
    require("targetURL", &request.targeturl)?;
    // Checked here so the responder never fails to build the Location header.
    if header::HeaderValue::from_str(&request.targeturl).is_err() {
        return Err(bad_request("targetURL cannot be a Location header"));
    }
    srv.add_redirect(&request.path, &request.targeturl);
    tracing::info!(path = %request.path, target = %request.targeturl, "challtestsrv: redirect added");
    Ok(ok())
}

async fn del_redirect(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: RedirectRequest = parse(&body)?;
    require("path", &request.path)?;
    srv.del_redirect(&request.path);
    tracing::info!(path = %request.path, "challtestsrv: redirect removed");
    Ok(ok())
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn http_request_history(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: HostRequest = parse(&body)?;
    require("host", &request.host)?;
    Ok(json(&srv.http_request_history(&request.host)))
}

async fn dns_request_history(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: HostRequest = parse(&body)?;
    require("host", &request.host)?;
    Ok(json(&srv.dns_request_history(&request.host)))
}

async fn tlsalpn01_request_history(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: HostRequest = parse(&body)?;
    require("host", &request.host)?;
    Ok(json(&srv.tlsalpn01_request_history(&request.host)))
}

async fn clear_request_history(State(srv): State<ChallTestSrv>, body: Bytes) -> Reply {
    let request: ClearHistoryRequest = parse(&body)?;
    require("host", &request.host)?;
    let kind = match request.kind.as_str() {
        "http" => RequestKind::Http,
        "dns" => RequestKind::Dns,
        "tlsalpn" => RequestKind::TlsAlpn,
        other => return Err(bad_request(format!("{other:?} event type unknown"))),
    };
    srv.clear_request_history(&request.host, kind);
    tracing::info!(host = %request.host, kind = %request.kind, "challtestsrv: request history cleared");
    Ok(ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_whatever_their_case() {
        let request: RedirectRequest = parse(br#"{"Path": "/a", "targetURL": "http://b/"}"#).ok().unwrap();
        assert_eq!(request.path, "/a");
        assert_eq!(request.targeturl, "http://b/");
        let request: CaaRequest =
            parse(br#"{"HOST": "h", "policies": [{"Tag": "issue", "VALUE": "v"}]}"#).ok().unwrap();
        assert_eq!(request.policies[0].tag, "issue");
        assert_eq!(request.policies[0].value, "v");
    }

    #[test]
    fn bad_json_and_wrong_types_are_bad_requests() {
        for body in [&b"{"[..], b"", br#"{"host": 1}"#, b"[]", b"null"] {
            let refused = parse::<HostRequest>(body).err().expect("refused").into_response();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        }
    }
}
