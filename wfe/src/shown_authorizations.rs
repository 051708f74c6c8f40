//! The authorizations this wfe has just created, shown or changed for their clients, kept a short while for the
//! request that usually follows, which then costs the sa no read:
//! - the pending authorizations a new order was created with, as the sa recorded them, for the client's first read
//!   of each (a client reads every authorization of its new order);
//! - a pending authorization shown to its client, for the challenge answer that follows (a client reads the
//!   authorization for its challenge's token, then answers the challenge);
//! - an authorization whose validation this wfe's challenge answer saw settle (valid or invalid), for the client's
//!   next read of it or of its challenge.
//!
//! A copy kept for a read is what the sa recorded a moment before. A new authorization's URL is known only to its
//! account, which is shown it in the new-order answer; what can change it before the client's first read is its
//! deactivation or a validation, through another replica (a repeated new-order for the same names answers with the
//! same order) or by an operator calling the sa: the read then shows it pending once more, as a read from a lagging
//! database replica would (Boulder reads authorizations from replicas too), and the answer that follows is safe as
//! below.
//!
//! A pending copy may be stale when it is answered from, and that is safe. What the ra takes from it is fixed when the
//! authorization is created (its account, identifier, expiry, challenges and their tokens), except its status; and
//! the sa starts a validation only through a conditional update of the status as it is then (pending, no validation
//! begun, not expired).
//!
//! A settled copy is what the sa recorded as the validation ended. The only change left to it is the deactivation of
//! a valid one, by its account (or by an operator calling the sa): through this wfe the copy is forgotten; through
//! another replica or the sa, a read here within the copy's life may still show it valid, as a read from a lagging
//! database replica would (Boulder reads authorizations from replicas too). An expired copy is never served.
//!
//! Every copy is used once: a second answer or a second read goes to the sa.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use quarry_core::model::{Authorization, AuthorizationStatus, ChallengeStatus};
use serde::Deserialize;

use crate::expiring::Expiring;

/// `[authorization_cache]` in the wfe's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationCacheConfig {
    /// How long an authorization created by a new order or shown to its client (pending) or validated by its answer
    /// (settled) is kept for the request that follows; 0 turns it off.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// At most this many are kept.
    #[serde(default = "default_size")]
    pub size: usize,
}

impl Default for AuthorizationCacheConfig {
    fn default() -> Self {
        Self { ttl_ms: default_ttl_ms(), size: default_size() }
    }
}

fn default_ttl_ms() -> u64 {
    30_000
}
fn default_size() -> usize {
    10_000
}

pub struct ShownAuthorizations {
    entries: Mutex<Expiring<i64, Kept>>,
}

/// A copy and the request it is kept for.
#[derive(Clone)]
struct Kept {
    authz: Authorization,
    serves: Serves,
}

/// The request a copy is kept for: each copy serves only the request that usually follows what made it, so that a
/// read never serves a copy kept for an answer (a client polling another replica's change would see it pending
/// again and again).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serves {
    Read,
    Answer,
}

impl ShownAuthorizations {
    pub fn new(config: &AuthorizationCacheConfig) -> Self {
        Self { entries: Mutex::new(Expiring::new(Duration::from_millis(config.ttl_ms), config.size)) }
    }

    /// Keeps the authorizations a new order was just created with, as the sa recorded them, for the client's first
    /// read of each: those still pending with no validation begun (a reused one may be valid already, and is read).
    pub fn keep_created(&self, authorizations: &[Authorization]) {
        let mut entries = self.lock();
        for authz in authorizations.iter().filter(|authz| answerable(authz)) {
            entries.insert(authz.id, Kept { authz: authz.clone(), serves: Serves::Read });
        }
    }

    /// Keeps `authz` as its client was shown it, if a challenge of it may be answered next: pending, none of its
    /// challenges being validated.
    pub fn keep(&self, authz: &Authorization) {
        if answerable(authz) {
            self.lock().insert(authz.id, Kept { authz: authz.clone(), serves: Serves::Answer });
        }
    }

    /// Keeps `authz` as a challenge answer left it, if its validation has settled (valid or invalid), for the client's
    /// next read.
    pub fn keep_settled(&self, authz: &Authorization) {
        if settled(authz) {
            self.lock().insert(authz.id, Kept { authz: authz.clone(), serves: Serves::Read });
        }
    }

    /// The pending copy of authorization `id` its client was shown, for a challenge answer, if one was kept lately;
    /// it is not kept any longer.
    pub fn take_for_answer(&self, id: i64) -> Option<Authorization> {
        self.lock().take_if(&id, |kept| kept.serves == Serves::Answer && answerable(&kept.authz)).map(|kept| kept.authz)
    }

