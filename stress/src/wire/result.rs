//! The `wire` section of the report, and its table on stdout.

use std::fmt::Write as _;

use serde::Serialize;

use crate::latency::Percentiles;

/// Errors seen by the clients.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    /// All of the below.
    pub total: u64,
    /// WebSocket handshakes that failed.
    pub connect_failures: u64,
    /// `error` frames from the server.
    pub error_frames: u64,
    /// Connections that ended before the harness closed them (close frame, EOF, error).
    pub unexpected_closes: u64,
    /// Frames that were not the JSON the protocol promises.
    pub bad_frames: u64,
    /// Messages repeated or out of order.
    pub out_of_order: u64,
}

impl Errors {
    /// Fills in `total`.
    pub fn summed(mut self) -> Self {
        self.total = self.connect_failures
            + self.error_frames
            + self.unexpected_closes
            + self.bad_frames
            + self.out_of_order;
        self
    }
}

/// The result of `stress ws`: the JSON `wire` section.
#[derive(Debug, Clone, Serialize)]
pub struct Wire {
    /// The server: `spawned PATH` or the external URL.
    pub server: String,
    /// The server's slow-consumer policy and queue, when the harness started it.
    pub server_args: Vec<String>,
    /// Connections that completed the handshake, `hello` and `join`.
    pub connections: u64,
    /// Connections asked for.
    pub connections_requested: u64,
    /// Sessions, each with one publisher.
    pub sessions: u64,
    /// Messages per second per publisher.
    pub rate: u64,
    /// Messages each publisher was to send.
    pub per_publisher: u64,
    /// Open-file soft limit after raising it.
    pub fd_limit: Option<u64>,
    /// Handshakes completed per second, first attempt to last handshake.
    pub connect_per_sec: f64,
    /// Seconds from the first attempt to the last handshake.
    pub connect_s: f64,
    /// Messages published.
    pub published: u64,
    /// Messages every member should have received (publishers excluded).
    pub expected: u64,
    /// Messages received in order.
    pub delivered: u64,
    /// Messages received per second, from the first publish to the last receipt.
    pub delivered_per_sec: f64,
    /// Publish to receipt, in µs, same clock at both ends.
    pub latency_us: Percentiles,
    /// Receipts measured.
    pub latency_samples: u64,
    /// Errors, by kind.
    pub errors: Errors,
    /// Messages expected but not received.
    pub lost: u64,
    /// The server's own count of messages skipped for a full queue (`GET /stats`), when
    /// its admin API was reachable.
    pub server_dropped: Option<u64>,
    /// Server RSS once listening, before any connection.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS with every connection up and idle.
    pub server_rss_after_bytes: Option<u64>,
    /// `(after - before) / connections`.
    pub server_rss_bytes_per_connection: Option<f64>,
    /// Whether the server exited with status 0 on SIGTERM (when the harness started it).
    pub server_exit_ok: Option<bool>,
}

fn kb(bytes: f64) -> String {
    format!("{:.1} KB", bytes / 1024.0)
}

impl Wire {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "\nWIRE  {} {}", self.server, self.server_args.join(" "));
        let _ = writeln!(
            o,
            "  connections     {} of {} in {} sessions (fd limit {})",
            self.connections,
            self.connections_requested,
            self.sessions,
            self.fd_limit.map_or_else(|| "-".into(), |l| l.to_string())
        );
        let _ = writeln!(
            o,
            "  connect         {:.0} /s  ({:.2} s for all)",
            self.connect_per_sec, self.connect_s
        );
        let _ = writeln!(
            o,
            "  delivered       {:.0} /s  ({} of {} expected; {} published, {}/s per publisher)",
            self.delivered_per_sec, self.delivered, self.expected, self.published, self.rate
        );
        let p = &self.latency_us;
        let _ = writeln!(
            o,
            "  latency µs      p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} receipts)",
            p.p50, p.p99, p.p999, p.max, self.latency_samples
        );
        let e = &self.errors;
        let _ = writeln!(
            o,
            "  errors          {}  (connect {}, error frames {}, unexpected closes {}, \
             bad frames {}, out of order {})",
            e.total,
            e.connect_failures,
            e.error_frames,
            e.unexpected_closes,
            e.bad_frames,
            e.out_of_order
        );
        let _ = writeln!(
            o,
            "  lost            {}  (server dropped {})",
            self.lost,
            self.server_dropped
                .map_or_else(|| "unknown".into(), |d| d.to_string())
        );
        let _ = writeln!(
            o,
            "  server RSS      {} per connection  ({} before, {} after, idle)",
            self.server_rss_bytes_per_connection
                .map_or_else(|| "-".into(), kb),
            self.server_rss_before_bytes
                .map_or_else(|| "-".into(), |b| kb(b as f64)),
            self.server_rss_after_bytes
                .map_or_else(|| "-".into(), |b| kb(b as f64)),
        );
        let _ = writeln!(
            o,
            "  server exit     {}",
            match self.server_exit_ok {
                Some(true) => "0 on SIGTERM",
                Some(false) => "FAILED",
                None => "- (external)",
            }
        );
        o
    }
}
