//! [`SlotCell`]: an `Option<Arc<T>>` that is cheap to replace, for client slots.
//!
//! Client slots are replaced on every register and unregister. arc-swap makes each
//! replacement walk every thread's debt list, which costs more than the rest of a
//! registration; epoch-based reclamation ([crossbeam-epoch]) makes a replacement a
//! swap plus a deferred free. Reads pin the epoch, which is as cheap as an arc-swap
//! load.
//!
//! The contract is the snapshot-cell contract of the parent module: a read returns
//! the value of some store that was current during the read, and a store
//! happens-before every read that returns its value.
//!
//! The std build's three `unsafe` blocks each rely on the one epoch rule that a
//! pointer unlinked while other threads may still read it is freed only after every
//! thread pinned at that time has unpinned.
//!
//! # Under loom
//!
//! The same protocol over loom's atomics: the value is published by a pointer swap
//! and read by an RMW that returns the latest store (the std build's `SeqCst` swap
//! and load; loom models `SeqCst` only as `AcqRel`). The loom cell boxes the value
//! in a loom `UnsafeCell` (the std cell holds the `Arc`'s own pointer), so loom
//! reports a read that the publication does not order after the write. Only reclamation differs, because loom cannot follow
//! crossbeam-epoch's global epoch: an unlinked box is kept until the cell is
//! dropped, instead of until every reader pinned at the swap has unpinned.
//!
//! [crossbeam-epoch]: https://docs.rs/crossbeam-epoch
#![allow(
    unsafe_code,
    reason = "epoch reclamation needs raw pointers; see each SAFETY"
)]

#[cfg(not(switchboard_loom))]
pub(crate) use epoch_cell::SlotCell;
#[cfg(switchboard_loom)]
pub(crate) use loom_cell::SlotCell;

#[cfg(not(switchboard_loom))]
mod epoch_cell {
    use std::marker::PhantomData;
    use std::mem::ManuallyDrop;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::sync::Arc;

    use crossbeam_epoch as epoch;

    /// A replaceable `Option<Arc<T>>` read without locks.
    ///
    /// The cell holds the `Arc`'s own pointer (`Arc::into_raw`), not a box around
    /// it: a store costs no allocation, and the epoch defers dropping the cell's
    /// reference rather than freeing a box.
    pub(crate) struct SlotCell<T> {
        /// Null, or a pointer from `Arc::into_raw` in `store` whose strong count
        /// the cell owns until a later `store` unlinks it (or the cell drops).
        ///
        /// Ordering: stores and loads are `SeqCst`. Release/acquire alone would publish
        /// the value, but the registry's linearizability arguments (a send or
        /// broadcast that begins after an unregister or takeover returned must not
        /// see the replaced entry) need every load and swap of a slot in one total
        /// order, and the writer's pin (if any) comes after the swap. On x86 a
        /// `SeqCst` load is a plain load and the swap is locked either way.
        ptr: AtomicPtr<T>,
        /// Send and Sync exactly when `Arc<T>` is.
        _owns: PhantomData<Arc<T>>,
    }

    impl<T> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self {
                ptr: AtomicPtr::new(ptr::null_mut()),
                _owns: PhantomData,
            }
        }

        /// Calls `f` with the current value.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
            let _guard = epoch::pin();
            let current = self.ptr.load(Ordering::SeqCst);
            if current.is_null() {
                return f(None);
            }
            // SAFETY: `current` came from `Arc::into_raw` in `store`, and the cell's
            // strong count on it is given up only by a closure deferred after it was
            // unlinked, which runs after every thread pinned at that moment unpins;
            // `_guard` keeps this thread pinned until after `f` returns. The
            // `ManuallyDrop` borrows that count without taking it: it is never
            // dropped, and `f` only gets a reference (a clone takes a count of its own).
            let borrowed = ManuallyDrop::new(unsafe { Arc::from_raw(current) });
            f(Some(&borrowed))
        }

        /// A clone of the current value.
        #[cfg(test)]
        pub(crate) fn load_full(&self) -> Option<Arc<T>> {
            self.with(|value| value.cloned())
        }

        /// Replaces the value. The old one is dropped once no reader can see it.
        ///
        /// Pins only to defer that drop, after the swap: filling an empty slot (every
        /// registration) needs no pin at all.
        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            let new = value.map_or(ptr::null_mut(), |v| Arc::into_raw(v).cast_mut());
            let old = self.ptr.swap(new, Ordering::SeqCst);
            if !old.is_null() {
                let old = old.cast_const();
                let guard = epoch::pin();
                // SAFETY: the swap unlinked `old`, so no later read can reach it, and it
                // is unlinked exactly once because only this swap returned it; the
                // cell's count on it is ours to give up. A reader reaches `old` only
                // while pinned, so every reader that reached it before the swap has
                // either unpinned already or is pinned now, and a drop deferred now runs
                // only after every thread pinned now has unpinned (pinning after the
                // swap rather than before changes nothing for them). The closure may
                // run on another thread: dropping an `Arc<T>` there is what
                // `Arc<T>: Send` (required for the cell to be shared) allows.
                unsafe { guard.defer_unchecked(move || drop(Arc::from_raw(old))) };
            }
        }
    }

    impl<T> Drop for SlotCell<T> {
        fn drop(&mut self) {
            let current = *self.ptr.get_mut();
            if !current.is_null() {
                // SAFETY: `&mut self` means no other thread can read or store this cell,
                // and no reference from `with` outlives its call, so the cell's count on
                // the current value is released here, once.
                drop(unsafe { Arc::from_raw(current.cast_const()) });
            }
        }
    }
}

