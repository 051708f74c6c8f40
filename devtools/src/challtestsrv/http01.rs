//! The challenge test server's http-01 responder: key authorizations, redirects, and a history of every request.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::state::{ChallTestSrv, HttpRequestEvent};

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub(crate) fn router(srv: ChallTestSrv) -> Router {
    // A fallback rather than routes: every path is recorded, and redirects may be set on any path.
    Router::new().fallback(respond).with_state(srv)
}

async fn respond(State(srv): State<ChallTestSrv>, request: Request) -> Response {
    let uri = request.uri();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|authority| authority.to_string()))
        .unwrap_or_default();
    let url = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    srv.record_http(HttpRequestEvent { url, host, https: false, server_name: String::new() });

    let path = uri.path();
    let (redirect, content) = {
        let state = srv.lock();
        let redirect = state.redirects.get(path).cloned();
        let content = path.strip_prefix(CHALLENGE_PREFIX).and_then(|token| state.http01.get(token).cloned());
        (redirect, content)
    };
    if let Some(target) = redirect {
        return (StatusCode::FOUND, [(header::LOCATION, target)]).into_response();
    }
    match content {
        Some(content) => ([(header::CONTENT_TYPE, "text/plain")], content).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
