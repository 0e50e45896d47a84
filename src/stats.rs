//! Delivery counters, striped so that no counter is a point of contention.

use std::cell::Cell;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

const STRIPES: usize = 16;

/// A `u64` counter split over cache-padded stripes; each thread adds to its own.
pub(crate) struct StripedCounter {
    /// Ordering: `Relaxed`; counts synchronise nothing and are summed for reports.
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

thread_local! {
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn stripe() -> usize {
    STRIPE.with(|s| {
        s.get().unwrap_or_else(|| {
            let pick = crate::shard::home(STRIPES);
            s.set(Some(pick));
            pick
        })
    })
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n != 0 {
            // Relaxed: see `stripes`.
            self.stripes[stripe()].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn sum(&self) -> u64 {
        // Relaxed: see `stripes`.
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// Running totals of what the registry delivered.
pub(crate) struct Counters {
    pub(crate) delivered: StripedCounter,
    pub(crate) dropped: StripedCounter,
    pub(crate) closed: StripedCounter,
    pub(crate) disconnected: StripedCounter,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            delivered: StripedCounter::new(),
            dropped: StripedCounter::new(),
            closed: StripedCounter::new(),
            disconnected: StripedCounter::new(),
        }
    }
}

/// A point-in-time view of the registry's size and delivery totals.
///
/// Totals count since the registry was built. Each figure is read separately, so
/// under concurrent traffic they describe slightly different instants.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
#[must_use = "a stats snapshot does nothing unless read"]
pub struct Stats {
    /// Connected clients.
    pub clients: usize,
    /// Connected clients of kind device.
    pub devices: usize,
    /// Connected clients of kind orchestrator.
    pub orchestrators: usize,
    /// Connected clients per platform (lowercased), sorted by platform.
    pub by_platform: Vec<(String, usize)>,
    /// Open sessions.
    pub sessions: usize,
    /// Open tasks.
    pub tasks: usize,
    /// Messages queued to a client, by `send` or a broadcast.
    pub delivered: u64,
    /// Broadcast messages skipped because the member's channel was full.
    pub dropped: u64,
    /// Messages not delivered because the client's channel had closed.
    pub closed: u64,
    /// Clients disconnected by the slow-consumer policy.
    pub disconnected: u64,
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = StripedCounter::new();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| c.add(1)));
            }
        });
        c.add(0);
        assert_eq!(c.sum(), 8000);
    }
}
