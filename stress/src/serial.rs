//! The harness's serial numbers for clients: unique within the process, handed out in
//! blocks so that connecting a client writes no cache line the other worker writes too.
//!
//! One shared counter bumped on every connect bounced its line between the two workers
//! on every short-lived client of `churn` and `mixed`: a cost the harness added to every
//! design, more in proportion to the faster ones. Each thread now takes [`BLOCK`] numbers
//! at a time and hands them out on its own. Only uniqueness matters: direct messages name
//! their target by serial, and a serial names one client for the whole run.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Serials a thread takes from the shared counter at once.
pub const BLOCK: u64 = 1024;

/// The first serial of the next block.
///
/// Ordering: `Relaxed`; only uniqueness of the blocks matters.
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's block: the next serial to hand out and the end of the block.
    static MINE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A serial no other call in this process returns.
pub fn next() -> u64 {
    let take = |mine: &Cell<(u64, u64)>| {
        let (next, end) = mine.get();
        if next < end {
            mine.set((next + 1, end));
            return next;
        }
        // Relaxed: see `NEXT_BLOCK`.
        let start = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
        mine.set((start + 1, start + BLOCK));
        start
    };
    // During thread teardown the slot is gone: a block of one, still unique.
    MINE.try_with(take)
        .unwrap_or_else(|_| NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn serials_are_unique_across_threads_and_blocks() {
        let per_thread = 3 * BLOCK as usize + 7;
        let all: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(move || (0..per_thread).map(|_| next()).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(all.len(), 4 * per_thread);
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "a serial was handed out twice");
    }
}
