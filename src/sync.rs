//! The one place where switchboard gets its synchronisation primitives.
//!
//! Every atomic, `Arc`, mutex, snapshot cell, queue and concurrent map the registry
//! uses comes from here. Built with `RUSTFLAGS="--cfg switchboard_loom"`, the module
//! swaps in [loom]'s types so that the model checker sees every access; otherwise it
//! re-exports `std`, `arc-swap`, `crossbeam-epoch` and `papaya`, and the
//! channel's queue ([`BoundedQueue`]) runs on whichever atomics it gets.
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
//!    path, an epoch pin for [`SlotCell`]).
//! 4. A read keeps its value alive while it lasts. Reads are short-lived: the
//!    registry never holds one across an `.await`, and clones the `Arc` for a long
//!    hold.
//!
//! # What loom sees
//!
//! Each lock-free primitive keeps its real algorithm under loom: the same atomics
//! with the same orderings, so a weakened ordering or a lost wakeup fails a model.
//!
//! * [`SlotCell`]: the epoch cell's pointer swap, with the value boxed in a loom
//!   `UnsafeCell` so that loom checks its publication (the std cell needs no box:
//!   it holds the `Arc`'s own pointer). The tags of free client slots (their
//!   generation and free-list link, `shard.rs`) are the same words: written by a
//!   release's exchange and read under the shard's lock, in loom's view too. So is
//!   the lock bit that is a client's lock (its `Acquire` CAS, the vacate that waits
//!   for it), with three differences loom forces: a waiter sleeps on a condition
//!   variable every unlock notifies instead of spinning, and the unlock and a
//!   registration's fill of its reserved slot are `Release` swaps where the std
//!   build stores (see `unlock` and `fill_word` there: loom's RMW reads could
//!   otherwise write an older word back over a plain store, tokio-rs/loom#254).
//!   The model is the stronger there: no model checks those two std stores,
//!   whose arguments are in `sync/slot_cell.rs`.
//! * [`SnapshotCell`]: arc-swap's observable protocol (pointer swap, a read that
//!   returns the latest store, `Arc` clone) over loom atomics.
//!
//! Both cells read with an RMW under loom (`fetch_add(0)` on the pointer's
//! address; [`SnapshotCell`]'s is `Acquire` only, since arc-swap's RMW is on its
//! own debt slot and releases nothing to a later store). arc-swap documents a
//! `SeqCst` RMW in every load, and crossbeam-epoch
//! pins with a `SeqCst` fence; loom models `SeqCst` only as `AcqRel`, under which a
//! plain load may return a pointer replaced before the read began. The registry's
//! linearizability arguments (models 1, 2, 2b) need a read to see the latest
//! store, and with plain `Acquire` loads loom duly reported broadcasts missing a
//! join that had returned before them. The std [`SlotCell`] gets the
//! same guarantee against every ordering made of happens-before or `SeqCst`
//! operations: its swap and load are both `SeqCst` (a plain load on x86),
//! because the writer pins, if at all, only after its swap (to defer the old
//! value), so no fence orders the two. (Against a *relaxed* clock the std cell
//! promises less than the loom one, whose reads are RMWs.) A registration's
//! fill of a reserved slot is a `Release` store: it unlinks nothing, so what
//! it publishes reaches a reader through the id's happens-before.
//! * [`EntryArc`], a client entry's count, and its weak handle: the same code in
//!   both builds, plus two loom cells: one every dereference reads and the
//!   value's drop writes, so loom reports a drop not ordered after some handle's
//!   use (model E1); one every access to a count reads and the free writes, so
//!   loom reports a free not ordered after some handle's last touch of the
//!   allocation (model E2, the weak handle against the last strong drop's
//!   shortcut). The registry's own weak records ([`WeakArc`]) stay strong under
//!   loom (below); E2 reaches the weak handle through a hidden loom-only module.
//! * [`BoundedQueue`]: the same code in both builds, over this module's atomics
//!   and [`UnsafeCell`], so loom checks every slot hand-over.
//! * [`WakerSlot`], the channel's receiver waker: a facade [`UnsafeCell`] whose
//!   owner the channel's state word decides, so loom checks that no send, close
//!   or receive ever touches it out of turn. The channel's capacity waiters are a
//!   facade [`Mutex`] around a list of wakers (the same code in both builds).
//!
//! # What stays outside loom's view, and why
//!
//! * **Memory reclamation of the two cells.** crossbeam-epoch's global epoch,
//!   the slot cell's per-thread batch of deferrals in front of it, and arc-swap's
//!   debt lists are reclamation machinery that loom cannot follow (they use their
//!   own `std` atomics and thread-locals). Under loom a replaced value is
//!   freed when its cell drops instead; so loom checks that readers see published
//!   values, not that the std build frees them late enough. That rests on the
//!   crates' own tests (both are model-checked upstream) and on the SAFETY
//!   arguments in `sync/slot_cell.rs`.
//! * **arc-swap's fast path** (wait-freedom) is not modelled; progress is not what
//!   loom checks.
//! * **[`SpinLock`]'s own word** (the shard allocator's and each session
//!   writer's lock): under loom it is loom's mutex, because a
//!   spinning waiter made every execution as long as its spins and the models
//!   outgrew their bound. The models still check everything its holders do under
//!   mutual exclusion; the lock is the textbook `Acquire` CAS and `Release` store
//!   (see `sync/spin_lock.rs`).
//! * **The shard's page cells** ([`OnceLock`]): created once each under the shard's
//!   allocation lock and read only for indexes that lock handed out. Session member
//!   cells hold [`OnceArc`]s and the channel's close reason is a [`WriteOnce`] cell;
//!   loom sees both.
//! * **[`ConcurrentMap`]** is a loom mutex around a `HashMap` under loom: papaya's
//!   algorithm is not modelled, only the registry's use of its atomic operations.
//!   The mutex orders every read after every earlier write, which papaya does
//!   not; a map whose users' protocol rests on papaya's real orderings (the key
//!   map: a reload's walk against a registration's key) is a [`LockFreeMap`]
//!   instead, papaya in the std build and under loom a stand-in with papaya's
//!   per-entry `Release` publish and `Acquire` reads (`sync/lock_free_map.rs`).
//! * **[`unique_mut`]'s loads.** The std build answers "only handle?" with two
//!   loads and a fence (`sync/unique_arc.rs`); under loom it is `Arc::get_mut`,
//!   whose weak-count lock loom's `Arc` models. Sound only for [`NeverWeak`] types,
//!   of which no `Weak` exists for an upgrade to race, so there is no interleaving
//!   the std build adds for loom to find.
//! * **The send deadline.** `send_timeout`'s timer is tokio's; loom models drive
//!   it with no deadline (`Duration::MAX`), which is the path that waits only on the
//!   channel's own wakeups.
//! * **[`WeakArc`]'s failed upgrade.** Under loom the record holds its value
//!   strongly (an [`EntryArc`]) and never fails to upgrade, as it did over loom's
//!   `Arc`, which has no weak count; what the std build does when it fails (a lookup
//!   of the key's holder under the locks the models cover) is a unit test's
//!   (`registry.rs`). [`EntryArc`]'s weak handle itself is modelled on its own
//!   (model E2, `loom-tests/tests/entry_arc.rs`).
//!
//! [loom]: https://docs.rs/loom

