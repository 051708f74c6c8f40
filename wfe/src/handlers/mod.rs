//! The ACME endpoints (Boulder's paths) and the middlewares around them: the headers every response carries, the
//! request span and metrics, and `[client_testing]`'s provoked errors. Each resource's handlers live in a file of
//! their own, and take their verified request from the crate's extractors.

mod accounts;
mod authorizations;
mod certificates;
mod directory;
mod orders;

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use quarry_core::Problem;
use quarry_core::telemetry::kept::KeptSeries;

use crate::problem::ProblemResponse;
use crate::renewal;
use crate::reply::REPLAY_NONCE;
use crate::state::Wfe;

/// Every route of the wfe, with the common headers added to every response.
pub fn router(wfe: Wfe) -> Router {
    let mut router = Router::new();
    for alias in &wfe.provocations().knobs.directory_aliases {
        router = router.route(alias, get(directory::directory));
    }
    router
        .route("/directory", get(directory::directory))
        .route("/healthz", get(directory::healthz))
        .route("/acme/new-nonce", any(directory::new_nonce))
        .route("/acme/new-acct", any(accounts::new_account))
        .route("/acme/acct/{id}", any(accounts::account))
        .route("/acme/acct/{id}/orders", any(accounts::account_orders))
        .route("/acme/new-order", any(orders::new_order))
        .route("/acme/order/{id}", any(orders::order))
        .route("/acme/authz/{id}", any(authorizations::authorization))
        .route("/acme/chall/{authz}/{index}", any(authorizations::challenge))
        .route("/acme/finalize/{id}", any(orders::finalize))
        .route("/acme/cert/{serial}", any(certificates::certificate))
        .route("/acme/cert/{serial}/{alternate}", any(certificates::alternate_certificate))
        .route("/acme/revoke-cert", any(certificates::revoke_certificate))
        .route("/acme/key-change", any(accounts::key_change))
        .route("/acme/renewal-info/{cert_id}", any(renewal::renewal_info))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(wfe.clone(), provoke_errors))
        .layer(middleware::from_fn_with_state(wfe.clone(), common_headers))
        .layer(middleware::from_fn(observe_request))
        .with_state(wfe)
}

/// One span per ACME request — the root of the trace that every service the request reaches continues — and the
/// request metrics: `quarry_acme_requests_total` by endpoint, method, status and problem type, and
/// `quarry_acme_request_duration_seconds` by endpoint.
async fn observe_request(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let endpoint = endpoint_of(request.uri().path());
    let method = method_label(request.method());
    // The root of the request's trace where spans are exported; elsewhere at debug level, for log lines only
    // (`telemetry::spans_exported`).
    let span = if quarry_core::telemetry::spans_exported() {
        tracing::info_span!("acme", method = %request.method(), path = %request.uri().path(), status = tracing::field::Empty)
    } else {
        tracing::debug_span!("acme", method = %request.method(), path = %request.uri().path(), status = tracing::field::Empty)
    };
    let started = Instant::now();
    let response = async move {
        let response = next.run(request).await;
        tracing::Span::current().record("status", response.status().as_u16());
        response
    }
    .instrument(span)
    .await;
    let problem = response.extensions().get::<crate::problem::ProblemType>().map_or("", |problem| problem.0);
    let status = response.status().as_u16();
    REQUESTS
        .get_or_init(|| KeptSeries::new(KEPT_REQUEST_SERIES))
        .get_or_make(&(endpoint, method, status, problem), || {
            metrics::counter!(
                "quarry_acme_requests_total",
                "endpoint" => endpoint,
                "method" => method,
                "status" => status.to_string(),
                "problem" => problem,
            )
        })
        .increment(1);
    DURATIONS
        .get_or_init(|| KeptSeries::new(KEPT_REQUEST_SERIES))
        .get_or_make(&endpoint, || metrics::histogram!("quarry_acme_request_duration_seconds", "endpoint" => endpoint))
        .record(started.elapsed().as_secs_f64());
    response
}

/// The request counters by endpoint, method, status and problem type, and the durations by endpoint, each taken
/// from the recorder once (`telemetry::kept`): every label is one of a fixed set, the status aside, which the
/// bound covers.
static REQUESTS: OnceLock<KeptSeries<RequestLabels, metrics::Counter>> = OnceLock::new();
/// Endpoint, method, status and problem type.
type RequestLabels = (&'static str, &'static str, u16, &'static str);
static DURATIONS: OnceLock<KeptSeries<&str, metrics::Histogram>> = OnceLock::new();
const KEPT_REQUEST_SERIES: usize = 1024;

/// A request's method as a label: HTTP's nine standard methods by name, any other (HTTP lets a client make one up)
/// as `other`, so that a client cannot add series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The route a path belongs to, without its identifiers (bounded label values).
fn endpoint_of(path: &str) -> &'static str {
    // Under the account's prefix, so before the table.
    if path.starts_with("/acme/acct/") && path.ends_with("/orders") {
        return "account-orders";
    }
    const ROUTES: &[(&str, &str)] = &[
        ("/directory", "directory"),
        ("/healthz", "healthz"),
        ("/acme/new-nonce", "new-nonce"),
        ("/acme/new-acct", "new-account"),
        ("/acme/acct/", "account"),
        ("/acme/new-order", "new-order"),
        ("/acme/order/", "order"),
        ("/acme/authz/", "authorization"),
        ("/acme/chall/", "challenge"),
        ("/acme/finalize/", "finalize"),
        ("/acme/cert/", "certificate"),
        ("/acme/revoke-cert", "revoke-certificate"),
        ("/acme/key-change", "key-change"),
        ("/acme/renewal-info/", "renewal-info"),
    ];
    ROUTES.iter().find(|(prefix, _)| path.starts_with(prefix)).map_or("other", |(_, name)| name)
}

/// `[client_testing]`'s provoked `serverInternal` and `rateLimited` answers (quarry dev only), before any handler.
async fn provoke_errors(State(wfe): State<Wfe>, request: Request, next: Next) -> Response {
    match wfe.provocations().provoked_answer(request.method()) {
        Some(answer) => answer,
        None => next.run(request).await,
    }
}

/// `Replay-Nonce` on every response (RFC 8555 §6.5), `Link: rel="index"` on all but the directory (§7.1),
/// and no caching of POST responses.
async fn common_headers(State(wfe): State<Wfe>, request: Request, next: Next) -> Response {
    let is_directory = request.uri().path() == "/directory";
    let is_post = request.method() == Method::POST;
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if !headers.contains_key(REPLAY_NONCE) {
        match wfe.new_nonce().await {
            Ok(nonce) => {
                if let Ok(value) = HeaderValue::from_str(&nonce) {
                    headers.insert(REPLAY_NONCE, value);
                }
            }
            Err(problem) => tracing::warn!(%problem, "no nonce for a response"),
        }
    }
    if !is_directory && let Ok(link) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", wfe.urls().directory())) {
        headers.append(header::LINK, link);
    }
    if is_post {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn not_found() -> ProblemResponse {
    Problem::not_found("no such resource").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_list_has_its_own_endpoint_label() {
        assert_eq!(endpoint_of("/acme/acct/12/orders"), "account-orders");
        assert_eq!(endpoint_of("/acme/acct/12"), "account");
        assert_eq!(endpoint_of("/acme/order/12"), "order");
    }

    #[test]
    fn a_made_up_method_is_counted_as_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::HEAD), "HEAD");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        for made_up in ["BREW", "PROPFIND", "X-1f3a9c"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
    }
}