    /// The copy of authorization `id` kept for a read (just created, or settled by an answer), if one was kept lately
    /// and has not expired since; it is not kept any longer.
    pub fn take_for_read(&self, id: i64) -> Option<Authorization> {
        let now = quarry_core::clock::now();
        self.lock().take_if(&id, |kept| kept.serves == Serves::Read && kept.authz.expires > now).map(|kept| kept.authz)
    }

    /// Forgets authorization `id` (this wfe is changing it).
    pub fn forget(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Expiring<i64, Kept>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pending with no validation begun: a challenge of it may be answered.
fn answerable(authz: &Authorization) -> bool {
    authz.status == AuthorizationStatus::Pending
        && authz.challenges.iter().all(|c| c.status == ChallengeStatus::Pending)
}

/// Its validation has ended, for good or ill.
fn settled(authz: &Authorization) -> bool {
    matches!(authz.status, AuthorizationStatus::Valid | AuthorizationStatus::Invalid)
}

#[cfg(test)]
mod tests {
    use quarry_core::Identifier;
    use quarry_core::model::{Challenge, ChallengeType};

    use super::*;

    fn authz(id: i64, status: AuthorizationStatus, challenge: ChallengeStatus) -> Authorization {
        let challenge = Challenge {
            index: 0,
            kind: ChallengeType::Http01,
            status: challenge,
            token: "token".into(),
            validated: 0,
            error: None,
            validation_records: Vec::new(),
        };
        Authorization {
            id,
            account_id: 1,
            identifier: Identifier::dns("shown.example.org"),
            status,
            expires: i64::MAX,
            challenges: vec![challenge],
            wildcard: false,
            profile: String::new(),
            created: 0,
        }
    }

    #[test]
    fn each_copy_serves_once_the_request_it_was_kept_for() {
        let shown = ShownAuthorizations::new(&AuthorizationCacheConfig::default());
        // (id, status, its challenge's status, how it is kept, then served to a read, served to an answer)
        let cases = [
            (1, AuthorizationStatus::Pending, ChallengeStatus::Pending, "shown", false, true),
            (2, AuthorizationStatus::Pending, ChallengeStatus::Processing, "shown", false, false),
            (3, AuthorizationStatus::Valid, ChallengeStatus::Valid, "settled", true, false),
            (4, AuthorizationStatus::Invalid, ChallengeStatus::Invalid, "settled", true, false),
            (5, AuthorizationStatus::Deactivated, ChallengeStatus::Pending, "settled", false, false),
            (11, AuthorizationStatus::Pending, ChallengeStatus::Pending, "created", true, false),
            (12, AuthorizationStatus::Valid, ChallengeStatus::Valid, "created", false, false),
            (13, AuthorizationStatus::Pending, ChallengeStatus::Pending, "settled", false, false),
        ];
        for (id, status, challenge, kept_as, for_read, for_answer) in cases {
            let copy = authz(id, status, challenge);
            match kept_as {
                "shown" => shown.keep(&copy),
                "settled" => shown.keep_settled(&copy),
                _ => shown.keep_created(&[copy]),
            }
            let case = format!("{status:?} with a {challenge:?} challenge, kept {kept_as}");
            assert!(shown.take_for_read(id).is_some() == for_read, "read: {case}");
            assert!(shown.take_for_answer(id).is_some() == for_answer, "answer: {case}");
            assert!(shown.take_for_answer(id).is_none() && shown.take_for_read(id).is_none(), "used once: {case}");
        }
        shown.keep(&authz(6, AuthorizationStatus::Pending, ChallengeStatus::Pending));
        shown.forget(6);
        assert!(shown.take_for_answer(6).is_none());
        shown.keep_settled(&authz(7, AuthorizationStatus::Valid, ChallengeStatus::Valid));
        shown.forget(7);
        assert!(shown.take_for_read(7).is_none());

        let mut expired = authz(8, AuthorizationStatus::Valid, ChallengeStatus::Valid);
        expired.expires = quarry_core::clock::now() - 1;
        shown.keep_settled(&expired);
        assert!(shown.take_for_read(8).is_none(), "an expired copy is never served");

        let off = ShownAuthorizations::new(&AuthorizationCacheConfig { ttl_ms: 0, size: 10 });
        off.keep(&authz(9, AuthorizationStatus::Pending, ChallengeStatus::Pending));
        off.keep_settled(&authz(10, AuthorizationStatus::Valid, ChallengeStatus::Valid));
        assert!(off.take_for_answer(9).is_none() && off.take_for_read(10).is_none());
    }
}
