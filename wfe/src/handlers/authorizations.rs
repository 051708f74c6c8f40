//! The authorization and challenge resources (RFC 8555 §7.5): reading them, deactivating an authorization, and
//! answering a challenge.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use quarry_core::model::{Authorization, ChallengeStatus};
use quarry_core::{ErrorKind, Problem};
use quarry_proto::ra::{DeactivateAuthorizationRequest, PerformValidationRequest};
use serde_json::Value;

use crate::extract::{SigningAccount, parse_id};
use crate::hold;
use crate::problem::ProblemResponse;
use crate::render;
use crate::reply::{Reply, json_response, with_retry_after};
use crate::state::Wfe;

/// An authorization, read with POST-as-GET or deactivated by its account.
pub(super) async fn authorization(State(wfe): State<Wfe>, Path(id): Path<String>, request: SigningAccount) -> Reply {
    let deadline = request.deadline;
    let id = parse_id(&id, "authorization")?;
    // A read may be answered from the copy this wfe's challenge answer left (see `shown_authorizations`); a
    // deactivation reads what it changes.
    let settled = if request.is_post_as_get() { wfe.shown_authorizations().take_for_read(id) } else { None };
    let authz = match settled {
        Some(authz) => authz,
        None => load_authorization(&wfe, id, deadline).await?,
    };
    request.check_owner(authz.account_id, "authorization")?;
    if request.is_post_as_get() {
        let authz = hold_while_validating(&wfe, "authorization", authz, deadline).await;
        wfe.shown_authorizations().keep(&authz);
        let response = json_response(StatusCode::OK, &render::authorization(wfe.urls(), &authz));
        // A validation under way: tell the client when to look again (RFC 8555 §7.5.1).
        if validating(&authz) {
            return Ok(with_retry_after(response, wfe.authz_retry_after()));
        }
        return Ok(response);
    }
    // RFC 8555 §7.5.2: the only change a client may ask for is deactivation.
    let update: Value = request.json()?;
    if update.get("status").and_then(Value::as_str) != Some("deactivated") {
        return Err(Problem::malformed("an authorization update must be {\"status\": \"deactivated\"}").into());
    }
    wfe.shown_authorizations().forget(authz.id);
    let deactivate = DeactivateAuthorizationRequest { authorization_id: authz.id, account_id: request.account.id };
    let authz = wfe.ra().deactivate_authorization(deactivate, deadline).await?;
    Ok(json_response(StatusCode::OK, &render::authorization(wfe.urls(), &Authorization::try_from(&authz)?)))
}

/// The challenge `index` of `authz`, linked up to its authorization, with `Retry-After` while it is being validated.
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

/// A challenge, read with POST-as-GET or answered (the ra starts its validation).
pub(super) async fn challenge(
    State(wfe): State<Wfe>,
    Path((authz_id, index)): Path<(String, String)>,
    request: SigningAccount,
) -> Reply {
    let deadline = request.deadline;
    let authz_id = parse_id(&authz_id, "challenge")?;
    let index = parse_id(&index, "challenge")?;
    // An answer may start from the copy its client was just shown, and a read from the copy an answer left (see
    // `shown_authorizations`).
    let shown = wfe.shown_authorizations();
    let copy = if request.is_post_as_get() { shown.take_for_read(authz_id) } else { shown.take_for_answer(authz_id) };
    let authz = match copy {
        Some(authz) => authz,
        None => load_authorization(&wfe, authz_id, deadline).await?,
    };
    request.check_owner(authz.account_id, "challenge")?;
    if request.is_post_as_get() {
        let authz = hold_while_validating(&wfe, "challenge", authz, deadline).await;
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
        wait_ms: u32::try_from(wfe.hold_processing().as_millis()).unwrap_or(u32::MAX),
    };
    let started = Instant::now();
    let answered = match wfe.ra().perform_validation(start, deadline).await {
        Ok(answered) => Authorization::try_from(&answered)?,
        // The ra may have started the validation before its answer was lost (an ra replica stopping while it
        // waited): if so the client is told it is under way, as it is, rather than that it failed. Any other
        // problem is the ra's answer: the copy the ra was sent may be one shown earlier, whose status says nothing
        // of what this request changed.
        Err(problem) if answer_lost(&problem) => match wfe.sa().get_authorization(authz.id, deadline).await {
            Ok(current) if validating(&current) || current.status != authz.status => current,
            _ => return Err(problem.into()),
        },
        Err(problem) => return Err(problem.into()),
    };
    if !wfe.hold_processing().is_zero() {
        hold::answered_after_waiting("challenge_answer", wfe.validation_time(), started, validating(&answered));
    }
    wfe.shown_authorizations().keep_settled(&answered);
    challenge_response(&wfe, &answered, index)
}

/// Whether the ra's answer was lost on the way rather than given: the request's time ran out, or the ra could not
/// be reached or stopped while answering.
fn answer_lost(problem: &Problem) -> bool {
    matches!(problem.kind, ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::ServerInternal)
}

/// Whether a challenge of `authz` is being validated.
fn validating(authz: &Authorization) -> bool {
    authz.challenges.iter().any(|c| c.status == ChallengeStatus::Processing)
}

/// A validation under way is answered when it ends (or the hold runs out), so that a client honouring Retry-After
/// need not wait it out. An authorization validates one challenge at a time, so a challenge's poll waits on the same.
async fn hold_while_validating(
    wfe: &Wfe,
    endpoint: &'static str,
    authz: Authorization,
    deadline: Option<Instant>,
) -> Authorization {
    let id = authz.id;
    hold::until_settled(endpoint, wfe.validation_time(), wfe.hold_processing(), deadline, authz, validating, || {
        wfe.sa().get_authorization(id, deadline)
    })
    .await
}

async fn load_authorization(wfe: &Wfe, id: i64, deadline: Option<Instant>) -> Result<Authorization, ProblemResponse> {
    Ok(wfe.sa().get_authorization(id, deadline).await?)
}
