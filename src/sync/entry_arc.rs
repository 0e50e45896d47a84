//! [`EntryArc`]: the counted handle of a client's entry, `Arc` without the weak
//! count's locked instructions.
//!
//! Every client's entry is shared by its slot, its receiver and the member cells of
//! its sessions, and freed by whichever lets go last. With `std`'s `Arc` that free
//! cost a second locked instruction: the last strong drop also decrements the weak
//! count, which every `Arc` carries (one implicit weak held by the strong handles
//! together), whether or not a `Weak` was ever made. Here the last strong drop
//! *loads* the weak count and frees at once when no `Weak` exists; only an entry
//! that had one (a taken-over client's successor record, `client.rs`) pays the
//! decrement. And a registration, which hands one count to the slot and one to the
//! receiver, creates both with the allocation ([`EntryArc::new_pair`]) where
//! `Arc::new` and `Arc::clone` took a locked increment.
//!
//! # The counts
//!
//! `strong` is the number of [`EntryArc`]s. `weak` is the number of [`EntryWeak`]s
//! plus one while the value is alive, as in `std`. The value is dropped by the
//! last strong handle (when `strong` reaches zero, or by the sole handle below,
//! which leaves it at one) and the allocation is freed when `weak` reaches zero,
//! with one shortcut: the thread that dropped the value frees the allocation without
//! decrementing if it reads `weak == 1`. That read means no `EntryWeak` is left,
//! and none can be made: `downgrade` needs an `EntryArc`, and none is left
//! (`EntryWeak` has no `clone`; one would need an `EntryWeak`, and none is left
//! either). (Every `downgrade` happens-before its holder's `Release` decrement of
//! `strong`, which the last dropper acquires, so the load cannot return a count
//! from before a weak handle it must see.)
//!
//! A second shortcut skips the strong count's decrement itself: a handle that
//! reads `strong == 1` holds the only strong count, so no other strong handle is
//! left and none can be made but from this one, unless a weak handle upgrades.
//! The first `downgrade` sets [`EVER_WEAK`] in `weak`, and nothing clears it; a
//! drop that reads `strong == 1` (`Acquire`) and then no `EVER_WEAK` drops the
//! value and frees the allocation with no locked instruction at all. Every
//! `downgrade` made through another handle happens-before that holder's `Release`
//! decrement of `strong`, which that `Acquire` load synchronises with (every later
//! write to `strong` is an RMW, so the decrements form one release sequence), and
//! one made through this handle precedes the load in program order; so the flag
//! of any downgrade is seen. A handle not counted in the value read can only
//! descend from this one, whose clones' increments precede the load. This needs
//! every increment made on a borrowed count (`increment_strong_count`) to
//! happen-before the drop of the count it borrowed, where an RMW decrement would
//! have needed it only earlier in the count's modification order. A client's
//! entry is held by its slot, its receiver and the member cells of its sessions,
//! and is never downgraded unless it was taken over, so whichever lets go last
//! skips its decrement.
//!
//! The counts answer nothing else. `get_mut`, `is_unique`, `try_unwrap` and
//! their kind ask "is this the only handle, and can no weak one upgrade?", which
//! `std` answers by locking the weak count (`usize::MAX`) against a racing
//! `downgrade`; adding one here needs that lock too.
//!
//! # Under loom
//!
//! The same code over loom's atomics, weak handle included, plus three loom-only
//! fields: a cell every dereference reads and the value's drop writes, so that
//! loom reports a drop not ordered after some handle's last use (a weakened
//! decrement or a missing fence); a cell every access to a count reads, through
//! either handle, and the free writes, since loom does not track heap frees (a
//! weakened shortcut, model E2); and a loom `Arc` that loom's leak check reports
//! if an entry is never freed. The registry's successor record still holds its
//! entry strongly under loom (`sync.rs`, `WeakArc`); the models reach
//! `EntryWeak` through `loom_model` (below).
#![allow(
    unsafe_code,
    reason = "a reference count over a raw allocation; see each SAFETY"
)]

use std::marker::PhantomData;
use std::mem::{offset_of, ManuallyDrop};
use std::ops::Deref;
use std::ptr::{self, NonNull};

use super::{fence, AtomicUsize, Ordering};

/// Counts above this abort, as `std`'s `Arc` does: each handle is at least a
/// word, so a count this high means handles were leaked in a loop.
const MAX_COUNT: usize = isize::MAX as usize;

