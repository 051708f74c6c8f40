//! The validations under way on this replica, and the outcomes it recorded a moment ago: a challenge POST for one
//! of them waits on it, or is answered with its outcome, instead of starting another validation. The sa's fuse is
//! taken only for a validation that outlasts its request's wait (see `authorizations`), so this is what keeps POSTs
//! racing on one replica to one validation.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quarry_core::model::Authorization;
use tokio::sync::watch;

/// How long a recorded outcome answers POSTs for its authorization. The wfe reads the authorization just before it
/// asks, so a POST sent with a copy read before the outcome was recorded arrives within a moment of it.
const RECENTLY: Duration = Duration::from_secs(5);
/// The fewest entries at which settled ones are pruned.
const PRUNE_AT_LEAST: usize = 64;

/// What a validation ends with: nothing yet; then the authorization as the sa recorded its outcome, or nothing when
/// it could not be recorded (another outcome was first, the sa was out of reach, or the sa is older and does not
/// say).
type Settled = Option<Option<Authorization>>;

/// A validation under way on this replica (or just recorded), for any number of requests to wait on.
pub(crate) struct ValidationUnderWay(watch::Receiver<Settled>);

impl ValidationUnderWay {
    /// The authorization as the sa recorded the outcome, once it is; nothing if it could not be recorded.
    pub(crate) async fn recorded(mut self) -> Option<Authorization> {
        self.0.wait_for(Option::is_some).await.ok().and_then(|settled| settled.clone().flatten())
    }
}

/// The right, and the duty, to settle a validation just registered: whoever runs it.
pub(crate) struct Settle {
    authorization_id: i64,
    sender: watch::Sender<Settled>,
}

/// What [`Validations::register`] found.
pub(crate) enum Registered {
    /// One is under way, or was recorded a moment ago: wait on it.
    Existing(ValidationUnderWay),
    /// None: the caller runs one, and settles it.
    New(Settle, ValidationUnderWay),
}

/// This replica's validations, by authorization.
#[derive(Default)]
pub(crate) struct Validations(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    by_authorization: HashMap<i64, Entry>,
    /// The size at which settled entries are pruned next: twice what the last pruning left, so that pruning costs
    /// a constant per validation, amortized.
    prune_at: usize,
}

struct Entry {
    outcome: watch::Receiver<Settled>,
    /// When it settled; `None` while under way.
    settled_at: Option<Instant>,
}

impl Entry {
    /// Whether a POST for its authorization is answered by it: while under way, and a moment after its outcome was
    /// recorded. One that could not be recorded, or whose task ended without settling it, answers nothing: the next
    /// POST validates again.
    fn answers(&self) -> bool {
        match self.settled_at {
            // `has_changed` fails once the sender is gone.
            None => self.outcome.has_changed().is_ok(),
            Some(at) => at.elapsed() < RECENTLY && matches!(*self.outcome.borrow(), Some(Some(_))),
        }
    }
}

impl Validations {
    /// The validation of `authorization_id` to wait on: the one under way here or recorded a moment ago, else a
    /// new one for the caller to run.
    pub(crate) fn register(&self, authorization_id: i64) -> Registered {
        let mut registry = self.lock();
        if let Some(entry) = registry.by_authorization.get(&authorization_id)
            && entry.answers()
        {
            return Registered::Existing(ValidationUnderWay(entry.outcome.clone()));
        }
        if registry.by_authorization.len() >= registry.prune_at {
            registry.by_authorization.retain(|_, entry| entry.answers());
            registry.prune_at = (2 * registry.by_authorization.len()).max(PRUNE_AT_LEAST);
        }
        let (sender, outcome) = watch::channel(None);
        registry.by_authorization.insert(authorization_id, Entry { outcome: outcome.clone(), settled_at: None });
        Registered::New(Settle { authorization_id, sender }, ValidationUnderWay(outcome))
    }

