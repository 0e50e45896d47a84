//! The one place where switchboard gets its synchronisation primitives.
//!
//! Every atomic, `Arc`, mutex, snapshot cell, queue and concurrent map the registry
//! uses comes from here. Built with `RUSTFLAGS="--cfg switchboard_loom"`, the module
//! swaps in [loom]'s types so that the model checker sees every access; otherwise it
//! re-exports `std`, `arc-swap`, `crossbeam-epoch`, `crossbeam-queue` and `papaya`.
//!
//! # The snapshot-cell contract
//!
//! [`SnapshotCell`] (arc-swap: cheap reads, for values replaced rarely, such as a
//! session's page layout) and [`SlotCell`] (crossbeam-epoch: cheap replacement too,
//! for client slots and profiles) are checked against these words in both builds:
//!
//! 1. A read returns the value of some store (or the initial value) that was not yet
//!    replaced when the read began or that replaced it while the read ran; never a
//!    torn or older value.
//! 2. A store *happens-before* every read that returns its value: whatever the
//!    writer wrote before the store is visible to the reader (release/acquire).
//! 3. A read never blocks on a writer in the std build (wait-free on arc-swap's fast
//!    path, an epoch pin for [`SlotCell`]). Under loom each cell is a mutex around
//!    the value, which gives the same visibility with coarser progress; progress is
//!    not what loom checks.
//! 4. A read keeps its value alive while it lasts. Reads are short-lived: the
//!    registry never holds one across an `.await`, and clones the `Arc` for a long
//!    hold.
//!
//! Three things are deliberately outside loom's view and documented where they are
//! used: write-once cells ([`std::sync::OnceLock`]), which the registry only
//! initialises under a writer lock and publishes through a loom-visible word; the
//! lazily allocated queue buffer, likewise; and the waker slot of a channel, which
//! loom models never poll.
//!
//! [loom]: https://docs.rs/loom

pub(crate) use std::sync::OnceLock;

/// `std`'s `Arc` in both builds, for shared immutable *values* in the public API
/// (a [`SessionId`](crate::SessionId)'s name). Its count guards no registry state,
/// a public type must not change with the cfg, and loom's `Arc` is neither
/// `Hash`/`Eq`/`Ord` nor buildable from a `&str`.
pub(crate) use std::sync::Arc as ValueArc;

/// The receiver's waker slot. Not loom-visible: loom models never poll a receiver.
pub(crate) use atomic_waker::AtomicWaker;
/// The cluster layer serialises its subscription changes, which await Redis.
#[cfg(feature = "cluster")]
pub(crate) use tokio::sync::Mutex as AsyncMutex;
/// Wakes senders waiting for channel capacity. Not loom-visible, as above.
pub(crate) use tokio::sync::Notify;

#[cfg(not(switchboard_loom))]
mod slot_cell;

#[cfg(not(switchboard_loom))]
mod imp {
    pub(crate) use super::slot_cell::SlotCell;
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

    /// An atomically replaceable `Arc<T>`; see the module docs for its contract.
    pub(crate) struct SnapshotCell<T>(arc_swap::ArcSwap<T>);

