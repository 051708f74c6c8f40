//! The certificate resources: a certificate with its chain and the alternate chains (RFC 8555 §7.4.2), and
//! revocation (§7.6).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_core::model::Account;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::Jwk;
use quarry_proto::ra::RevokeCertByApplicantRequest;

use crate::extract::{CertificateReader, VerifiedPost};
use crate::issued_certificates::IssuedCertificate;
use crate::payloads::RevocationPayload;
use crate::problem::ProblemResponse;
use crate::reply::Reply;
use crate::state::Wfe;

/// A certificate with its default chain, by a plain GET or by its account's POST-as-GET.
pub(super) async fn certificate(
    State(wfe): State<Wfe>,
    Path(serial): Path<String>,
    reader: CertificateReader,
) -> Reply {
    certificate_chain(&wfe, &serial, 0, reader).await
}

/// An alternate chain (RFC 8555 §7.4.2): `/acme/cert/{serial}/{n}`, n ≥ 1.
pub(super) async fn alternate_certificate(
    State(wfe): State<Wfe>,
    AlternateChain { serial, index }: AlternateChain,
    reader: CertificateReader,
) -> Reply {
    certificate_chain(&wfe, &serial, index, reader).await
}

/// The path of an alternate chain, `/acme/cert/{serial}/{n}`. An `n` that names no alternate is not found before
/// the request's JWS is looked at.
pub(super) struct AlternateChain {
    serial: String,
    index: usize,
}

impl FromRequestParts<Wfe> for AlternateChain {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, wfe: &Wfe) -> Result<Self, Response> {
        let Path((serial, alternate)) =
            Path::<(String, String)>::from_request_parts(parts, wfe).await.map_err(IntoResponse::into_response)?;
        match alternate.parse::<usize>().ok().filter(|n| *n >= 1) {
            Some(index) => Ok(Self { serial, index }),
            None => Err(ProblemResponse::from(Problem::not_found("certificate not found")).into_response()),
        }
    }
}

/// The certificate `serial` followed by its `index`th chain, with `Link: rel="alternate"` to the other chains.
async fn certificate_chain(wfe: &Wfe, serial: &str, index: usize, reader: CertificateReader) -> Reply {
    let deadline = reader.deadline;
    if !serial.bytes().all(|b| b.is_ascii_hexdigit()) || serial.is_empty() {
        return Err(Problem::not_found("certificate not found").into());
    }
    let serial = serial.to_ascii_lowercase();
    // The download that follows a finalize is served from what its answer issued (see `issued_certificates`).
    let cert = match wfe.issued_certificates().take(&serial) {
        Some(issued) => issued,
        None => {
            let stored = wfe.sa().get_certificate(&serial, deadline).await?;
            IssuedCertificate { account_id: stored.account_id, der: stored.der }
        }
    };
    if let Some(account) = &reader.account
        && account.id != cert.account_id
    {
        return Err(Problem::unauthorized("this certificate belongs to another account").into());
    }
    let chains = wfe.chains_for(&cert.der);
    if index > 0 && index >= chains.len() {
        return Err(Problem::not_found("no such alternate chain").into());
    }
    let mut pem = pem_encode(&cert.der);
    for issuer in chains.get(index).copied().unwrap_or_default() {
        pem.push_str(&pem_encode(issuer));
    }
    let mut response = (StatusCode::OK, pem).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    let canonical = wfe.urls().certificate(&serial);
    for other in (0..chains.len()).filter(|n| *n != index) {
        let url = if other == 0 { canonical.clone() } else { format!("{canonical}/{other}") };
        if let Ok(link) = HeaderValue::from_str(&format!("<{url}>;rel=\"alternate\"")) {
            response.headers_mut().append(header::LINK, link);
        }
    }
    Ok(response)
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Revocation (RFC 8555 §7.6), signed by an account or by the certificate's own key.
pub(super) async fn revoke_certificate(State(wfe): State<Wfe>, request: VerifiedPost<Option<Account>>) -> Reply {
    let deadline = request.deadline;
    let payload: RevocationPayload = request.json()?;
    let der = quarry_jose::b64_decode(&payload.certificate)
        .map_err(|_| Problem::malformed("the certificate is not valid base64url"))?;
    match &request.account {
        Some(account) => {
            let revoke =
                RevokeCertByApplicantRequest { der, reason: payload.reason.unwrap_or(0), account_id: account.id };
            wfe.ra().revoke_cert_by_applicant(revoke, deadline).await?;
        }
        None => {
            if certificate_key(&der).as_ref() != Some(&request.jwk) {
                return Err(Problem::unauthorized(
                    "the JWS is signed neither by an account nor by the certificate's key",
                )
                .into());
            }
            if payload.reason.is_some_and(|reason| ![0, 1, 4, 5].contains(&reason)) {
                return Err(Problem::new(ErrorKind::BadRevocationReason, "reason code not allowed").into());
            }
            wfe.ra().revoke_cert_by_key(der, deadline).await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// The (canonical) key of a DER certificate, compared with the JWS's key whatever encoding either arrived in.
fn certificate_key(der: &[u8]) -> Option<Jwk> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Jwk::from_spki_der(cert.public_key().raw).ok()
}
