//! `stress ws`: load over real WebSocket connections.
//!
//! The server is the `ws_server` example, started as a separate process on an ephemeral
//! loopback port (or an external server given with `--target`). The run:
//!
//! 1. raises the open-file limit, starts the server, reads its RSS;
//! 2. opens N connections (a bounded number in flight); each says `hello`, joins one of
//!    S sessions and waits for `joined`, which guarantees that it gets every later
//!    publish to that session;
//! 3. once every client is up and idle, reads the server's RSS again:
//!    `(after - before) / N` is the RSS per connection;
//! 4. one publisher per session sends `rate` numbered messages per second, stamped with
//!    the time they were sent, for `--duration`; every client reads promptly, records
//!    the latency of each message and checks the numbers follow each other;
//! 5. waits until every expected message has arrived (or nothing has moved for two
//!    seconds), reads the server's drop count from its admin API, closes every client
//!    with 1000, and stops the server with SIGTERM, which must exit 0.
//!
//! A message a member did not receive is lost. With `--check-loss` (the default) a loss
//! the server did not report as a drop is a violation, as is any error and a server that
//! does not exit cleanly.

mod client;
mod fdlimit;
mod loss;
mod result;
pub mod server;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::cli::{Knobs, Policy, WsArgs};
use crate::invariants::Violations;
use crate::latency::Recorder;
use client::{Counters, Phase, Role, Shared};
use result::Errors;
pub use result::Wire;
use server::Spawned;

/// Publishing time when `--duration` is not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// How long the clients may take to connect and join, at most.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);
/// Time the connections sit idle before the RSS is read.
const IDLE: Duration = Duration::from_secs(1);
/// The drain ends once nothing has arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

