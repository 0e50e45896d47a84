//! Delivery latency: striped `hdrhistogram`s filled by receiver tasks, harvested into totals
//! and into per-tick slices for the chart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::striped::thread_stripe;

/// Largest latency kept exactly, in nanoseconds (60 s); longer ones saturate to it.
const MAX_NS: u64 = 60_000_000_000;
/// Two significant digits: 1 % resolution in 30 KB per histogram.
const SIGFIG: u8 = 2;
/// Histograms per recorder; threads share one when there are more threads than this.
const STRIPES: usize = 8;

/// A fresh latency histogram in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_NS, SIGFIG) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts; this arm never runs.
        Err(e) => unreachable!("constant histogram bounds rejected: {e}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A histogram stays consistent even if a holder panicked mid-record.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One scenario's latencies for one contender.
#[derive(Debug)]
pub struct Recorder {
    /// Scenario that owns it.
    pub scenario: &'static str,
    /// Contender whose receivers record into it.
    pub contender: &'static str,
    /// Filled by receivers, one per thread stripe, emptied at each harvest.
    fresh: Box<[CachePadded<Mutex<Histogram<u64>>>]>,
    /// Everything harvested so far.
    total: Mutex<Histogram<u64>>,
    /// While set, deliveries are not recorded (FANOUT's bursts, whose queueing would swamp
    /// the latency of everything else). Relaxed: set and cleared around phases the
    /// scenario waits out, and a record near the edge is harmless either way.
    paused: AtomicBool,
}

impl Recorder {
    /// An empty recorder. Allocates all it will ever need now, so that heap checks around a
    /// run do not see it grow.
    pub fn new(scenario: &'static str, contender: &'static str) -> Self {
        Self {
            scenario,
            contender,
            fresh: (0..STRIPES)
                .map(|_| CachePadded::new(Mutex::new(histogram())))
                .collect(),
            total: Mutex::new(histogram()),
            paused: AtomicBool::new(false),
        }
    }

    /// Stops (`true`) or resumes (`false`) recording.
    pub fn pause(&self, paused: bool) {
        // Relaxed: see `paused`.
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Records one delivery that took `ns` nanoseconds, unless paused.
    #[inline]
    pub fn record(&self, ns: u64) {
        // Relaxed: see `paused`.
        if self.paused.load(Ordering::Relaxed) {
            return;
        }
        lock(&self.fresh[thread_stripe() % STRIPES]).saturating_record(ns.max(1));
    }

    /// Moves everything recorded since the last harvest into the total and into `slice`.
    pub fn harvest(&self, slice: &mut Histogram<u64>) {
        let mut total = lock(&self.total);
        for stripe in self.fresh.iter() {
            let mut fresh = lock(stripe);
            if fresh.is_empty() {
                continue;
            }
            // Same bounds everywhere, so adding cannot fail.
            let _ = total.add(&*fresh);
            let _ = slice.add(&*fresh);
            fresh.reset();
        }
    }

    /// Harvests, then summarises everything recorded.
    pub fn summary(&self) -> Percentiles {
        let mut scratch = histogram();
        self.harvest(&mut scratch);
        Percentiles::of(&lock(&self.total))
    }

    /// Adds the total into `into`.
    pub fn add_total_to(&self, into: &mut Histogram<u64>) {
        let _ = into.add(&*lock(&self.total));
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Deliveries measured.
    #[serde(skip)]
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Summarises a histogram of nanoseconds; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.011
    }

    #[test]
    fn a_paused_recorder_records_nothing() {
        let r = Recorder::new("s", "c");
        r.pause(true);
        r.record(1_000);
        assert_eq!(r.summary().count, 0);
        r.pause(false);
        r.record(1_000);
        assert_eq!(r.summary().count, 1);
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).ok();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert!(close(p.max, 1000.0), "{p:?}");
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn harvest_moves_records_once() {
        let rec = Recorder::new("t", "c");
        rec.record(2_000);
        rec.record(4_000);
        let mut slice = histogram();
        rec.harvest(&mut slice);
        assert_eq!(slice.len(), 2);
        let mut again = histogram();
        rec.harvest(&mut again);
        assert_eq!(again.len(), 0, "a second harvest finds nothing new");
        let p = rec.summary();
        assert_eq!(p.count, 2);
        assert!(close(p.max, 4.0), "{p:?}");
    }

    #[test]
    fn absurd_latencies_saturate_instead_of_failing() {
        let rec = Recorder::new("t", "c");
        rec.record(u64::MAX);
        assert!(close(rec.summary().max, MAX_NS as f64 / 1000.0));
    }
}
