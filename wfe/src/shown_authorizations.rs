//! The pending authorizations this wfe has just shown their clients, kept a short while for the challenge answer
//! that usually follows (a client reads the authorization for its challenge's token, then answers the challenge):
//! that answer then costs the sa no read.
//!
//! A copy may be stale when it is used, and that is safe. What the ra takes from it is fixed when the authorization
//! is created (its account, identifier, expiry, challenges and their tokens), except its status; and the sa starts a
//! validation only through a conditional update of the status as it is then (pending, no validation begun, not
//! expired). A copy is used once: a second answer to the same challenge reads the authorization.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use quarry_core::model::{Authorization, AuthorizationStatus, ChallengeStatus};
use serde::Deserialize;

use crate::expiring::Expiring;

/// `[authorization_cache]` in the wfe's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationCacheConfig {
    /// How long a pending authorization shown to its client is kept for its challenge answer; 0 turns it off.
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
    entries: Mutex<Expiring<Authorization>>,
}

impl ShownAuthorizations {
    pub fn new(config: &AuthorizationCacheConfig) -> Self {
        Self { entries: Mutex::new(Expiring::new(Duration::from_millis(config.ttl_ms), config.size)) }
    }

    /// Keeps `authz` as its client was shown it, if a challenge of it may be answered next: pending, none of its
    /// challenges being validated.
    pub fn keep(&self, authz: &Authorization) {
        let answerable = authz.status == AuthorizationStatus::Pending
            && authz.challenges.iter().all(|c| c.status == ChallengeStatus::Pending);
        if answerable {
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).insert(authz.id, authz.clone());
        }
    }

    /// The copy of authorization `id`, if one was kept lately; it is not kept any longer.
    pub fn take(&self, id: i64) -> Option<Authorization> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).take(id)
    }

    /// Forgets authorization `id` (this wfe is changing it).
    pub fn forget(&self, id: i64) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
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
    fn only_authorizations_a_client_may_answer_next_are_kept_and_each_serves_once() {
        let shown = ShownAuthorizations::new(&AuthorizationCacheConfig::default());
        let cases = [
            (1, AuthorizationStatus::Pending, ChallengeStatus::Pending, true),
            (2, AuthorizationStatus::Pending, ChallengeStatus::Processing, false),
            (3, AuthorizationStatus::Valid, ChallengeStatus::Valid, false),
            (4, AuthorizationStatus::Invalid, ChallengeStatus::Invalid, false),
            (5, AuthorizationStatus::Deactivated, ChallengeStatus::Pending, false),
        ];
        for (id, status, challenge, kept) in cases {
            shown.keep(&authz(id, status, challenge));
            assert_eq!(shown.take(id).is_some(), kept, "{status:?} with a {challenge:?} challenge");
            assert!(shown.take(id).is_none(), "taken once");
        }
        shown.keep(&authz(6, AuthorizationStatus::Pending, ChallengeStatus::Pending));
        shown.forget(6);
        assert!(shown.take(6).is_none());
        let off = ShownAuthorizations::new(&AuthorizationCacheConfig { ttl_ms: 0, size: 10 });
        off.keep(&authz(7, AuthorizationStatus::Pending, ChallengeStatus::Pending));
        assert!(off.take(7).is_none());
    }
}
