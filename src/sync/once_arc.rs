//! [`OnceArc`]: an [`EntryArc`] set at most once, held in one pointer-sized word.
//!
//! A session's member cell holds one of these beside its removal stamp. A
//! [`WriteOnce`](super::WriteOnce) of an `EntryArc` would take a state word of its own,
//! padded to 16 bytes, before the pointer; here the pointer is the state (null until
//! set), so the cell is 16 bytes in all and a broadcast walks half the memory. The
//! value is the `EntryArc`'s own pointer (`EntryArc::into_raw`): setting allocates nothing.
//!
//! The std and loom builds share this code over the facade's `EntryArc` and `AtomicPtr`,
//! so loom checks the publication; the pointee is an `EntryArc` built before `set`.
#![allow(
    unsafe_code,
    reason = "the cell owns a strong count through a raw pointer; see each SAFETY"
)]

use std::marker::PhantomData;
use std::ptr;

use super::{AtomicPtr, EntryArc, Ordering};

/// An `Option<EntryArc<T>>` that goes from `None` to `Some` at most once.
pub(crate) struct OnceArc<T> {
    /// Null, or a pointer from `EntryArc::into_raw` whose strong count the cell owns
    /// until it drops.
    ///
    /// Ordering: set with a `Release` store over null, read with `Acquire`: the
    /// pair makes everything the setter did before (building the `EntryArc`) visible to
    /// a reader that sees the pointer. Setters never race (see `set`), so no RMW
    /// is needed to pick one.
    ptr: AtomicPtr<T>,
    /// Send and Sync exactly when `EntryArc<T>` is.
    _owns: PhantomData<EntryArc<T>>,
}

impl<T> OnceArc<T> {
    pub(crate) fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Stores `value` if the cell is empty; gives it back if it was already set.
    ///
    /// The caller never races another setter on this cell (a session's writer
    /// sets cells under its lock), so this is a load and a store, where a
    /// compare-and-swap would be a locked instruction on x86. Readers may race it:
    /// they see null or the whole value. Were two setters to race after all, both
    /// could store and the first value's count would leak (its readers' borrows
    /// stay valid): wrong, but not unsound.
    pub(crate) fn set(&self, value: EntryArc<T>) -> Result<(), EntryArc<T>> {
        // Relaxed: the caller orders this load after every earlier store to the
        // cell (they were its own, or made under the lock it holds).
        if !self.ptr.load(Ordering::Relaxed).is_null() {
            return Err(value);
        }
        let raw = EntryArc::into_raw(value).cast_mut();
        // Release: see `ptr`.
        self.ptr.store(raw, Ordering::Release);
        Ok(())
    }

    /// The value, once it is set.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire: see `ptr`.
        let current = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `EntryArc::into_raw` in `set`, and the
        // cell's strong count on it is released only by `Drop`, which needs
        // `&mut self` and so cannot run while this borrow of `self` lives. The
        // pointer is never replaced once set.
        unsafe { current.cast_const().as_ref() }
    }
}

impl<T> OnceArc<T> {
    /// Writes into this empty cell the value `from` holds, without a count of its
    /// own: the copy borrows `from`'s count until the caller settles it. Saves a
    /// compaction a locked increment per member it copies, and the decrement when
    /// the replaced cell goes, where the old cell can hand its count over. False,
    /// and nothing written, if `from` is empty or this cell is not.
    ///
    /// As [`set`](Self::set), the caller never races another setter on this cell.
    ///
    /// # Safety
    ///
    /// Until the copy is settled, nothing may release `from`'s count (drop or
    /// take it) nor drop this cell. The caller settles it exactly once, with
    /// [`hand_over`](Self::hand_over) on `from` (this cell keeps `from`'s count) or
    /// [`count_copy`](Self::count_copy) on `from` (this cell gets a count of its
    /// own).
    pub(crate) unsafe fn set_copy(&self, from: &OnceArc<T>) -> bool {
        // Relaxed, both: the caller orders them after every earlier store to
        // either cell (its own, or made under the lock it holds).
        let value = from.ptr.load(Ordering::Relaxed);
        if value.is_null() || !self.ptr.load(Ordering::Relaxed).is_null() {
            return false;
        }
        // Release: see `ptr`.
        self.ptr.store(value, Ordering::Release);
        true
    }

    /// Gives a copy that [`set_copy`](Self::set_copy) made from this cell a count
    /// of its own. Called once per copy when this cell keeps its own count
    /// (a reader still holds it); a spare call leaks the value, nothing worse.
    pub(crate) fn count_copy(&self) {
        // Relaxed: as in `set_copy`.
        let current = self.ptr.load(Ordering::Relaxed);
        if !current.is_null() {
            // SAFETY: the pointer came from `EntryArc::into_raw` and the cell holds a
            // count on it while `&self` lives, so the value is alive.
            unsafe { EntryArc::increment_strong_count(current.cast_const()) };
        }
    }

