//! Pebble's management API, served by `quarry dev` (`--management-addr`): the dev PKI's root and intermediates (and
//! their keys: a dev hierarchy is no secret), a certificate's status by serial, and a certificate's renewal-information
//! answer set by the suite, at Pebble's paths and in its formats, so that a client test suite written against Pebble
//! finds what it fetches. Only `quarry dev` serves it: no service of a deployed environment has it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_ceremony::DevPki;
use quarry_ceremony::chains::DevChain;
use quarry_proto::client::SaClient;
use rustls_pki_types::pem::PemObject;

/// What the API serves: PEM texts read once at start, and the sa for certificate status.
#[derive(Clone)]
struct Management {
    /// Chain `n`'s texts at index `n` (Pebble's numbering: 0 is the default chain, then the alternate roots').
    chains: Arc<[ChainTexts]>,
    /// E1's and R1's keys, one PEM text: every chain certifies the same two.
    intermediate_keys: Arc<str>,
    sa: SaClient,
}

/// One chain's root, its key, and the intermediates that issue leaves on it (E1 then R1, as certified on that
/// chain), one PEM text: the bundle verifies leaves of either key type.
struct ChainTexts {
    root: String,
    root_key: String,
    intermediates: String,
}

/// Serves the API on `addr` over HTTPS (with the ACME server's certificate and key, as Pebble does) until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    pki: &DevPki,
    chains: &[DevChain],
    (https_cert, https_key): (&Path, &Path),
    sa: SaClient,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let read = |path: &Path| std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()));
    let mut texts = Vec::new();
    for chain in chains {
        let mut intermediates = String::new();
        for issuer_chain in &chain.issuer_chains {
            let der = std::fs::read(issuer_chain).with_context(|| format!("read {}", issuer_chain.display()))?;
            let leaf_issuer = rustls_pki_types::CertificateDer::pem_slice_iter(&der)
                .next()
                .with_context(|| format!("{} holds no certificate", issuer_chain.display()))??;
            intermediates.push_str(&quarry_ca::certificate_pem(&leaf_issuer));
        }
        texts.push(ChainTexts { root: read(&chain.root_pem)?, root_key: read(&chain.root_key)?, intermediates });
    }
    let state = Management {
        chains: texts.into(),
        intermediate_keys: format!("{}{}", read(&pki.intermediate_key)?, read(&pki.rsa_intermediate_key)?).into(),
        sa,
    };
    let certificate = quarry_core::tls::ReloadingCertificate::open(https_cert, https_key, Duration::from_secs(5))
        .context("the management API's HTTPS certificate")?;
    let tls = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(certificate));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    let limits = quarry_core::http_server::ListenerConfig::default();
    tokio::spawn(quarry_core::http_server::serve(
        "management",
        listener,
        Some(Arc::new(tls)),
        router(state),
        limits,
        shutdown,
    ));
    Ok(())
}

/// What one path serves of chain `n`, and its content type.
#[derive(Clone, Copy)]
enum Served {
    Root,
    RootKey,
    Intermediates,
    IntermediateKeys,
}

impl Served {
    fn path(self) -> &'static str {
        match self {
            Self::Root => "/roots",
            Self::RootKey => "/root-keys",
            Self::Intermediates => "/intermediates",
            Self::IntermediateKeys => "/intermediate-keys",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Root | Self::Intermediates => "application/pem-certificate-chain; charset=utf-8",
            Self::RootKey | Self::IntermediateKeys => "application/x-pem-file; charset=utf-8",
        }
    }

    fn text(self, state: &Management, chain: &ChainTexts) -> String {
        match self {
            Self::Root => chain.root.clone(),
            Self::RootKey => chain.root_key.clone(),
            Self::Intermediates => chain.intermediates.clone(),
            Self::IntermediateKeys => state.intermediate_keys.to_string(),
        }
    }
}

fn router(state: Management) -> axum::Router {
    use axum::routing::{get, post};
    let mut router = axum::Router::new();
    for served in [Served::Root, Served::RootKey, Served::Intermediates, Served::IntermediateKeys] {
        let handler =
            move |state: State<Management>, n: UrlPath<String>, headers: HeaderMap| pem(state, n, headers, served);
        router = router.route(&format!("{}/{{n}}", served.path()), get(handler));
    }
    router
        .route("/cert-status-by-serial/{serial}", get(certificate_status))
        // Pebble's path ends with a slash; a suite that leaves it out means the same.
        .route("/set-renewal-info/", post(set_renewal_info))
        .route("/set-renewal-info", post(set_renewal_info))
        .with_state(state)
}

