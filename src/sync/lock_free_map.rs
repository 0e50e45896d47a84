//! [`LockFreeMap`]: loom's stand-in for papaya that keeps papaya's orderings.
//!
//! The loom [`ConcurrentMap`](super::ConcurrentMap) is a mutex around a `HashMap`,
//! whose lock and unlock order every read after every earlier write. papaya gives
//! no such total order. What it documents (crate docs, "Consistency") is that a
//! read establishes a happens-before relationship with the write it reads, and
//! that an iterator reflects the table at or after its creation. Its code: an
//! insert claims the entry with a `Release` CAS and then stores the entry's
//! metadata byte `Release`; `get` and the iterator load that byte `Acquire` and
//! skip the entry while it reads empty. So a read may miss a write that does not
//! happen-before it, even one that came earlier in real time.
//!
//! This stand-in gives loom exactly that: one loom word per key, holding which
//! version of the value is current (0: absent). Writes are RMWs on that word
//! (`AcqRel`); [`get`](LockFreeMap::get) and [`entries`](LockFreeMap::entries)
//! load it `Acquire`, so loom may hand a reader any write not ordered before it.
//! Which word belongs to which key, and the values of every version, are `std`
//! bookkeeping outside the model (as papaya's probe sequence is, and its nodes,
//! which are immutable once published); it is never held across a loom operation.
//! Versions are kept until the map drops, in place of papaya's reclamation.
//!
//! Writers are stronger than papaya's (an `AcqRel` RMW where papaya's CAS is
//! `Release` on success): only the reader side is weakened, which is what a
//! protocol pairing a write with a later read of the map rests on. It has the
//! operations the key map uses; add papaya's others as a map moves over.

use std::borrow::Borrow;
use std::hash::Hash;

use super::{AtomicUsize, Ordering};

/// The loom words a map can hold: one per distinct key it ever sees. Models use a
/// handful; more is a model's mistake, reported by a panic.
const WORDS: usize = 16;

/// A concurrent map with papaya's per-entry orderings; see the module docs.
pub(crate) struct LockFreeMap<K, V> {
    /// Key `i` of the book owns `words[i]`; a word holds 0 (absent) or
    /// 1 + the index of its current version in the book.
    words: Box<[AtomicUsize]>,
    book: std::sync::Mutex<Book<K, V>>,
}

struct Book<K, V> {
    keys: Vec<K>,
    versions: Vec<std::sync::Arc<V>>,
}

impl<K, V> LockFreeMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    pub(crate) fn new() -> Self {
        Self {
            words: (0..WORDS).map(|_| AtomicUsize::new(0)).collect(),
            book: std::sync::Mutex::new(Book {
                keys: Vec::new(),
                versions: Vec::new(),
            }),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book<K, V>> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The word of `key`, if the map ever held it.
    fn word_of<Q>(&self, key: &Q) -> Option<&AtomicUsize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.book().keys.iter().position(|k| k.borrow() == key)?;
        Some(&self.words[i])
    }

    /// The word of `key`, given one if it has none yet.
    fn word_for(&self, key: K) -> &AtomicUsize {
        let mut book = self.book();
        let i = match book.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                assert!(
                    book.keys.len() < WORDS,
                    "a loom model used over {WORDS} keys"
                );
                book.keys.push(key);
                book.keys.len() - 1
            }
        };
        &self.words[i]
    }

    /// Records `value` as a new version; returns what its word will hold.
    fn version(&self, value: V) -> usize {
        let mut book = self.book();
        book.versions.push(std::sync::Arc::new(value));
        book.versions.len()
    }

    /// The value a word holding `word` names. Cloned after the book is unlocked:
    /// cloning a loom `Arc` is a loom operation.
    fn value(&self, word: usize) -> Option<V> {
        let version = word
            .checked_sub(1)
            .map(|i| std::sync::Arc::clone(&self.book().versions[i]))?;
        Some(V::clone(&version))
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Acquire, as papaya's metadata and entry loads: the read synchronises
        // with the write it reads, and may read one not ordered before it.
        let word = self.word_of(key)?.load(Ordering::Acquire);
        self.value(word)
    }

    pub(crate) fn remove_if(&self, key: &K, mut should_remove: impl FnMut(&V) -> bool) {
        let Some(word) = self.word_of(key) else {
            return;
        };
        loop {
            // Acquire: see `get`.
            let current = word.load(Ordering::Acquire);
            match self.value(current) {
                Some(value) if should_remove(&value) => {}
                _ => return,
            }
            // AcqRel: a write, like `insert`; retried if the value changed.
            if word
                .compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
        let word = self.word_for(key);
        let new = self.version(value);
        // AcqRel: publishes the value (papaya: a `Release` CAS, then a `Release`
        // store of the entry's metadata, which readers load first).
        self.value(word.swap(new, Ordering::AcqRel))
    }

    pub(crate) fn entries(&self) -> Vec<(K, V)> {
        let keys = self.book().keys.clone();
        keys.into_iter()
            .zip(self.words.iter())
            .filter_map(|(key, word)| {
                // Acquire, as papaya's iterator loads each entry's metadata: it
                // sees an insert that happens-before it, and may miss any other.
                let word = word.load(Ordering::Acquire);
                Some((key, self.value(word)?))
            })
            .collect()
    }
}