/// Runs `stress ws`. `Err` is a setup failure (no server binary, fd limit too low, …);
/// problems found while running are in the violations.
pub async fn run(args: &WsArgs, knobs: &Knobs, violations: &Violations) -> Result<Wire, String> {
    let n = usize::try_from(args.connections).map_err(|_| "too many connections".to_owned())?;
    let fd_limit = fdlimit::raise();
    fdlimit::check(args.connections, fd_limit)?;
    let sessions = knobs
        .sessions
        .map_or_else(|| n.div_ceil(knobs.members as usize), |s| s as usize)
        .clamp(1, n / 2);
    let duration = knobs.duration.unwrap_or(DEFAULT_DURATION);
    let per_publisher = ((args.rate as f64 * duration.as_secs_f64()).round() as u64).max(1);

    let server_args = vec![
        "--slow-consumer".to_owned(),
        match knobs.policy {
            Policy::Drop => "drop",
            Policy::Disconnect => "disconnect",
        }
        .to_owned(),
        "--queue".to_owned(),
        knobs.capacity.to_string(),
    ];
    let (url, admin, mut spawned, label) = match &args.target {
        Some(url) => {
            server::loopback_target(url)?;
            let admin = match &args.target_admin {
                Some(a) => Some(
                    a.parse()
                        .map_err(|_| format!("--target-admin {a:?} is not an IP:PORT"))?,
                ),
                None => None,
            };
            (url.clone(), admin, None, format!("external {url}"))
        }
        None => {
            let bin = server::locate(args.server_bin.as_deref())?;
            let s = tokio::task::spawn_blocking({
                let bin = bin.clone();
                let server_args = server_args.clone();
                move || Spawned::start(&bin, &server_args)
            })
            .await
            .map_err(|e| format!("starting ws_server: {e}"))??;
            let url = format!("ws://{}/ws", s.ws);
            let admin = s.admin;
            (url, admin, Some(s), format!("spawned {}", bin.display()))
        }
    };
    let pid = spawned.as_ref().map(Spawned::pid);
    eprintln!(
        "stress ws: {n} connections, {sessions} sessions, {} messages/s per publisher for {:.1}s, \
         against {url}{}",
        args.rate,
        duration.as_secs_f64(),
        pid.map_or_else(String::new, |p| format!(" (pid {p})"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = pid.and_then(server::rss_bytes);

    let shared = Arc::new(Shared {
        url,
        epoch: Instant::now(),
        latency: Recorder::new("ws", "ws_server"),
        counters: Counters::new(sessions),
        connecting: Semaphore::new(args.concurrency as usize),
        per_publisher,
        interval: Duration::from_secs_f64(1.0 / args.rate as f64),
        padding: "x".repeat(knobs.message_size as usize),
    });
    let c = &shared.counters;
    let (phase, phase_rx) = watch::channel(Phase::Joining);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let role = Role {
                session: i % sessions,
                publisher: i < sessions,
            };
            tokio::spawn(client::run(Arc::clone(&shared), role, phase_rx.clone()))
        })
        .collect();

    // 2. Connect and join.
    let deadline = Instant::now() + JOIN_DEADLINE;
    while (c.settled.load(Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connected = n as u64 - c.connect_failures.load(Relaxed);
    let connect_s = c.last_connect_ns.load(Relaxed) as f64 / 1e9;
    let joined = c.joined.load(Relaxed);
    eprintln!(
        "stress ws: {joined} joined, {connected} connected in {connect_s:.2}s; idle {}s",
        IDLE.as_secs()
    );

    // 3. Idle RSS.
    tokio::time::sleep(IDLE).await;
    let rss_after = pid.and_then(server::rss_bytes);

    // 4. Publish.
    let go = shared.epoch.elapsed();
    let _ = phase.send(Phase::Publishing);
    let publish_deadline = Instant::now() + duration * 2 + Duration::from_secs(10);
    while c.publishers_done.load(Relaxed) < c.publishers.load(Relaxed)
        && Instant::now() < publish_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 5. Drain.
    let sent: Vec<u64> = c.sent.iter().map(|s| s.load(Relaxed)).collect();
    let expected_now: u64 = sent
        .iter()
        .zip(c.listeners.iter())
        .map(|(s, l)| s * l.load(Relaxed))
        .sum();
    let mut last = (c.delivered.load(Relaxed), Instant::now());
    while c.delivered.load(Relaxed) < expected_now && last.1.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let d = c.delivered.load(Relaxed);
        if d != last.0 {
            last = (d, Instant::now());
        }
    }
    let server_dropped = match admin {
        Some(a) => match tokio::task::spawn_blocking(move || server::dropped(a)).await {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => {
                eprintln!("stress ws: {e}");
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    let _ = phase.send(Phase::Closing);
    let mut members = Vec::with_capacity(n);
    for handle in clients {
        match tokio::time::timeout(Duration::from_secs(30), handle).await {
            Ok(Ok(m)) => members.push(m),
            _ => violations.push("ws/clients", "a client task did not finish"),
        }
    }
    let (expected, lost) = loss::account(&members, &sent);

    let server_exit_ok = match spawned.take() {
        Some(s) => {
            let stopped = tokio::task::spawn_blocking(move || s.stop())
                .await
                .unwrap_or_else(|e| Err(format!("stopping ws_server: {e}")));
            if let Err(e) = &stopped {
                violations.push("ws/server", e.clone());
            }
            Some(stopped.is_ok())
        }
        None => None,
    };

    let delivered = c.delivered.load(Relaxed);
    let window = Duration::from_nanos(c.last_delivery_ns.load(Relaxed)).saturating_sub(go);
    let latency = shared.latency.summary();
    let errors = Errors {
        total: 0,
        connect_failures: c.connect_failures.load(Relaxed),
        error_frames: c.error_frames.load(Relaxed),
        unexpected_closes: c.unexpected_closes.load(Relaxed),
        bad_frames: c.bad_frames.load(Relaxed),
        out_of_order: c.out_of_order.load(Relaxed),
    }
    .summed();

    violations.checked(members.len() as u64 + 2);
    violations.expect(errors.total == 0, "ws/errors", || {
        format!("{} errors: {errors:?}", errors.total)
    });
    if args.check_loss {
        violations.expect(
            lost == 0 || server_dropped.is_some_and(|d| d > 0),
            "ws/loss",
            || {
                format!(
                    "{lost} of {expected} messages lost, and the server reported {} drops",
                    server_dropped.map_or_else(|| "no count of".into(), |d| d.to_string())
                )
            },
        );
    }

    let rate = |count: f64, seconds: f64| if seconds > 0.0 { count / seconds } else { 0.0 };
    Ok(Wire {
        server: label,
        server_args: if args.target.is_some() {
            Vec::new()
        } else {
            server_args
        },
        connections: joined,
        connections_requested: n as u64,
        sessions: sessions as u64,
        rate: args.rate,
        per_publisher,
        fd_limit,
        connect_per_sec: rate(connected as f64, connect_s),
        connect_s,
        published: sent.iter().sum(),
        expected,
        delivered,
        delivered_per_sec: rate(delivered as f64, window.as_secs_f64()),
        latency_us: latency,
        latency_samples: latency.count,
        errors,
        lost,
        server_dropped,
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        server_rss_bytes_per_connection: match (rss_before, rss_after) {
            (Some(b), Some(a)) if joined > 0 => Some((a as f64 - b as f64) / joined as f64),
            _ => None,
        },
        server_exit_ok,
    })
}