    /// Empties the cell and hands back its raw pointer with the count it held:
    /// `&mut self`, so no reader is left.
    fn empty(&mut self) -> *mut T {
        #[cfg(not(switchboard_loom))]
        let current = std::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        #[cfg(switchboard_loom)]
        let current = self
            .ptr
            .with_mut(|ptr| std::mem::replace(ptr, ptr::null_mut()));
        current
    }

    /// Empties the cell without releasing its count, which passes to the copy
    /// [`set_copy`](Self::set_copy) made from it; false if the cell was empty.
    /// `&mut self`, so no reader is left. Without a copy, this leaks the value.
    pub(crate) fn hand_over(&mut self) -> bool {
        let current = self.empty();
        !current.is_null()
    }

    /// Empties the cell and hands back its value: `&mut self`, so no reader is left.
    pub(crate) fn take(&mut self) -> Option<EntryArc<T>> {
        let current = self.empty();
        if current.is_null() {
            return None;
        }
        // SAFETY: the pointer came from `EntryArc::into_raw` in `set`, whose count the
        // cell owned; the cell is now null, so the count passes to the returned
        // `EntryArc` and `Drop` will not release it again.
        Some(unsafe { EntryArc::from_raw(current.cast_const()) })
    }
}

impl<T> Drop for OnceArc<T> {
    fn drop(&mut self) {
        // `&mut self`: no other thread is left, so a plain read of the word will
        // do (and is no scheduling point for loom).
        #[cfg(not(switchboard_loom))]
        let current = *self.ptr.get_mut();
        #[cfg(switchboard_loom)]
        let current = self.ptr.with_mut(|ptr| *ptr);
        if !current.is_null() {
            // SAFETY: the pointer came from `EntryArc::into_raw` in `set`, whose count the
            // cell owns; `&mut self` means no borrow from `get` is alive, and this
            // runs once.
            drop(unsafe { EntryArc::from_raw(current.cast_const()) });
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn set_once_then_refuses_and_gives_the_value_back() {
        let cell = OnceArc::new();
        assert_eq!(cell.get(), None);
        assert!(cell.set(EntryArc::new(1)).is_ok());
        let refused = cell.set(EntryArc::new(2));
        assert_eq!(refused.err().as_deref(), Some(&2));
        assert_eq!(cell.get(), Some(&1));
    }

    #[test]
    fn holds_one_count_and_drops_it_once() {
        let value = EntryArc::new(());
        let cell = OnceArc::new();
        assert!(cell.set(EntryArc::clone(&value)).is_ok());
        assert_eq!(EntryArc::strong_count(&value), 2);
        assert!(cell.set(EntryArc::clone(&value)).is_err());
        assert_eq!(
            EntryArc::strong_count(&value),
            2,
            "a refused value is not leaked"
        );
        drop(cell);
        assert_eq!(EntryArc::strong_count(&value), 1);
        drop(OnceArc::<()>::new());
    }

    #[test]
    fn a_copy_takes_the_count_its_source_hands_over() {
        let value = EntryArc::new(());
        let mut from = OnceArc::new();
        assert!(from.set(EntryArc::clone(&value)).is_ok());
        let copy = OnceArc::new();
        // SAFETY: settled below, by `hand_over`, before either cell drops.
        assert!(unsafe { copy.set_copy(&from) });
        assert_eq!(EntryArc::strong_count(&value), 2, "a copy takes no count");
        assert!(from.hand_over());
        assert!(!from.hand_over(), "handed over twice");
        drop(from);
        assert_eq!(
            EntryArc::strong_count(&value),
            2,
            "the source released its count"
        );
        assert!(copy.get().is_some());
        drop(copy);
        assert_eq!(EntryArc::strong_count(&value), 1);
    }

    #[test]
    fn a_counted_copy_and_its_source_each_release_one() {
        let value = EntryArc::new(());
        let from = OnceArc::new();
        assert!(from.set(EntryArc::clone(&value)).is_ok());
        let copy = OnceArc::new();
        // SAFETY: settled below, by `count_copy`, before either cell drops.
        assert!(unsafe { copy.set_copy(&from) });
        from.count_copy();
        assert_eq!(EntryArc::strong_count(&value), 3);
        drop(from);
        drop(copy);
        assert_eq!(EntryArc::strong_count(&value), 1);
        let empty = OnceArc::<()>::new();
        // SAFETY: nothing is copied from an empty cell, so nothing to settle.
        assert!(!unsafe { OnceArc::new().set_copy(&empty) });
    }

    #[test]
    fn one_word() {
        assert_eq!(
            std::mem::size_of::<OnceArc<u64>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn take_moves_the_value_out_once() {
        let value = EntryArc::new(());
        let mut cell = OnceArc::new();
        assert!(cell.take().is_none());
        assert!(cell.set(EntryArc::clone(&value)).is_ok());
        let taken = cell.take();
        assert!(taken.as_ref().is_some_and(|t| EntryArc::ptr_eq(t, &value)));
        assert!(cell.take().is_none(), "taken twice");
        assert!(cell.get().is_none());
        drop(cell);
        assert_eq!(
            EntryArc::strong_count(&value),
            2,
            "the cell dropped a taken value"
        );
        drop(taken);
        assert_eq!(EntryArc::strong_count(&value), 1);
    }
}
