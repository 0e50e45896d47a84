//! The command line: scenarios as subcommands, knobs as global options.
//!
//! Every value a user can type is checked by clap (ranges, enums, shares in `0..=1`), so the
//! rest of the harness never sees an invalid setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Load-test harness for switchboard.
///
/// Runs real workloads (tokio receiver tasks drain every client's channel) against
/// switchboard and, in the same run, against the baselines (a bare `try_send` floor, a
/// `DashMap` registry and a `Mutex` registry). Checks invariants at every checkpoint and at
/// teardown, prints a table, and exits non-zero on any violation. Ratios never fail a run.
///
/// Memory figures are exact live heap bytes from a counting global allocator; RSS is shown
/// beside them but judged by nothing. `registry_bytes_per_client` is measured by registering
/// N clients (each in one session) and sending each one message: the heap they take, less
/// their channels (the channel struct inside each client's entry plus its ring if allocated),
/// is the registry's own memory.
#[derive(Debug, Parser)]
#[command(name = "stress", version, about, long_about)]
pub struct Cli {
    /// Scenario to run; `all` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub knobs: Knobs,
}

/// What to run: an in-process scenario, or the load over real WebSocket connections.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// An in-process scenario.
    #[command(flatten)]
    Scenario(Scenario),
    /// N real WebSocket connections against the ws_server example (started here as a
    /// separate process unless --target is given): connect rate, deliveries per second,
    /// end-to-end latency, errors, lost messages and the server's RSS per connection.
    Ws(WsArgs),
    /// Several ws_server nodes over one Redis (started here, with redis-server): the
    /// publish rate against redis-benchmark, same- and cross-node latency, ordering,
    /// gaps; with --chaos a node is SIGKILLed and Redis restarted mid-run.
    Cluster(ClusterArgs),
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Broadcast to one session of growing size (10 to 100k members), floor and baselines alike.
    Fanout,
    /// Register, attach, detach, unregister on every worker; plus join cost at 10 and 100k members.
    Churn,
    /// Broadcasts, direct sends and churn at once, with slow consumers and abrupt disconnects.
    Mixed,
    /// Bytes per client at --clients (100k), and at 1M with --million.
    Memory,
    /// switchboard alone under a random mix for --duration, invariants checked every second.
    Soak,
    /// Every scenario above, in about a minute on two cores (about 20 s with --quick).
    All,
    /// The wire-level run; chosen with the `ws` subcommand (see [`Command::Ws`]).
    #[command(skip)]
    Ws,
    /// The multi-node run; chosen with the `cluster` subcommand (see [`Command::Cluster`]).
    #[command(skip)]
    Cluster,
}

impl Scenario {
    /// Lowercase name, as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Churn => "churn",
            Self::Mixed => "mixed",
            Self::Memory => "memory",
            Self::Soak => "soak",
            Self::All => "all",
            Self::Ws => "ws",
            Self::Cluster => "cluster",
        }
    }
}

/// What a broadcast does with a member whose channel is full (switchboard only: the
/// baselines always drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Skip the message for that member.
    Drop,
    /// Unregister the member.
    Disconnect,
}

/// The options of `stress cluster`. The global knobs it uses: `--duration` (the wire
/// phase's publishing time, default 4 s, 10 s with `--chaos`), `--message-size`
/// (padding in `data`), `--workers` and `--json`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ClusterArgs {
    /// ws_server nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=8))]
    pub nodes: u64,

    /// Listening clients per node (each node also has one publisher).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub listeners: u64,

    /// SIGKILL the last node, then restart Redis, mid-run.
    #[arg(long)]
    pub chaos: bool,

    /// Stamped publications per second in the wire phase, at most, split over the
    /// publishers. The wire phase runs at a tenth of the measured cluster publish
    /// rate; what this leaves of it is sent as load to a session read by one sink per
    /// node.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_rate: u64,

    /// The ws_server binary [default: `TARGET_DIR/release/examples/ws_server`].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// Publications per second the wire phase aims at [default: a tenth of the
    /// measured cluster publish rate, the rate `cluster_cross_node_p50_minus_local_ms`
    /// is defined at]. For comparing builds at one rate; the report says which was used.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub wire_rate: Option<u64>,
}