/// Set in `weak` by the first [`EntryArc::downgrade`] and never cleared: while it
/// is clear no [`EntryWeak`] was ever made, so a sole strong handle is the only
/// handle of either kind (see the module docs). Above every count (`MAX_COUNT`).
const EVER_WEAK: usize = 1 << (usize::BITS - 1);

/// The allocation: the two counts, then the value. `repr(C)` so that the value's
/// offset is fixed and [`EntryArc::from_raw`] can step back from it.
#[repr(C)]
struct Inner<T> {
    /// Ordering: increments `Relaxed` (a new handle is made from an existing one,
    /// which already keeps the value alive, and happens-before that one's drop);
    /// decrements `Release`, and the one that reaches zero is followed by an
    /// `Acquire` fence, so every use of the value through any handle
    /// happens-before its drop. The sole handle's check (`is_only_handle`) loads
    /// it `Acquire` instead, to the same end.
    strong: AtomicUsize,
    /// `EntryWeak`s, plus one while the value is alive, plus [`EVER_WEAK`] once
    /// a weak handle was made. Ordering: as `strong`; the last strong drop's load
    /// is `Acquire`, so a weak handle's decrement it reads happens-before the free.
    /// `EVER_WEAK` is set `Relaxed`: see `downgrade`.
    weak: AtomicUsize,
    /// Read by every dereference and written by the value's drop: loom's check
    /// that the drop is ordered after every use.
    #[cfg(switchboard_loom)]
    uses: loom::cell::UnsafeCell<()>,
    /// Read by every access to a count, through either handle, and written just
    /// before the free: loom's check that the free is ordered after every
    /// handle's last touch of the allocation (loom does not track heap frees).
    #[cfg(switchboard_loom)]
    counts: loom::cell::UnsafeCell<()>,
    /// Loom's leak check for the allocation.
    #[cfg(switchboard_loom)]
    _alive: loom::sync::Arc<()>,
    /// Dropped when `strong` reaches zero, before the allocation is freed.
    value: ManuallyDrop<T>,
}

/// The strong count of the allocation at `inner`, through a raw field
/// projection: no reference covers the value, which another thread may be
/// dropping while a weak handle reads the counts (as `std`'s `Weak::inner`).
///
/// # Safety
///
/// The allocation is alive for `'a`: the caller holds a count of either kind.
#[inline]
unsafe fn strong<'a, T>(inner: *const Inner<T>) -> &'a AtomicUsize {
    #[cfg(switchboard_loom)]
    // SAFETY: the caller's contract; a reference to the cell field alone.
    unsafe { &(*inner).counts }.with(|_| ());
    // SAFETY: the caller's contract; a reference to the count field alone.
    unsafe { &(*inner).strong }
}

/// The weak count of the allocation at `inner`, as [`strong`].
///
/// # Safety
///
/// As [`strong`].
#[inline]
unsafe fn weak<'a, T>(inner: *const Inner<T>) -> &'a AtomicUsize {
    #[cfg(switchboard_loom)]
    // SAFETY: the caller's contract; a reference to the cell field alone.
    unsafe { &(*inner).counts }.with(|_| ());
    // SAFETY: the caller's contract; a reference to the count field alone.
    unsafe { &(*inner).weak }
}

/// A counted handle to a `T`: `std`'s `Arc`, less the weak count's locked
/// instructions where no [`EntryWeak`] exists (see the module docs).
pub(crate) struct EntryArc<T> {
    ptr: NonNull<Inner<T>>,
    /// Owns a `T`, for the drop check: dropping a handle may drop the value, as
    /// `Arc<T>`'s `PhantomData<ArcInner<T>>` says.
    _owns: PhantomData<T>,
}

// SAFETY: as `Arc<T>`: a handle sent to another thread may drop the `T` there
// (`T: Send`) and shares it with the handles left here (`T: Sync`); the counts are
// atomics.
unsafe impl<T: Send + Sync> Send for EntryArc<T> {}
// SAFETY: as above: `&EntryArc<T>` gives `&T` and can clone a handle.
unsafe impl<T: Send + Sync> Sync for EntryArc<T> {}

