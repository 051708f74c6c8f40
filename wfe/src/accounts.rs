//! A short-lived cache of accounts by ID, so that a client's run of requests signed with `kid` costs the sa one
//! lookup rather than one per request (accounts were the sa's most frequent read), and the account's stored key is
//! parsed (and its point checked to be on the curve) once per lookup rather than once per request.
//!
//! An entry lives `ttl`: a change made through another wfe instance (deactivation, key roll-over) is seen here at
//! most that late (plus the sa's replica lag, when its reads come from a replica); changes made through this instance
//! drop the entry at once, and an sa read that began before such a change is not cached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use quarry_core::Problem;
use quarry_core::model::Account;
use quarry_jose::Jwk;
use serde::Deserialize;

use crate::expiring::Expiring;

/// `[account_cache]` in the wfe's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountCacheConfig {
    /// How long an account read from the sa is trusted; 0 turns the cache off.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// At most this many accounts are kept.
    #[serde(default = "default_size")]
    pub size: usize,
}

impl Default for AccountCacheConfig {
    fn default() -> Self {
        Self { ttl_ms: default_ttl_ms(), size: default_size() }
    }
}

fn default_ttl_ms() -> u64 {
    5_000
}
fn default_size() -> usize {
    10_000
}

/// An account as the sa stores it, and its key parsed.
#[derive(Debug, Clone)]
pub struct KnownAccount {
    pub account: Account,
    pub key: Jwk,
}

impl KnownAccount {
    /// `account` with its stored key parsed; a stored key that does not parse is the CA's fault, not the client's.
    pub fn parse(account: Account) -> Result<Self, Problem> {
        let key = Jwk::from_slice(&account.jwk).map_err(|_| Problem::internal("stored account key does not parse"))?;
        Ok(Self { account, key })
    }
}

pub struct AccountCache {
    entries: Mutex<Expiring<i64, KnownAccount>>,
    /// Counts `forget`s: a read that saw another value when it began may predate a change, and is not kept.
    changes: AtomicU64,
}

/// Taken before reading an account from the sa, handed back to [`AccountCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct ReadStarted(u64);

/// Forgets an account when dropped: after a change, whichever way the handler leaves.
pub struct ForgetOnDrop<'a> {
    cache: &'a AccountCache,
    id: i64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

impl AccountCache {
    pub fn new(config: &AccountCacheConfig) -> Self {
        Self {
            entries: Mutex::new(Expiring::new(Duration::from_millis(config.ttl_ms), config.size)),
            changes: AtomicU64::new(0),
        }
    }

    /// Call before reading an account from the sa.
    pub fn read_started(&self) -> ReadStarted {
        ReadStarted(self.changes.load(Ordering::Acquire))
    }

    /// The account, if it was read from the sa less than `ttl` ago.
    pub fn get(&self, id: i64) -> Option<KnownAccount> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(&id)
    }

    /// Keeps `account` as read from the sa, unless an account changed through this wfe since the read began.
    pub fn insert(&self, known: &KnownAccount, read: ReadStarted) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock that `forget` takes too, so that no change slips in between.
        if self.changes.load(Ordering::Acquire) != read.0 {
            return;
        }
        entries.insert(known.account.id, known.clone());
    }

    /// Forgets `id` (this instance changed the account), and any read of it under way.
    pub fn forget(&self, id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.changes.fetch_add(1, Ordering::AcqRel);
        entries.remove(&id);
    }

    /// Forgets `id` now and again when the guard is dropped: for a handler about to change the account.
    pub fn changing(&self, id: i64) -> ForgetOnDrop<'_> {
        self.forget(id);
        ForgetOnDrop { cache: self, id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_core::model::AccountStatus;

    fn account(id: i64) -> KnownAccount {
        let key = quarry_jose::SigningKey::generate(quarry_jose::Algorithm::Es256).expect("a key").jwk();
        let account = Account {
            id,
            jwk: key.canonical_json().into_bytes(),
            status: AccountStatus::Valid,
            contact: Vec::new(),
            terms_of_service_agreed: true,
            created_at: 0,
            external_account_id: String::new(),
        };
        KnownAccount::parse(account).expect("the stored key parses")
    }

    #[test]
    fn entries_expire_are_forgotten_and_stay_bounded() {
        let cache = AccountCache::new(&AccountCacheConfig { ttl_ms: 60_000, size: 2 });
        cache.insert(&account(1), cache.read_started());
        assert_eq!(cache.get(1).map(|known| known.account.id), Some(1));
        cache.forget(1);
        assert!(cache.get(1).is_none());
        for id in 1..=5 {
            cache.insert(&account(id), cache.read_started());
        }
        assert!(cache.entries.lock().unwrap().len() <= 2);
        assert_eq!(cache.get(5).map(|known| known.account.id), Some(5));

        let expired = AccountCache::new(&AccountCacheConfig { ttl_ms: 1, size: 10 });
        expired.insert(&account(7), expired.read_started());
        std::thread::sleep(Duration::from_millis(5));
        assert!(expired.get(7).is_none());

        let off = AccountCache::new(&AccountCacheConfig { ttl_ms: 0, size: 10 });
        off.insert(&account(8), off.read_started());
        assert!(off.get(8).is_none());
    }

    /// The key is parsed once, as the account is read: what the cache hands out is the key the stored JSON holds,
    /// and a stored key that does not parse is the CA's internal error (the wfe parses before it caches).
    #[test]
    fn an_account_is_kept_with_its_key_parsed() {
        let known = account(4);
        assert_eq!(known.key, Jwk::from_slice(&known.account.jwk).expect("the stored key"));
        let broken = Account { jwk: b"{}".to_vec(), ..known.account.clone() };
        let problem = KnownAccount::parse(broken).expect_err("a stored key that does not parse");
        assert_eq!(problem.kind, quarry_core::ErrorKind::ServerInternal);

        let cache = AccountCache::new(&AccountCacheConfig::default());
        cache.insert(&known, cache.read_started());
        assert_eq!(cache.get(4).map(|cached| cached.key), Some(known.key));
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let cache = AccountCache::new(&AccountCacheConfig::default());
        let read = cache.read_started();
        {
            let _change = cache.changing(3);
            // The stale read lands while the change is under way, or after it: either way it is dropped.
            cache.insert(&account(3), read);
            assert!(cache.get(3).is_none());
        }
        cache.insert(&account(3), read);
        assert!(cache.get(3).is_none());
        cache.insert(&account(3), cache.read_started());
        assert_eq!(cache.get(3).map(|known| known.account.id), Some(3));
        drop(cache.changing(3));
        assert!(cache.get(3).is_none(), "the guard forgets on drop");
    }
}
