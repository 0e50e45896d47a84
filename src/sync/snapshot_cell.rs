//! [`SnapshotCell`]: an atomically replaceable `Arc<T>` with cheap reads, for values
//! replaced rarely (a session's page layout, the device config).
//!
//! The std build is [arc-swap]: a read is wait-free on its fast path (a "debt" slot
//! per thread instead of a reference-count increment), a store walks the debts.
//!
//! # Under loom
//!
//! arc-swap has no loom support, and its debt scheme is its own reclamation
//! machinery, which loom could not follow anyway. The loom build keeps the
//! observable protocol of the snapshot-cell contract (see the parent module) over
//! loom atomics: the `Arc` is boxed and published by a pointer swap (`AcqRel`), a
//! read takes the pointer with an `Acquire` read-modify-write (arc-swap documents
//! a `SeqCst` RMW in every load, which gives loads and stores one global order,
//! but its RMW is on a debt slot: a load releases nothing to later stores) and clones
//! the `Arc` out of a loom `UnsafeCell`, so loom reports a read the publication
//! does not order after the write. What loom does not see is arc-swap itself: its debt lists and its
//! wait-free fast path. Replaced boxes are kept until the cell drops, in place of
//! arc-swap's reclamation.
//!
//! [arc-swap]: https://docs.rs/arc-swap

#[cfg(not(switchboard_loom))]
pub(crate) use arc_swap_cell::{Snapshot, SnapshotCell};
#[cfg(switchboard_loom)]
pub(crate) use loom_cell::{Snapshot, SnapshotCell};

#[cfg(not(switchboard_loom))]
mod arc_swap_cell {
    use std::sync::Arc;

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
}

#[cfg(switchboard_loom)]
mod loom_cell {
    #![allow(unsafe_code, reason = "a pointer swap; see each SAFETY")]

    use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

    type Node<T> = UnsafeCell<Arc<T>>;

    /// arc-swap's observable protocol over loom atomics; see the module docs.
    pub(crate) struct SnapshotCell<T> {
        /// The address of a node from `Box::into_raw`, never null: a word rather than
        /// an `AtomicPtr` because loom's has no `fetch_add`. Swaps `AcqRel`; reads
        /// are RMWs (see `load_full`).
        ptr: AtomicUsize,
        /// Replaced nodes, freed with the cell. A `std` mutex: bookkeeping outside
        /// the model, never held across a loom operation.
        retired: std::sync::Mutex<Vec<*mut Node<T>>>,
    }

    // SAFETY: the cell shares and moves `Arc<T>`s, as arc-swap's `ArcSwap<T>` does.
    unsafe impl<T: Send + Sync> Send for SnapshotCell<T> {}
    // SAFETY: as above; nodes are only read through `&`, and freed under `&mut`.
    unsafe impl<T: Send + Sync> Sync for SnapshotCell<T> {}

    /// Derefs to the `Arc<T>` like arc-swap's guard does.
    pub(crate) struct Snapshot<T>(Arc<T>);

    impl<T> std::ops::Deref for Snapshot<T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    fn node<T>(value: Arc<T>) -> *mut Node<T> {
        Box::into_raw(Box::new(UnsafeCell::new(value)))
    }

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self {
                ptr: AtomicUsize::new(node(value) as usize),
                retired: std::sync::Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn load(&self) -> Snapshot<T> {
            Snapshot(self.load_full())
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            // arc-swap documents that every load contains a `SeqCst` RMW, so loads
            // and stores have one global order and a load never returns a value
            // replaced before it began. loom treats `SeqCst` as `AcqRel`, so a plain
            // load here could return such a value; an RMW (`fetch_add(0)`) reads the
            // latest store, as arc-swap's load does.
            // Acquire: acquires the swap that published the node; as an RMW it
            // reads the latest value in the word's modification order. Not
            // `Release`: arc-swap's RMW is on its own debt slot, not this word, so
            // a load does not synchronise with a later store, and an `AcqRel` RMW
            // here would order the reader's earlier writes before every later
            // store, an edge the std build lacks (it hid a weakened
            // `Fleet::config_epoch` from the models).
            let current = self.ptr.fetch_add(0, Ordering::Acquire) as *mut Node<T>;
            // SAFETY: the pointer is a node from `node`, freed only by `Drop`, which
            // has `&mut self`.
            let current = unsafe { &*current };
            // SAFETY: nodes are never written after publication; loom checks that
            // the write that built this one happens-before this read.
            current.with(|value| Arc::clone(unsafe { &*value }))
        }

        pub(crate) fn store(&self, value: Arc<T>) {
            let old = self.ptr.swap(node(value) as usize, Ordering::AcqRel) as *mut Node<T>;
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
    }

    impl<T> Drop for SnapshotCell<T> {
        fn drop(&mut self) {
            let current = self.ptr.load(Ordering::Relaxed) as *mut Node<T>;
            let retired = self.retired.get_mut().unwrap_or_else(|e| e.into_inner());
            for node in retired.drain(..).chain(Some(current)) {
                // SAFETY: every node came from `node` and is owned by this cell alone
                // (`&mut self`); each is listed once.
                drop(unsafe { Box::from_raw(node) });
            }
        }
    }
}
