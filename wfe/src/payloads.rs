//! The JSON bodies clients send to the ACME resources (RFC 8555 §7), and the checks made on them at the edge,
//! before any call.

use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem, SubProblem};
use quarry_jose::{ExternalAccountBinding, Jwk};
use serde::Deserialize;
use serde_json::Value;

/// new-account (RFC 8555 §7.3).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewAccountPayload {
    #[serde(default)]
    pub contact: Vec<String>,
    #[serde(default)]
    pub terms_of_service_agreed: bool,
    #[serde(default)]
    pub only_return_existing: bool,
    #[serde(default)]
    pub external_account_binding: Option<Value>,
}

/// The account fields a client may change (RFC 8555 §7.3.2, §7.3.6); others are ignored.
#[derive(Deserialize)]
pub(crate) struct AccountUpdate {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub status: Option<String>,
}

/// key-change's inner payload (RFC 8555 §7.3.5).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyChangePayload {
    pub account: String,
    pub old_key: Value,
}

/// new-order (RFC 8555 §7.4), with the `profile` of draft-aaron-acme-profiles and the `replaces` of RFC 9773.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewOrderPayload {
    pub identifiers: Vec<IdentifierPayload>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub replaces: String,
}

/// One identifier of a new order, as sent.
#[derive(Deserialize)]
pub(crate) struct IdentifierPayload {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// An order's finalization (RFC 8555 §7.4): the CSR, base64url DER.
#[derive(Deserialize)]
pub(crate) struct FinalizePayload {
    pub csr: String,
}

/// revoke-cert (RFC 8555 §7.6).
#[derive(Deserialize)]
pub(crate) struct RevocationPayload {
    pub certificate: String,
    #[serde(default)]
    pub reason: Option<i64>,
}

/// Identifier syntax checked at the edge: one subproblem per offending identifier (RFC 8555 §6.7.1).
pub(crate) fn edge_identifiers(payload: &[IdentifierPayload]) -> Result<Vec<Identifier>, Problem> {
    if payload.is_empty() {
        return Err(Problem::malformed("NewOrder request did not specify any identifiers"));
    }
    let mut identifiers = Vec::new();
    let mut subproblems = Vec::new();
    for requested in payload {
        let Some(kind) = IdentifierType::parse(&requested.kind) else {
            subproblems.push(SubProblem {
                kind: ErrorKind::UnsupportedIdentifier,
                detail: format!("identifier type {:?} is not supported", requested.kind),
                identifier: None,
            });
            continue;
        };
        let identifier = Identifier { kind, value: requested.value.clone() };
        // Checked as sent: RFC 8738 asks for an IP address's canonical text, and DNS names may arrive in capitals.
        let checked =
            identifier.check_well_formed().and_then(|()| quarry_core::policy::check_fixed(&identifier.normalized()));
        match checked {
            Ok(()) => identifiers.push(identifier.normalized()),
            Err(problem) => subproblems.push(SubProblem {
                kind: problem.kind,
                detail: problem.detail,
                identifier: Some(identifier),
            }),
        }
    }
    Problem::from_identifier_subproblems(subproblems).map_or(Ok(identifiers), Err)
}

/// Parses `bytes` as the payload of every ACME resource that takes one, and makes the checks each resource makes
/// on it before any call (identifiers at the edge, the CSR, the certificate to revoke, the binding and the old key):
/// what the `acme_payloads` fuzz target drives with hostile JSON. Returns how many resources accepted the bytes.
pub fn parse_payloads(bytes: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(payload) = serde_json::from_slice::<NewAccountPayload>(bytes) {
        accepted += 1;
        if let Some(binding) = &payload.external_account_binding {
            let _ = ExternalAccountBinding::parse(binding);
        }
    }
    if serde_json::from_slice::<AccountUpdate>(bytes).is_ok() {
        accepted += 1;
    }
    if let Ok(payload) = serde_json::from_slice::<NewOrderPayload>(bytes) {
        accepted += 1;
        let _ = edge_identifiers(&payload.identifiers);
    }
    if let Ok(payload) = serde_json::from_slice::<FinalizePayload>(bytes) {
        accepted += 1;
        if let Ok(der) = quarry_jose::b64_decode(&payload.csr) {
            let _ = quarry_core::csr::parse_csr(&der);
        }
    }
    if let Ok(payload) = serde_json::from_slice::<KeyChangePayload>(bytes) {
        accepted += 1;
        let _ = Jwk::from_json(&payload.old_key);
    }
    if let Ok(payload) = serde_json::from_slice::<RevocationPayload>(bytes) {
        accepted += 1;
        if let Ok(der) = quarry_jose::b64_decode(&payload.certificate) {
            let _ = x509_parser::parse_x509_certificate(&der);
        }
    }
    accepted
}
