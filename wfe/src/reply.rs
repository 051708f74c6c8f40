//! The pieces every ACME answer is built from: JSON bodies, the `Location` and `Retry-After` headers, and the
//! methods a resource allows.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::problem::ProblemResponse;

/// What a handler answers: the resource, or the problem document that replaces it.
pub(crate) type Reply = Result<Response, ProblemResponse>;

/// Methods of the resources only POST (and POST-as-GET) reaches (RFC 8555 §6.3).
pub(crate) const POST_ONLY: &str = "POST";
/// Methods of the resources read without authentication: the directory, new-nonce, certificates, renewal info.
pub(crate) const GET_OR_POST: &str = "GET, HEAD, POST";

/// The header of every response's fresh nonce (RFC 8555 §6.5.1).
pub(crate) const REPLAY_NONCE: &str = "replay-nonce";

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn with_location(mut response: Response, url: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

pub(crate) fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}
