//! What an ACME POST handler takes from its request, as axum extractors: the JWS verified by post.rs's checks, with
//! what signed it, so that a handler holds its use case only. An extractor's rejection is the problem document those
//! checks give, answered before the handler runs.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use quarry_core::Problem;
use quarry_core::model::Account;
use quarry_jose::{Jwk, Jws};

use crate::post::{self, KeyMode};
use crate::problem::ProblemResponse;
use crate::reply::{GET_OR_POST, POST_ONLY};
use crate::state::Wfe;

/// A POST whose JWS checked out (RFC 8555 §6.2–6.5), with its signer: an [`Account`] for the resources an account
/// acts on (`kid`, see [`SigningAccount`]), an `Option<Account>` for revoke-cert (an account, or the certificate's
/// own key in `jwk`), [`NoAccount`] for new-account (the key the JWS carries in `jwk`).
pub(crate) struct VerifiedPost<Signer> {
    pub jws: Jws,
    /// The key the signature verified with: the one the JWS carries, or the signing account's.
    pub jwk: Jwk,
    pub account: Signer,
    /// The request's deadline, counted from before its checks and passed on to every gRPC call it makes.
    pub deadline: Option<Instant>,
}

/// A POST signed by an account (`kid`) whose status lets it act.
pub(crate) type SigningAccount = VerifiedPost<Account>;

/// New-account's signer: the key its JWS carries (`jwk`), which names no account.
pub(crate) struct NoAccount;

/// How a resource's JWS must name its key, and what its handler is given for the signer.
pub(crate) trait SignerKind: Sized {
    const KEY_MODE: KeyMode;

    /// The signer, from the account the checks found (always one for [`KeyMode::Kid`], none for [`KeyMode::Jwk`]).
    fn from_checked(account: Option<Account>) -> Result<Self, Problem>;
}

impl SignerKind for Account {
    const KEY_MODE: KeyMode = KeyMode::Kid;

    fn from_checked(account: Option<Account>) -> Result<Self, Problem> {
        account.ok_or_else(|| Problem::internal("request has no account"))
    }
}

impl SignerKind for Option<Account> {
    const KEY_MODE: KeyMode = KeyMode::Either;

    fn from_checked(account: Option<Account>) -> Result<Self, Problem> {
        Ok(account)
    }
}

impl SignerKind for NoAccount {
    const KEY_MODE: KeyMode = KeyMode::Jwk;

    fn from_checked(_: Option<Account>) -> Result<Self, Problem> {
        Ok(NoAccount)
    }
}

impl<S> VerifiedPost<S> {
    /// The payload as JSON; an empty payload is an error here (use [`VerifiedPost::is_post_as_get`] first).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_slice(&self.jws.payload)
            .map_err(|e| Problem::malformed(format!("request payload did not parse as JSON: {e}")))
    }

    pub fn is_post_as_get(&self) -> bool {
        self.jws.is_post_as_get()
    }
}

impl SigningAccount {
    /// Another account's resource is reported as absent, as Boulder does.
    pub fn check_owner(&self, owner: i64, what: &str) -> Result<(), Problem> {
        if self.account.id != owner {
            return Err(Problem::not_found(format!("{what} not found")));
        }
        Ok(())
    }
}

impl<S: SignerKind + Send> FromRequest<Wfe> for VerifiedPost<S> {
    type Rejection = Response;

    async fn from_request(request: Request, wfe: &Wfe) -> Result<Self, Response> {
        Received::read(request, wfe).await?.verify(wfe).await
    }
}

/// What the checks look at of a request: its method, URL and headers, and its whole body.
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    /// Reads the body in full, refused as axum refuses any body over the listener's limit.
    async fn read(request: Request, wfe: &Wfe) -> Result<Self, Response> {
        let (method, uri, headers) = (request.method().clone(), request.uri().clone(), request.headers().clone());
        let body = Bytes::from_request(request, wfe).await.map_err(IntoResponse::into_response)?;
        Ok(Self { method, uri, headers, body })
    }

    /// Runs the POST checks, refusing other methods; the request's deadline starts here.
    async fn verify<S: SignerKind>(self, wfe: &Wfe) -> Result<VerifiedPost<S>, Response> {
        if self.method != Method::POST {
            return Err(ProblemResponse::method_not_allowed(POST_ONLY).into_response());
        }
        let deadline = wfe.deadline();
        let checked = post::verify(wfe, &self.headers, signed_path(&self.uri), &self.body, S::KEY_MODE, deadline)
            .await
            .map_err(IntoResponse::into_response)?;
        let account = S::from_checked(checked.account).map_err(problem_response)?;
        Ok(VerifiedPost { jws: checked.jws, jwk: checked.jwk, account, deadline })
    }
}

/// A POST to an account's own resources (`/acme/acct/{id}…`), which only that account may sign.
pub(crate) struct OwnAccount(pub SigningAccount);

impl FromRequest<Wfe> for OwnAccount {
    type Rejection = Response;

    async fn from_request(request: Request, wfe: &Wfe) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Path(id) =
            Path::<String>::from_request_parts(&mut parts, wfe).await.map_err(IntoResponse::into_response)?;
        let request = SigningAccount::from_request(Request::from_parts(parts, body), wfe).await?;
        if id.parse::<i64>().ok() != Some(request.account.id) {
            return Err(problem_response(Problem::unauthorized("request signing key does not match the account")));
        }
        Ok(Self(request))
    }
}

/// Who reads a certificate: nobody in particular with a plain GET (certificates are public), the signing account with
/// a POST-as-GET.
pub(crate) struct CertificateReader {
    pub account: Option<Account>,
    /// The request's deadline, counted from before its checks.
    pub deadline: Option<Instant>,
}

impl FromRequest<Wfe> for CertificateReader {
    type Rejection = Response;

    async fn from_request(request: Request, wfe: &Wfe) -> Result<Self, Response> {
        let received = Received::read(request, wfe).await?;
        match received.method {
            Method::GET | Method::HEAD => Ok(Self { account: None, deadline: wfe.deadline() }),
            Method::POST => {
                let request: SigningAccount = received.verify(wfe).await?;
                Ok(Self { account: Some(request.account), deadline: request.deadline })
            }
            _ => Err(ProblemResponse::method_not_allowed(GET_OR_POST).into_response()),
        }
    }
}

/// An id from the request's path: one that is not a number names nothing.
pub(crate) fn parse_id(id: &str, what: &str) -> Result<i64, Problem> {
    id.parse().map_err(|_| Problem::not_found(format!("{what} not found")))
}

fn problem_response(problem: Problem) -> Response {
    ProblemResponse::from(problem).into_response()
}

/// What of the request URL a JWS's `url` must name after the base URL: the path and the query, if any (RFC 8555
/// §6.4), so that a signed request for one page of a list cannot be sent for another.
fn signed_path(uri: &Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |path_and_query| path_and_query.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jws_signs_the_query_too() {
        assert_eq!(signed_path(&"/acme/acct/1/orders?cursor=7".parse().unwrap()), "/acme/acct/1/orders?cursor=7");
        assert_eq!(signed_path(&"/acme/order/3".parse().unwrap()), "/acme/order/3");
    }
}
