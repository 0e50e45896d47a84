//! Exact live heap bytes from a counting global allocator, and RSS beside them.
//!
//! Allocators keep freed pages, so RSS says little about leaks; the harness judges memory by
//! live heap bytes only, counted here on every allocation and free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use crossbeam_utils::CachePadded;

use crate::striped::{thread_stripe, STRIPES};

/// The system allocator, with a count of the bytes it has handed out and not got back.
#[derive(Debug)]
pub struct Counting;

/// Live bytes per stripe; a stripe may go negative when memory is freed on another thread
/// than the one that allocated it, but the sum is exact.
///
/// Ordering: `Relaxed`; the counts synchronise nothing and are read at quiescent points.
static LIVE: [CachePadded<AtomicI64>; STRIPES] =
    [const { CachePadded::new(AtomicI64::new(0)) }; STRIPES];

#[inline]
fn track(delta: i64) {
    // Relaxed: see `LIVE`. `thread_stripe` never allocates, so this cannot recurse.
    LIVE[thread_stripe()].fetch_add(delta, Ordering::Relaxed);
}

#[inline]
fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are ours; the bookkeeping beside it touches only atomics and a
// const-initialised thread-local, and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(signed(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(signed(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator with `layout`, and
        // every pointer this allocator hands out came from `System`.
        unsafe { System.dealloc(ptr, layout) };
        track(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; `new_size` is the caller's, checked by its contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(signed(new_size) - signed(layout.size()));
        }
        new
    }
}

/// Bytes currently allocated on the heap by this process (through Rust's allocator).
pub fn live_bytes() -> i64 {
    // Relaxed: see `LIVE`.
    LIVE.iter().map(|s| s.load(Ordering::Relaxed)).sum()
}

/// Gives every runtime worker's pending frees the chance to run, and returns the live
/// heap after it and the bytes it freed.
///
/// switchboard frees an unregistered client's entry through the epoch, handed over 64
/// at a time per thread (see its `bench_support` "Leak checks"), so a teardown leaves
/// up to 63 entries waiting on each worker, and handed-over ones waiting for the epoch
/// to advance. A leak check taken at once would judge those pending frees, whose
/// amount depends on how far each thread's batch had filled; this releases them on
/// every worker first (small tasks until each worker has run one, four rounds so the
/// epoch advances past every handed-over batch), so the check judges leaks. What it
/// freed is returned to be reported beside the check.
pub async fn settle() -> (i64, i64) {
    let before = live_bytes();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _round in 0..4 {
        switchboard::bench_support::release_thread_garbage();
        let mut seen = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while seen.len() < workers && std::time::Instant::now() < deadline {
            let tasks: Vec<_> = (0..workers * 4)
                .map(|_| {
                    tokio::spawn(async {
                        switchboard::bench_support::release_thread_garbage();
                        std::thread::current().id()
                    })
                })
                .collect();
            for task in tasks {
                if let Ok(id) = task.await {
                    seen.insert(id);
                }
            }
            if seen.len() < workers {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
    let after = live_bytes();
    (after, before - after)
}

/// Resident set size from `/proc/self/statm`, or `None` where there is none.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * page_size())
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: `sysconf` reads a constant of the system and has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

/// Heap and RSS at one instant.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Footprint {
    /// Live heap bytes.
    pub heap: i64,
    /// Resident set size, if known.
    pub rss: Option<u64>,
}

impl Footprint {
    /// Measures now.
    pub fn now() -> Self {
        Self {
            heap: live_bytes(),
            rss: rss_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vec_shows_up_and_goes_away() {
        // The counter is global and other tests allocate on other threads, so one
        // measurement can be off by their noise; one clean attempt out of many proves
        // the counter counts, while a broken counter fails every attempt.
        const MIB: i64 = 1 << 20;
        let mut seen = Vec::new();
        for _ in 0..50 {
            let before = live_bytes();
            let block = vec![7u8; MIB as usize];
            let during = live_bytes();
            drop(block);
            let after = live_bytes();
            let grew = during - before;
            if (MIB - (64 << 10)..MIB + (256 << 10)).contains(&grew)
                && (after - before).abs() < 256 << 10
            {
                return;
            }
            seen.push((before, during, after));
            std::thread::yield_now();
        }
        panic!("no clean measurement of a 1 MiB block: {seen:?}");
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|r| r > 0));
        }
    }
}