#[cfg(switchboard_loom)]
mod loom_cell {
    use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

    type Node<T> = UnsafeCell<Arc<T>>;

    /// The epoch cell's protocol over loom atomics; see the module docs.
    pub(crate) struct SlotCell<T> {
        /// 0 (null), or the address of a node from `Box::into_raw`: a word rather
        /// than an `AtomicPtr` because loom's has no `fetch_add` for `read`. Swaps
        /// `AcqRel` as in the std build; reads are RMWs (see `read`).
        ptr: AtomicUsize,
        /// Unlinked nodes, freed with the cell (the reclamation stand-in). A `std`
        /// mutex: bookkeeping outside the model, never held across a loom operation.
        retired: std::sync::Mutex<Vec<*mut Node<T>>>,
    }

    // SAFETY: as crossbeam's `Atomic<Arc<T>>`: the cell shares and moves `Arc<T>`s.
    unsafe impl<T: Send + Sync> Send for SlotCell<T> {}
    // SAFETY: as above; nodes are only read through `&`, and freed under `&mut`.
    unsafe impl<T: Send + Sync> Sync for SlotCell<T> {}

    impl<T> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self {
                ptr: AtomicUsize::new(0),
                retired: std::sync::Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
            let current = self.read();
            if current.is_null() {
                return f(None);
            }
            // SAFETY: a non-null pointer came from `Box::into_raw` in `store`, and
            // nodes are freed only by `Drop`, which has `&mut self`.
            let node = unsafe { &*current };
            // SAFETY: nodes are never written after publication; loom checks that the
            // write that built this one happens-before this read.
            node.with(|value| f(Some(unsafe { &*value })))
        }

        /// The current node. The std build swaps and loads with `SeqCst`, and the
        /// registry's arguments need a read that begins after a store returned to
        /// see it. loom treats `SeqCst` as `AcqRel`, under which a plain load may
        /// return a replaced pointer; so the loom build reads with an RMW
        /// (`fetch_add(0)`), which always reads the latest store.
        fn read(&self) -> *mut Node<T> {
            // AcqRel: acquires the swap that published the node; as an RMW it
            // reads the latest value in the word's modification order.
            self.ptr.fetch_add(0, Ordering::AcqRel) as *mut Node<T>
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            let new = value.map_or(std::ptr::null_mut(), |value| {
                Box::into_raw(Box::new(UnsafeCell::new(value)))
            });
            let old = self.ptr.swap(new as usize, Ordering::AcqRel) as *mut Node<T>;
            if !old.is_null() {
                self.retired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(old);
            }
        }
    }

    impl<T> Drop for SlotCell<T> {
        fn drop(&mut self) {
            let current = self.ptr.load(Ordering::Relaxed) as *mut Node<T>;
            let retired = self.retired.get_mut().unwrap_or_else(|e| e.into_inner());
            for node in retired.drain(..).chain(Some(current)) {
                if !node.is_null() {
                    // SAFETY: every node came from `Box::into_raw` and is unlinked or
                    // owned by this cell alone (`&mut self`); each is listed once.
                    drop(unsafe { Box::from_raw(node) });
                }
            }
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;
    use crossbeam_epoch as epoch;
    use std::sync::Arc;

    #[test]
    fn stores_and_reads_back() {
        let cell = SlotCell::empty();
        assert!(cell.load_full().is_none());
        cell.store(Some(Arc::new(7)));
        assert_eq!(cell.with(|v| v.map(|v| **v)), Some(7));
        cell.store(None);
        assert!(cell.load_full().is_none());
    }

    #[test]
    fn dropping_the_cell_frees_its_value_at_once() {
        let value = Arc::new(1);
        let cell = SlotCell::empty();
        cell.store(Some(Arc::clone(&value)));
        assert_eq!(Arc::strong_count(&value), 2);
        drop(cell);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn replaced_values_are_freed_once_readers_are_gone() {
        let first = Arc::new(1);
        let cell = SlotCell::empty();
        cell.store(Some(Arc::clone(&first)));
        let held = cell.load_full();
        cell.store(Some(Arc::new(2)));
        assert_eq!(
            held.as_deref(),
            Some(&1),
            "a clone outlives the replacement"
        );
        drop(held);
        // The cell's reference goes through the collector, which frees it once every
        // thread pinned at the swap has moved on; other tests may be pinned now.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&first) > 1 && std::time::Instant::now() < deadline {
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(Arc::strong_count(&first), 1, "the replaced value leaked");
    }

    #[test]
    fn concurrent_readers_see_only_stored_values() {
        let cell = SlotCell::empty();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..10_000u64 {
                    cell.store(Some(Arc::new(i * 2)));
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(v) = cell.load_full() {
                            assert_eq!(*v % 2, 0, "a torn or foreign value");
                        }
                    }
                });
            }
        });
    }
}