impl<T> EntryArc<T> {
    fn allocate(value: T, strong: usize) -> NonNull<Inner<T>> {
        let inner = Box::new(Inner {
            strong: AtomicUsize::new(strong),
            weak: AtomicUsize::new(1),
            #[cfg(switchboard_loom)]
            uses: loom::cell::UnsafeCell::new(()),
            #[cfg(switchboard_loom)]
            counts: loom::cell::UnsafeCell::new(()),
            #[cfg(switchboard_loom)]
            _alive: loom::sync::Arc::new(()),
            value: ManuallyDrop::new(value),
        });
        NonNull::from(Box::leak(inner))
    }

    fn from_inner(ptr: NonNull<Inner<T>>) -> Self {
        Self {
            ptr,
            _owns: PhantomData,
        }
    }

    /// One handle to `value`.
    pub(crate) fn new(value: T) -> Self {
        Self::from_inner(Self::allocate(value, 1))
    }

    /// Two handles to `value`, both counted when it is allocated: no locked
    /// instruction, where `new` and a `clone` take one.
    pub(crate) fn new_pair(value: T) -> (Self, Self) {
        let ptr = Self::allocate(value, 2);
        (Self::from_inner(ptr), Self::from_inner(ptr))
    }

    #[inline]
    fn inner(&self) -> &Inner<T> {
        // SAFETY: this handle's strong count keeps the allocation and the value
        // alive.
        unsafe { self.ptr.as_ref() }
    }

    #[inline]
    fn strong(&self) -> &AtomicUsize {
        // SAFETY: this handle's count keeps the allocation alive.
        unsafe { strong(self.ptr.as_ptr()) }
    }

    #[inline]
    fn weak(&self) -> &AtomicUsize {
        // SAFETY: this handle's count keeps the allocation alive.
        unsafe { weak(self.ptr.as_ptr()) }
    }

    /// The value's address, as `Arc::as_ptr`.
    #[inline]
    pub(crate) fn as_ptr(this: &Self) -> *const T {
        // SAFETY: the allocation is alive (this handle); no reference is made.
        unsafe { ptr::addr_of!((*this.ptr.as_ptr()).value) }.cast::<T>()
    }

