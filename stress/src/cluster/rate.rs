//! The publish-rate phase, in process: two cluster nodes on the run's Redis, one
//! member on the receiving node, and many concurrent publishers on the other, so
//! that the publisher's batches fill. Cross-node publications per second, set
//! beside `redis-benchmark -P 16` on the same server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::cluster::{Cluster, Raw};
use switchboard::{ClientInfo, Registry};

/// What the phase measured.
pub struct Rate {
    /// Publications the receiving node got per second.
    pub per_sec: f64,
    /// Redis round trips per publication on the publishing node.
    pub round_trips_per_broadcast: f64,
    /// Gaps the receiving node counted (Redis was up: should be 0).
    pub gaps: u64,
    pub published: u64,
    pub received: u64,
}

/// Concurrent publisher tasks: enough to keep a batch in flight while the next fills.
const PUBLISHERS: usize = 256;

pub async fn measure(url: &str, payload_len: usize, duration: Duration) -> Result<Rate, String> {
    let a = node(url, "rate-a").await?;
    let b = node(url, "rate-b").await?;
    let (member, mut rx) = b
        .register(ClientInfo::new())
        .await
        .map_err(|e| format!("rate member: {e}"))?;
    b.attach(member, "rate")
        .await
        .map_err(|e| format!("rate attach: {e}"))?;
    // Drain the member so that its queue never fills.
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });

    let payload: Arc<str> = Arc::from("x".repeat(payload_len));
    let start = Instant::now();
    let received_at_start = b.stats().received;
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (a, payload) = (a.clone(), Arc::clone(&payload));
            tokio::spawn(async move {
                let end = start + duration;
                loop {
                    for _ in 0..64 {
                        let _ = a.broadcast("rate", Arc::clone(&payload)).await;
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
    while b.stats().received < published && settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = (a.stats(), b.stats());
    let received = s.1.received - received_at_start;
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
        published,
        received,
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
