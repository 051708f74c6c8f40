//! The resources read without an account: the directory (RFC 8555 §7.1.1), new-nonce (§7.2) and the health check.

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_core::Problem;

use crate::problem::ProblemResponse;
use crate::reply::{REPLAY_NONCE, Reply, json_response};
use crate::state::Wfe;

/// The directory (RFC 8555 §7.1.1), also at the paths `[client_testing]` adds.
pub(super) async fn directory(State(wfe): State<Wfe>) -> Response {
    json_response(StatusCode::OK, wfe.directory())
}

/// `new-nonce` (RFC 8555 §7.2): a nonce or nothing. Without a nonce to give it answers 503 with a problem document
/// (and `Retry-After`), never a success without `Replay-Nonce`.
pub(super) async fn new_nonce(State(wfe): State<Wfe>, method: Method) -> Reply {
    let mut response = match method {
        Method::HEAD => StatusCode::OK.into_response(),
        Method::GET => StatusCode::NO_CONTENT.into_response(),
        _ => return Err(ProblemResponse::method_not_allowed("GET, HEAD")),
    };
    let nonce = wfe.new_nonce().await.map_err(|problem| Problem { retry_after_secs: Some(1), ..problem })?;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&nonce) {
        headers.insert(REPLAY_NONCE, value);
    }
    Ok(response)
}

/// `GET /healthz`: 200 when the ra and the sa answer their health checks, 503 naming what does not.
pub(super) async fn healthz(State(wfe): State<Wfe>) -> Response {
    let peers = wfe.peers_health().await;
    let healthy = peers.iter().all(|(_, health)| health.is_ok());
    let build = quarry_core::build::get();
    let mut body = serde_json::json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "version": build.version,
        "commit": build.commit,
    });
    for (peer, health) in peers {
        body[peer] = serde_json::json!(health.err().unwrap_or_else(|| "ok".to_owned()));
    }
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &body)
}