/// The options of `stress ws`. The global knobs it uses: `--sessions` and `--members`
/// (the layout), `--duration` (publishing time, default 5 s), `--capacity` (the server's
/// `--queue`), `--policy` (the server's `--slow-consumer`), `--message-size` (padding in
/// `data`), `--workers` and `--json`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct WsArgs {
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub connections: u64,

    /// An external server, `ws://127.0.0.1:PORT/ws`; loopback only. By default the ws_server
    /// example is started as a separate process.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// The external server's admin API, `127.0.0.1:PORT`, read for its drop count.
    #[arg(long, value_name = "ADDR", requires = "target")]
    pub target_admin: Option<String>,

    /// The ws_server binary [default: `TARGET_DIR/release/examples/ws_server`].
    #[arg(long, value_name = "PATH", conflicts_with = "target")]
    pub server_bin: Option<PathBuf>,

    /// Messages per second each session's publisher sends; low enough that a prompt
    /// client's queue never fills.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub rate: u64,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,

    /// Treat a lost message as a violation (exit 1), unless the server reported drops.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub check_loss: bool,
}

/// The knobs; each applies to every scenario that uses it.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Knobs {
    /// Clients held by churn's background, mixed, memory and soak
    /// [default: 10000 for churn and mixed, 100000 for memory and soak].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub clients: Option<u64>,

    /// Sessions [default: clients / members, so each client is in one session].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub sessions: Option<u64>,

    /// Members per session.
    #[arg(long, global = true, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub members: u64,

    /// Tokio worker threads, which are also the driver tasks' count [default: CPUs].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: Option<u64>,

    /// Payload bytes per message (shared by all recipients through an `Arc`).
    #[arg(long = "message-size", global = true, default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub message_size: u64,

    /// How long each timed phase runs per contender (churn, mixed) or in total (soak), e.g.
    /// `500ms`, `20s`, `10m` [default: per scenario].
    #[arg(long, global = true, value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_opt_duration")]
    pub duration: Option<Duration>,

    /// Share of clients that are slow consumers: half drain late (a pause after each message),
    /// half never drain until they are unregistered.
    #[arg(long, global = true, default_value_t = 0.05, value_parser = parse_share)]
    pub slow: f64,

    /// Share of clients that disconnect abruptly: their receiver is dropped mid-run, then
    /// their connection task unregisters them.
    #[arg(long, global = true, default_value_t = 0.02, value_parser = parse_share)]
    pub abrupt: f64,

    /// Capacity of each client's channel.
    #[arg(long, global = true, default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub capacity: u64,

    /// Slow-consumer policy for switchboard.
    #[arg(long, global = true, value_enum, default_value_t = Policy::Drop)]
    pub policy: Policy,

    /// CI mode: shorter phases and smaller fanout sweep (about 20 s for `all`).
    #[arg(long, global = true)]
    pub quick: bool,

    /// Also measure memory at 1M clients (adds about 15 s and 3 GB).
    #[arg(long, global = true)]
    pub million: bool,

    /// Seed of the harness's random choices.
    #[arg(long, global = true, default_value_t = 0x5eed)]
    pub seed: u64,

    /// Write the machine-readable report here.
    #[arg(long, global = true, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Draw latency percentiles and throughput over time into this SVG file.
    #[arg(long, global = true, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

fn serialize_opt_duration<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&d.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// Parses `250ms`, `20s`, `10m`, `1h` or a bare number of seconds; between 100 ms and 24 h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 20s or 10m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}`; use ms, s, m or h")),
    };
    if !(0.1..=86_400.0).contains(&seconds) {
        return Err(format!("{text} is outside 100ms..=24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a share between 0 and 1.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside 0..=1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("1ms").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn shares_must_lie_between_zero_and_one() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("half").is_err());
    }

    #[test]
    fn knobs_out_of_range_are_refused_by_clap() {
        assert!(Cli::try_parse_from(["stress", "--capacity", "0"]).is_err());
        assert!(Cli::try_parse_from(["stress", "--slow", "2"]).is_err());
        assert!(Cli::try_parse_from(["stress", "--policy", "block"]).is_err());
        let cli =
            Cli::try_parse_from(["stress", "soak", "--duration", "60s", "--clients", "100000"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Some(Command::Scenario(Scenario::Soak)))
        ));
    }

    #[test]
    fn ws_takes_its_own_options_and_the_global_knobs() {
        let cli = Cli::try_parse_from([
            "stress",
            "ws",
            "--connections",
            "500",
            "--duration",
            "3s",
            "--check-loss",
            "false",
        ]);
        let Ok(Cli {
            command: Some(Command::Ws(ws)),
            knobs,
        }) = cli
        else {
            panic!("ws did not parse");
        };
        assert_eq!(ws.connections, 500);
        assert!(!ws.check_loss);
        assert_eq!(knobs.duration, Some(Duration::from_secs(3)));
        assert!(Cli::try_parse_from(["stress", "ws", "--connections", "1"]).is_err());
        assert!(Cli::try_parse_from(["stress", "ws", "--target-admin", "127.0.0.1:1"]).is_err());
    }
}
