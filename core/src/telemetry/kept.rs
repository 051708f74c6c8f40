//! Metric handles taken from the recorder once and kept by key, for the paths that count on every call: building a
//! metric's key (its labels copied and formatted) and finding it in the recorder's registry costs more than the
//! counting itself.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// Handles kept by key, at most `bound` of them: a key past the bound (labels a client chose) gets fresh handles
/// each time, counted as they would be without the book. Kept only once the process's recorder is installed, since
/// a handle taken before would count nowhere for good.
#[derive(Debug)]
pub struct KeptSeries<K, V> {
    kept: Mutex<HashMap<K, V>>,
    bound: usize,
}

impl<K: Eq + Hash, V: Clone> KeptSeries<K, V> {
    pub fn new(bound: usize) -> Self {
        Self { kept: Mutex::new(HashMap::new()), bound }
    }

    /// The handles kept under `key`, or those `make` takes from the recorder (outside the book's lock, so that
    /// other calls go on meanwhile), kept while there is room.
    pub fn get_or_make<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> V
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if !super::recorder_installed() {
            return make();
        }
        self.get_or_make_kept(key, make)
    }

    /// [`Self::get_or_make`] whether or not a recorder is installed: for tests, which count with a local one.
    pub(crate) fn get_or_make_kept<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> V
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(kept) = self.kept.lock().unwrap_or_else(PoisonError::into_inner).get(key) {
            return kept.clone();
        }
        let made = make();
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(first) = kept.get(key) {
            return first.clone();
        }
        if kept.len() < self.bound {
            kept.insert(key.to_owned(), made.clone());
        }
        made
    }

    /// How many keys are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_key_is_made_once_and_a_key_past_the_bound_each_time() {
        let book: KeptSeries<String, Arc<u32>> = KeptSeries::new(2);
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Arc::new(made.get())
        };
        let first = book.get_or_make_kept("a", make);
        assert!(Arc::ptr_eq(&first, &book.get_or_make_kept("a", make)));
        let _ = book.get_or_make_kept("b", make);
        let past = book.get_or_make_kept("c", make);
        assert!(!Arc::ptr_eq(&past, &book.get_or_make_kept("c", make)));
        assert_eq!((book.len(), made.get()), (2, 4));
    }

    #[test]
    fn nothing_is_kept_before_the_recorder_is_installed() {
        // Unit tests never install the process's recorder.
        let book: KeptSeries<u8, Arc<()>> = KeptSeries::new(8);
        let _ = book.get_or_make(&1, || Arc::new(()));
        assert_eq!(book.len(), 0);
    }
}