pub(crate) use std::sync::OnceLock;

/// `std`'s `Arc` in both builds, for shared immutable *values* in the public API
/// (a [`SessionId`](crate::SessionId)'s name). Its count guards no registry state,
/// a public type must not change with the cfg, and loom's `Arc` is neither
/// `Hash`/`Eq`/`Ord` nor buildable from a `&str`.
pub(crate) use std::sync::Arc as ValueArc;

mod bounded_queue;
mod entry_arc;
mod once_arc;
mod slot_cell;
mod snapshot_cell;
mod spin_lock;
mod unique_arc;
mod waker_slot;
mod write_once;

#[cfg(switchboard_loom)]
mod lock_free_map;

pub(crate) use bounded_queue::BoundedQueue;
#[cfg(switchboard_loom)]
pub use entry_arc::loom_model as loom_entry_arc;
pub(crate) use entry_arc::EntryArc;
#[cfg(all(test, not(switchboard_loom)))]
pub(crate) use entry_arc::EntryWeak;
#[cfg(switchboard_loom)]
pub(crate) use lock_free_map::LockFreeMap;
pub(crate) use once_arc::OnceArc;
#[cfg(not(switchboard_loom))]
pub(crate) use slot_cell::flush_pending;
pub(crate) use slot_cell::{Retained, SlotCell, SlotGuard, Slotted, TAG_PAYLOAD_BITS};
pub(crate) use snapshot_cell::{Snapshot, SnapshotCell};
pub(crate) use spin_lock::SpinLock;
pub(crate) use unique_arc::{unique_mut, NeverWeak};
pub(crate) use waker_slot::WakerSlot;
pub(crate) use write_once::WriteOnce;

/// The seed of the crate's hash tables: foldhash, seeded per table, in the std
/// build; a fixed seed under loom, which needs every iteration of a model to take
/// the same path. With std's random seed in the loom map stand-in, iteration order
/// (and so the order of the loom operations done per entry) changed from one
/// iteration to the next, and loom stopped with "Is the model fully
/// deterministic?" in about one suite run of three. The position table's probes,
/// which load a cell to confirm a match, would vary the same way.
#[cfg(not(switchboard_loom))]
pub(crate) type HashSeed = foldhash::fast::RandomState;
#[cfg(switchboard_loom)]
pub(crate) type HashSeed = foldhash::fast::FixedState;

/// The cluster layer serialises its subscription changes, which await Redis.
#[cfg(feature = "cluster")]
pub(crate) use tokio::sync::Mutex as AsyncMutex;

