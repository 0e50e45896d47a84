//! [`SlotCell`]: an `Option` of a counted handle (`Arc`, or [`EntryArc`] for a
//! client's entry; see [`Slotted`]) that is cheap to replace, for client slots.
//!
//! [`EntryArc`]: crate::sync::EntryArc
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
//! no value's pointer has (an `Arc`'s or `EntryArc`'s allocation starts with its two `usize`
//! counts, so the value is at least `usize`-aligned: 8 bytes on 64-bit targets, 4
//! on 32-bit, and the tag and lock bits need only 4). The other bits are a payload the owner
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
//! │  into_raw (4-aligned at least)    …00  │   the value
//! └────────────────────────────────────────┘
//! ```
//!
//! # The lock bit: a client's lock without a pin
//!
//! A value's word has a second spare bit, [`LOCKED`] (bit 1). [`SlotCell::lock`]
//! sets it with one compare-and-swap on an unlocked value's word, and the guard's
//! drop clears it with a plain `Release` store. While it is set:
//!
//! * nobody can unlink the value: [`SlotCell::vacate`] exchanges only the
//!   *unlocked* word (it waits while the bit is set), [`SlotCell::store`] fills
//!   only tags, and another locker's CAS expects an unlocked word. So the holder
//!   may use the value without an epoch pin: the cell's own count keeps it alive.
//! * nobody else holds it, which is what lets a client's bookkeeping live in a
//!   plain cell behind it (`client.rs`): attach, detach and unregister take this
//!   bit where they used to take an epoch pin *and* a lock word of their own.
//!
//! Readers ([`SlotCell::with`]) mask the bit out and pin as before: a locked
//! value is the same value. The bit is never set on a tag.
//!
//! ```text
//! │  into_raw (4-aligned at least)    …L0  │   the value; L = LOCKED
//! ```
//!
//! Lock order: a shard's allocation lock before any slot's bit (a release waits
//! for the bit under it), so no holder of a slot's bit takes a shard's allocation
//! lock; two slots' bits in client-id order; a slot's bit before any session's
//! writer lock. A waiter spins, then yields ([`spin_wait`](crate::sync::spin_wait)),
//! as the [`SpinLock`](crate::sync::SpinLock) it replaced did.
//!
//! # Under loom
//!
//! The same protocol over loom's atomics: the value is published by a pointer swap
//! and read by an RMW that returns the latest store (the std build's `SeqCst` swap
//! and load; loom models `SeqCst` only as `AcqRel`). The loom cell boxes the value
//! in a loom `UnsafeCell` (the std cell holds the `Arc`'s own pointer), so loom
//! reports a read that the publication does not order after the write. Only reclamation differs, because loom cannot follow
//! crossbeam-epoch's global epoch: an unlinked box is kept until the cell is
//! dropped, instead of until every reader pinned at the swap has unpinned. The
//! lock bit is the same bit of the same word; loom cannot model its waiting as a
//! spin, so a waiter sleeps on a condition variable, and the unlock is a swap
//! (`loom_cell`'s `wait_unlock` and `unlock` say why).
//!
//! [crossbeam-epoch]: https://docs.rs/crossbeam-epoch
#![allow(
    unsafe_code,
    reason = "epoch reclamation needs raw pointers; see each SAFETY"
)]

#[cfg(not(switchboard_loom))]
pub(crate) use epoch_cell::flush_pending;
#[cfg(not(switchboard_loom))]
pub(crate) use epoch_cell::{Retained, SlotCell, SlotGuard};
#[cfg(switchboard_loom)]
pub(crate) use loom_cell::{Retained, SlotCell, SlotGuard};

/// A value a [`SlotCell`] can hold, and the counted handle it is held by: `Arc`
/// for a client's profile, [`EntryArc`](crate::sync::EntryArc) for a client's
/// entry (which saves the entry's free a locked instruction).
pub(crate) trait Slotted: Sized {
    /// The handle; its raw form is the cell's word.
    type Handle: CountedHandle<Self>;
}

