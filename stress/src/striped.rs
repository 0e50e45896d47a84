//! Counters split over cache-padded stripes, so that hot paths on different threads never
//! share a cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Stripes per counter; more than the cores this harness expects.
pub const STRIPES: usize = 16;

thread_local! {
    /// This thread's stripe; const-initialised and destructor-free, so the counting
    /// allocator may read it too.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Hands out stripe numbers to threads in turn.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's stripe, in `0..STRIPES`. Never allocates.
#[inline]
pub fn thread_stripe() -> usize {
    STRIPE
        .try_with(|s| {
            let mine = s.get();
            if mine != usize::MAX {
                return mine;
            }
            // Relaxed: only uniqueness of the ticket matters.
            let pick = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(pick);
            pick
        })
        // During thread teardown the slot is gone; any stripe is correct, just shared.
        .unwrap_or(0)
}

/// A `u64` counter each thread adds to on its own stripe.
#[derive(Debug)]
pub struct Striped {
    /// Ordering: `Relaxed`; counts synchronise nothing and are read once the threads that
    /// wrote them have been joined or paused.
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

impl Default for Striped {
    fn default() -> Self {
        Self::new()
    }
}

impl Striped {
    /// A counter at zero; `const` so it can be a `static`.
    pub const fn new() -> Self {
        Self {
            stripes: [const { CachePadded::new(AtomicU64::new(0)) }; STRIPES],
        }
    }

    /// Adds `n` on the calling thread's stripe.
    #[inline]
    pub fn add(&self, n: u64) {
        if n != 0 {
            // Relaxed: see `stripes`.
            self.stripes[thread_stripe()].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sum of every stripe.
    pub fn get(&self) -> u64 {
        // Relaxed: see `stripes`.
        self.stripes
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_threads() {
        let counter = Striped::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| counter.add(2)));
            }
        });
        counter.add(0);
        assert_eq!(counter.get(), 8000);
    }
}
