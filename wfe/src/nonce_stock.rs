//! The nonces the wfe hands out, one per reply: minted by a nonce replica in batches, kept a few seconds, and
//! refilled by one call at a time, started before the stock runs out so that a reply seldom waits for a batch.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quarry_core::{ErrorKind, Problem};

/// How the stock is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refill {
    /// How many nonces a batch brings.
    pub batch: usize,
    /// How long a reply that finds the stock out waits for a refill under way before it asks for a batch of its
    /// own: a stuck nonce replica must not hold every reply up.
    pub wait: Duration,
    /// A nonce kept at hand longer than this is dropped rather than handed out, so that after a nonce service
    /// restarts (its earlier nonces no longer redeem) clients meet at most a few seconds of `badNonce`.
    pub shelf_life: Duration,
}

impl Refill {
    /// With fewer nonces than this left, the next batch is fetched in the background: a quarter of a batch lasts
    /// far longer than a call to a nonce replica takes.
    fn low_water(self) -> usize {
        self.batch / 4
    }

    /// Concurrent refills (one in the background while a reply that found the stock out fetched its own) can
    /// overfill; beyond this the extra nonces are dropped.
    fn most_at_hand(self) -> usize {
        4 * self.batch
    }
}

#[derive(Clone)]
pub(crate) struct NonceStock {
    shared: Arc<Shared>,
    refill: Refill,
}

struct Shared {
    /// Minted nonces not yet handed out, oldest first, with when they were minted.
    at_hand: Mutex<VecDeque<(Instant, String)>>,
    /// Held while a batch is fetched: replies that find the stock out wait for that batch instead of each asking
    /// for one (at 16 clients and more, several found it out at once and fetched a batch each).
    refilling: Arc<tokio::sync::Mutex<()>>,
}

impl NonceStock {
    pub(crate) fn new(refill: Refill) -> Self {
        let shared = Shared { at_hand: Mutex::default(), refilling: Arc::new(tokio::sync::Mutex::new(())) };
        Self { shared: Arc::new(shared), refill }
    }

    /// A fresh nonce: one at hand (a background refill begins when few are left), else one from the refill
    /// under way, else from a batch `fetch` brings now.
    pub(crate) async fn take<Fetch, Batch>(&self, fetch: Fetch) -> Result<String, Problem>
    where
        Fetch: Fn() -> Batch,
        Batch: Future<Output = Result<Vec<String>, Problem>> + Send + 'static,
    {
        if let Some(nonce) = self.take_at_hand(&fetch) {
            return Ok(nonce);
        }
        // Out of nonces: the refill under way is waited for, for a while; past the wait this reply asks for a batch
        // of its own.
        let refilling = tokio::time::timeout(self.refill.wait, self.shared.refilling.clone().lock_owned()).await.ok();
        if refilling.is_some()
            && let Some(nonce) = self.take_at_hand(&fetch)
        {
            return Ok(nonce);
        }
        let mut batch = fetch().await?;
        let nonce = batch
            .pop()
            .ok_or_else(|| Problem::new(ErrorKind::Unavailable, "the nonce service returned no nonce; try again"))?;
        self.stock(batch);
        Ok(nonce)
    }

    /// Drops the nonces at hand whose prefix is `prefix`: those of a replica that no longer redeems them.
    pub(crate) fn forget(&self, prefix: &str) {
        self.at_hand().retain(|(_, nonce)| !nonce.starts_with(prefix));
    }

    /// How many nonces are at hand, stale ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.at_hand().len()
    }

    fn take_at_hand<Fetch, Batch>(&self, fetch: &Fetch) -> Option<String>
    where
        Fetch: Fn() -> Batch,
        Batch: Future<Output = Result<Vec<String>, Problem>> + Send + 'static,
    {
        let (nonce, left) = {
            let mut at_hand = self.at_hand();
            let mut fresh = None;
            while let Some((minted, nonce)) = at_hand.pop_front() {
                if minted.elapsed() < self.refill.shelf_life {
                    fresh = Some(nonce);
                    break;
                }
            }
            (fresh, at_hand.len())
        };
        if nonce.is_some() && left < self.refill.low_water() {
            self.refill_in_background(fetch);
        }
        nonce
    }

    /// Fetches a batch in a task of its own, unless a refill is under way already.
    fn refill_in_background<Fetch, Batch>(&self, fetch: &Fetch)
    where
        Fetch: Fn() -> Batch,
        Batch: Future<Output = Result<Vec<String>, Problem>> + Send + 'static,
    {
        let Ok(refilling) = self.shared.refilling.clone().try_lock_owned() else { return };
        let (stock, batch) = (self.clone(), fetch());
        tokio::spawn(async move {
            match batch.await {
                Ok(batch) => stock.stock(batch),
                // The reply that next finds the stock out asks again, and answers `unavailable` if that fails too.
                Err(problem) => tracing::warn!(%problem, "no nonce replica answered a background refill"),
            }
            drop(refilling);
        });
    }

    fn stock(&self, batch: Vec<String>) {
        let now = Instant::now();
        let mut at_hand = self.at_hand();
        let room = self.refill.most_at_hand().saturating_sub(at_hand.len());
        at_hand.extend(batch.into_iter().take(room).map(|nonce| (now, nonce)));
    }

    fn at_hand(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, String)>> {
        // Pushing and popping cannot leave the queue half-updated, so a poisoned lock still guards a sound queue.
        self.shared.at_hand.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