/// A counted handle that gives up its count as the value's raw address and takes
/// it back from there, as `Arc::into_raw` and `Arc::from_raw`.
///
/// # Safety
///
/// `into_raw` returns the value's address (what `as_ptr` returns) with the
/// handle's count still held, at least 4-aligned (the tag and lock bits);
/// `from_raw` on that address gives back a handle owning that count, and the
/// value stays alive at that address while any count on it is held. The handle
/// is `Send + Sync` whenever `T` is (as `Arc<T>`): a cell of `Send + Sync` values
/// is shared between threads, hands its handles to readers on any of them, and
/// drops them on whichever thread runs an epoch's deferred release.
pub(crate) unsafe trait CountedHandle<T>:
    std::ops::Deref<Target = T> + Sized
{
    /// Gives up the handle, keeping its count, as the value's address.
    #[cfg_attr(
        switchboard_loom,
        allow(dead_code, reason = "the loom cell boxes handles")
    )]
    fn into_raw(this: Self) -> *const T;
    /// Takes back a count [`into_raw`](Self::into_raw) gave up.
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw` on this type, and the caller owns that count.
    #[cfg_attr(
        switchboard_loom,
        allow(dead_code, reason = "the loom cell boxes handles")
    )]
    unsafe fn from_raw(ptr: *const T) -> Self;
    /// The value's address.
    fn as_ptr(this: &Self) -> *const T;
}

// SAFETY: `Arc::into_raw`, `from_raw` and `as_ptr` are the same contract; the
// allocation starts with two `usize` counts, so the value is `usize`-aligned (4
// bytes at least, below); `Arc<T>` is `Send + Sync` when `T` is.
unsafe impl<T> CountedHandle<T> for crate::sync::Arc<T> {
    #[inline]
    fn into_raw(this: Self) -> *const T {
        Self::into_raw(this)
    }
    #[inline]
    unsafe fn from_raw(ptr: *const T) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Self::from_raw(ptr) }
    }
    #[inline]
    fn as_ptr(this: &Self) -> *const T {
        Self::as_ptr(this)
    }
}

// SAFETY: as for `Arc`: `EntryArc`'s functions of the same names have the same
// contract, its value follows two `usize` counts, and it is `Send + Sync` when
// `T` is.
unsafe impl<T> CountedHandle<T> for crate::sync::EntryArc<T> {
    #[inline]
    fn into_raw(this: Self) -> *const T {
        Self::into_raw(this)
    }
    #[inline]
    unsafe fn from_raw(ptr: *const T) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Self::from_raw(ptr) }
    }
    #[inline]
    fn as_ptr(this: &Self) -> *const T {
        Self::as_ptr(this)
    }
}

/// Plain values in `Arc`s, for the unit tests of the cell and of its users.
#[cfg(test)]
mod test_values {
    use super::Slotted;
    use crate::sync::Arc;

    impl Slotted for u32 {
        type Handle = Arc<Self>;
    }

    impl Slotted for u64 {
        type Handle = Arc<Self>;
    }
}

// The tag and lock bits are a value pointer's two low bits: its counts make it
// `usize`-aligned, which must be 4 bytes at least.
const _: () = assert!(std::mem::align_of::<usize>() >= 4);

/// The bit that marks a word as a tag (no value).
const TAG: usize = 1;
/// The bit a lock holder sets in a value's word (never in a tag's); see the
/// module docs.
const LOCKED: usize = 2;
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
    use crossbeam_epoch as epoch;
    use std::marker::PhantomData;
    use std::mem::ManuallyDrop;
    use std::ops::Deref;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};

    use super::{tag_payload, tag_word, CountedHandle, Slotted, LOCKED, TAG};
    use crate::sync::spin_wait;

    /// A replaceable `Option<T::Handle>` read without locks.
    ///
    /// The cell holds the handle's own pointer (`into_raw`), not a box around
    /// it: a store costs no allocation, and the epoch defers dropping the cell's
    /// reference rather than freeing a box.
    pub(crate) struct SlotCell<T: Slotted> {
        /// A tag (no value; see the module docs), or a pointer from the
        /// handle's `into_raw` in `store` or a fill, possibly with [`LOCKED`] set,
        /// whose strong count the cell owns until a later `store` or `vacate`
        /// unlinks it (or the cell drops). Never null.
        ///
        /// Ordering: stores, exchanges and reads are `SeqCst`. Release/acquire alone
        /// would publish the value, but the registry's linearizability arguments (a
        /// send or broadcast that begins after an unregister or takeover returned
        /// must not see the replaced entry) need every load and swap of a slot in
        /// one total order, and the writer's pin (if any) comes after the swap. On
        /// x86 a `SeqCst` load is a plain load and the swap is locked either way.
        /// The lock bit's own CAS and store are `Acquire` and `Release` (see
        /// [`SlotCell::lock`]): they never change which value the cell holds. A
        /// registration's [`fill`](SlotCell::fill) of the tag it reserved is a
        /// `Release` store: it replaces no entry, so no such argument is about it
        /// (see `fill` for why it is enough).
        ptr: AtomicPtr<T>,
        /// Send and Sync exactly when `T::Handle` is.
        _owns: PhantomData<T::Handle>,
    }

    /// A value a [`SlotCell::vacate`] unlinked: dropping it defers the release of
    /// the cell's count until every reader that may still see it has unpinned. The
    /// caller drops it after its own lock, so the pin and deferral stay outside.
    #[must_use = "dropping it releases the unlinked value"]
    pub(crate) struct Unlinked<T: Slotted>(*const T);

    impl<T: Slotted> Drop for Unlinked<T> {
        #[inline]
        fn drop(&mut self) {
            defer_release(self.0);
        }
    }

    /// Unlinked values a thread hands to the epoch together, under one pin: one
    /// of crossbeam-epoch's bags (64 deferrals), which `hand_over` then flushes.
    pub(super) const BATCH: usize = 64;

    /// A count to give up: the value's pointer and the `T::Handle` drop for its `T`.
    type Release = (*const (), unsafe fn(*const ()));

    /// This thread's unlinked values not yet handed to the epoch.
    struct Pending {
        len: usize,
        items: [Release; BATCH],
    }

    impl Pending {
        /// Takes the listed values out, leaving the list empty.
        fn take(&mut self) -> ([Release; BATCH], usize) {
            (self.items, std::mem::replace(&mut self.len, 0))
        }
    }

    impl Drop for Pending {
        /// The thread is ending: its values go to the epoch now.
        fn drop(&mut self) {
            let (items, len) = self.take();
            hand_over(&items[..len]);
        }
    }

    std::thread_local! {
        static PENDING: std::cell::RefCell<Pending> = const {
            std::cell::RefCell::new(Pending {
                len: 0,
                items: [(ptr::null(), release_nothing); BATCH],
            })
        };
    }

    /// The empty list's filler; never called.
    unsafe fn release_nothing(_: *const ()) {}

    /// Gives up one count on `ptr`, a `T::Handle`'s pointer.
    ///
    /// # Safety
    ///
    /// `ptr` came from `T::Handle::into_raw`, and the caller owns that count.
    unsafe fn release_handle<T: Slotted>(ptr: *const ()) {
        // SAFETY: the caller's contract.
        drop(unsafe { <T::Handle>::from_raw(ptr.cast::<T>()) });
    }

    /// Defers giving up the count a cell held on `old`, which a swap or exchange on
    /// the cell just unlinked (and only that one call got back).
    ///
    /// The deferral waits in a thread-local list until [`BATCH`] have gathered,
    /// and the epoch gets them under one pin: a pin is a locked instruction on
    /// x86, and an unregister had no other reason to pin (its lock is the slot's
    /// bit). Deferring later than the
    /// unlink changes nothing for readers (see `hand_over`); it only keeps up to
    /// `BATCH - 1` departed values per thread alive longer: until the thread
    /// unlinks more, or ends, with no bound in time for a thread that goes idle
    /// (crossbeam-epoch's own per-thread bag of 64 kept them the same way).
    #[inline]
    fn defer_release<T: Slotted>(old: *const T) {
        let item: Release = (old.cast(), release_handle::<T>);
        let full = PENDING.try_with(|pending| {
            let mut pending = pending.borrow_mut();
            let len = pending.len;
            pending.items[len] = item;
            pending.len = len + 1;
            // Taken out under the borrow, handed over after it: the pin's own
            // collection may drop values whose drop unlinks more.
            (pending.len == BATCH).then(|| pending.take())
        });
        match full {
            Ok(None) => {}
            Ok(Some((items, len))) => hand_over(&items[..len]),
            // The thread's list is already gone (thread-local teardown).
            Err(_) => hand_over(&[item]),
        }
    }

    /// Hands unlinked values to the epoch, under one pin.
    fn hand_over(items: &[Release]) {
        if items.is_empty() {
            return;
        }
        let guard = epoch::pin();
        for &(old, release) in items {
            // SAFETY: a swap or exchange unlinked `old`, so no later read can reach
            // it, and it was unlinked exactly once because only that call returned
            // it; the cell's count on it is ours to give up, and `release` is the
            // drop for its type (`defer_release`). A reader reaches `old` only while
            // pinned (a lock holder reaches it only while it is linked, and it was
            // unlinked with the bit clear, so no holder is left), so every reader
            // that reached it before the unlink has either unpinned already or is
            // pinned now, and a drop deferred now runs only after every thread
            // pinned now has unpinned (pinning after the unlink rather than before,
            // or long after, changes nothing for them). The closure may run on
            // another thread: dropping a `T::Handle` there is sound because the
            // cell is shared only when `T: Send + Sync`, and then `T::Handle` is
            // `Send` (the `CountedHandle` contract).
            unsafe { guard.defer_unchecked(move || release(old)) };
        }
        // Seals the bag into the global queue and collects what has expired. The
        // epoch collects on its own only every 128th pin of a thread, up to eight
        // bags at a time; a thread that pins once per batch would leave its
        // garbage growing without bound (callgrind saw 0.2 of a cycle's one
        // deferred drop run when nothing else pinned) unless its hand-over
        // collects.
        guard.flush();
    }

    /// Hands this thread's waiting values to the epoch now, for tests and leak
    /// checks that wait for one to be freed.
    pub(crate) fn flush_pending() {
        let taken = PENDING.with(|pending| pending.borrow_mut().take());
        hand_over(&taken.0[..taken.1]);
    }

    /// The value a word names, lock bit cleared; the caller checked it is no tag.
    #[inline]
    fn value_of<T>(word: *mut T) -> *mut T {
        word.map_addr(|addr| addr & !LOCKED)
    }

    /// Holds a cell's lock bit; the value can be neither unlinked nor freed while
    /// it lives. Clears the bit on drop.
    #[must_use = "dropping it unlocks at once"]
    pub(crate) struct SlotGuard<'a, T: Slotted> {
        cell: &'a SlotCell<T>,
        /// Borrows the cell's count on its value; never dropped.
        value: ManuallyDrop<T::Handle>,
    }

    impl<T: Slotted> Deref for SlotGuard<'_, T> {
        type Target = T::Handle;

        #[inline]
        fn deref(&self) -> &T::Handle {
            &self.value
        }
    }

    impl<T: Slotted> Drop for SlotGuard<'_, T> {
        #[inline]
        fn drop(&mut self) {
            self.cell.unlock(T::Handle::as_ptr(&self.value));
        }
    }

    impl<'a, T: Slotted> SlotGuard<'a, T> {
        /// Clears the lock bit and keeps using the value unpinned.
        ///
        /// # Safety
        ///
        /// Nobody but the caller may unlink the value while the returned handle
        /// lives: the caller holds the only right to [`vacate`](SlotCell::vacate)
        /// it (the registry's departure, which flipped the client's `connected`
        /// under this lock) and gives the handle up when it does.
        #[inline]
        pub(crate) unsafe fn unlock_retaining(self) -> Retained<'a, T> {
            let this = ManuallyDrop::new(self);
            this.cell.unlock(T::Handle::as_ptr(&this.value));
            // SAFETY: `this` is never dropped, so this copy of the borrowed count
            // is the only one, and it stays borrowed (`ManuallyDrop`).
            let value = unsafe { ptr::read(&*this.value) };
            Retained(ManuallyDrop::new(value), PhantomData)
        }
    }

    /// A value its holder unlocked and alone may unlink: see
    /// [`SlotGuard::unlock_retaining`]. Borrows the cell's count.
    pub(crate) struct Retained<'a, T: Slotted>(
        ManuallyDrop<T::Handle>,
        PhantomData<&'a SlotCell<T>>,
    );

    impl<T: Slotted> Deref for Retained<'_, T> {
        type Target = T::Handle;

        #[inline]
        fn deref(&self) -> &T::Handle {
            &self.0
        }
    }

    impl<T: Slotted> SlotCell<T> {
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
        ///
        /// An empty cell is answered before pinning: a tag points at nothing, and
        /// the answer is the value of that load, which was current during the call.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T::Handle>) -> R) -> R {
            if self.ptr.load(Ordering::SeqCst).addr() & TAG != 0 {
                return f(None);
            }
            let _guard = epoch::pin();
            let current = self.ptr.load(Ordering::SeqCst);
            if current.addr() & TAG != 0 {
                return f(None);
            }
            // SAFETY: `current` (lock bit cleared) came from the handle's `into_raw` in
            // `store` or a fill, and the cell's strong count on it is given up only by a
            // closure deferred after it was unlinked, which runs after every thread
            // pinned at that moment unpins; `_guard` keeps this thread pinned until
            // after `f` returns. The `ManuallyDrop` borrows that count without
            // taking it: it is never dropped, and `f` only gets a reference (a clone
            // takes a count of its own).
            let borrowed = ManuallyDrop::new(unsafe { T::Handle::from_raw(value_of(current)) });
            f(Some(&borrowed))
        }

        /// A clone of the current value.
        #[cfg(test)]
        pub(crate) fn load_full(&self) -> Option<T::Handle>
        where
            T::Handle: Clone,
        {
            self.with(|value| value.cloned())
        }

        /// Replaces the value. The old one is dropped once no reader can see it.
        ///
        /// Pins only to defer that drop, after the swap: filling an empty slot (every
        /// registration) needs no pin at all. Never called on a cell whose lock bit
        /// may be set: client slots are stored only while they hold a tag.
        pub(crate) fn store(&self, value: Option<T::Handle>) {
            let new = value.map_or(ptr::without_provenance_mut(tag_word(0)), |v| {
                let raw = T::Handle::into_raw(v).cast_mut();
                debug_assert_eq!(raw.addr() & (TAG | LOCKED), 0, "an unaligned handle");
                raw
            });
            self.replace(new);
        }

        /// Fills a cell that holds a tag, as a registration fills the slot it
        /// reserved: a `Release` store where [`store`](Self::store) swaps.
        ///
        /// Nothing else writes a reserved slot's word before this store: the
        /// reservation took it off the free list under the shard's allocation
        /// lock, `vacate` and the lock bit's CAS only ever replace a value (a
        /// failed CAS writes nothing), and std reads are plain loads. So no RMW is
        /// needed to keep the word's writes in one chain, and `Release` publishes
        /// the value. The previous occupant was unlinked (`vacate`) under the same
        /// allocation lock, so the unlinking happens before this store, and a
        /// reader that acquires the new entry is ordered after both. A reader that
        /// learned the new id from the registration (its return, or an index or
        /// key stored after this) sees the entry by write-read coherence; one that
        /// reaches the slot otherwise (a guessed id, a sweep of every slot) is not
        /// ordered after the registration, and may be placed before it, as it
        /// could be against the swap this replaces. One locked instruction fewer
        /// per registration. The loom build swaps instead (see its `fill`).
        #[inline]
        pub(crate) fn fill(&self, value: T::Handle) {
            let raw = T::Handle::into_raw(value).cast_mut();
            debug_assert_eq!(raw.addr() & (TAG | LOCKED), 0, "an unaligned handle");
            self.fill_word(raw);
        }

        /// [`fill`](Self::fill) with the lock bit already set: nobody can lock the
        /// cell before the caller is done with what the lock covers.
        pub(crate) fn fill_locked(&self, value: T::Handle) -> SlotGuard<'_, T> {
            let raw = T::Handle::into_raw(value).cast_mut();
            debug_assert_eq!(raw.addr() & (TAG | LOCKED), 0, "an unaligned handle");
            self.fill_word(raw.map_addr(|addr| addr | LOCKED));
            SlotGuard {
                cell: self,
                // SAFETY: the cell now owns this count and the bit set above keeps
                // it linked until the guard drops; the `ManuallyDrop` borrows it.
                value: ManuallyDrop::new(unsafe { <T::Handle>::from_raw(raw) }),
            }
        }

        #[inline]
        fn fill_word(&self, new: *mut T) {
            debug_assert!(
                // Relaxed: the reservation, under the allocation lock this thread
                // took, ordered the tag before this read.
                self.ptr.load(Ordering::Relaxed).addr() & TAG != 0,
                "a fill of a cell that holds a value"
            );
            // Release: publishes the value; see `fill`.
            self.ptr.store(new, Ordering::Release);
        }

        fn replace(&self, new: *mut T) {
            let old = self.ptr.swap(new, Ordering::SeqCst);
            debug_assert!(
                old.addr() & TAG != 0 || old.addr() & LOCKED == 0,
                "a store replaced a locked value"
            );
            if old.addr() & TAG == 0 {
                defer_release(value_of(old).cast_const());
            }
        }

        /// Takes the lock bit of whatever value the cell holds; `None` if it holds
        /// a tag. Waits while another holder has it.
        #[inline]
        pub(crate) fn lock(&self) -> Option<SlotGuard<'_, T>> {
            self.lock_if(|_| true)
        }

        /// Takes the lock bit if the cell holds `occupant`; `None` if it holds
        /// anything else (`occupant` was unlinked, or never stored here).
        #[inline]
        pub(crate) fn lock_occupant(&self, occupant: &T::Handle) -> Option<SlotGuard<'_, T>> {
            let wanted = T::Handle::as_ptr(occupant);
            self.lock_if(|value| ptr::eq(value, wanted))
        }

        #[inline]
        fn lock_if(&self, accept: impl Fn(*const T) -> bool) -> Option<SlotGuard<'_, T>> {
            // SeqCst: as `with`'s load, since a `None` here answers "no such
            // client" and must not miss a store that returned before the call.
            let mut current = self.ptr.load(Ordering::SeqCst);
            let mut spins = 0;
            loop {
                if current.addr() & TAG != 0 || !accept(value_of(current)) {
                    return None;
                }
                if current.addr() & LOCKED != 0 {
                    spin_wait(&mut spins);
                    // SeqCst: as above.
                    current = self.ptr.load(Ordering::SeqCst);
                    continue;
                }
                let locked = current.map_addr(|addr| addr | LOCKED);
                // Acquire on success: pairs with the last holder's `Release` unlock
                // (or the swap or fill that linked the value), so everything they
                // did under the bit happens-before this holder's turn. An RMW, so
                // it reads the latest word: exactly one locker wins it. SeqCst on
                // failure: the word read may answer `None`, as the load above.
                match self.ptr.compare_exchange_weak(
                    current,
                    locked,
                    Ordering::Acquire,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => {
                        return Some(SlotGuard {
                            cell: self,
                            // SAFETY: the word was this unlocked value and the bit
                            // is now ours, so nobody can unlink it (see the module
                            // docs) and the cell's count keeps it alive until the
                            // guard drops; the `ManuallyDrop` borrows that count.
                            value: ManuallyDrop::new(unsafe {
                                <T::Handle>::from_raw(current.cast_const())
                            }),
                        });
                    }
                    Err(now) => current = now,
                }
            }
        }

        /// Clears the lock bit of `value`, which the caller's guard holds.
        #[inline]
        fn unlock(&self, value: *const T) {
            // Release: everything done under the bit happens-before the next
            // locker's `Acquire` CAS (and the vacating exchange). A store, not an
            // RMW: while the bit is set no other thread writes the word (lockers
            // and `vacate` exchange only an unlocked word; `store` fills only tags),
            // and readers see the same value either way.
            self.ptr.store(value.cast_mut(), Ordering::Release);
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
        /// else. Waits while the lock bit is set. The unlinked value is released
        /// when the returned handle drops.
        pub(crate) fn vacate(&self, occupant: &T::Handle, payload: usize) -> Option<Unlinked<T>> {
            let current = T::Handle::as_ptr(occupant).cast_mut();
            let tag = ptr::without_provenance_mut(tag_word(payload));
            let mut spins = 0;
            loop {
                // SeqCst on success, as `store`'s swap: the registry's arguments need
                // every store to a slot in one total order with its reads; it also
                // acquires the last holder's unlock. Relaxed on failure: the word
                // read only tells a holder (wait) from another value (give up).
                match self
                    .ptr
                    .compare_exchange(current, tag, Ordering::SeqCst, Ordering::Relaxed)
                {
                    Ok(old) => return Some(Unlinked(old.cast_const())),
                    Err(now) if now.addr() == current.addr() | LOCKED => {
                        spin_wait(&mut spins);
                    }
                    Err(_) => return None,
                }
            }
        }
    }

    impl<T: Slotted> Drop for SlotCell<T> {
        fn drop(&mut self) {
            let current = *self.ptr.get_mut();
            if current.addr() & TAG == 0 {
                // SAFETY: `&mut self` means no other thread can read or store this
                // cell, and no reference from `with` or a guard outlives its borrow
                // of the cell, so the cell's count on the current value is released
                // here, once.
                drop(unsafe { <T::Handle>::from_raw(value_of(current).cast_const()) });
            }
        }
    }
}

#[cfg(switchboard_loom)]
mod loom_cell {
    use std::ops::Deref;

    use loom::sync::Condvar;

    use crate::sync::{AtomicUsize, Mutex, Ordering, UnsafeCell};

    use super::{tag_payload, tag_word, CountedHandle, Slotted, LOCKED, TAG};

    type Node<T> = UnsafeCell<<T as Slotted>::Handle>;

    /// The epoch cell's protocol over loom atomics; see the module docs.
    pub(crate) struct SlotCell<T: Slotted> {
        /// A tag, or the address of a node from `Box::into_raw` (at least
        /// 4-aligned: it holds a pointer, `usize`-aligned), possibly with [`LOCKED`] set: a word
        /// rather than an `AtomicPtr` because loom's has no `fetch_add` for `read`.
        /// Swaps and exchanges `AcqRel` as in the std build, a fill's swap
        /// `Release` (the std build's store; see `fill_word`), the lock bit's CAS
        /// `Acquire` and its clearing store `Release`, as there; reads are RMWs
        /// (see `read`).
        ptr: AtomicUsize,
        /// Unlinked nodes, freed with the cell (the reclamation stand-in). A `std`
        /// mutex: bookkeeping outside the model, never held across a loom operation.
        retired: std::sync::Mutex<Vec<*mut Node<T>>>,
        /// Where a locker or a vacate waits for the lock bit (see `wait_unlock`).
        waiters: (Mutex<()>, Condvar),
    }

    // SAFETY: as crossbeam's `Atomic<T::Handle>`: the cell shares and moves `T::Handle`s.
    unsafe impl<T: Slotted + Send + Sync> Send for SlotCell<T> {}
    // SAFETY: as above; nodes are only read through `&`, and freed under `&mut`.
    unsafe impl<T: Slotted + Send + Sync> Sync for SlotCell<T> {}

    /// A node [`SlotCell::vacate`] unlinked; the std build defers its release, the
    /// loom build keeps it with the cell's retired nodes.
    #[must_use = "dropping it releases the unlinked value"]
    pub(crate) struct Unlinked<'a, T: Slotted> {
        cell: &'a SlotCell<T>,
        node: *mut Node<T>,
    }

    impl<T: Slotted> Drop for Unlinked<'_, T> {
        fn drop(&mut self) {
            self.cell.retire(self.node);
        }
    }

    /// Holds a cell's lock bit, as the std build's guard.
    #[must_use = "dropping it unlocks at once"]
    pub(crate) struct SlotGuard<'a, T: Slotted> {
        cell: &'a SlotCell<T>,
        /// The node's word, lock bit clear.
        word: usize,
    }

    impl<T: Slotted> Deref for SlotGuard<'_, T> {
        type Target = T::Handle;

        fn deref(&self) -> &T::Handle {
            self.cell.value(self.word)
        }
    }

    impl<T: Slotted> Drop for SlotGuard<'_, T> {
        fn drop(&mut self) {
            self.cell.unlock(self.word);
        }
    }

    impl<'a, T: Slotted> SlotGuard<'a, T> {
        /// As the std build's; see there.
        ///
        /// # Safety
        ///
        /// As the std build's (loom keeps nodes until the cell drops, so it cannot
        /// fail here, but the callers are the same code).
        pub(crate) unsafe fn unlock_retaining(self) -> Retained<'a, T> {
            let this = std::mem::ManuallyDrop::new(self);
            this.cell.unlock(this.word);
            Retained {
                cell: this.cell,
                word: this.word,
            }
        }
    }

    /// As the std build's.
    pub(crate) struct Retained<'a, T: Slotted> {
        cell: &'a SlotCell<T>,
        word: usize,
    }

    impl<T: Slotted> Deref for Retained<'_, T> {
        type Target = T::Handle;

        fn deref(&self) -> &T::Handle {
            self.cell.value(self.word)
        }
    }

    impl<T: Slotted> SlotCell<T> {
        pub(crate) fn empty() -> Self {
            Self::tagged(0)
        }

        pub(crate) fn tagged(payload: usize) -> Self {
            Self {
                ptr: AtomicUsize::new(tag_word(payload)),
                retired: std::sync::Mutex::new(Vec::new()),
                waiters: (Mutex::new(()), Condvar::new()),
            }
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T::Handle>) -> R) -> R {
            match self.node(self.read()) {
                None => f(None),
                Some(node) => node.with(|value| {
                    // SAFETY: nodes are never written after publication; loom checks
                    // that the write that built this one happens-before this read.
                    f(Some(unsafe { &*value }))
                }),
            }
        }

        /// The node `word` names (lock bit ignored), or `None` for a tag.
        fn node(&self, word: usize) -> Option<&Node<T>> {
            if word & TAG != 0 {
                return None;
            }
            // SAFETY: a word without the tag bit came from `Box::into_raw` in
            // `store` (plus, maybe, the lock bit, cleared here), and nodes are
            // freed only by `Drop`, which has `&mut self`.
            Some(unsafe { &*((word & !LOCKED) as *const Node<T>) })
        }

        /// The value of a node word a guard holds.
        fn value(&self, word: usize) -> &T::Handle {
            let node = self.node(word).expect("a guard holds a value, not a tag");
            // SAFETY: as in `with`: nodes are never written after publication.
            node.with(|value| unsafe { &*value })
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

        pub(crate) fn store(&self, value: Option<T::Handle>) {
            let new = value.map_or(tag_word(0), |value| {
                Box::into_raw(Box::new(UnsafeCell::new(value))) as usize
            });
            self.replace(new);
        }

        pub(crate) fn fill(&self, value: T::Handle) {
            let word = Box::into_raw(Box::new(UnsafeCell::new(value))) as usize;
            self.fill_word(word);
        }

        pub(crate) fn fill_locked(&self, value: T::Handle) -> SlotGuard<'_, T> {
            let word = Box::into_raw(Box::new(UnsafeCell::new(value))) as usize;
            self.fill_word(word | LOCKED);
            SlotGuard { cell: self, word }
        }

        /// The std build's `Release` store of a reserved slot, as a swap: a reader's
        /// `fetch_add(0)` (`read`) that saw the tag could otherwise write it back
        /// after the store in loom's view (tokio-rs/loom#254), which an RMW's
        /// atomicity rules out in the real modification order. `Release`, not
        /// `AcqRel`, so that the store acquires nothing in the model either. The
        /// model is still stronger than the std build here (the swap continues
        /// the release sequence of the `vacate` before it, and loom's RMW reads
        /// make every read an RMW): what no model checks is the std store itself,
        /// whose argument is the std `fill`'s.
        fn fill_word(&self, new: usize) {
            let old = self.ptr.swap(new, Ordering::Release);
            assert!(old & TAG != 0, "a fill of a cell that holds a value");
        }

        fn replace(&self, new: usize) {
            // AcqRel: as the std build's SeqCst swap (see `read`).
            let old = self.ptr.swap(new, Ordering::AcqRel);
            assert!(
                old & TAG != 0 || old & LOCKED == 0,
                "a store replaced a locked value"
            );
            if old & TAG == 0 {
                self.retire(old as *mut Node<T>);
            }
        }

        pub(crate) fn lock(&self) -> Option<SlotGuard<'_, T>> {
            self.lock_if(|_| true)
        }

        pub(crate) fn lock_occupant(&self, occupant: &T::Handle) -> Option<SlotGuard<'_, T>> {
            self.lock_if(|value| {
                std::ptr::eq(T::Handle::as_ptr(value), T::Handle::as_ptr(occupant))
            })
        }

        fn lock_if(&self, accept: impl Fn(&T::Handle) -> bool) -> Option<SlotGuard<'_, T>> {
            loop {
                let current = self.read();
                if current & TAG != 0 || !accept(self.value(current)) {
                    return None;
                }
                if current & LOCKED != 0 {
                    self.wait_unlock(current);
                    continue;
                }
                // Acquire on success, as the std build (which see); Relaxed on
                // failure: the loop reads again with an RMW.
                if self
                    .ptr
                    .compare_exchange(
                        current,
                        current | LOCKED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Some(SlotGuard {
                        cell: self,
                        word: current,
                    });
                }
            }
        }

        /// Waits until the word is no longer `locked`. The std build spins; loom
        /// cannot model that here (a spinning waiter's reads gave the holder no
        /// turn, and models ran past their branch bound), so a waiter sleeps on a
        /// condition variable that every unlock notifies (loom-only bookkeeping,
        /// as the retired list is). The check is under its
        /// mutex and the unlock stores before it notifies under the same mutex, so
        /// no wakeup is lost. The mutex orders only contended hand-overs: an
        /// uncontended locker still gets its happens-before from the word alone.
        fn wait_unlock(&self, locked: usize) {
            let mut waiting = crate::sync::lock(&self.waiters.0);
            // An RMW, as `read`: a plain load may return the locked word again
            // after the unlock and its notification, in loom's view, and the
            // waiter then slept for good.
            while self.read() == locked {
                waiting = self
                    .waiters
                    .1
                    .wait(waiting)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }

        fn unlock(&self, word: usize) {
            // Release, as the std build (which see). A swap where the std build
            // stores: loom orders writes only as far as its threads have seen them,
            // so the write of a waiter's `fetch_add(0)` read (`read`), which the
            // holder never saw, could land after a plain store and lock the word
            // again for good (a model deadlocked so). The swap reads the newest
            // write and lands after it, as the std store does in the one real
            // modification order.
            self.ptr.swap(word, Ordering::Release);
            let _waiting = crate::sync::lock(&self.waiters.0);
            self.waiters.1.notify_all();
        }

        pub(crate) fn tag(&self) -> Option<usize> {
            // Relaxed: as in the std build; the caller's lock orders the tag's store
            // before this read, and loom checks that it does.
            tag_payload(self.ptr.load(Ordering::Relaxed))
        }

        pub(crate) fn vacate(
            &self,
            occupant: &T::Handle,
            payload: usize,
        ) -> Option<Unlinked<'_, T>> {
            // The std build's one exchange on the `Arc`'s pointer becomes a read of
            // the node and an exchange on it: the same outcome, one more scheduling
            // point for loom to explore. A locked word is waited out, as there.
            loop {
                let current = self.read();
                if current & TAG != 0
                    || !std::ptr::eq(
                        T::Handle::as_ptr(self.value(current)),
                        T::Handle::as_ptr(occupant),
                    )
                {
                    return None;
                }
                if current & LOCKED != 0 {
                    self.wait_unlock(current);
                    continue;
                }
                // AcqRel on success, as `store`; Relaxed on failure: nothing
                // written, and the loop reads again.
                if let Ok(old) = self.ptr.compare_exchange(
                    current,
                    tag_word(payload),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    return Some(Unlinked {
                        cell: self,
                        node: old as *mut Node<T>,
                    });
                }
            }
        }

        fn retire(&self, node: *mut Node<T>) {
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(node);
        }
    }

    impl<T: Slotted> Drop for SlotCell<T> {
        fn drop(&mut self) {
            // Relaxed: `&mut self`, so no other thread can touch the word.
            let current = self.ptr.load(Ordering::Relaxed);
            let retired = self.retired.get_mut().unwrap_or_else(|e| e.into_inner());
            let current = (current & TAG == 0).then_some((current & !LOCKED) as *mut Node<T>);
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
        let cell = SlotCell::<u64>::empty();
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
        let cell = SlotCell::<u64>::empty();
        cell.store(Some(Arc::new(3)));
        assert_eq!(cell.tag(), None, "a value is no tag");
        cell.store(None);
        assert_eq!(cell.tag(), Some(0));
    }

    #[test]
    fn vacate_replaces_only_the_named_value() {
        let value = Arc::new(5);
        let cell = SlotCell::<u64>::empty();
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
            flush_pending();
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(Arc::strong_count(&value), 1, "the vacated value leaked");
    }

    /// Waits (up to 10 s) for the epoch to free `value`'s other counts.
    fn freed(value: &Arc<u64>) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(value) > 1 && std::time::Instant::now() < deadline {
            epoch::pin().flush();
            std::thread::yield_now();
        }
        Arc::strong_count(value) == 1
    }

    #[test]
    fn a_thread_that_ends_hands_its_unlinked_values_over() {
        let value = Arc::new(4);
        let cell = Arc::new(SlotCell::<u64>::empty());
        cell.store(Some(Arc::clone(&value)));
        let replacer = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || cell.store(None))
        };
        assert!(replacer.join().is_ok());
        assert!(freed(&value), "an ended thread's unlinked value leaked");
    }

    #[test]
    fn a_full_batch_is_handed_over_without_a_flush() {
        let value = Arc::new(5);
        let cell = SlotCell::<u64>::empty();
        std::thread::scope(|s| {
            s.spawn(|| {
                cell.store(Some(Arc::clone(&value)));
                for filler in 0..super::epoch_cell::BATCH as u64 {
                    cell.store(Some(Arc::new(filler)));
                }
                // The thread's list is still alive here: only the full batch went.
                assert!(freed(&value), "a full batch stayed with its thread");
            });
        });
    }

    #[test]
    fn dropping_the_cell_frees_its_value_at_once() {
        let value = Arc::new(1);
        let cell = SlotCell::<u64>::empty();
        cell.store(Some(Arc::clone(&value)));
        assert_eq!(Arc::strong_count(&value), 2);
        drop(cell);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn replaced_values_are_freed_once_readers_are_gone() {
        let first = Arc::new(1);
        let cell = SlotCell::<u64>::empty();
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
            flush_pending();
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(Arc::strong_count(&first), 1, "the replaced value leaked");
    }

    #[test]
    fn concurrent_readers_see_only_stored_values() {
        let cell = SlotCell::<u64>::empty();
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
