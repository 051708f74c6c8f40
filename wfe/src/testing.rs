//! The wfe's client-testing knobs (`[client_testing]`, quarry dev only — see `quarry_core::testing`): good nonces
//! refused as `badNonce` (Pebble's `PEBBLE_WFE_NONCEREJECT`), random `serverInternal` and `rateLimited` answers, every
//! renewal window open now, renewal-information answers a suite stored in the sa (Pebble's `set-renewal-info`), and
//! the directory at more paths (Pebble's `/dir`).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use quarry_core::testing::{chance, percent};
use quarry_core::{ErrorKind, Problem};
use serde::Deserialize;

use crate::problem::ProblemResponse;

/// `[client_testing]` of the wfe. Every key off is production behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTesting {
    /// The percentage of requests whose good nonce is consumed and refused as `badNonce` (Pebble's
    /// `PEBBLE_WFE_NONCEREJECT`). A key once refused is not refused again until one of its requests has got
    /// through, so a client that retries a `badNonce` once always gets through.
    #[serde(default, deserialize_with = "percent")]
    pub nonce_reject_percent: u8,
    /// The percentage of POSTs answered `serverInternal` (500) before anything is done.
    #[serde(default, deserialize_with = "percent")]
    pub server_internal_percent: u8,
    /// The percentage of POSTs answered `rateLimited` (429, with `Retry-After`) before anything is done.
    #[serde(default, deserialize_with = "percent")]
    pub rate_limited_percent: u8,
    /// The `Retry-After` of those answers.
    #[serde(default = "default_error_retry_after_secs")]
    pub error_retry_after_secs: u64,
    /// Every certificate's renewal window (ARI) is open: it began a minute ago.
    #[serde(default)]
    pub renew_now: bool,
    /// Serve the renewal-information answer a client test suite stored in the sa for a certificate (Pebble's
    /// `set-renewal-info`, through `quarry dev`'s management API) in place of its window. Off, no renewal-info
    /// request pays the sa read that looks for one.
    #[serde(default)]
    pub renewal_info_overrides: bool,
    /// More paths the directory is served at, e.g. Pebble's `/dir`.
    #[serde(default)]
    pub directory_aliases: Vec<String>,
}

fn default_error_retry_after_secs() -> u64 {
    1
}

impl ClientTesting {
    fn provokes_errors(&self) -> bool {
        self.server_internal_percent > 0 || self.rate_limited_percent > 0
    }
}

/// The knobs at run time, with the keys refused since their last request that got through.
pub(crate) struct Provocations {
    pub(crate) knobs: ClientTesting,
    just_refused: Mutex<HashSet<String>>,
}

/// Beyond this many keys remembered, the memory starts over (a forgotten key may be refused twice in a row).
const MAX_REMEMBERED_KEYS: usize = 16_384;

impl Provocations {
    pub(crate) fn new(knobs: ClientTesting) -> Self {
        if knobs != ClientTesting::default() {
            tracing::warn!(?knobs, "client-testing knobs are on: this wfe misbehaves on purpose");
        }
        Self { knobs, just_refused: Mutex::default() }
    }

    /// Whether some good nonces are refused (`nonce_reject_percent`).
    pub(crate) fn rejects_nonces(&self) -> bool {
        self.knobs.nonce_reject_percent > 0
    }

    /// Whether the good nonce of a request signed by `key` is to be refused now.
    pub(crate) fn refuse_nonce(&self, key: &str) -> bool {
        let mut just_refused = self.just_refused.lock().unwrap_or_else(PoisonError::into_inner);
        if just_refused.contains(key) || !chance(self.knobs.nonce_reject_percent) {
            return false;
        }
        if just_refused.len() >= MAX_REMEMBERED_KEYS {
            just_refused.clear();
        }
        just_refused.insert(key.to_owned());
        true
    }

    /// A request signed by `key` got through the nonce check: its next one may be refused again.
    pub(crate) fn nonce_passed(&self, key: &str) {
        self.just_refused.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// The answer a share of POSTs get at once, `serverInternal` or `rateLimited`, as `[client_testing]` asks: given
    /// before the request reaches its handler, so nothing is done and no nonce is spent.
    pub(crate) fn provoked_answer(&self, method: &Method) -> Option<Response> {
        let knobs = &self.knobs;
        if method != Method::POST || !knobs.provokes_errors() {
            return None;
        }
        if chance(knobs.server_internal_percent) {
            let detail = "a server error provoked on purpose ([client_testing] server_internal_percent)";
            return Some(ProblemResponse::from(Problem::internal(detail)).into_response());
        }
        if chance(knobs.rate_limited_percent) {
            let detail = "a rate limit provoked on purpose ([client_testing] rate_limited_percent)";
            let problem = Problem::rate_limited(detail, knobs.error_retry_after_secs);
            return Some(ProblemResponse::from(problem).into_response());
        }
        None
    }
}

/// The `badNonce` of a nonce refused, good or not (acme.sh recognises the wording).
pub(crate) fn refused_nonce(nonce: &str) -> Problem {
    Problem::new(ErrorKind::BadNonce, format!("JWS has an invalid anti-replay nonce: {nonce:?}"))
}