    /// Whether both handles name the same value.
    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) fn ptr_eq(this: &Self, other: &Self) -> bool {
        this.ptr == other.ptr
    }

    /// Gives up the handle without its count: the value's address, for
    /// [`from_raw`](Self::from_raw) to take the count back. At least `usize`-aligned
    /// (the counts come first): 8 bytes on 64-bit targets, 4 on 32-bit, where the
    /// slot cell's tag and lock bits need 4.
    #[inline]
    pub(crate) fn into_raw(this: Self) -> *const T {
        let this = ManuallyDrop::new(this);
        Self::as_ptr(&this)
    }

    /// The handle [`into_raw`](Self::into_raw) gave up, with its count.
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw` on an `EntryArc<T>`, and the caller owns the
    /// count it carried (each `into_raw` is taken back once).
    #[inline]
    pub(crate) unsafe fn from_raw(ptr: *const T) -> Self {
        // SAFETY: `ptr` is the `value` field of a live `Inner<T>` (the caller's
        // contract), and `repr(C)` fixes its offset, so stepping back stays inside
        // the allocation `ptr`'s provenance covers.
        let inner = unsafe { ptr.byte_sub(offset_of!(Inner<T>, value)) };
        // SAFETY: derived from a non-null allocation.
        Self::from_inner(unsafe { NonNull::new_unchecked(inner.cast::<Inner<T>>().cast_mut()) })
    }

    /// Adds a count to the value at `ptr`, for a second [`from_raw`](Self::from_raw).
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw` and the value is alive: some count on it is held
    /// for the length of the call, and the call happens-before that count's drop
    /// (not only precedes its decrement: the sole-handle drop loads the count
    /// instead of decrementing it; see the module docs).
    #[inline]
    pub(crate) unsafe fn increment_strong_count(ptr: *const T) {
        // SAFETY: the caller's contract; the handle is never dropped.
        let this = ManuallyDrop::new(unsafe { Self::from_raw(ptr) });
        this.count_one_more();
    }

    #[inline]
    fn count_one_more(&self) {
        // Relaxed: see `Inner::strong`.
        if self.strong().fetch_add(1, Ordering::Relaxed) > MAX_COUNT {
            std::process::abort();
        }
    }

    /// The number of handles, for tests.
    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) fn strong_count(this: &Self) -> usize {
        this.strong().load(Ordering::Relaxed)
    }

    /// A handle that does not keep the value alive.
    pub(crate) fn downgrade(this: &Self) -> EntryWeak<T> {
        // Relaxed, the count and the flag: this strong handle keeps `weak` above
        // zero, and both are ordered before the last strong drop by this thread's
        // own decrement (`Release`) later, which that drop acquires, or by program
        // order if this handle is the last (see the module docs). Rare (a
        // takeover's successor record), so the flag's second RMW is no cost.
        let before = this.weak().fetch_add(1, Ordering::Relaxed);
        // Far short of the flag, as `std` leaves headroom: increments racing
        // the abort cannot carry into it.
        if before & !EVER_WEAK >= EVER_WEAK >> 1 {
            std::process::abort();
        }
        if before & EVER_WEAK == 0 {
            this.weak().fetch_or(EVER_WEAK, Ordering::Relaxed);
        }
        EntryWeak { ptr: this.ptr }
    }

    /// Whether this is the only handle of either kind, so that dropping it needs
    /// no decrement (the second shortcut in the module docs).
    #[inline]
    fn is_only_handle(&self) -> bool {
        // Acquire: synchronises with the `Release` decrement of every other handle
        // that has gone (one release sequence), so their uses, and any downgrade
        // made through them, happen-before this. (A loom canary weakens it.)
        #[cfg(not(switchboard_loom))]
        let count = Ordering::Acquire;
        #[cfg(switchboard_loom)]
        let count = if loom_model::weakened(loom_model::Weakening::UniqueLoad) {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        let sole = self.strong().load(count) == 1;
        #[cfg(switchboard_loom)]
        if loom_model::weakened(loom_model::Weakening::Unique) {
            // The other canary's broken shortcut: the weak flag is not consulted.
            return sole;
        }
        // The flag is loaded after the count: Relaxed is enough, since that load's
        // ordering makes every other handle's downgrade visible, and this handle's
        // own precede it in program order.
        sole && self.weak().load(Ordering::Relaxed) & EVER_WEAK == 0
    }

    /// Drops the value: the last strong count has just gone, or this is the sole
    /// handle, still counted, which no other can reach.
    ///
    /// # Safety
    ///
    /// Called once, by the handle whose decrement brought `strong` to zero, after
    /// the `Acquire` fence, or by the only handle of either kind
    /// (`is_only_handle`), which decrements nothing.
    #[cold]
    unsafe fn drop_value(&mut self) {
        let inner = self.ptr.as_ptr();
        #[cfg(switchboard_loom)]
        // SAFETY: the allocation is alive: the implicit weak count is ours.
        unsafe { &(*inner).uses }.with_mut(|_| ());
        // Gives up the implicit weak count after the value's drop, or while its
        // panic unwinds, as `std`'s `Arc` does: otherwise a panicking drop would
        // leak the allocation.
        let _implicit_weak = ImplicitWeak(inner);
        // SAFETY: no other strong handle is left (the sole handle is this one),
        // so nothing else reaches the value (weak handles touch only the counts),
        // and this runs once.
        unsafe { ManuallyDrop::drop(&mut *ptr::addr_of_mut!((*inner).value)) };
    }
}

/// The weak count the strong handles hold together, given up when dropped: by
/// the last strong handle, once the value is dropped (or its drop has panicked).
struct ImplicitWeak<T>(*mut Inner<T>);

impl<T> Drop for ImplicitWeak<T> {
    fn drop(&mut self) {
        let inner = self.0;
        // Under loom a panic is a failed model already (loom's report, perhaps
        // from the value's drop); a second one from the counts' cell while it
        // unwinds would abort the run and lose that report.
        #[cfg(switchboard_loom)]
        if std::thread::panicking() {
            return;
        }
        // SAFETY: the allocation is alive: the implicit weak count is ours.
        let weak = unsafe { weak(inner) };
        #[cfg(switchboard_loom)]
        if loom_model::weakened(loom_model::Weakening::Shortcut)
            && weak.load(Ordering::Relaxed) & !EVER_WEAK == 1
        {
            // The canary's broken shortcut: a `Relaxed` load, no fence.
            // SAFETY: not safe: the canary's point (loom only).
            unsafe { free(inner) };
            return;
        }
        // Acquire: a weak handle's `Release` decrement read here happens-before
        // the free. A count of 1 is the implicit one alone: no weak handle is
        // left and none can be made (module docs), so the allocation is ours.
        // Release on the decrement: the value's drop, just above, happens-before
        // the free by the last weak handle, whose `Acquire` fence acquires it.
        if weak.load(Ordering::Acquire) & !EVER_WEAK == 1
            || weak.fetch_sub(1, Ordering::Release) & !EVER_WEAK == 1
        {
            // Acquire: only the decrement path needs it (the load acquired), but
            // the free is rare enough to keep one exit.
            fence(Ordering::Acquire);
            // SAFETY: the last count of either kind is gone, so this is the
            // allocation's only user.
            unsafe { free(inner) };
        }
    }
}