    /// What [`SnapshotCell::load`] returns: derefs to the `Arc<T>`.
    pub(crate) type Snapshot<T> = arc_swap::Guard<Arc<T>>;

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(arc_swap::ArcSwap::new(value))
        }

        #[inline]
        pub(crate) fn load(&self) -> Snapshot<T> {
            self.0.load()
        }

        #[allow(dead_code, reason = "the long-hold load; used by tests and adapters")]
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }

        pub(crate) fn store(&self, value: Arc<T>) {
            self.0.store(value)
        }
    }

    /// A bounded lock-free MPMC queue; the channel bounds its length with permits.
    ///
    /// The queue's header sits inline in the channel, so a broadcast reaches it in
    /// the same hop as the permit word; its buffer is allocated by the first push,
    /// so a registration that never receives (or is undone at once) allocates none.
    /// Pushers racing on that first allocation wait for it, once per channel.
    pub(crate) struct BoundedQueue<T> {
        queue: std::sync::OnceLock<crossbeam_queue::ArrayQueue<T>>,
        capacity: usize,
    }

    impl<T> BoundedQueue<T> {
        pub(crate) fn new(capacity: usize) -> Self {
            Self {
                queue: std::sync::OnceLock::new(),
                capacity,
            }
        }

        #[inline]
        pub(crate) fn push(&self, value: T) -> Result<(), T> {
            self.queue
                .get_or_init(|| crossbeam_queue::ArrayQueue::new(self.capacity))
                .push(value)
        }

        #[inline]
        pub(crate) fn pop(&self) -> Option<T> {
            self.queue.get()?.pop()
        }
    }

    /// A concurrent hash map with lock-free reads (papaya), hashed with foldhash:
    /// keys are the application's, but a flood of colliding keys only slows its own
    /// shard of the map, and foldhash is seeded per map.
    pub(crate) struct ConcurrentMap<K, V>(papaya::HashMap<K, V, foldhash::fast::RandomState>);

    impl<K, V> ConcurrentMap<K, V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
    {
        pub(crate) fn new() -> Self {
            Self(
                papaya::HashMap::builder()
                    .hasher(foldhash::fast::RandomState::default())
                    .build(),
            )
        }

        pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
        where
            K: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.pin().get(key).cloned()
        }

        /// Returns the present value for `key`, inserting `make()` if there is none.
        pub(crate) fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
            self.0.pin().get_or_insert_with(key, make).clone()
        }

        /// Removes `key` only while `should_remove` holds for its current value.
        pub(crate) fn remove_if(&self, key: &K, should_remove: impl FnMut(&V) -> bool) {
            let mut should_remove = should_remove;
            let _ = self.0.pin().remove_if(key, |_, v| should_remove(v));
        }

        /// Inserts, returning the value it replaced.
        pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
            self.0.pin().insert(key, value).cloned()
        }

        /// Removes `key`, returning its value; only one of several racing calls gets it.
        pub(crate) fn remove(&self, key: &K) -> Option<V> {
            self.0.pin().remove(key).cloned()
        }

        pub(crate) fn len(&self) -> usize {
            self.0.len()
        }

        pub(crate) fn entries(&self) -> Vec<(K, V)> {
            self.0
                .pin()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }
}

#[cfg(switchboard_loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    use std::collections::{HashMap, VecDeque};

    /// Loom stand-in for arc-swap: a mutex around the `Arc`. Same contract.
    pub(crate) struct SnapshotCell<T>(Mutex<Arc<T>>);

    /// Derefs to the `Arc<T>` like arc-swap's guard does.
    pub(crate) struct Snapshot<T>(Arc<T>);

    impl<T> std::ops::Deref for Snapshot<T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(Mutex::new(value))
        }

        pub(crate) fn load(&self) -> Snapshot<T> {
            Snapshot(self.load_full())
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }

        pub(crate) fn store(&self, value: Arc<T>) {
            let old = std::mem::replace(
                &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
                value,
            );
            drop(old);
        }
    }

    /// Loom stand-in for the epoch-based slot cell: a mutex around the value.
    pub(crate) struct SlotCell<T>(Mutex<Option<Arc<T>>>);

    impl<T> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self(Mutex::new(None))
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
            let value = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
            f(value.as_ref())
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            let old = std::mem::replace(
                &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
                value,
            );
            drop(old);
        }
    }

    /// Loom stand-in for the lock-free queue.
    pub(crate) struct BoundedQueue<T> {
        items: Mutex<VecDeque<T>>,
        capacity: usize,
    }

    impl<T> BoundedQueue<T> {
        pub(crate) fn new(capacity: usize) -> Self {
            Self {
                items: Mutex::new(VecDeque::new()),
                capacity,
            }
        }

        pub(crate) fn push(&self, value: T) -> Result<(), T> {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if items.len() == self.capacity {
                return Err(value);
            }
            items.push_back(value);
            Ok(())
        }

        pub(crate) fn pop(&self) -> Option<T> {
            self.items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
        }
    }

    /// Loom stand-in for papaya: a mutex around a `HashMap`.
    pub(crate) struct ConcurrentMap<K, V>(Mutex<HashMap<K, V>>);

    impl<K, V> ConcurrentMap<K, V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
    {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(HashMap::new()))
        }

        fn map(&self) -> MutexGuard<'_, HashMap<K, V>> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
        where
            K: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.map().get(key).cloned()
        }

        pub(crate) fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
            self.map().entry(key).or_insert_with(make).clone()
        }

        pub(crate) fn remove_if(&self, key: &K, mut should_remove: impl FnMut(&V) -> bool) {
            let mut map = self.map();
            if map.get(key).is_some_and(&mut should_remove) {
                map.remove(key);
            }
        }

        pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
            self.map().insert(key, value)
        }

        pub(crate) fn remove(&self, key: &K) -> Option<V> {
            self.map().remove(key)
        }

        pub(crate) fn len(&self) -> usize {
            self.map().len()
        }

        pub(crate) fn entries(&self) -> Vec<(K, V)> {
            self.map()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }
}

pub(crate) use imp::*;

/// Locks `mutex`, recovering the data if a panicking thread poisoned it.
///
/// Every critical section in the registry leaves its data consistent before any call
/// that could panic, so a poisoned lock holds valid data and is safe to reuse.
#[inline]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