/// `UnsafeCell` with loom's closure API, so that loom checks every access.
#[cfg(not(switchboard_loom))]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(switchboard_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer for reading.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(switchboard_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// A reference that does not keep its value alive: [`EntryArc`]'s weak handle,
/// for records that must not chain the values they name into one long-lived group
/// (a taken-over client's successor, `client.rs`).
///
/// Under loom this holds the value strongly and `upgrade` always succeeds, as it
/// did over loom's `Arc`, which has no weak count; the models see the strong
/// record the std build had before, and the path taken when an upgrade fails is a
/// lookup under locks the models already cover.
pub(crate) struct WeakArc<T>(
    #[cfg(not(switchboard_loom))] entry_arc::EntryWeak<T>,
    #[cfg(switchboard_loom)] EntryArc<T>,
);

impl<T> WeakArc<T> {
    /// A reference to `value` that does not keep it alive.
    pub(crate) fn new(value: &EntryArc<T>) -> Self {
        #[cfg(not(switchboard_loom))]
        return Self(EntryArc::downgrade(value));
        #[cfg(switchboard_loom)]
        return Self(EntryArc::clone(value));
    }

    /// The value, unless every strong reference to it has gone.
    pub(crate) fn upgrade(&self) -> Option<EntryArc<T>> {
        #[cfg(not(switchboard_loom))]
        return self.0.upgrade();
        #[cfg(switchboard_loom)]
        return Some(EntryArc::clone(&self.0));
    }
}

#[cfg(not(switchboard_loom))]
mod imp {
    pub(crate) use std::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

    /// papaya in the std build, like [`ConcurrentMap`]; the loom build models it
    /// with papaya's orderings rather than one mutex (see `sync/lock_free_map.rs`).
    pub(crate) type LockFreeMap<K, V> = ConcurrentMap<K, V>;

    /// A concurrent hash map with lock-free reads (papaya), hashed with foldhash:
    /// keys are the application's, but a flood of colliding keys only slows its own
    /// shard of the map, and foldhash is seeded per map.
    pub(crate) struct ConcurrentMap<K, V>(papaya::HashMap<K, V, super::HashSeed>);

    impl<K, V> ConcurrentMap<K, V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
    {
        /// Resizes block writers until the copy is done. papaya's default
        /// incremental mode has writers copy 64 entries each, so a map whose keys
        /// then stay put (rooms that outlive their creation burst) is left
        /// mid-resize: every read probes the old table to its limit before the
        /// new one, about 20 probe steps for a 100-session directory instead of 2
        /// (callgrind: 366 instructions per attach's lookup, 148 blocking). The
        /// price: the insert that triggers a resize waits for the copy (writers
        /// that arrive meanwhile help), which papaya recommends when keys are
        /// stable; reads never wait.
        pub(crate) fn new() -> Self {
            Self(
                papaya::HashMap::builder()
                    .hasher(super::HashSeed::default())
                    .resize_mode(papaya::ResizeMode::Blocking)
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
        ///
        /// Looks the key up before trying to insert: papaya's insert path costs
        /// about twice a read even when the key is present, and the registry's
        /// callers (a join into an existing session) mostly find it.
        /// Takes the key by reference and clones it only to insert: a named key's
        /// clone is a reference-count increment and its drop a decrement.
        pub(crate) fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> V {
            let map = self.0.pin();
            if let Some(value) = map.get(key) {
                return value.clone();
            }
            map.get_or_insert_with(key.clone(), make).clone()
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
    pub(crate) use loom::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    use std::collections::HashMap;

    /// Loom stand-in for papaya: a mutex around a `HashMap`, with a fixed seed so
    /// that iteration order repeats from one model iteration to the next.
    pub(crate) struct ConcurrentMap<K, V>(Mutex<HashMap<K, V, super::HashSeed>>);

    impl<K, V> ConcurrentMap<K, V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
    {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(HashMap::default()))
        }

        fn map(&self) -> MutexGuard<'_, HashMap<K, V, super::HashSeed>> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
        where
            K: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.map().get(key).cloned()
        }

        pub(crate) fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> V {
            self.map().entry(key.clone()).or_insert_with(make).clone()
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

/// One step of waiting for another thread that is a few instructions from done:
/// a spin hint for the first steps, then giving up the CPU, in case that thread was
/// preempted. Under loom, always a yield, so the model schedules the other thread.
#[inline]
pub(crate) fn spin_wait(spins: &mut u32) {
    #[cfg(not(switchboard_loom))]
    {
        if *spins < 64 {
            *spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    #[cfg(switchboard_loom)]
    {
        *spins = spins.saturating_add(1);
        loom::thread::yield_now();
    }
}

/// Locks `mutex`, recovering the data if a panicking thread poisoned it.
///
/// Every critical section in the registry leaves its data consistent before any call
/// that could panic, so a poisoned lock holds valid data and is safe to reuse.
#[inline]
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