/// Frees the allocation.
///
/// # Safety
///
/// No count of either kind is left: the caller is the allocation's only user, and
/// it came from `Box::leak` in `allocate`.
unsafe fn free<T>(inner: *mut Inner<T>) {
    #[cfg(all(test, not(switchboard_loom)))]
    tests::FREES.with(|n| n.set(n.get() + 1));
    #[cfg(switchboard_loom)]
    // SAFETY: the caller's contract: the allocation is still alive here.
    unsafe { &(*inner).counts }.with_mut(|_| ());
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(inner) });
}

impl<T> Clone for EntryArc<T> {
    #[inline]
    fn clone(&self) -> Self {
        self.count_one_more();
        Self::from_inner(self.ptr)
    }
}

impl<T> Deref for EntryArc<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        let inner = self.inner();
        #[cfg(switchboard_loom)]
        inner.uses.with(|_| ());
        &inner.value
    }
}

impl<T> Drop for EntryArc<T> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(switchboard_loom)]
        if loom_model::weakened(loom_model::Weakening::Release) {
            // The canary's broken count: no `Release`, no fence.
            if self.strong().fetch_sub(1, Ordering::Relaxed) == 1 {
                // SAFETY: not safe: the canary's point (loom only).
                unsafe { self.drop_value() };
            }
            return;
        }
        if self.is_only_handle() {
            // SAFETY: no other handle of either kind exists or can be made (see
            // `is_only_handle`), and its `Acquire` load ordered every other
            // handle's last use before this.
            unsafe { self.drop_value() };
            return;
        }
        // Release: see `Inner::strong`.
        if self.strong().fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Acquire: pairs with every other handle's `Release` decrement.
        fence(Ordering::Acquire);
        // SAFETY: this decrement brought the count to zero, after the fence.
        unsafe { self.drop_value() };
    }
}

/// What the loom model of the count (`loom-tests/tests/entry_arc.rs`) reaches:
/// a handle, and the canary's switch that weakens the count's drop.
#[cfg(switchboard_loom)]
#[doc(hidden)]
pub mod loom_model {
    use std::cell::Cell;
    use std::fmt;

    use super::{EntryArc, EntryWeak};

    /// A step of the count that a canary weakens, to show that a model fails
    /// without it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Weakening {
        /// The strong drop's decrement `Relaxed`, without the `Acquire` fence.
        Release,
        /// The free's shortcut: its load of the weak count `Relaxed`, no fence.
        Shortcut,
        /// The sole-handle drop ignores whether a weak handle was ever made.
        Unique,
        /// The sole-handle drop's load of the strong count `Relaxed`.
        UniqueLoad,
    }

    impl Weakening {
        fn bit(self) -> u8 {
            1 << self as u8
        }
    }

    thread_local! {
        static WEAKENED: Cell<u8> = const { Cell::new(0) };
    }

    /// Weakens (`true`) or restores (`false`) one step, on the calling thread
    /// (loom runs a model's threads on the thread that calls it).
    pub fn weaken(step: Weakening, on: bool) {
        WEAKENED.with(|w| {
            let bits = if on {
                w.get() | step.bit()
            } else {
                w.get() & !step.bit()
            };
            w.set(bits);
        });
    }

    pub(super) fn weakened(step: Weakening) -> bool {
        WEAKENED.with(|w| w.get() & step.bit() != 0)
    }

    /// An [`EntryArc`], for the model.
    pub struct Handle<T>(EntryArc<T>);

    impl<T> Handle<T> {
        /// One handle (`EntryArc::new`).
        pub fn new(value: T) -> Self {
            Self(EntryArc::new(value))
        }

        /// A weak handle to the same value (`EntryArc::downgrade`).
        pub fn downgrade(&self) -> WeakHandle<T> {
            WeakHandle(EntryArc::downgrade(&self.0))
        }

        /// Two handles, counted at the allocation (`EntryArc::new_pair`).
        pub fn pair(value: T) -> (Self, Self) {
            let (a, b) = EntryArc::new_pair(value);
            (Self(a), Self(b))
        }

        /// The value: a use the value's drop must be ordered after.
        pub fn get(&self) -> &T {
            &self.0
        }
    }

    impl<T> Clone for Handle<T> {
        fn clone(&self) -> Self {
            Self(self.0.clone())
        }
    }

    impl<T> fmt::Debug for Handle<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Handle")
        }
    }

    /// An [`EntryWeak`], for the model.
    pub struct WeakHandle<T>(EntryWeak<T>);

    impl<T> WeakHandle<T> {
        /// A strong handle, unless the value has been dropped.
        pub fn upgrade(&self) -> Option<Handle<T>> {
            self.0.upgrade().map(Handle)
        }
    }

    impl<T> fmt::Debug for WeakHandle<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("WeakHandle")
        }
    }
}

