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
//! The std build's `unsafe` blocks each rely on the one epoch rule that a
//! pointer unlinked while other threads may still read it is freed only after every
//! thread pinned at that time has unpinned.
//!
//! # Tags: a word for "no value" that carries one
//!
//! An empty cell holds a *tag* rather than null: a word with the low bit set, which
//! no value's pointer has (an `Arc`'s allocation starts with its two `usize`
//! counts, so it is at least 8-aligned). The other bits are a payload the owner
//! chooses and reads back with [`SlotCell::tag`]; readers see only "no value", and
//! nothing ever dereferences a tag. A free client slot keeps its generation and its
//! free-list link there (`shard.rs`), where they used to take 8 bytes of a side
//! table per slot.
//!
//! ```text
//!  63                                 1   0
//! ┌────────────────────────────────────┬───┐
//! │  payload (63 bits on 64-bit)       │ 1 │   no value; the owner's payload
//! ├────────────────────────────────────┴───┤
//! │  Arc::into_raw (8-aligned)       …000  │   the value
//! └────────────────────────────────────────┘
//! ```
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

/// The bit that marks a word as a tag (no value).
const TAG: usize = 1;
/// Bits of payload a tag carries.
pub(crate) const TAG_PAYLOAD_BITS: u32 = usize::BITS - 1;

/// The word that holds `payload` as a tag.
#[inline]
fn tag_word(payload: usize) -> usize {
    debug_assert!(
        payload >> TAG_PAYLOAD_BITS == 0,
        "tag payload {payload:#x} too wide"
    );
    (payload << 1) | TAG
}

/// The payload of `word`, if it is a tag.
#[inline]
fn tag_payload(word: usize) -> Option<usize> {
    (word & TAG != 0).then_some(word >> 1)
}

#[cfg(not(switchboard_loom))]
mod epoch_cell {
    use std::marker::PhantomData;
    use std::mem::ManuallyDrop;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::sync::Arc;

    use crossbeam_epoch as epoch;

    use super::{tag_payload, tag_word, TAG};

    /// A replaceable `Option<Arc<T>>` read without locks.
    ///
    /// The cell holds the `Arc`'s own pointer (`Arc::into_raw`), not a box around
    /// it: a store costs no allocation, and the epoch defers dropping the cell's
    /// reference rather than freeing a box.
    pub(crate) struct SlotCell<T> {
        /// A tag (no value; see the module docs), or a pointer from
        /// `Arc::into_raw` in `store` whose strong count the cell owns until a later
        /// `store` or `vacate` unlinks it (or the cell drops). Never null.
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

    /// A value a [`SlotCell::vacate`] unlinked: dropping it defers the release of
    /// the cell's count until every reader that may still see it has unpinned. The
    /// caller drops it after its own lock, so the pin and deferral stay outside.
    #[must_use = "dropping it releases the unlinked value"]
    pub(crate) struct Unlinked<T>(*const T);

    impl<T> Drop for Unlinked<T> {
        #[inline]
        fn drop(&mut self) {
            defer_release(self.0);
        }
    }

    /// Defers giving up the count a cell held on `old`, which a swap or exchange on
    /// the cell just unlinked (and only that one call got back).
    #[inline]
    fn defer_release<T>(old: *const T) {
        let guard = epoch::pin();
        // SAFETY: the swap or exchange unlinked `old`, so no later read can reach it,
        // and it is unlinked exactly once because only that call returned it; the
        // cell's count on it is ours to give up. A reader reaches `old` only while
        // pinned, so every reader that reached it before the unlink has either
        // unpinned already or is pinned now, and a drop deferred now runs only after
        // every thread pinned now has unpinned (pinning after the unlink rather than
        // before changes nothing for them). The closure may run on another thread:
        // dropping an `Arc<T>` there is what `Arc<T>: Send` (required for the cell
        // to be shared) allows.
        unsafe { guard.defer_unchecked(move || drop(Arc::from_raw(old))) };
    }

    impl<T> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self::tagged(0)
        }

        /// An empty cell whose tag carries `payload` (below `2^TAG_PAYLOAD_BITS`).
        pub(crate) fn tagged(payload: usize) -> Self {
            Self {
                ptr: AtomicPtr::new(ptr::without_provenance_mut(tag_word(payload))),
                _owns: PhantomData,
            }
        }

