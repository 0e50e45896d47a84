//! The publish-rate phase, in process: two cluster nodes on the run's Redis, one
//! member on the receiving node, and many concurrent publishers on the other, so
//! that the publisher's batches fill. The rate is what the member received, per
//! second: publications that crossed Redis and were delivered on the other node,
//! set beside `redis-benchmark -P 16` on the same server.
//!
//! The phase runs twice: every publication to one session (the ratio's figure),
//! then spread round-robin over many sessions, the member in each, so that
//! concurrent publications go to different sessions: what the cluster sustains
//! when no two publications of a batch share a channel.
//!
//! No WebSocket is in this loop: it measures the cluster layer and Redis. The
//! harness, both nodes and Redis share the machine's cores, as they would on one
//! host; `redis-benchmark` had them with only its own client.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::cluster::{Cluster, Raw};
use switchboard::{ClientInfo, Registry, SessionId};

/// What the phase measured.
pub struct Rate {
    /// Publications the receiving node's member got, per second.
    pub per_sec: f64,
    /// Redis round trips per publication on the publishing node.
    pub round_trips_per_broadcast: f64,
    /// Gaps the receiving node counted (Redis was up: should be 0).
    pub gaps: u64,
    /// Publications the receiving node saw out of order (should be 0: batches in
    /// flight together must reach Redis in the order they were numbered).
    pub reordered: u64,
    pub published: u64,
    /// Publications the member received.
    pub received: u64,
    /// Redis `PUBLISH` commands per publication; filled in by the caller, which
    /// asks Redis.
    pub publish_commands_per_broadcast: f64,
}

/// Concurrent publisher tasks: enough that the publisher's batches stay large
/// while several are in flight (a gateway node with many publishing clients).
const PUBLISHERS: usize = 1024;

/// Publications sent but not yet received, at most. Pub/sub has no flow control:
/// a receiving node that falls further behind than its client's buffer (16384
/// messages) loses publications, so the phase measures the rate the receiving
/// side sustains, not how fast the publisher can outrun it.
const WINDOW: u64 = 8192;

/// Publishes for `duration` to `sessions` sessions (round-robin), nodes named
/// after `tag`.
pub async fn measure(
    url: &str,
    tag: &str,
    sessions: usize,
    payload_len: usize,
    duration: Duration,
) -> Result<Rate, String> {
    let a = node(url, &format!("{tag}-a")).await?;
    let b = node(url, &format!("{tag}-b")).await?;
    let (member, mut rx) = b
        .register(ClientInfo::new())
        .await
        .map_err(|e| format!("rate member: {e}"))?;
    let sessions: Arc<[SessionId]> = (0..sessions.max(1))
        .map(|i| SessionId::from(format!("{tag}-{i}")))
        .collect();
    for session in sessions.iter() {
        b.attach(member, session.clone())
            .await
            .map_err(|e| format!("rate attach: {e}"))?;
    }
    // Drain the member so that its queue never fills, counting what it got.
    let got = Arc::new(AtomicU64::new(0));
    let drain = {
        let got = Arc::clone(&got);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                got.fetch_add(1, Relaxed);
            }
        })
    };

    let payload: Arc<str> = Arc::from("x".repeat(payload_len));
    let sent = Arc::new(AtomicU64::new(0));
    // The next publication's session, over every task: publications made one
    // after another, which share a batch, go to different sessions when there
    // are more sessions than a batch holds.
    let turn = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (a, payload, sessions) = (a.clone(), Arc::clone(&payload), Arc::clone(&sessions));
            let (sent, got, turn) = (Arc::clone(&sent), Arc::clone(&got), Arc::clone(&turn));
            tokio::spawn(async move {
                let end = start + duration;
                loop {
                    for _ in 0..64 {
                        while sent.load(Relaxed).saturating_sub(got.load(Relaxed)) > WINDOW {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let session = match sessions.len() {
                            1 => sessions[0].clone(),
                            n => sessions[turn.fetch_add(1, Relaxed) as usize % n].clone(),
                        };
                        if a.broadcast(session, Arc::clone(&payload)).await.is_ok() {
                            sent.fetch_add(1, Relaxed);
                        }
                    }
                    if Instant::now() >= end {
                        break;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let published = a.stats().published;
    // Let the last batch arrive.
    let settle = Instant::now();
    while got.load(Relaxed) < published && settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = (a.stats(), b.stats());
    let received = got.load(Relaxed);
    drain.abort();
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
    Ok(Rate {
        per_sec: received as f64 / elapsed,
        round_trips_per_broadcast: if s.0.published > 0 {
            s.0.round_trips as f64 / s.0.published as f64
        } else {
            0.0
        },
        gaps: s.1.gaps,
        reordered: s.1.reordered,
        published,
        received,
        publish_commands_per_broadcast: f64::NAN,
    })
}

async fn node(url: &str, id: &str) -> Result<Cluster<Arc<str>>, String> {
    let registry = Registry::<Arc<str>>::builder()
        .channel_capacity(1 << 16)
        .build()
        .map_err(|e| format!("rate registry: {e}"))?;
    Cluster::builder(registry, Raw)
        .url(url)
        .prefix("stress-rate")
        .node_id(id)
        .connect()
        .await
        .map_err(|e| format!("rate node {id}: {e}"))
}