/// A handle that does not keep its value alive, as `std`'s `Weak`.
pub(crate) struct EntryWeak<T> {
    ptr: NonNull<Inner<T>>,
}

// SAFETY: as `Weak<T>`: an upgrade on another thread gives an `EntryArc<T>` there.
unsafe impl<T: Send + Sync> Send for EntryWeak<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for EntryWeak<T> {}

impl<T> EntryWeak<T> {
    /// Never a `&Inner<T>`: that would cover the value, which the last strong
    /// handle may be dropping (through `&mut`) on another thread.
    #[inline]
    fn strong(&self) -> &AtomicUsize {
        // SAFETY: this handle's weak count keeps the allocation (not the value)
        // alive, and the projection reaches the count alone.
        unsafe { strong(self.ptr.as_ptr()) }
    }

    #[inline]
    fn weak(&self) -> &AtomicUsize {
        // SAFETY: as `strong`.
        unsafe { weak(self.ptr.as_ptr()) }
    }

    /// A strong handle, unless the value has been dropped.
    pub(crate) fn upgrade(&self) -> Option<EntryArc<T>> {
        let strong = self.strong();
        // Relaxed: a count read only to propose the next one.
        let mut current = strong.load(Ordering::Relaxed);
        loop {
            if current == 0 {
                return None;
            }
            if current > MAX_COUNT {
                std::process::abort();
            }
            // Acquire on success: as `std`'s upgrade, the value's state as the
            // handles that kept it alive left it. Relaxed on failure: retried.
            match strong.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(EntryArc::from_inner(self.ptr)),
                Err(now) => current = now,
            }
        }
    }

    /// The number of strong handles, for tests.
    #[cfg(test)]
    pub(crate) fn strong_count(&self) -> usize {
        self.strong().load(Ordering::Relaxed)
    }
}

