//! A bounded map of copies by ID that each expire a fixed time after they were kept: what the wfe's short-lived
//! caches (accounts, authorizations just shown, certificates just issued) have in common.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Copies by ID (a row id, or a certificate's serial), each trusted for `ttl` after it was kept; at most `size` of
/// them. Not locked: its owner locks it.
pub struct Expiring<K, V> {
    ttl: Duration,
    size: usize,
    entries: HashMap<K, (Instant, V)>,
}

impl<K: Hash + Eq, V: Clone> Expiring<K, V> {
    /// A map keeping nothing when `ttl` or `size` is zero.
    pub fn new(ttl: Duration, size: usize) -> Self {
        Self { ttl, size, entries: HashMap::new() }
    }

    /// The copy of `id`, if it was kept less than `ttl` ago.
    pub fn get(&self, id: &K) -> Option<V> {
        self.entries.get(id).filter(|(kept_at, _)| kept_at.elapsed() < self.ttl).map(|(_, value)| value.clone())
    }

    /// Removes the copy of `id`, giving it if it was still fresh.
    pub fn take(&mut self, id: &K) -> Option<V> {
        self.entries.remove(id).filter(|(kept_at, _)| kept_at.elapsed() < self.ttl).map(|(_, value)| value)
    }

    /// Removes the copy of `id` and gives it if it is still fresh and `wanted` accepts it; a copy `wanted` refuses
    /// stays.
    pub fn take_if(&mut self, id: &K, wanted: impl FnOnce(&V) -> bool) -> Option<V> {
        match self.entries.get(id) {
            Some((_, value)) if wanted(value) => self.take(id),
            _ => None,
        }
    }

    /// Keeps `value` as the copy of `id`, now.
    pub fn insert(&mut self, id: K, value: V) {
        if self.ttl.is_zero() || self.size == 0 {
            return;
        }
        if self.entries.len() >= self.size {
            self.entries.retain(|_, (kept_at, _)| kept_at.elapsed() < self.ttl);
            // Still full of live entries: start over rather than track recency; a miss costs one sa read.
            if self.entries.len() >= self.size {
                self.entries.clear();
            }
        }
        self.entries.insert(id, (Instant::now(), value));
    }

    /// Forgets the copy of `id`.
    pub fn remove(&mut self, id: &K) {
        self.entries.remove(id);
    }

    /// How many copies are held, fresh or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_expire_are_taken_once_and_stay_bounded() {
        let mut map = Expiring::new(Duration::from_secs(60), 2);
        map.insert(1, "one");
        assert_eq!(map.get(&1), Some("one"));
        assert_eq!(map.take(&1), Some("one"));
        assert_eq!(map.take(&1), None, "taken once");
        map.insert(1, "one");
        assert_eq!(map.take_if(&1, |v| *v == "two"), None);
        assert_eq!(map.take_if(&1, |v| *v == "one"), Some("one"), "a refused copy stays");
        assert_eq!(map.take_if(&1, |_| true), None, "taken once");
        for id in 1..=5 {
            map.insert(id, "n");
        }
        assert!(map.len() <= 2);
        assert_eq!(map.get(&5), Some("n"));
        map.remove(&5);
        assert_eq!(map.get(&5), None);

        let mut expired = Expiring::new(Duration::from_millis(1), 10);
        expired.insert(7, "seven");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.get(&7), None);
        assert_eq!(expired.take(&7), None);

        let mut off = Expiring::new(Duration::ZERO, 10);
        off.insert(8, "eight");
        assert_eq!(off.get(&8), None);
        let mut sizeless = Expiring::new(Duration::from_secs(1), 0);
        sizeless.insert(9, "nine");
        assert_eq!(sizeless.len(), 0);
    }
}
