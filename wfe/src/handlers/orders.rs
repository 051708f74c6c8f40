//! The order resources (RFC 8555 §7.4): new-order, the order itself, and its finalization.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use quarry_core::model::{Authorization, Order, OrderStatus};
use quarry_core::{ErrorKind, Problem};
use quarry_proto::convert::identifiers_to_pb;
use quarry_proto::ra::{FinalizeOrderRequest, NewOrderRequest};

use crate::extract::{SigningAccount, parse_id};
use crate::hold;
use crate::issued_certificates::IssuedCertificate;
use crate::payloads::{FinalizePayload, NewOrderPayload, edge_identifiers};
use crate::problem::ProblemResponse;
use crate::render;
use crate::renewal;
use crate::reply::{Reply, json_response, with_location, with_retry_after};
use crate::state::Wfe;

/// new-order (RFC 8555 §7.4.1): the identifiers checked at the edge, and a replaced certificate (RFC 9773 §5).
pub(super) async fn new_order(State(wfe): State<Wfe>, request: SigningAccount) -> Reply {
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
    // The client reads each authorization next: a new order's come with it (see `shown_authorizations`).
    let created: Vec<Authorization> =
        order.authorizations.iter().filter_map(|authz| Authorization::try_from(authz).ok()).collect();
    wfe.shown_authorizations().keep_created(&created);
    let order = Order::try_from(&order)?;
    Ok(with_location(
        json_response(StatusCode::CREATED, &render::order(wfe.urls(), &order)),
        &wfe.urls().order(order.id),
    ))
}

/// An order, read with POST-as-GET only (RFC 8555 §6.3) as authorizations and challenges are: their ids are
/// sequential, and a plain GET would let anyone list every subscriber's names.
pub(super) async fn order(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let deadline = request.deadline;
    let order = load_order(&wfe, parse_id(&id, "order")?, deadline).await?;
    request.check_owner(order.account_id, "order")?;
    let order_id = order.id;
    // Issuance under way: answer when it ends, so that a client honouring Retry-After need not wait it out.
    let order = hold::until_settled(
        "order",
        wfe.issuance_time(),
        wfe.hold_processing(),
        deadline,
        order,
        |order| order.status == OrderStatus::Processing,
        || wfe.sa().get_order(order_id, deadline),
    )
    .await;
    Ok(order_response(&wfe, &order))
}

/// An order's finalization with its CSR, which waits for issuance longer than any other request.
pub(super) async fn finalize(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let account = &request.account;
    let order_id = parse_id(&id, "order")?;
    let payload: FinalizePayload = request.json()?;
    let csr = quarry_jose::b64_decode(&payload.csr)
        .map_err(|_| Problem::new(ErrorKind::BadCsr, "CSR is not valid base64url"))?;
    // The ra reads the order with the rest of what finalizing checks, in one sa call, and answers for another
    // account's order as for a missing one.
    let finalize =
        FinalizeOrderRequest { order_id, account_id: account.id, csr, order: None, account: Some(account.into()) };
    let answer = wfe.ra().finalize_order(finalize, wfe.finalize_deadline()).await?;
    let order = Order::try_from(&answer)?;
    // The client downloads the certificate next: it came with the answer (see `issued_certificates`).
    if order.status == OrderStatus::Valid && !answer.certificate_der.is_empty() {
        let issued = IssuedCertificate { account_id: order.account_id, der: answer.certificate_der };
        wfe.issued_certificates().keep(&order.certificate_serial, issued);
    }
    Ok(order_response(&wfe, &order))
}

/// The order, with `Retry-After` while it is processing.
fn order_response(wfe: &Wfe, order: &Order) -> Response {
    let response =
        with_location(json_response(StatusCode::OK, &render::order(wfe.urls(), order)), &wfe.urls().order(order.id));
    if order.status == OrderStatus::Processing { with_retry_after(response, wfe.retry_after()) } else { response }
}

async fn load_order(wfe: &Wfe, id: i64, deadline: Option<Instant>) -> Result<Order, ProblemResponse> {
    Ok(wfe.sa().get_order(id, deadline).await?)
}
