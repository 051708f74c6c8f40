//! ACME Renewal Information (RFC 9773): the renewal-info resource and the `replaces` field of new-order.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_core::clock::now;
use quarry_core::{ErrorKind, Identifier, Problem};
use serde_json::json;

use crate::problem::ProblemResponse;
use crate::render::timestamp;
use crate::reply::{Reply, json_response, with_retry_after};
use crate::state::Wfe;

/// How often clients should ask again; jittered by ±20% so that a fleet of clients spreads out (as Boulder does).
const RETRY_AFTER_SECS: u64 = 6 * 3_600;

/// A suggested renewal window, Unix seconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Boulder's window for a certificate valid from `not_before` to `not_after`: centred a third of the validity
    /// before expiry (half of it for certificates shorter than ten days), one percent of the validity either side.
    pub fn for_validity(not_before: i64, not_after: i64) -> Self {
        let validity = (not_after + 1 - not_before).max(1);
        let offset = if validity < 10 * 86_400 { validity / 2 } else { validity / 3 };
        let ideal = not_after - offset;
        let margin = validity / 100;
        Self { start: ideal - margin, end: ideal + margin }
    }

    /// A window in the past, which tells clients to renew at once (RFC 9773 §4.2): for revoked certificates.
    pub fn immediate(now: i64) -> Self {
        Self { start: now - 3_600, end: now - 3_600 + 1_800 }
    }
}

