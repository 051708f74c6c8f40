//! One load client's exchanges with the CA: its HTTP session (keep-alive connection, nonces, signed requests), what
//! an answer or a failure is, and what answers its http-01 challenges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use axum::serve::ListenerExt;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A CA that has not answered one request in this long counts as stalled (the order fails as `transport`).
/// How long an authorization or order may take to settle before the order counts as failed.
pub(super) const SETTLE_TIME: Duration = Duration::from_secs(30);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two polls when `Retry-After` is not honoured: the CA's own speed, not a client's manners, is
/// then what is measured.
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// When honouring `Retry-After` and an answer gives none: a second, as certbot waits before its first poll.
const UNSAID_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One client's view of the ACME server: pooled connections, the directory, and the last nonce it was given.
pub(super) struct Session {
    pub(super) http: quarry_core::http_client::HttpClient,
    pub(super) directory: Value,
    pub(super) key: quarry_jose::SigningKey,
    pub(super) account_url: Option<String>,
    pub(super) nonce: Option<String>,
    /// HTTP requests sent (polls and nonce fetches included), so that CAs are compared per request as well.
    pub(super) requests: usize,
    /// POST-as-GETs of a pending authorization or a processing order (each counted once, whatever `badNonce` added).
    pub(super) polls: usize,
    /// Between two polls, wait the answer's `Retry-After` up to this, as real clients do; `None`: poll again after
    /// [`POLL_PAUSE`].
    pub(super) retry_after_cap: Option<Duration>,
    /// How often a POST is sent again after `badNonce`.
    pub(super) nonce_retries: usize,
    /// Error answers that were not RFC 8555 problem documents (status, content type, the start of the body).
    pub(super) not_problems: Vec<String>,
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) location: Option<String>,
    /// `Retry-After` in seconds (an HTTP date is not understood, as it is absent from ACME servers' polls).
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Bytes,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem type's last part (`badNonce`…), or the status code.
    pub(super) fn problem(&self) -> String {
        self.json()["type"]
            .as_str()
            .map(|t| t.rsplit(':').next().unwrap_or(t).to_owned())
            .unwrap_or_else(|| format!("http-{}", self.status))
    }
}

/// A failed order, by what failed.
#[derive(Debug)]
pub(super) struct Failure(pub(super) String);

impl Session {
    pub(super) fn new(http: quarry_core::http_client::HttpClient, directory: Value) -> Self {
        let key = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).expect("generate an account key");
        Self {
            http,
            directory,
            key,
            account_url: None,
            nonce: None,
            requests: 0,
            polls: 0,
            retry_after_cap: None,
            nonce_retries: 1,
            not_problems: Vec::new(),
        }
    }

    pub(super) fn url(&self, name: &str) -> String {
        self.directory[name].as_str().unwrap_or_default().to_owned()
    }

    /// A signed POST, with the nonce the last answer carried; retried on `badNonce` (once, or three times).
    pub(super) async fn post(&mut self, url: &str, payload: Option<&Value>) -> anyhow::Result<Reply> {
        for _ in 0..=self.nonce_retries {
            let nonce = match self.nonce.take() {
                Some(nonce) => nonce,
                None => {
                    self.send(http::Method::HEAD, &self.url("newNonce"), None).await?;
                    self.nonce.take().context("newNonce gave no nonce")?
                }
            };
            let mut header = json!({ "alg": self.key.algorithm().as_str(), "nonce": nonce, "url": url });
            match &self.account_url {
                Some(kid) => header["kid"] = json!(kid),
                None => header["jwk"] = self.key.jwk().to_json(),
            }
            let payload = payload.map(|p| p.to_string().into_bytes());
            let body = quarry_jose::sign_flattened(&self.key, &header, payload.as_deref());
            let reply = self.send(http::Method::POST, url, Some(body)).await?;
            if reply.status == 400 && reply.problem() == "badNonce" {
                continue;
            }
            return Ok(reply);
        }
        bail!("{url}: badNonce every time")
    }

    /// One request on a pooled connection; the answer's nonce is kept for the next POST.
    pub(super) async fn send(
        &mut self,
        method: http::Method,
        url: &str,
        body: Option<String>,
    ) -> anyhow::Result<Reply> {
        let mut request = http::Request::builder().method(method).uri(url);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/jose+json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.requests += 1;
        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (location, nonce, content_type) = (header("location"), header("replay-nonce"), header("content-type"));
            let retry_after = header("retry-after").and_then(|secs| secs.trim().parse().ok()).map(Duration::from_secs);
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((Reply { status, location, retry_after, body }, nonce, content_type))
        };
        let (reply, nonce, content_type) = bounded(exchange).await.with_context(|| url.to_owned())?;
        if reply.status >= 400 && !is_problem_document(content_type.as_deref(), &reply.body) {
            let start = String::from_utf8_lossy(&reply.body[..reply.body.len().min(80)]).into_owned();
            self.not_problems.push(format!("{} {url}: {content_type:?} {start:?}", reply.status));
        }
        if nonce.is_some() {
            self.nonce = nonce;
        }
        Ok(reply)
    }

    /// POST-as-GET `url` until its status is no longer one of `waiting`: the first poll at once, each next one after
    /// [`Session::pause_after`] the last answer.
    pub(super) async fn settle(&mut self, url: &str, waiting: &[&str]) -> Result<Value, Failure> {
        let started = Instant::now();
        loop {
            self.polls += 1;
            let reply = self.post(url, None).await.map_err(|e| Failure(format!("transport: {e}")))?;
            let resource = reply.json();
            if !waiting.iter().any(|w| resource["status"] == *w) {
                return Ok(resource);
            }
            if started.elapsed() > SETTLE_TIME {
                return Err(Failure("timeout".into()));
            }
            tokio::time::sleep(self.pause_after(&reply)).await;
        }
    }

    /// How long to wait before polling again after `reply` said the work goes on.
    pub(super) fn pause_after(&self, reply: &Reply) -> Duration {
        match self.retry_after_cap {
            None => POLL_PAUSE,
            Some(cap) => reply.retry_after.unwrap_or(UNSAID_RETRY_AFTER).min(cap),
        }
    }
}

