//! `GET /metrics`: Prometheus text through the `metrics` crate.
//!
//! Each router owns its recorder instead of installing a global one, so an
//! application keeps its own global recorder and two routers never mix figures.
//! Registry figures are gauges and counters set from [`Stats`] at scrape time (the
//! registry keeps the totals already; nothing is counted twice). The one figure the
//! API itself measures is the fan-out time of its broadcasts.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::sync::{AtomicU64, Ordering};
use crate::Stats;

/// The broadcast fan-out histogram's name.
const FANOUT: &str = "switchboard_admin_broadcast_fanout_seconds";
/// Fan-out samples recorded between two upkeeps. The recorder keeps every
/// sample until an upkeep folds it into the histogram's buckets; with scrapes
/// the only upkeeps, broadcasts and no scraper kept every sample for good (8
/// million broadcasts, 127 MiB).
const UPKEEP_EVERY: u64 = 1024;
/// Fan-out times from 10 µs to 1 s.
const FANOUT_BUCKETS: [f64; 11] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

pub(crate) struct Metrics {
    handle: PrometheusHandle,
    devices: Gauge,
    orchestrators: Gauge,
    other: Gauge,
    sessions: Gauge,
    tasks: Gauge,
    delivered: Counter,
    dropped: Counter,
    closed: Counter,
    disconnected: Counter,
    fanout: Histogram,
    /// Fan-out samples recorded, for [`UPKEEP_EVERY`].
    ///
    /// Ordering: `Relaxed`; it only spaces out upkeeps, which fold whatever
    /// samples they find.
    recorded: AtomicU64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // Fails only for empty buckets; without them the histogram renders as a summary.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(FANOUT.to_owned()), &FANOUT_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder: PrometheusRecorder = builder.build_recorder();
        let handle = recorder.handle();
        // Handles stay bound to this recorder after the scope ends.
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_gauge!(
                "switchboard_clients",
                "Connected clients by kind (device, orchestrator, or other for plain clients)."
            );
            metrics::describe_gauge!("switchboard_sessions", "Open sessions.");
            metrics::describe_gauge!("switchboard_tasks", "Open tasks.");
            metrics::describe_counter!(
                "switchboard_messages_delivered_total",
                "Messages queued to a client by a send or a broadcast."
            );
            metrics::describe_counter!(
                "switchboard_messages_dropped_total",
                "Broadcast messages skipped because the member's queue was full."
            );
            metrics::describe_counter!(
                "switchboard_messages_closed_total",
                "Messages not delivered because the client's channel had closed."
            );
            metrics::describe_counter!(
                "switchboard_clients_disconnected_total",
                "Clients disconnected by the slow-consumer policy."
            );
            metrics::describe_histogram!(
                FANOUT,
                Unit::Seconds,
                "Time one admin broadcast took to reach every member's queue."
            );
            Self {
                handle,
                devices: metrics::gauge!("switchboard_clients", "kind" => "device"),
                orchestrators: metrics::gauge!("switchboard_clients", "kind" => "orchestrator"),
                other: metrics::gauge!("switchboard_clients", "kind" => "other"),
                sessions: metrics::gauge!("switchboard_sessions"),
                tasks: metrics::gauge!("switchboard_tasks"),
                delivered: metrics::counter!("switchboard_messages_delivered_total"),
                dropped: metrics::counter!("switchboard_messages_dropped_total"),
                closed: metrics::counter!("switchboard_messages_closed_total"),
                disconnected: metrics::counter!("switchboard_clients_disconnected_total"),
                fanout: metrics::histogram!(FANOUT),
                recorded: AtomicU64::new(0),
            }
        })
    }

    pub(crate) fn record_fanout(&self, took: Duration) {
        self.fanout.record(took.as_secs_f64());
        // Relaxed: see `recorded`.
        if self.recorded.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.handle.run_upkeep();
        }
    }

    /// Sets every figure from `stats` and renders the exposition text.
    pub(crate) fn render(&self, stats: &Stats) -> String {
        let other = stats
            .clients
            .saturating_sub(stats.devices + stats.orchestrators);
        self.devices.set(stats.devices as f64);
        self.orchestrators.set(stats.orchestrators as f64);
        self.other.set(other as f64);
        self.sessions.set(stats.sessions as f64);
        self.tasks.set(stats.tasks as f64);
        self.delivered.absolute(stats.delivered);
        self.dropped.absolute(stats.dropped);
        self.closed.absolute(stats.closed);
        self.disconnected.absolute(stats.disconnected);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The integration tests' helper for tests that read resident memory.
#[cfg(test)]
#[path = "../../tests/common/alone.rs"]
#[allow(
    unreachable_pub,
    reason = "shared with the integration tests, where it is a crate of its own"
)]
mod alone;

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorder keeps a histogram's samples, one by one, until upkeep folds
    /// them into its buckets. Broadcasts with no scrape in between (or no
    /// scraper at all) must not each keep one for good.
    #[test]
    fn broadcasts_with_no_scrape_keep_bounded_memory() {
        if !alone::here("http::metrics::tests::broadcasts_with_no_scrape_keep_bounded_memory") {
            return;
        }
        let metrics = Metrics::new();
        let Some(before) = alone::resident_bytes() else {
            println!("skipped: no /proc/self/status to read resident memory from");
            return;
        };
        let broadcasts: u64 = 8_000_000;
        for _ in 0..broadcasts {
            metrics.record_fanout(Duration::from_micros(20));
        }
        let grown = alone::resident_bytes()
            .unwrap_or_default()
            .saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "resident memory grew by {} MiB over {broadcasts} broadcasts with no scrape",
            grown >> 20
        );
        // A scrape still counts every one.
        let text = metrics.render(&Stats::default());
        assert!(
            text.contains(&format!("{FANOUT}_count {broadcasts}")),
            "{text}"
        );
    }
}
