//! The account resources (RFC 8555 §7.3): new-account with its external account binding, the account itself
//! (contacts, deactivation), its orders list, and key roll-over.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::IntoResponse;
use quarry_core::model::Account;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::{ExternalAccountBinding, Jwk};
use quarry_proto::core as pb;
use quarry_proto::ra::{UpdateAccountContactRequest, UpdateAccountKeyRequest};
use serde_json::Value;

use crate::extract::{NoAccount, OwnAccount, SigningAccount, VerifiedPost};
use crate::payloads::{AccountUpdate, KeyChangePayload, NewAccountPayload};
use crate::post;
use crate::problem::ProblemResponse;
use crate::render;
use crate::reply::{Reply, json_response, with_location};
use crate::state::Wfe;

/// new-account (RFC 8555 §7.3): the account the key already has, or a new one, bound to an external account when
/// the request carries a binding or the CA requires one.
pub(super) async fn new_account(
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

/// The account (RFC 8555 §7.3.2, §7.3.6): read with POST-as-GET, or its contacts changed or it deactivated.
pub(super) async fn account(State(wfe): State<Wfe>, OwnAccount(request): OwnAccount) -> Reply {
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
pub(super) async fn account_orders(State(wfe): State<Wfe>, uri: Uri, OwnAccount(request): OwnAccount) -> Reply {
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

/// Account key rollover (RFC 8555 §7.3.5): an outer JWS by the account's key wraps an inner JWS by the new key.
pub(super) async fn key_change(State(wfe): State<Wfe>, request: SigningAccount) -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;

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
