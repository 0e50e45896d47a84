//! [`SpinLock`]: a lock for data that is almost never contended, whose unlock is a
//! plain store.
//!
//! `std`'s mutex releases with a swap, to learn whether a waiter is parked and
//! needs a futex wake; on x86 that swap is a locked instruction, about as dear as
//! the compare-and-swap that took the lock (4–6 ns each on the 2-vCPU EPYC the
//! benches run on). A lock that never parks has no waiter to learn about, so it
//! releases with a `Release` store, an ordinary `mov`. The price is the waiting:
//! a waiter spins, then yields its CPU in a loop ([`spin_wait`]) instead of
//! sleeping, so this is only for sections that are short, such as a shard's
//! allocator and a session's writer (a join or a leave: a few dozen instructions;
//! broadcasts read without it). A client's own bookkeeping has the same kind of
//! lock without a word of its own: its slot's lock bit (`sync/slot_cell.rs`), which
//! waits the same way.
//!
//! Some sections are longer than that, rarely: an attach holds its client's lock
//! (the slot bit) across the session directory's insert (which, resizing, copies the
//! table) and the join (which may compact a large session); a session's compaction holds
//! its writer lock for O(live members), once per more than that many leaves; a
//! shard's allocator lock is held while it builds a new page, and pages double. A
//! waiter on any of them yields its CPU in a loop meanwhile, where `std`'s mutex
//! would sleep. Spinning a bounded number of times and then parking would cap that,
//! at the price of the release's swap this lock exists to save.
//!
//! Under loom it is loom's mutex, as `std`'s mutex is: a spinning waiter makes
//! every execution as long as its spins, and loom's models then passed their
//! 5 000-step bound (and ran for more than five minutes under a bound of 100 000).
//! The models check what the callers do under mutual exclusion, which is the
//! same for either lock; the lock's own two orderings are the textbook pair
//! (see `word`), and the std tests below check its exclusion on real threads.
#![allow(
    unsafe_code,
    reason = "the guard hands out the cell's data while the lock word says it holds it; see each SAFETY"
)]

#[cfg(switchboard_loom)]
pub(crate) use loom_lock::SpinLock;
#[cfg(not(switchboard_loom))]
pub(crate) use spin::SpinLock;

#[cfg(not(switchboard_loom))]
mod spin {
    use std::marker::PhantomData;
    use std::ops::{Deref, DerefMut};

    use crate::sync::{spin_wait, AtomicU32, Ordering, UnsafeCell};

    const UNLOCKED: u32 = 0;
    const LOCKED: u32 = 1;

    /// Mutual exclusion without parking: see the module docs.
    pub(crate) struct SpinLock<T> {
        /// `LOCKED` while a guard lives.
        ///
        /// Ordering: taken with an `Acquire` compare-and-swap, released with a
        /// `Release` store. The pair orders every access of one holder before every
        /// access of the next; the CAS (an RMW, so on the word's one modification
        /// order) lets exactly one taker in at a time.
        word: AtomicU32,
        data: UnsafeCell<T>,
    }

    // SAFETY: the lock hands `&mut T` to one thread at a time, as `std`'s `Mutex` does,
    // so it may move and share `T: Send` across threads.
    unsafe impl<T: Send> Send for SpinLock<T> {}
    // SAFETY: as above.
    unsafe impl<T: Send> Sync for SpinLock<T> {}

    impl<T> SpinLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self {
                word: AtomicU32::new(UNLOCKED),
                data: UnsafeCell::new(value),
            }
        }

        /// Takes the lock, waiting (spinning, then yielding) while another holds it.
        #[inline]
        pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
            // Acquire on success: see `word`. Relaxed on failure: nothing is read.
            if self
                .word
                .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                self.lock_contended();
            }
            SpinGuard {
                lock: self,
                _data: PhantomData,
            }
        }

        #[cold]
        fn lock_contended(&self) {
            let mut spins = 0;
            loop {
                // Relaxed: only a hint of when to retry; the CAS below acquires.
                if self.word.load(Ordering::Relaxed) == UNLOCKED
                    && self
                        .word
                        .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    return;
                }
                spin_wait(&mut spins);
            }
        }
    }

    /// Holds a [`SpinLock`]; releases it on drop, panics included.
    pub(crate) struct SpinGuard<'a, T> {
        lock: &'a SpinLock<T>,
        /// Makes the guard `Sync` only when `T` is, as `std`'s `MutexGuard`: a shared
        /// guard hands out `&T`, and `&SpinLock<T>` alone would be `Sync` for any
        /// `T: Send` (a `Cell` among them).
        _data: PhantomData<&'a mut T>,
    }

    impl<T> Deref for SpinGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            // SAFETY: this guard holds the lock (`word` is `LOCKED` by its CAS and only
            // its drop stores `UNLOCKED`), so no other reference to the data exists.
            self.lock.data.with(|data| unsafe { &*data })
        }
    }

    impl<T> DerefMut for SpinGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`; `&mut self` makes this the guard's only borrow.
            self.lock.data.with_mut(|data| unsafe { &mut *data })
        }
    }

    impl<T> Drop for SpinGuard<'_, T> {
        fn drop(&mut self) {
            // Release: see `word`. A store, not a swap: no waiter sleeps, so there is
            // nobody to wake and nothing to learn from the old value.
            self.lock.word.store(UNLOCKED, Ordering::Release);
        }
    }
}

#[cfg(switchboard_loom)]
mod loom_lock {
    use crate::sync::{lock, Mutex, MutexGuard};

    /// Loom's mutex behind the std build's API: see the module docs.
    pub(crate) struct SpinLock<T>(Mutex<T>);

    /// Holds a [`SpinLock`].
    pub(crate) type SpinGuard<'a, T> = MutexGuard<'a, T>;

    impl<T> SpinLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
            lock(&self.0)
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;
    use crate::sync::Arc;

    #[test]
    fn a_taker_waits_for_the_holder() {
        let lock = Arc::new(SpinLock::new(0));
        let held = lock.lock();
        let taker = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || *lock.lock() += 1)
        };
        // Time for the taker to get in, were the lock not held; a slow machine
        // can only make this pass wrongly, never fail wrongly.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(*held, 0, "the taker got in while the lock was held");
        drop(held);
        assert!(taker.join().is_ok());
        assert_eq!(*lock.lock(), 1);
    }

    #[test]
    fn a_panicking_holder_releases_it() {
        let lock = SpinLock::new(1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = lock.lock();
            panic!("holder fails");
        }));
        assert!(caught.is_err());
        assert_eq!(*lock.lock(), 1);
    }
}