    /// Gives the validation's outcome to everyone waiting on it, and to the POSTs of the next moment. The outcome is
    /// sent before the entry is marked settled, under the lock, so that no POST finds it settled without an outcome
    /// (which would start another validation). The entry is still this validation's: one is replaced only once it
    /// answers nothing, that is after it settled or lost its sender.
    pub(crate) fn settle(&self, settle: Settle, recorded: Option<Authorization>) {
        let mut registry = self.lock();
        settle.sender.send_replace(Some(recorded));
        if let Some(entry) = registry.by_authorization.get_mut(&settle.authorization_id) {
            entry.settled_at = Some(Instant::now());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_authorization.len()
    }
}

#[cfg(test)]
mod tests {
    use quarry_core::Identifier;
    use quarry_core::model::AuthorizationStatus;

    use super::*;

    fn recorded(id: i64) -> Authorization {
        Authorization {
            id,
            account_id: 1,
            identifier: Identifier::dns("recorded.example.org"),
            status: AuthorizationStatus::Valid,
            expires: 0,
            challenges: Vec::new(),
            wildcard: false,
            profile: String::new(),
            created: 0,
        }
    }

    fn new(validations: &Validations, id: i64) -> (Settle, ValidationUnderWay) {
        match validations.register(id) {
            Registered::New(settle, outcome) => (settle, outcome),
            Registered::Existing(_) => panic!("authorization {id}: an existing validation, where a new one was due"),
        }
    }

    fn existing(validations: &Validations, id: i64) -> ValidationUnderWay {
        match validations.register(id) {
            Registered::Existing(outcome) => outcome,
            Registered::New(..) => panic!("authorization {id}: a new validation, where it should join one"),
        }
    }

    #[tokio::test]
    async fn posts_join_the_validation_under_way_and_are_answered_by_its_recent_outcome() {
        let validations = Validations::default();
        let (settle, first) = new(&validations, 7);
        let joined = existing(&validations, 7);
        let _other = new(&validations, 8);
        validations.settle(settle, Some(recorded(7)));
        assert_eq!(first.recorded().await.map(|a| a.id), Some(7));
        assert_eq!(joined.recorded().await.map(|a| a.id), Some(7));
        // A POST sent with a copy read before the outcome was recorded is answered by it.
        assert_eq!(existing(&validations, 7).recorded().await.map(|a| a.id), Some(7));
    }

    #[tokio::test]
    async fn an_outcome_that_could_not_be_recorded_answers_its_waiters_but_not_the_next_post() {
        let validations = Validations::default();
        let (settle, first) = new(&validations, 7);
        let joined = existing(&validations, 7);
        validations.settle(settle, None);
        assert!(first.recorded().await.is_none());
        assert!(joined.recorded().await.is_none());
        let (settle, again) = new(&validations, 7);
        validations.settle(settle, Some(recorded(7)));
        assert_eq!(again.recorded().await.map(|a| a.id), Some(7));
    }

    #[tokio::test]
    async fn a_validation_dropped_unsettled_answers_nothing() {
        let validations = Validations::default();
        let (settle, waiting) = new(&validations, 7);
        drop(settle);
        assert!(waiting.recorded().await.is_none());
        // Nor does it answer the next POST, which validates again.
        let (settle, again) = new(&validations, 7);
        validations.settle(settle, Some(recorded(7)));
        assert_eq!(again.recorded().await.map(|a| a.id), Some(7));
    }

    #[test]
    fn settled_entries_are_pruned_and_those_under_way_kept() {
        let validations = Validations::default();
        let under_way: Vec<Settle> = (0..10).map(|id| new(&validations, id).0).collect();
        for id in 10..PRUNE_AT_LEAST as i64 {
            let (settle, _) = new(&validations, id);
            // Not recorded: nothing answers by it, so the next pruning drops it.
            validations.settle(settle, None);
        }
        assert_eq!(validations.len(), PRUNE_AT_LEAST);
        let _ = new(&validations, 1_000);
        assert_eq!(validations.len(), 11, "the ten under way and the new one");
        drop(under_way);
    }
}
