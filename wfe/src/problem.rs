//! RFC 8555 problem documents (RFC 7807 with `urn:ietf:params:acme:error:*` types): the one place a
//! `quarry_core::Problem` becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_core::{ErrorKind, Problem};
use serde_json::{Value, json};

/// The URN namespace of ACME problem types.
const NAMESPACE: &str = "urn:ietf:params:acme:error:";

/// A problem on its way to the client, with an HTTP status that overrides the kind's usual one when set.
#[derive(Debug)]
pub struct ProblemResponse {
    pub problem: Problem,
    pub status: Option<StatusCode>,
    /// The methods the resource does allow, for a 405 (RFC 9110 §15.5.6 requires `Allow` there).
    pub allow: Option<&'static str>,
}

impl ProblemResponse {
    pub fn with_status(problem: Problem, status: StatusCode) -> Self {
        Self { problem, status: Some(status), allow: None }
    }

    /// 405 for a method the resource does not take; `allow` lists the ones it does.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            problem: Problem::malformed(format!("Method not allowed; use {allow}")),
            status: Some(StatusCode::METHOD_NOT_ALLOWED),
            allow: Some(allow),
        }
    }
}

impl From<Problem> for ProblemResponse {
    fn from(problem: Problem) -> Self {
        Self { problem, status: None, allow: None }
    }
}

impl From<tonic::Status> for ProblemResponse {
    fn from(status: tonic::Status) -> Self {
        Problem::from(status).into()
    }
}

/// The ACME type name and HTTP status of a kind; internal kinds map onto the nearest ACME type.
fn type_and_status(kind: ErrorKind) -> (&'static str, StatusCode) {
    match kind {
        ErrorKind::NotFound => ("malformed", StatusCode::NOT_FOUND),
        ErrorKind::Duplicate | ErrorKind::Conflict => ("conflict", StatusCode::CONFLICT),
        ErrorKind::AlreadyReplaced => (kind.as_str(), StatusCode::CONFLICT),
        ErrorKind::Timeout | ErrorKind::Unavailable => ("serverInternal", StatusCode::SERVICE_UNAVAILABLE),
        ErrorKind::ServerInternal | ErrorKind::Misconfigured => ("serverInternal", StatusCode::INTERNAL_SERVER_ERROR),
        ErrorKind::Unauthorized | ErrorKind::OrderNotReady => (kind.as_str(), StatusCode::FORBIDDEN),
        ErrorKind::RateLimited => (kind.as_str(), StatusCode::TOO_MANY_REQUESTS),
        ErrorKind::UserActionRequired => (kind.as_str(), StatusCode::FORBIDDEN),
        _ => (kind.as_str(), StatusCode::BAD_REQUEST),
    }
}

/// The problem document as JSON, e.g. for an order's or a challenge's `error` field.
pub fn problem_json(problem: &Problem, status: Option<StatusCode>) -> Value {
    let (name, default_status) = type_and_status(problem.kind);
    let status = status.unwrap_or(default_status);
    let mut doc = json!({ "type": format!("{NAMESPACE}{name}"), "detail": problem.detail, "status": status.as_u16() });
    if !problem.subproblems.is_empty() {
        doc["subproblems"] = problem
            .subproblems
            .iter()
            .map(|sub| {
                let mut entry = json!({
                    "type": format!("{NAMESPACE}{}", type_and_status(sub.kind).0),
                    "detail": sub.detail,
                });
                if let Some(identifier) = &sub.identifier {
                    entry["identifier"] = json!({ "type": identifier.kind.as_str(), "value": identifier.value });
                }
                entry
            })
            .collect();
    }
    if problem.kind == ErrorKind::BadSignatureAlgorithm {
        doc["algorithms"] = json!(quarry_jose::SUPPORTED_ALGORITHMS);
    }
    doc
}

/// The ACME problem type (`badNonce`, `rateLimited`…) a response carries, for the request metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemType(pub &'static str);

impl IntoResponse for ProblemResponse {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or(type_and_status(self.problem.kind).1);
        if status.is_server_error() {
            tracing::warn!(problem = %self.problem, "request failed");
        }
        let body = problem_json(&self.problem, Some(status)).to_string();
        let mut response = (status, body).into_response();
        response.extensions_mut().insert(ProblemType(type_and_status(self.problem.kind).0));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        // RFC 8555 §6.6: a rate-limited client learns when to come back.
        if let Some(seconds) = self.problem.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_core::{Identifier, SubProblem};

    #[test]
    fn kinds_become_acme_types_and_statuses() {
        let cases = [
            (ErrorKind::BadNonce, "urn:ietf:params:acme:error:badNonce", 400),
            (ErrorKind::Unauthorized, "urn:ietf:params:acme:error:unauthorized", 403),
            (ErrorKind::OrderNotReady, "urn:ietf:params:acme:error:orderNotReady", 403),
            (ErrorKind::NotFound, "urn:ietf:params:acme:error:malformed", 404),
            (ErrorKind::ServerInternal, "urn:ietf:params:acme:error:serverInternal", 500),
            (ErrorKind::Unavailable, "urn:ietf:params:acme:error:serverInternal", 503),
            (ErrorKind::RateLimited, "urn:ietf:params:acme:error:rateLimited", 429),
            (ErrorKind::BadCsr, "urn:ietf:params:acme:error:badCSR", 400),
        ];
        for (kind, urn, status) in cases {
            let doc = problem_json(&Problem::new(kind, "x"), None);
            assert_eq!(doc["type"], urn);
            assert_eq!(doc["status"], status);
        }
    }

    #[test]
    fn subproblems_carry_their_identifier() {
        let problem = Problem::new(ErrorKind::RejectedIdentifier, "no").with_subproblems(vec![SubProblem {
            kind: ErrorKind::Malformed,
            detail: "bad".into(),
            identifier: Some(Identifier::dns("a..b")),
        }]);
        let doc = problem_json(&problem, None);
        assert_eq!(doc["subproblems"][0]["identifier"]["value"], "a..b");
        assert_eq!(doc["subproblems"][0]["type"], "urn:ietf:params:acme:error:malformed");
    }
}