        /// Calls `f` with the current value.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
            let _guard = epoch::pin();
            let current = self.ptr.load(Ordering::SeqCst);
            if current.addr() & TAG != 0 {
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
            let new = value.map_or(ptr::without_provenance_mut(tag_word(0)), |v| {
                let raw = Arc::into_raw(v).cast_mut();
                debug_assert_eq!(raw.addr() & TAG, 0, "an Arc pointer with the tag bit");
                raw
            });
            let old = self.ptr.swap(new, Ordering::SeqCst);
            if old.addr() & TAG == 0 {
                defer_release(old.cast_const());
            }
        }

        /// The payload of the cell's tag, or `None` while it holds a value.
        ///
        /// The caller orders this read after the store of the tag it wants (the
        /// shard reads a free slot's tag under the lock it was written under).
        #[inline]
        pub(crate) fn tag(&self) -> Option<usize> {
            // Relaxed: a tag points at nothing, so there is nothing to acquire, and
            // the caller's own synchronisation (see above) makes the tag it wants
            // the latest store this thread can see.
            tag_payload(self.ptr.load(Ordering::Relaxed).addr())
        }

        /// Replaces `occupant`, if it is still the cell's value, with a tag carrying
        /// `payload`; `None`, and the cell unchanged, if the cell holds anything
        /// else. The unlinked value is released when the returned handle drops.
        pub(crate) fn vacate(&self, occupant: &Arc<T>, payload: usize) -> Option<Unlinked<T>> {
            let current = Arc::as_ptr(occupant).cast_mut();
            let tag = ptr::without_provenance_mut(tag_word(payload));
            // SeqCst on success, as `store`'s swap: the registry's arguments need
            // every store to a slot in one total order with its reads. Relaxed on
            // failure: nothing was written and nothing read is used.
            self.ptr
                .compare_exchange(current, tag, Ordering::SeqCst, Ordering::Relaxed)
                .ok()
                .map(|old| Unlinked(old.cast_const()))
        }
    }

    impl<T> Drop for SlotCell<T> {
        fn drop(&mut self) {
            let current = *self.ptr.get_mut();
            if current.addr() & TAG == 0 {
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

    use super::{tag_payload, tag_word, TAG};

    type Node<T> = UnsafeCell<Arc<T>>;

    /// The epoch cell's protocol over loom atomics; see the module docs.
    pub(crate) struct SlotCell<T> {
        /// A tag, or the address of a node from `Box::into_raw` (at least
        /// 8-aligned: it holds a pointer): a word rather than an `AtomicPtr`
        /// because loom's has no `fetch_add` for `read`. Swaps and exchanges
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

    /// A node [`SlotCell::vacate`] unlinked; the std build defers its release, the
    /// loom build keeps it with the cell's retired nodes.
    #[must_use = "dropping it releases the unlinked value"]
    pub(crate) struct Unlinked<'a, T> {
        cell: &'a SlotCell<T>,
        node: *mut Node<T>,
    }

    impl<T> Drop for Unlinked<'_, T> {
        fn drop(&mut self) {
            self.cell.retire(self.node);
        }
    }

    impl<T> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self::tagged(0)
        }

        pub(crate) fn tagged(payload: usize) -> Self {
            Self {
                ptr: AtomicUsize::new(tag_word(payload)),
                retired: std::sync::Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
            match self.node(self.read()) {
                None => f(None),
                Some(node) => node.with(|value| {
                    // SAFETY: nodes are never written after publication; loom checks
                    // that the write that built this one happens-before this read.
                    f(Some(unsafe { &*value }))
                }),
            }
        }

        /// The node `word` names, or `None` for a tag.
        fn node(&self, word: usize) -> Option<&Node<T>> {
            if word & TAG != 0 {
                return None;
            }
            // SAFETY: a word without the tag bit came from `Box::into_raw` in
            // `store`, and nodes are freed only by `Drop`, which has `&mut self`.
            Some(unsafe { &*(word as *const Node<T>) })
        }

        /// The current word. The std build swaps and loads with `SeqCst`, and the
        /// registry's arguments need a read that begins after a store returned to
        /// see it. loom treats `SeqCst` as `AcqRel`, under which a plain load may
        /// return a replaced pointer; so the loom build reads with an RMW
        /// (`fetch_add(0)`), which always reads the latest store.
        fn read(&self) -> usize {
            // AcqRel: acquires the swap that published the node; as an RMW it
            // reads the latest value in the word's modification order.
            self.ptr.fetch_add(0, Ordering::AcqRel)
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            let new = value.map_or(tag_word(0), |value| {
                Box::into_raw(Box::new(UnsafeCell::new(value))) as usize
            });
            // AcqRel: as the std build's SeqCst swap (see `read`).
            let old = self.ptr.swap(new, Ordering::AcqRel);
            if old & TAG == 0 {
                self.retire(old as *mut Node<T>);
            }
        }

        pub(crate) fn tag(&self) -> Option<usize> {
            // Relaxed: as in the std build; the caller's lock orders the tag's store
            // before this read, and loom checks that it does.
            tag_payload(self.ptr.load(Ordering::Relaxed))
        }

        pub(crate) fn vacate(&self, occupant: &Arc<T>, payload: usize) -> Option<Unlinked<'_, T>> {
            // The std build's one exchange on the `Arc`'s pointer becomes a read of
            // the node and an exchange on it: the same outcome, one more scheduling
            // point for loom to explore.
            let current = self.read();
            let holds = self.node(current).is_some_and(|node| {
                // SAFETY: as in `with`: nodes are never written after publication.
                node.with(|value| Arc::ptr_eq(unsafe { &*value }, occupant))
            });
            if !holds {
                return None;
            }
            // AcqRel on success, as `store`; Relaxed on failure: nothing written.
            self.ptr
                .compare_exchange(
                    current,
                    tag_word(payload),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .ok()
                .map(|old| Unlinked {
                    cell: self,
                    node: old as *mut Node<T>,
                })
        }

        fn retire(&self, node: *mut Node<T>) {
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(node);
        }
    }

    impl<T> Drop for SlotCell<T> {
        fn drop(&mut self) {
            // Relaxed: `&mut self`, so no other thread can touch the word.
            let current = self.ptr.load(Ordering::Relaxed);
            let retired = self.retired.get_mut().unwrap_or_else(|e| e.into_inner());
            let current = (current & TAG == 0).then_some(current as *mut Node<T>);
            for node in retired.drain(..).chain(current) {
                // SAFETY: every node came from `Box::into_raw` and is unlinked or
                // owned by this cell alone (`&mut self`); each is listed once.
                drop(unsafe { Box::from_raw(node) });
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
    fn a_tag_reads_as_no_value_and_carries_its_payload() {
        let wide = (1 << super::TAG_PAYLOAD_BITS) - 1;
        for payload in [0, 1, 0x00ff_ffff, wide] {
            let cell: SlotCell<u64> = SlotCell::tagged(payload);
            assert!(cell.load_full().is_none());
            assert_eq!(cell.tag(), Some(payload));
        }
        let cell = SlotCell::empty();
        cell.store(Some(Arc::new(3)));
        assert_eq!(cell.tag(), None, "a value is no tag");
        cell.store(None);
        assert_eq!(cell.tag(), Some(0));
    }

    #[test]
    fn vacate_replaces_only_the_named_value() {
        let value = Arc::new(5);
        let cell = SlotCell::empty();
        cell.store(Some(Arc::clone(&value)));
        assert!(
            cell.vacate(&Arc::new(5), 9).is_none(),
            "an equal value is not it"
        );
        assert_eq!(cell.tag(), None);
        let unlinked = cell.vacate(&value, 9);
        assert!(unlinked.is_some());
        assert_eq!(cell.tag(), Some(9));
        assert!(cell.load_full().is_none());
        assert!(cell.vacate(&value, 10).is_none(), "a tag holds no value");
        assert_eq!(cell.tag(), Some(9));
        drop(unlinked);
        // The cell's count goes through the collector (see the test below).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&value) > 1 && std::time::Instant::now() < deadline {
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(Arc::strong_count(&value), 1, "the vacated value leaked");
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
