//! [`WriteOnce`]: a cell written at most once, then read without locks.
//!
//! `std`'s `OnceLock` runs every `set` through `Once`'s state machine (a closure
//! call, a futex word, a wake check): about a hundred instructions. This cell is
//! set by a writer that won the right to set it elsewhere (the channel's close
//! reason: the RMW that closed the channel), so setting it is the write and one
//! release store, no locked instruction; its `get` is one acquire load, as
//! `OnceLock`'s is. It is built on the facade's atomics and [`UnsafeCell`], so
//! loom checks every write and read of it.
#![allow(
    unsafe_code,
    reason = "the value is written through a raw pointer once; see each SAFETY"
)]

use std::mem::MaybeUninit;

use super::{AtomicU32, Ordering, UnsafeCell};

/// No value, and no writer has claimed the cell.
const EMPTY: u32 = 0;
/// The value is written and published.
const READY: u32 = 1;

/// A cell that is set at most once and read by any thread after that.
pub(crate) struct WriteOnce<T> {
    /// `EMPTY`, then `READY`; never back.
    ///
    /// Ordering: `READY` is stored with `Release` after the value is written and
    /// read with `Acquire` before the value is read, which makes the write visible
    /// to every reader that sees `READY`.
    state: AtomicU32,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the cell hands out `&T` to any thread (so `T: Sync`) and the value may be
// set on one thread and dropped on another (so `T: Send`); the state word orders
// the one write before every read.
unsafe impl<T: Send + Sync> Sync for WriteOnce<T> {}
// SAFETY: moving the cell moves its `T`.
unsafe impl<T: Send> Send for WriteOnce<T> {}

impl<T> WriteOnce<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU32::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores `value` and publishes it.
    ///
    /// # Safety
    ///
    /// The caller is the only thread that ever sets this cell, and sets it once:
    /// it won that right by other means (the channel's closing RMW). A second or
    /// racing writer would race readers of the value.
    pub(crate) unsafe fn set_unique(&self, value: T) {
        // Relaxed: a check of the caller's promise only; the caller's own claim
        // ordered every earlier access to the cell before this.
        debug_assert_eq!(self.state.load(Ordering::Relaxed), EMPTY);
        // SAFETY: the caller is the cell's only writer, once (the contract above);
        // readers read only after seeing READY, stored below, so none reads while
        // this writes.
        self.value.with_mut(|slot| unsafe { (*slot).write(value) });
        // Release: see `state`.
        self.state.store(READY, Ordering::Release);
    }

    /// The value, once it is set.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire: see `state`.
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY was stored after the value was written, with Release, and
        // the Acquire load above saw it, so the value is initialised and its write
        // visible. It is never written again, and is dropped only with `&mut self`,
        // which cannot coexist with the returned borrow of `self`.
        Some(self.value.with(|slot| unsafe { (*slot).assume_init_ref() }))
    }
}

impl<T> Drop for WriteOnce<T> {
    fn drop(&mut self) {
        // `&mut self`: no other thread is left, so a plain read of the word will
        // do (and is no scheduling point for loom, which a session's teardown of
        // dozens of cells would otherwise multiply).
        #[cfg(not(switchboard_loom))]
        let state = *self.state.get_mut();
        #[cfg(switchboard_loom)]
        let state = self.state.with_mut(|state| *state);
        if state == READY {
            // SAFETY: READY means the value was written; `&mut self` means no reader
            // holds a borrow, and the value is dropped exactly once, here.
            self.value
                .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unset_reads_none_then_the_value() {
        let cell = WriteOnce::new();
        assert_eq!(cell.get(), None);
        // SAFETY: the test is the cell's only writer, once.
        unsafe { cell.set_unique(1) };
        assert_eq!(cell.get(), Some(&1));
    }

    #[test]
    fn drops_its_value_once_and_only_if_set() {
        let value = Arc::new(());
        let cell = WriteOnce::new();
        // SAFETY: the test is the cell's only writer, once.
        unsafe { cell.set_unique(Arc::clone(&value)) };
        assert_eq!(Arc::strong_count(&value), 2);
        drop(cell);
        assert_eq!(Arc::strong_count(&value), 1);
        drop(WriteOnce::<Arc<()>>::new());
    }
}
