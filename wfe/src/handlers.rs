//! The ACME endpoints (Boulder's paths), and the headers every response carries.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use quarry_core::model::{Account, Authorization, ChallengeStatus, Order, OrderStatus};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem, SubProblem};
use quarry_proto::convert::identifiers_to_pb;
use quarry_proto::core as pb;
use quarry_proto::ra::{
    DeactivateAuthorizationRequest, FinalizeOrderRequest, NewOrderRequest, PerformValidationRequest,
    RevokeCertByApplicantRequest, UpdateAccountContactRequest, UpdateAccountKeyRequest,
};
use serde::Deserialize;
use serde_json::Value;

use quarry_jose::{ExternalAccountBinding, Jwk};

use crate::extract::{CertificateReader, NoAccount, OwnAccount, SigningAccount, VerifiedPost, parse_id};
use crate::post;
use crate::problem::ProblemResponse;
use crate::render;
use crate::renewal;
use crate::reply::{REPLAY_NONCE, Reply, json_response, with_location, with_retry_after};
use crate::state::Wfe;

/// Every route of the wfe, with the common headers added to every response.
pub fn router(wfe: Wfe) -> Router {
    let mut router = Router::new();
    for alias in &wfe.provocations().knobs.directory_aliases {
        router = router.route(alias, get(directory));
    }
    router
        .route("/directory", get(directory))
        .route("/healthz", get(healthz))
        .route("/acme/new-nonce", any(new_nonce))
        .route("/acme/new-acct", any(new_account))
        .route("/acme/acct/{id}", any(account))
        .route("/acme/acct/{id}/orders", any(account_orders))
        .route("/acme/new-order", any(new_order))
        .route("/acme/order/{id}", any(order))
        .route("/acme/authz/{id}", any(authorization))
        .route("/acme/chall/{authz}/{index}", any(challenge))
        .route("/acme/finalize/{id}", any(finalize))
        .route("/acme/cert/{serial}", any(certificate))
        .route("/acme/cert/{serial}/{alternate}", any(alternate_certificate))
        .route("/acme/revoke-cert", any(revoke_certificate))
        .route("/acme/key-change", any(key_change))
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
    let method = request.method().to_string();
    let span = tracing::info_span!(
        "acme",
        method = %method,
        path = %request.uri().path(),
        status = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = async move {
        let response = next.run(request).await;
        tracing::Span::current().record("status", response.status().as_u16());
        response
    }
    .instrument(span)
    .await;
    let problem = response.extensions().get::<crate::problem::ProblemType>().map_or("", |problem| problem.0);
    metrics::counter!(
        "quarry_acme_requests_total",
        "endpoint" => endpoint,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
        "problem" => problem,
    )
    .increment(1);
    metrics::histogram!("quarry_acme_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    response
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

/// `GET /healthz`: 200 when the ra and the sa answer their health checks, 503 naming what does not.
async fn healthz(State(wfe): State<Wfe>) -> Response {
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

async fn directory(State(wfe): State<Wfe>) -> Response {
    json_response(StatusCode::OK, wfe.directory())
}

/// `new-nonce` (RFC 8555 §7.2): a nonce or nothing. Without a nonce to give it answers 503 with a problem document
/// (and `Retry-After`), never a success without `Replay-Nonce`.
async fn new_nonce(State(wfe): State<Wfe>, method: Method) -> Reply {
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NewAccountPayload {
    #[serde(default)]
    contact: Vec<String>,
    #[serde(default)]
    terms_of_service_agreed: bool,
    #[serde(default)]
    only_return_existing: bool,
    #[serde(default)]
    external_account_binding: Option<Value>,
}

async fn new_account(
    State(wfe): State<Wfe>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: VerifiedPost<NoAccount>,
) -> Reply {
    let deadline = request.deadline;
    let payload: NewAccountPayload = request.json()?;
    if let Some(existing) = post::account_for_key(&wfe, &request.jwk, deadline).await? {
        let response = json_response(StatusCode::OK, &render::account(wfe.urls(), &existing));
        return Ok(with_location(response, &wfe.urls().account(existing.id)));
    }
    if payload.only_return_existing {
        return Err(Problem::new(ErrorKind::AccountDoesNotExist, "no account exists with the provided key").into());
    }
    // RFC 8555 §7.3: where the directory names terms of service, a new account must agree to them.
    if wfe.directory()["meta"].get("termsOfService").is_some() && !payload.terms_of_service_agreed {
        return Err(Problem::malformed("must agree to the terms of service (termsOfServiceAgreed: true)").into());
    }
    let external_account_id = match &payload.external_account_binding {
        Some(binding) => check_external_account_binding(&wfe, binding, &request.jwk)?,
        None if wfe.eab_required() => {
            return Err(Problem::new(
                ErrorKind::ExternalAccountRequired,
                "this CA requires an external account binding to create an account",
            )
            .into());
        }
        None => String::new(),
    };
    let new = pb::Account {
        jwk: request.jwk.canonical_json().into_bytes(),
        contact: payload.contact,
        terms_of_service_agreed: payload.terms_of_service_agreed,
        external_account_exclusive: !external_account_id.is_empty() && !wfe.eab_reuse(),
        external_account_id,
        ..Default::default()
    };
    let client_ip = client.map(|Extension(ConnectInfo(peer))| peer.ip());
    let created = wfe.ra().new_account(new, client_ip, deadline).await?;
    let created = Account::try_from(&created)?;
    let response = json_response(StatusCode::CREATED, &render::account(wfe.urls(), &created));
    Ok(with_location(response, &wfe.urls().account(created.id)))
}

/// RFC 8555 §7.3.4: the binding must be for this URL and this account key, MACed with a key this CA gave out.
/// Returns the external account's key identifier.
fn check_external_account_binding(wfe: &Wfe, binding: &Value, account_key: &Jwk) -> Result<String, Problem> {
    let binding = ExternalAccountBinding::parse(binding).map_err(post::jose_problem)?;
    let new_account_url = format!("{}/acme/new-acct", wfe.urls().base);
    if binding.url != new_account_url {
        return Err(Problem::malformed(format!(
            "externalAccountBinding url {:?} is not {new_account_url:?}",
            binding.url
        )));
    }
    if binding.jwk != *account_key {
        return Err(Problem::malformed("externalAccountBinding payload is not the account key of this request"));
    }
    let Some(key) = wfe.eab_key(&binding.kid) else {
        return Err(Problem::unauthorized(format!("external account {:?} is not known to this CA", binding.kid)));
    };
    binding.verify(key).map_err(|_| {
        Problem::unauthorized("externalAccountBinding MAC does not verify with the external account's key")
    })?;
    Ok(binding.kid)
}

async fn account(State(wfe): State<Wfe>, OwnAccount(request): OwnAccount) -> Reply {
    let deadline = request.deadline;
    let mut account = request.account.clone();
    if !request.is_post_as_get() {
        // Whatever happens below, however the handler leaves, the next request reads the account anew.
        let _change = wfe.accounts().changing(account.id);
        let update: AccountUpdate = request.json()?;
        if let Some(contact) = update.contact {
            let change = UpdateAccountContactRequest { account_id: account.id, contact };
            let updated = wfe.ra().update_account_contact(change, deadline).await?;
            account = Account::try_from(&updated)?;
        }
        match update.status.as_deref() {
            None => {}
            Some("deactivated") => {
                let updated = wfe.ra().deactivate_account(account.id, deadline).await?;
                account = Account::try_from(&updated)?;
            }
            Some(other) => {
                return Err(Problem::malformed(format!(
                    "an account's status can only be set to \"deactivated\", not {other:?}"
                ))
                .into());
            }
        }
    }
    Ok(with_location(
        json_response(StatusCode::OK, &render::account(wfe.urls(), &account)),
        &wfe.urls().account(account.id),
    ))
}

/// The account's orders list (RFC 8555 §7.1.2.1), read by the account itself with POST-as-GET: a page of the URLs of
/// its pending, ready, processing and valid orders in creation order (never its invalid ones), and `Link:
/// rel="next"` to the next page while there is one. A page's `cursor` is the last order id the previous page covered;
/// clients take it from the link, never build it.
async fn account_orders(State(wfe): State<Wfe>, uri: Uri, OwnAccount(request): OwnAccount) -> Reply {
    let account = &request.account;
    if !request.is_post_as_get() {
        return Err(Problem::malformed("the orders list is read with POST-as-GET: the payload must be empty").into());
    }
    let after_id = orders_cursor(&uri)?;
    let page = wfe.sa().get_account_orders(account.id, after_id, wfe.orders_per_page(), request.deadline).await?;
    let orders: Vec<String> = page.order_ids.iter().map(|id| wfe.urls().order(*id)).collect();
    let mut response = json_response(StatusCode::OK, &serde_json::json!({ "orders": orders }));
    if let Some(next) = page.next_after_id {
        let next = format!("<{}?cursor={next}>;rel=\"next\"", wfe.urls().account_orders(account.id));
        if let Ok(link) = HeaderValue::from_str(&next) {
            response.headers_mut().append(header::LINK, link);
        }
    }
    Ok(response)
}

/// Where a page of the orders list starts: after the order id of `?cursor=` (from a `next` link), or at the
/// beginning without a query.
fn orders_cursor(uri: &Uri) -> Result<i64, Problem> {
    let Some(query) = uri.query() else { return Ok(0) };
    let cursor = query.strip_prefix("cursor=").and_then(|cursor| cursor.parse::<i64>().ok());
    cursor.filter(|cursor| *cursor >= 0).ok_or_else(|| {
        Problem::malformed(format!(
            "the orders list takes only the cursor of a \"next\" link as its query, not {query:?}"
        ))
    })
}

/// The account fields a client may change (RFC 8555 §7.3.2, §7.3.6); others are ignored.
#[derive(Deserialize)]
struct AccountUpdate {
    #[serde(default)]
    contact: Option<Vec<String>>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewOrderPayload {
    identifiers: Vec<IdentifierPayload>,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    replaces: String,
}

#[derive(Deserialize)]
struct IdentifierPayload {
    #[serde(rename = "type")]
    kind: String,
    value: String,
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

/// Identifier syntax checked at the edge: one subproblem per offending identifier (RFC 8555 §6.7.1).
fn edge_identifiers(payload: &[IdentifierPayload]) -> Result<Vec<Identifier>, Problem> {
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

async fn new_order(State(wfe): State<Wfe>, request: SigningAccount) -> Reply {
    let (account, deadline) = (&request.account, request.deadline);
    let payload: NewOrderPayload = request.json()?;
    if payload.not_before.is_some() || payload.not_after.is_some() {
        return Err(Problem::malformed("NotBefore and NotAfter are not supported").into());
    }
    let identifiers = edge_identifiers(&payload.identifiers)?;
    let (replaces_serial, replacement_in_window) = if payload.replaces.is_empty() {
        (String::new(), false)
    } else {
        renewal::check_replaces(&wfe, &payload.replaces, account.id, &identifiers, deadline).await?
    };
    let new = NewOrderRequest {
        account_id: account.id,
        identifiers: identifiers_to_pb(&identifiers),
        profile: payload.profile,
        replaces: payload.replaces,
        replaces_serial,
        replacement_in_window,
        ..Default::default()
    };
    let order = wfe.ra().new_order(new, deadline).await?;
    let order = Order::try_from(&order)?;
    Ok(with_location(
        json_response(StatusCode::CREATED, &render::order(wfe.urls(), &order)),
        &wfe.urls().order(order.id),
    ))
}

async fn load_order(wfe: &Wfe, id: i64, deadline: Option<Instant>) -> Result<Order, ProblemResponse> {
    Ok(wfe.sa().get_order(id, deadline).await?)
}

async fn load_authorization(wfe: &Wfe, id: i64, deadline: Option<Instant>) -> Result<Authorization, ProblemResponse> {
    Ok(wfe.sa().get_authorization(id, deadline).await?)
}

fn order_response(wfe: &Wfe, order: &Order) -> Response {
    let response =
        with_location(json_response(StatusCode::OK, &render::order(wfe.urls(), order)), &wfe.urls().order(order.id));
    if order.status == OrderStatus::Processing { with_retry_after(response, wfe.retry_after()) } else { response }
}

// Orders, authorizations and challenges are read with POST-as-GET only (RFC 8555 §6.3): their ids are sequential,
// and a plain GET would let anyone list every subscriber's names.
async fn order(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let order = load_order(&wfe, parse_id(&id, "order")?, request.deadline).await?;
    request.check_owner(order.account_id, "order")?;
    Ok(order_response(&wfe, &order))
}

async fn authorization(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let deadline = request.deadline;
    let authz = load_authorization(&wfe, parse_id(&id, "authorization")?, deadline).await?;
    request.check_owner(authz.account_id, "authorization")?;
    if request.is_post_as_get() {
        let response = json_response(StatusCode::OK, &render::authorization(wfe.urls(), &authz));
        // A validation under way: tell the client when to look again (RFC 8555 §7.5.1).
        if authz.challenges.iter().any(|c| c.status == ChallengeStatus::Processing) {
            return Ok(with_retry_after(response, wfe.authz_retry_after()));
        }
        return Ok(response);
    }
    // RFC 8555 §7.5.2: the only change a client may ask for is deactivation.
    let update: Value = request.json()?;
    if update.get("status").and_then(Value::as_str) != Some("deactivated") {
        return Err(Problem::malformed("an authorization update must be {\"status\": \"deactivated\"}").into());
    }
    let deactivate = DeactivateAuthorizationRequest { authorization_id: authz.id, account_id: request.account.id };
    let authz = wfe.ra().deactivate_authorization(deactivate, deadline).await?;
    Ok(json_response(StatusCode::OK, &render::authorization(wfe.urls(), &Authorization::try_from(&authz)?)))
}

fn challenge_response(wfe: &Wfe, authz: &Authorization, index: i64) -> Reply {
    let challenge =
        authz.challenges.iter().find(|c| c.index == index).ok_or_else(|| Problem::not_found("challenge not found"))?;
    let mut response = json_response(StatusCode::OK, &render::challenge(wfe.urls(), authz.id, challenge));
    if let Ok(up) = HeaderValue::from_str(&format!("<{}>;rel=\"up\"", wfe.urls().authorization(authz.id))) {
        response.headers_mut().append(header::LINK, up);
    }
    if challenge.status == ChallengeStatus::Processing {
        response = with_retry_after(response, wfe.authz_retry_after());
    }
    Ok(response)
}

async fn challenge(
    State(wfe): State<Wfe>,
    Path((authz_id, index)): Path<(String, String)>,
    request: SigningAccount,
) -> Reply {
    let deadline = request.deadline;
    let authz_id = parse_id(&authz_id, "challenge")?;
    let index = parse_id(&index, "challenge")?;
    let authz = load_authorization(&wfe, authz_id, deadline).await?;
    request.check_owner(authz.account_id, "challenge")?;
    if request.is_post_as_get() {
        return challenge_response(&wfe, &authz, index);
    }
    // RFC 8555 §7.5.1: the client signals readiness with an empty JSON object.
    let _: Value = request.json()?;
    let account = &request.account;
    let start = PerformValidationRequest {
        authorization_id: authz.id,
        challenge_index: index,
        account_id: account.id,
        authorization: Some((&authz).into()),
        account: Some(account.into()),
    };
    let authz = wfe.ra().perform_validation(start, deadline).await?;
    challenge_response(&wfe, &Authorization::try_from(&authz)?, index)
}

#[derive(Deserialize)]
struct FinalizePayload {
    csr: String,
}

async fn finalize(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let account = &request.account;
    let order = load_order(&wfe, parse_id(&id, "order")?, request.deadline).await?;
    request.check_owner(order.account_id, "order")?;
    let payload: FinalizePayload = request.json()?;
    let csr = quarry_jose::b64_decode(&payload.csr)
        .map_err(|_| Problem::new(ErrorKind::BadCsr, "CSR is not valid base64url"))?;
    let finalize = FinalizeOrderRequest {
        order_id: order.id,
        account_id: account.id,
        csr,
        order: Some((&order).into()),
        account: Some(account.into()),
    };
    let order = wfe.ra().finalize_order(finalize, wfe.finalize_deadline()).await?;
    Ok(order_response(&wfe, &Order::try_from(&order)?))
}

async fn certificate(State(wfe): State<Wfe>, Path(serial): Path<String>, reader: CertificateReader) -> Reply {
    certificate_chain(&wfe, &serial, 0, reader).await
}

/// An alternate chain (RFC 8555 §7.4.2): `/acme/cert/{serial}/{n}`, n ≥ 1.
async fn alternate_certificate(
    State(wfe): State<Wfe>,
    AlternateChain { serial, index }: AlternateChain,
    reader: CertificateReader,
) -> Reply {
    certificate_chain(&wfe, &serial, index, reader).await
}

/// The path of an alternate chain, `/acme/cert/{serial}/{n}`. An `n` that names no alternate is not found before
/// the request's JWS is looked at.
struct AlternateChain {
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
    let cert = wfe.sa().get_certificate(&serial.to_ascii_lowercase(), deadline).await?;
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
    let canonical = wfe.urls().certificate(&serial.to_ascii_lowercase());
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyChangePayload {
    account: String,
    old_key: Value,
}

/// Account key rollover (RFC 8555 §7.3.5): an outer JWS by the account's key wraps an inner JWS by the new key.
async fn key_change(State(wfe): State<Wfe>, request: SigningAccount) -> Reply {
    let (account, deadline) = (&request.account, request.deadline);
    let inner = quarry_jose::Jws::parse(&request.jws.payload)
        .map_err(|e| Problem::malformed(format!("inner JWS of key-change: {e}")))?;
    let quarry_jose::KeyRef::Jwk(new_key) = &inner.header.key else {
        return Err(Problem::malformed("inner JWS of key-change must carry the new key in \"jwk\"").into());
    };
    if inner.header.nonce.is_some() {
        return Err(Problem::malformed("inner JWS of key-change must not carry a nonce").into());
    }
    if inner.header.url != request.jws.header.url {
        return Err(Problem::malformed("inner JWS of key-change must have the same \"url\" as the outer JWS").into());
    }
    inner.verify(new_key).map_err(|e| match e {
        quarry_jose::JoseError::BadSignatureAlgorithm(detail) => Problem::new(ErrorKind::BadSignatureAlgorithm, detail),
        _ => Problem::malformed("inner JWS of key-change does not verify with its key"),
    })?;
    let payload: KeyChangePayload = serde_json::from_slice(&inner.payload)
        .map_err(|_| Problem::malformed("key-change payload must be {\"account\": ..., \"oldKey\": ...}"))?;
    if payload.account != wfe.urls().account(account.id) {
        return Err(Problem::unauthorized("key-change \"account\" does not name the signing account").into());
    }
    let old_key = Jwk::from_json(&payload.old_key).map_err(|e| Problem::malformed(format!("oldKey: {e}")))?;
    if old_key != request.jwk {
        return Err(Problem::unauthorized("key-change \"oldKey\" is not the account's current key").into());
    }
    if *new_key == request.jwk {
        return Err(Problem::malformed("the new key is the account's current key").into());
    }
    if let Some(holder) = post::account_for_key(&wfe, new_key, deadline).await? {
        let conflict =
            ProblemResponse::from(Problem::new(ErrorKind::Conflict, "the new key is already in use by an account"));
        return Ok(with_location(conflict.into_response(), &wfe.urls().account(holder.id)));
    }
    let update = UpdateAccountKeyRequest { account_id: account.id, jwk: new_key.canonical_json().into_bytes() };
    let _change = wfe.accounts().changing(account.id);
    let updated = wfe.ra().update_account_key(update, deadline).await?;
    let updated = Account::try_from(&updated)?;
    Ok(with_location(
        json_response(StatusCode::OK, &render::account(wfe.urls(), &updated)),
        &wfe.urls().account(updated.id),
    ))
}

#[derive(Deserialize)]
struct RevocationPayload {
    certificate: String,
    #[serde(default)]
    reason: Option<i64>,
}

/// Revocation (RFC 8555 §7.6), signed by an account or by the certificate's own key.
async fn revoke_certificate(State(wfe): State<Wfe>, request: VerifiedPost<Option<Account>>) -> Reply {
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
    fn an_orders_page_starts_after_its_cursor() {
        let cursor = |uri: &str| orders_cursor(&uri.parse().unwrap()).map_err(|problem| problem.kind);
        assert_eq!(cursor("/acme/acct/1/orders"), Ok(0));
        assert_eq!(cursor("/acme/acct/1/orders?cursor=42"), Ok(42));
        for made_up in ["?cursor=", "?cursor=-1", "?cursor=4x", "?page=2", "?cursor=4&page=2"] {
            assert_eq!(cursor(&format!("/acme/acct/1/orders{made_up}")), Err(ErrorKind::Malformed), "{made_up}");
        }
    }
}
