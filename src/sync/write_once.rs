//! [`WriteOnce`]: a cell written at most once, then read without locks.
//!
//! `std`'s `OnceLock` runs every `set` through `Once`'s state machine (a closure
//! call, a futex word, a wake check): about a hundred instructions, paid by every
//! session join for its member cell and again for each member a compaction copies.
//! This cell's `set` is one compare-and-swap to claim it, the write, and one
//! release store; its `get` is one acquire load, as `OnceLock`'s is. Unlike
//! `OnceLock`, it is built on the facade's atomics and [`UnsafeCell`], so loom
//! checks every write and read of it.
#![allow(
    unsafe_code,
    reason = "the value is written through a raw pointer once; see each SAFETY"
)]

use std::mem::MaybeUninit;

use super::{AtomicU32, Ordering, UnsafeCell};

/// No value, and no writer has claimed the cell.
const EMPTY: u32 = 0;
/// A writer claimed the cell and is writing the value.
const WRITING: u32 = 1;
/// The value is written and published.
const READY: u32 = 2;

/// A cell that is set at most once and read by any thread after that.
pub(crate) struct WriteOnce<T> {
    /// `EMPTY`, then `WRITING`, then `READY`; never back.
    ///
    /// Ordering: the claim is a `Relaxed` CAS: RMWs on one word are totally
    /// ordered, so exactly one writer wins whatever the ordering, and the claim
    /// publishes nothing. `READY` is stored with `Release` after the value is
    /// written and read with `Acquire` before the value is read, which makes the
    /// write visible to every reader that sees `READY`.
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

    /// Stores `value` if the cell is empty; gives it back if it was already set
    /// (or is being set by another thread).
    pub(crate) fn set(&self, value: T) -> Result<(), T> {
        // Relaxed: see `state`.
        if self
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Err(value);
        }
        // SAFETY: the CAS above moved the state from EMPTY to WRITING, which happens
        // once, so this thread is the only writer ever; readers read only after
        // seeing READY, stored below, so none reads while this writes.
        self.value.with_mut(|slot| unsafe { (*slot).write(value) });
        // Release: see `state`.
        self.state.store(READY, Ordering::Release);
        Ok(())
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
    fn set_once_then_refuses() {
        let cell = WriteOnce::new();
        assert_eq!(cell.get(), None);
        assert_eq!(cell.set(1), Ok(()));
        assert_eq!(cell.set(2), Err(2));
        assert_eq!(cell.get(), Some(&1));
    }

    #[test]
    fn drops_its_value_once_and_only_if_set() {
        let value = Arc::new(());
        let cell = WriteOnce::new();
        assert!(cell.set(Arc::clone(&value)).is_ok());
        assert_eq!(Arc::strong_count(&value), 2);
        drop(cell);
        assert_eq!(Arc::strong_count(&value), 1);
        drop(WriteOnce::<Arc<()>>::new());
    }

    #[test]
    fn racing_setters_store_one_value_that_every_reader_sees() {
        let cell = Arc::new(WriteOnce::new());
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let cell = Arc::clone(&cell);
                std::thread::spawn(move || (cell.set(n).is_ok(), cell.get().copied()))
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or((false, None)))
            .collect();
        assert_eq!(results.iter().filter(|(won, _)| *won).count(), 1);
        let stored = cell.get().copied();
        assert!(stored.is_some());
        for (won, seen) in results {
            if won {
                assert_eq!(seen, stored);
            }
        }
    }
}