/// The serial (lowercase hex) named by an ARI CertID `base64url(AKI) "." base64url(serial)` (RFC 9773 §4.1), if the
/// key identifier is one of `issuer_key_ids`.
pub fn parse_cert_id(cert_id: &str, issuer_key_ids: &[Vec<u8>]) -> Result<String, Problem> {
    let Some((aki, serial)) = cert_id.split_once('.') else {
        return Err(Problem::malformed("a CertID is base64url(keyIdentifier) \".\" base64url(serialNumber)"));
    };
    if aki.is_empty() || serial.is_empty() || serial.contains('.') {
        return Err(Problem::malformed("a CertID is base64url(keyIdentifier) \".\" base64url(serialNumber)"));
    }
    let aki = quarry_jose::b64_decode(aki)
        .map_err(|_| Problem::malformed("the CertID's key identifier is not unpadded base64url"))?;
    let serial = quarry_jose::b64_decode(serial)
        .map_err(|_| Problem::malformed("the CertID's serial number is not unpadded base64url"))?;
    if !issuer_key_ids.contains(&aki) {
        return Err(Problem::not_found("the CertID's key identifier names no issuer of this CA"));
    }
    // The serial is the DER INTEGER's content: a leading zero byte only keeps it positive.
    let serial = match serial.as_slice() {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    if serial.is_empty() || serial.len() > 20 {
        return Err(Problem::not_found("the CertID's serial number is not one this CA issues"));
    }
    Ok(hex(serial))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The suggested window of the certificate `serial`: at once when it is revoked.
async fn window(wfe: &Wfe, serial: &str, deadline: Option<Instant>) -> Result<Window, Problem> {
    let window = certificate_window(wfe, serial, deadline).await?;
    if wfe.provocations().knobs.renew_now {
        let now = now();
        return Ok(Window { start: now - 60, end: window.end.max(now + 3_600) });
    }
    Ok(window)
}

/// The window the certificate `serial`'s validity and status give.
async fn certificate_window(wfe: &Wfe, serial: &str, deadline: Option<Instant>) -> Result<Window, Problem> {
    let status = match wfe.sa().get_certificate_status(serial, deadline).await {
        Ok(status) => status,
        Err(problem) if problem.kind == ErrorKind::NotFound => {
            return Err(Problem::not_found("no certificate with this CertID was issued here"));
        }
        Err(problem) => return Err(problem),
    };
    if status.status == "revoked" {
        return Ok(Window::immediate(now()));
    }
    let der = wfe.sa().get_certificate(serial, deadline).await?.der;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| Problem::internal("a stored certificate does not parse"))?;
    let validity = parsed.validity();
    Ok(Window::for_validity(validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// `GET /acme/renewal-info/{certID}`: unauthenticated, answered with the window and a jittered `Retry-After`.
pub async fn renewal_info(State(wfe): State<Wfe>, method: Method, Path(cert_id): Path<String>) -> Reply {
    if method != Method::GET && method != Method::HEAD {
        return Err(ProblemResponse::method_not_allowed("GET, HEAD"));
    }
    let deadline = wfe.deadline();
    let serial = parse_cert_id(&cert_id, wfe.issuer_key_ids())?;
    if wfe.provocations().knobs.renewal_info_overrides
        && let Some(stored) = wfe.sa().get_renewal_info_override(&serial, deadline).await?
    {
        return Ok(stored_answer(stored));
    }
    let window = window(&wfe, &serial, deadline).await?;
    let body = json!({
        "suggestedWindow": { "start": timestamp(window.start), "end": timestamp(window.end) },
    });
    Ok(with_retry_after(json_response(StatusCode::OK, &body), jittered(RETRY_AFTER_SECS)))
}

/// A renewal-information answer a client test suite stored (quarry dev's `[client_testing]`): its text verbatim,
/// whatever it holds, with Pebble's fixed `Retry-After`, so that the suite sees exactly what it asked for.
fn stored_answer(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_retry_after(response, RETRY_AFTER_SECS)
}

fn jittered(seconds: u64) -> u64 {
    let mut byte = [0u8; 1];
    // Without randomness the jitter is merely lost, which is harmless.
    let _ = aws_lc_rs::rand::fill(&mut byte);
    let fifth = seconds / 5;
    seconds - fifth + fifth * 2 * u64::from(byte[0]) / 255
}

/// Checks a new order's `replaces` (RFC 9773 §5) and returns the replaced certificate's serial and whether its
/// renewal window has begun (such a replacement is exempt from rate limits): the certificate must exist, belong to
/// `account_id`, share an identifier with the order, and have no replacement yet.
pub async fn check_replaces(
    wfe: &Wfe,
    replaces: &str,
    account_id: i64,
    identifiers: &[Identifier],
    deadline: Option<Instant>,
) -> Result<(String, bool), ProblemResponse> {
    let serial = parse_cert_id(replaces, wfe.issuer_key_ids())
        .map_err(|p| Problem::new(p.kind, format!("replaces: {}", p.detail)))?;
    if wfe.sa().replacement_order_exists(&serial, deadline).await? {
        return Err(Problem::new(
            ErrorKind::AlreadyReplaced,
            format!("the certificate with serial {serial} already has a replacement order"),
        )
        .into());
    }
    let cert = match wfe.sa().get_certificate(&serial, deadline).await {
        Ok(cert) => cert,
        Err(problem) if problem.kind == ErrorKind::NotFound => {
            return Err(
                Problem::not_found(format!("replaces: no certificate with serial {serial} was issued here")).into()
            );
        }
        Err(problem) => return Err(problem.into()),
    };
    if cert.account_id != account_id {
        return Err(Problem::unauthorized("replaces: the certificate being replaced belongs to another account").into());
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der)
        .map_err(|_| Problem::internal("a stored certificate does not parse"))?;
    let names = quarry_core::certificate::identifiers(&parsed);
    if !identifiers.iter().any(|id| names.iter().any(|name| covers(name, id))) {
        return Err(
            Problem::malformed("replaces: no identifier of this order is in the certificate being replaced").into()
        );
    }
    let in_window = window(wfe, &serial, deadline).await?.start <= now();
    Ok((serial, in_window))
}

/// Whether a certificate name `name` covers the order identifier `id` (a wildcard name covers one more label).
fn covers(name: &Identifier, id: &Identifier) -> bool {
    if name.kind != id.kind {
        return false;
    }
    if name == id {
        return true;
    }
    match (name.value.strip_prefix("*."), id.value.split_once('.')) {
        (Some(base), Some((_, rest))) if !id.is_wildcard() => base == rest,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_boulder() {
        // 90 days: ideal at day 60, ±0.9 days.
        let day = 86_400;
        let window = Window::for_validity(0, 90 * day - 1);
        assert_eq!(window, Window { start: 60 * day - 1 - 77_760, end: 60 * day - 1 + 77_760 });
        // 160 hours: ideal at half, ±1.6 hours.
        let hours = 160 * 3_600;
        let window = Window::for_validity(0, hours - 1);
        assert_eq!(window, Window { start: hours / 2 - 1 - 5_760, end: hours / 2 - 1 + 5_760 });
        assert!(Window::immediate(1_000_000).end < 1_000_000);
    }

    #[test]
    fn cert_ids() {
        let aki = vec![1u8, 2, 3, 4];
        let keys = [aki.clone()];
        let id =
            |aki: &[u8], serial: &[u8]| format!("{}.{}", quarry_jose::b64_encode(aki), quarry_jose::b64_encode(serial));
        assert_eq!(parse_cert_id(&id(&aki, &[0x01, 0xab]), &keys).unwrap(), "01ab");
        assert_eq!(parse_cert_id(&id(&aki, &[0x00, 0x81]), &keys).unwrap(), "81");
        let cases: &[(String, ErrorKind)] = &[
            ("nodot".to_owned(), ErrorKind::Malformed),
            (".AQ".to_owned(), ErrorKind::Malformed),
            ("AQ.AQ.AQ".to_owned(), ErrorKind::Malformed),
            ("AQ==.AQ".to_owned(), ErrorKind::Malformed),
            (id(&[9, 9], &[1]), ErrorKind::NotFound),
            (id(&aki, &[1u8; 21]), ErrorKind::NotFound),
        ];
        for (cert_id, kind) in cases {
            assert_eq!(parse_cert_id(cert_id, &keys).unwrap_err().kind, *kind, "{cert_id}");
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        let wildcard = Identifier::dns("*.example.org");
        assert!(covers(&wildcard, &Identifier::dns("www.example.org")));
        assert!(!covers(&wildcard, &Identifier::dns("example.org")));
        assert!(!covers(&wildcard, &Identifier::dns("a.b.example.org")));
        assert!(covers(&wildcard, &wildcard));
        assert!(covers(&Identifier::dns("example.org"), &Identifier::dns("example.org")));
    }
}
