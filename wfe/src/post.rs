//! The checks every ACME POST passes before its handler runs (RFC 8555 §6.2–6.5), in an order that never burns
//! a nonce for a request whose signature does not verify.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use quarry_core::model::{Account, AccountStatus};
use quarry_core::{ErrorKind, Problem};
use quarry_jose::{JoseError, Jwk, Jws, KeyRef};

use crate::accounts::KnownAccount;
use crate::problem::ProblemResponse;
use crate::state::Wfe;

/// The largest JWS body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How the JWS must name its key: new-account embeds it, everything else points at an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    Jwk,
    Kid,
    /// revoke-cert: an account (`kid`) or the certificate's own key (`jwk`).
    Either,
}

/// A request whose signature, URL and nonce checked out.
pub struct Verified {
    pub jws: Jws,
    pub jwk: Jwk,
    /// The signing account (always present for [`KeyMode::Kid`]).
    pub account: Option<Account>,
}

pub(crate) fn jose_problem(err: JoseError) -> Problem {
    match err {
        JoseError::BadSignatureAlgorithm(detail) => Problem::new(ErrorKind::BadSignatureAlgorithm, detail),
        JoseError::BadSignature => Problem::malformed("JWS verification error"),
        JoseError::BadPublicKey(detail) => Problem::new(ErrorKind::BadPublicKey, detail),
        other => Problem::malformed(other.to_string()),
    }
}

/// Runs every check of an ACME POST to `path` with `body`.
pub async fn verify(
    wfe: &Wfe,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
    mode: KeyMode,
    deadline: Option<Instant>,
) -> Result<Verified, ProblemResponse> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some("application/jose+json") {
        return Err(ProblemResponse::with_status(
            Problem::malformed("Invalid Content-Type header: expected application/jose+json"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(ProblemResponse::with_status(
            Problem::malformed("request body too large"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    let jws = Jws::parse(body).map_err(jose_problem)?;
    let expected_url = format!("{}{path}", wfe.urls().base);
    match &jws.header.url {
        None => return Err(Problem::malformed("JWS header parameter 'url' required").into()),
        Some(url) if *url != expected_url => {
            return Err(Problem::unauthorized(format!(
                "JWS header parameter 'url' incorrect. Expected {expected_url:?}, got {url:?}"
            ))
            .into());
        }
        Some(_) => {}
    }
    let Some(nonce) = jws.header.nonce.clone() else {
        return Err(Problem::new(ErrorKind::BadNonce, "JWS has no anti-replay nonce").into());
    };
    let (jwk, account) = match (&jws.header.key, mode) {
        (KeyRef::Jwk(jwk), KeyMode::Jwk | KeyMode::Either) => (jwk.clone(), None),
        (KeyRef::Kid(_), KeyMode::Jwk) => {
            return Err(Problem::malformed("this request must use the jwk header parameter, not kid").into());
        }
        (KeyRef::Jwk(_), KeyMode::Kid) => {
            return Err(Problem::malformed("this request must use the kid header parameter, not jwk").into());
        }
        (KeyRef::Kid(kid), KeyMode::Kid | KeyMode::Either) => {
            let KnownAccount { account, key } = account_for_kid(wfe, kid, deadline).await?;
            (key, Some(account))
        }
    };
    jws.verify(&jwk).map_err(jose_problem)?;
    // Who signed, for `[client_testing]`'s refused nonces only (production never names the key here).
    let provocations = wfe.provocations();
    let key = provocations
        .rejects_nonces()
        .then(|| account.as_ref().map_or_else(|| jwk.canonical_json(), |account| account.id.to_string()));
    if let Some(key) = &key
        && provocations.refuse_nonce(key)
    {
        // Spent, as Pebble does: the client must take the fresh nonce of the answer.
        wfe.redeem_nonce(&nonce).await;
        return Err(crate::testing::refused_nonce(&nonce).into());
    }
    if !wfe.redeem_nonce(&nonce).await {
        return Err(crate::testing::refused_nonce(&nonce).into());
    }
    if let Some(key) = &key {
        provocations.nonce_passed(key);
    }
    Ok(Verified { jws, jwk, account })
}

async fn account_for_kid(wfe: &Wfe, kid: &str, deadline: Option<Instant>) -> Result<KnownAccount, ProblemResponse> {
    let prefix = format!("{}/acme/acct/", wfe.urls().base);
    let id: i64 = kid.strip_prefix(&prefix).and_then(|id| id.parse().ok()).ok_or_else(|| {
        Problem::new(ErrorKind::AccountDoesNotExist, format!("key ID {kid:?} is not an account URL of this server"))
    })?;
    let known = match wfe.accounts().get(id) {
        Some(known) => known,
        None => {
            let read = wfe.accounts().read_started();
            let account = match wfe.sa().get_account(id, deadline).await {
                Ok(account) => account,
                Err(problem) if problem.kind == ErrorKind::NotFound => {
                    return Err(Problem::new(
                        ErrorKind::AccountDoesNotExist,
                        format!("account {kid:?} does not exist"),
                    )
                    .into());
                }
                Err(problem) => return Err(problem.into()),
            };
            let known = KnownAccount::parse(account)?;
            wfe.accounts().insert(&known, read);
            known
        }
    };
    if known.account.status != AccountStatus::Valid {
        return Err(Problem::unauthorized(format!(
            "account is not valid, has status {:?}",
            known.account.status.as_str()
        ))
        .into());
    }
    Ok(known)
}

/// The account registered for `jwk`, if any.
pub async fn account_for_key(
    wfe: &Wfe,
    jwk: &Jwk,
    deadline: Option<Instant>,
) -> Result<Option<Account>, ProblemResponse> {
    match wfe.sa().get_account_by_key(jwk.canonical_json().into_bytes(), deadline).await {
        Ok(account) => Ok(Some(account)),
        Err(problem) if problem.kind == ErrorKind::NotFound => Ok(None),
        Err(problem) => Err(problem.into()),
    }
}