/// Whether an error answer is an RFC 8555 problem document: `application/problem+json` with an ACME error type.
pub(super) fn is_problem_document(content_type: Option<&str>, body: &[u8]) -> bool {
    let typed = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|doc| doc["type"].as_str().map(|t| t.starts_with("urn:ietf:params:acme:error:")))
        .unwrap_or(false);
    content_type.is_some_and(|t| t.starts_with("application/problem+json")) && typed
}

/// What answers http-01: the load generator's own responder (tokens it serves), or the CA's challenge test server.
#[derive(Clone)]
pub(super) enum Responder {
    Own(Arc<Mutex<HashMap<String, String>>>),
    ChallTestSrv { url: String, http: Box<quarry_core::http_client::HttpClient> },
}

impl Responder {
    pub(super) async fn answer(&self, token: &str, key_authorization: &str) -> Result<(), Failure> {
        match self {
            Responder::Own(tokens) => {
                tokens
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(token.to_owned(), key_authorization.to_owned());
                Ok(())
            }
            Responder::ChallTestSrv { url, http } => {
                let body = json!({ "token": token, "content": key_authorization }).to_string();
                let request = http::Request::post(format!("{url}/add-http01"))
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| Failure(format!("challenge server: {e}")))?;
                let response = tokio::time::timeout(REQUEST_TIMEOUT, http.request(request))
                    .await
                    .map_err(|_| Failure("challenge server: no answer".into()))?
                    .map_err(|e| Failure(format!("challenge server: {e}")))?;
                if !response.status().is_success() {
                    return Err(Failure(format!("challenge server: {}", response.status())));
                }
                Ok(())
            }
        }
    }

    pub(super) fn forget(&self, token: &str) {
        if let Responder::Own(tokens) = self {
            tokens.lock().unwrap_or_else(PoisonError::into_inner).remove(token);
        }
    }
}

/// Serves the tokens of `tokens` at `/.well-known/acme-challenge/{token}` on `listen`.
pub(super) async fn serve_http01(
    listen: SocketAddr,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) -> anyhow::Result<()> {
    use axum::extract::{Path, State};
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("bind {listen} for http-01"))?;
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                |State(tokens): State<Arc<Mutex<HashMap<String, String>>>>, Path(token): Path<String>| async move {
                    let answer = tokens.lock().unwrap_or_else(PoisonError::into_inner).get(&token).cloned();
                    answer.ok_or(http::StatusCode::NOT_FOUND)
                },
            ),
        )
        .with_state(tokens);
    tokio::spawn(async move { axum::serve(listener.tap_io(quarry_core::tcp::no_delay), app).await });
    Ok(())
}

/// `exchange`, or an error once it has taken longer than [`REQUEST_TIMEOUT`].
pub(super) async fn bounded<T>(exchange: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer in {} s", REQUEST_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(retry_after: Option<u64>) -> Reply {
        Reply { status: 200, location: None, retry_after: retry_after.map(Duration::from_secs), body: Bytes::new() }
    }

    #[tokio::test]
    async fn polls_follow_retry_after_only_when_told_to_and_within_the_cap() {
        let http = quarry_core::http_client::http_client(None).expect("an HTTP client");
        let mut session = Session::new(http, Value::Null);
        assert_eq!(session.pause_after(&pending(Some(3))), POLL_PAUSE, "by default the CA's speed is measured");
        session.retry_after_cap = Some(Duration::from_millis(3_000));
        assert_eq!(session.pause_after(&pending(Some(2))), Duration::from_secs(2));
        assert_eq!(session.pause_after(&pending(Some(60))), Duration::from_secs(3));
        assert_eq!(session.pause_after(&pending(None)), UNSAID_RETRY_AFTER);
    }
}