/// `n` is the chain's index, an integer as Go's `Atoi` reads one (`+0` and `00` included); past the last chain, or
/// not an integer, it is a bare 404. Roots and intermediates name every other chain's with `Link: rel="alternate"`,
/// as Pebble does.
async fn pem(
    State(state): State<Management>,
    UrlPath(n): UrlPath<String>,
    headers: HeaderMap,
    served: Served,
) -> Response {
    let Some((index, chain)) = n.parse::<usize>().ok().and_then(|index| Some((index, state.chains.get(index)?))) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = ([(header::CONTENT_TYPE, served.content_type())], served.text(&state, chain)).into_response();
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("localhost");
    if matches!(served, Served::Root | Served::Intermediates) {
        for other in (0..state.chains.len()).filter(|other| *other != index) {
            let link = format!("<https://{host}{}/{other}>;rel=\"alternate\"", served.path());
            if let Ok(value) = HeaderValue::from_str(&link) {
                response.headers_mut().append(header::LINK, value);
            }
        }
    }
    response
}

/// Pebble's answer for a serial: `Status` (`Valid` or `Revoked`), `Serial` (hex, no leading zeros), `Certificate`
/// (PEM), and for a revoked certificate `Reason` and `RevokedAt` (Go's time format, UTC).
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct CertificateStatus {
    status: &'static str,
    serial: String,
    certificate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
}

async fn certificate_status(State(state): State<Management>, UrlPath(serial): UrlPath<String>) -> Response {
    let Some(serial) = stored_serial(&serial) else { return StatusCode::BAD_REQUEST.into_response() };
    let (certificate, status) =
        match tokio::try_join!(state.sa.get_certificate(&serial, None), state.sa.get_certificate_status(&serial, None))
        {
            Ok(found) => found,
            Err(problem) if problem.kind == quarry_core::ErrorKind::NotFound => {
                return StatusCode::NOT_FOUND.into_response();
            }
            Err(problem) => {
                tracing::warn!(%problem, "management API: the sa did not answer a certificate status");
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        };
    let revoked = status.status == "revoked";
    let answer = CertificateStatus {
        status: if revoked { "Revoked" } else { "Valid" },
        serial: serial.trim_start_matches('0').to_owned(),
        certificate: quarry_ca::certificate_pem(&certificate.der),
        reason: revoked.then_some(status.revoked_reason),
        revoked_at: revoked.then(|| go_time(status.revoked_date)),
    };
    let body = serde_json::to_string_pretty(&answer).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

/// `POST /set-renewal-info/` with `{"certificate": PEM, "ariResponse": text}` (keys in any case, as Go's JSON
/// decoding matches them): from now on the certificate's renewal-info resource answers `text` verbatim, on every wfe
/// replica, since it is stored in the sa (whose `[client_testing]` quarry dev turns on with this API). An empty or
/// absent `ariResponse` removes it, as Pebble reads an empty answer as none. 200 with an empty body; 400 for a body
/// that is not such JSON or a certificate that is not PEM; 404 for a certificate not issued here.
async fn set_renewal_info(State(state): State<Management>, body: axum::body::Bytes) -> Response {
    let request = match RenewalInfoRequest::parse(&body) {
        Ok(request) => request,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let serial = match certificate_serial(&request.certificate) {
        Ok(serial) => serial,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    match state.sa.set_renewal_info_override(&serial, &request.ari_response, None).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(problem) => {
            let status = match problem.kind {
                quarry_core::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                quarry_core::ErrorKind::Malformed => StatusCode::BAD_REQUEST,
                _ => {
                    tracing::warn!(%problem, "management API: the sa did not store a renewal-information answer");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            (status, problem.detail).into_response()
        }
    }
}

/// The body of `POST /set-renewal-info/`.
#[derive(Debug, PartialEq, Eq)]
struct RenewalInfoRequest {
    /// The certificate, PEM.
    certificate: String,
    /// The answer to serve, any text (malformed JSON too, so that a suite can test its client with it).
    ari_response: String,
}

impl RenewalInfoRequest {
    /// Reads the body as Pebble does: a JSON object whose `certificate` and `ariResponse` members match in any case
    /// (an exact match first), other members ignored, a missing or null member empty.
    fn parse(body: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|err| {
            format!("the body is not JSON ({err}); send {{\"certificate\": PEM, \"ariResponse\": text}}")
        })?;
        let serde_json::Value::Object(members) = value else {
            return Err("the body is not a JSON object; send {\"certificate\": PEM, \"ariResponse\": text}".into());
        };
        let text = |name: &str| -> Result<String, String> {
            let member = members
                .get(name)
                .or_else(|| members.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value));
            match member {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(text)) => Ok(text.clone()),
                Some(other) => Err(format!("{name} must be a JSON string, not {other}")),
            }
        };
        Ok(Self { certificate: text("certificate")?, ari_response: text("ariResponse")? })
    }
}

/// The serial of the first PEM block of `pem`, which must be a certificate, as the sa stores serials (the DER
/// INTEGER's content, lowercase hex).
fn certificate_serial(pem: &str) -> Result<String, String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or("certificate is not PEM (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)")?;
    if block.label != "CERTIFICATE" {
        return Err(format!("certificate's PEM block is a {}, not a CERTIFICATE", block.label));
    }
    let (_, certificate) = x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|err| format!("certificate's PEM block is not an X.509 certificate: {err}"))?;
    Ok(hex::encode(certificate.raw_serial()))
}

