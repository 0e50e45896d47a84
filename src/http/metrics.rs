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

use crate::Stats;

/// The broadcast fan-out histogram's name.
const FANOUT: &str = "switchboard_admin_broadcast_fanout_seconds";
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
            }
        })
    }

    pub(crate) fn record_fanout(&self, took: Duration) {
        self.fanout.record(took.as_secs_f64());
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