impl<T> Drop for EntryWeak<T> {
    fn drop(&mut self) {
        // Release: see `Inner::weak`. The flag is set while any weak handle
        // exists, so the count alone is compared.
        if self.weak().fetch_sub(1, Ordering::Release) & !EVER_WEAK == 1 {
            // Acquire: pairs with the other counts' `Release` decrements.
            fence(Ordering::Acquire);
            // SAFETY: the last count of either kind is gone (the strong handles'
            // implicit one included), so nobody else reaches the allocation.
            unsafe { free(self.ptr.as_ptr()) };
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize as Counter;
    use std::sync::Arc;

    thread_local! {
        /// Allocations freed on this thread (each test runs on its own).
        pub(super) static FREES: Cell<usize> = const { Cell::new(0) };
    }

    fn frees() -> usize {
        FREES.with(Cell::get)
    }

    /// Counts its drops.
    struct Tracked(Arc<Counter>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn tracked() -> (Tracked, Arc<Counter>) {
        let drops = Arc::new(Counter::new(0));
        (Tracked(Arc::clone(&drops)), drops)
    }

    fn drops(counter: &Counter) -> usize {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_pair_holds_two_counts_and_the_last_drop_frees_once() {
        let (value, dropped) = tracked();
        let (a, b) = EntryArc::new_pair(value);
        assert_eq!(EntryArc::strong_count(&a), 2);
        assert!(EntryArc::ptr_eq(&a, &b));
        let c = a.clone();
        assert_eq!(EntryArc::strong_count(&b), 3);
        drop(a);
        drop(b);
        assert_eq!(drops(&dropped), 0, "dropped with a handle left");
        drop(c);
        assert_eq!(drops(&dropped), 1);
    }

    #[test]
    fn raw_round_trips_keep_the_count() {
        let (value, dropped) = tracked();
        let a = EntryArc::new(value);
        let raw = EntryArc::into_raw(a.clone());
        assert_eq!(raw, EntryArc::as_ptr(&a));
        assert_eq!(raw.addr() % 4, 0, "the slot cell's bits need 4-alignment");
        // A byte-aligned value still follows the counts at a `usize` boundary.
        let byte = EntryArc::into_raw(EntryArc::new(0_u8));
        assert_eq!(byte.addr() % std::mem::align_of::<usize>(), 0);
        // SAFETY: the count `into_raw` gave up, taken back once.
        drop(unsafe { EntryArc::from_raw(byte) });
        // SAFETY: `raw` is alive (`a`), and the count added is taken back below.
        unsafe { EntryArc::increment_strong_count(raw) };
        assert_eq!(EntryArc::strong_count(&a), 3);
        // SAFETY: two counts were given up on `raw`; each is taken back once.
        let (b, c) = unsafe { (EntryArc::from_raw(raw), EntryArc::from_raw(raw)) };
        assert!(EntryArc::ptr_eq(&b, &a));
        drop((a, b));
        assert_eq!(drops(&dropped), 0);
        drop(c);
        assert_eq!(drops(&dropped), 1);
    }

    #[test]
    fn a_weak_handle_outlives_the_value_and_frees_the_allocation() {
        let (value, dropped) = tracked();
        let a = EntryArc::new(value);
        let weak = EntryArc::downgrade(&a);
        let up = weak.upgrade().expect("alive");
        assert_eq!(weak.strong_count(), 2);
        drop((a, up));
        assert_eq!(
            drops(&dropped),
            1,
            "the value goes with its last strong handle"
        );
        assert!(weak.upgrade().is_none());
        assert_eq!(weak.strong_count(), 0);
        drop(weak);
    }

    #[test]
    fn dropping_a_weak_handle_gives_its_count_back() {
        let (value, dropped) = tracked();
        let a = EntryArc::new(value);
        drop(EntryArc::downgrade(&a));
        assert_eq!(a.weak().load(Ordering::Relaxed), EVER_WEAK | 1);
        let before = frees();
        drop(a);
        assert_eq!(drops(&dropped), 1);
        assert_eq!(frees() - before, 1, "the allocation leaked");
    }

    /// The sole handle drops without a decrement only while no weak handle was
    /// ever made: once one was, a weak handle may come back as a strong one.
    #[test]
    fn the_sole_handle_frees_once_whether_or_not_a_weak_handle_was_made() {
        for made_weak in [false, true] {
            let (value, dropped) = tracked();
            let (a, b) = EntryArc::new_pair(value);
            let weak = made_weak.then(|| EntryArc::downgrade(&a));
            drop(a);
            let before = frees();
            if let Some(weak) = weak {
                // `b` is the only strong handle, but `weak` still needs the
                // counts: the value goes, the allocation stays.
                drop(b);
                assert_eq!(drops(&dropped), 1);
                assert_eq!(frees() - before, 0, "freed under a weak handle");
                assert!(weak.upgrade().is_none());
                drop(weak);
            } else {
                drop(b);
            }
            assert_eq!(drops(&dropped), 1, "made_weak: {made_weak}");
            assert_eq!(frees() - before, 1, "made_weak: {made_weak}");
        }
    }

    /// Panics when dropped.
    struct Boom;

    impl Drop for Boom {
        fn drop(&mut self) {
            panic!("the value's drop panics");
        }
    }

    #[test]
    fn a_panicking_drop_still_frees_the_allocation() {
        let before = frees();
        let unwound = panic::catch_unwind(AssertUnwindSafe(|| drop(EntryArc::new(Boom))));
        assert!(unwound.is_err(), "the drop's panic reaches the caller");
        assert_eq!(frees() - before, 1, "the allocation leaked");

        // With a weak handle left, the free is that handle's, once.
        let a = EntryArc::new(Boom);
        let weak = EntryArc::downgrade(&a);
        let before = frees();
        assert!(panic::catch_unwind(AssertUnwindSafe(|| drop(a))).is_err());
        assert_eq!(frees() - before, 0, "freed under a weak handle");
        assert!(weak.upgrade().is_none());
        drop(weak);
        assert_eq!(frees() - before, 1, "the weak handle's drop frees");
    }
}