/// A serial as the sa stores it (18 bytes, 36 lowercase hex digits) from Pebble's form: hex in either case, with or
/// without leading zeros. `None` for anything else (Pebble answers 400).
fn stored_serial(text: &str) -> Option<String> {
    let digits = text.trim_start_matches('0').to_ascii_lowercase();
    let hex = !digits.is_empty() && digits.len() <= 36 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| format!("{digits:0>36}"))
}

/// Unix seconds as Go's `time.Time.String()` writes a UTC time: `2019-07-12 22:13:20 +0000 UTC`.
fn go_time(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC");
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(format).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_pebble_reads_them() {
        let stored = "0195c81d0e0f6b3886a7d55f91c2cc1a1873";
        for given in [stored, "195c81d0e0f6b3886a7d55f91c2cc1a1873", "0195C81D0E0F6B3886A7D55F91C2CC1A1873"] {
            assert_eq!(stored_serial(given).as_deref(), Some(stored), "{given}");
        }
        for bad in ["", "0x19", "xyz", &"1".repeat(37)] {
            assert_eq!(stored_serial(bad), None, "{bad}");
        }
    }

    #[test]
    fn renewal_info_requests_are_read_as_pebble_reads_them() {
        let read = |body: &str| RenewalInfoRequest::parse(body.as_bytes());
        let expected = RenewalInfoRequest { certificate: "PEM".into(), ari_response: "{\"a\": 1}".into() };
        assert_eq!(read(r#"{"certificate": "PEM", "ariResponse": "{\"a\": 1}"}"#), Ok(expected));
        // Go matches member names in any case and ignores the others.
        let cased = read(r#"{"Certificate": "PEM", "ARIResponse": "x", "extra": 1}"#).unwrap();
        assert_eq!((cased.certificate.as_str(), cased.ari_response.as_str()), ("PEM", "x"));
        // An exact match wins over another case.
        assert_eq!(read(r#"{"ARIRESPONSE": "no", "ariResponse": "yes"}"#).unwrap().ari_response, "yes");
        // Absent or null: empty (which removes the answer).
        assert_eq!(read(r#"{"certificate": "PEM", "ariResponse": null}"#).unwrap().ari_response, "");
        for bad in ["", "not json", "[1]", r#"{"certificate": 5}"#, r#"{"ariResponse": {"a": 1}}"#] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificates_serial_is_read_from_its_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["serial.example.org".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0x00, 0xcd]));
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(certificate_serial(&format!("leading text\n{pem}")).as_deref(), Ok("01ab00cd"));
        assert!(certificate_serial("no PEM here").unwrap_err().contains("not PEM"));
        let key_pem = key.serialize_pem();
        assert!(certificate_serial(&key_pem).unwrap_err().contains("not a CERTIFICATE"));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(certificate_serial(garbage).unwrap_err().contains("not an X.509 certificate"));
    }

    #[test]
    fn revocation_times_are_written_as_go_writes_them() {
        assert_eq!(go_time(1_562_969_600), "2019-07-12 22:13:20 +0000 UTC");
    }
}
