//! What a node counts, and the events it reports.

use serde::Serialize;

use crate::sync::{AtomicU64, Ordering};

/// Running totals of one node's cluster traffic.
///
/// Ordering: `Relaxed` throughout; each counter is read alone, for reports.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) round_trips: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) undeliverable: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) lagged: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        // Relaxed: see `Counters`.
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        // Relaxed: see `Counters`.
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, node: &str) -> ClusterStats {
        ClusterStats {
            node: node.to_owned(),
            published: Self::get(&self.published),
            publish_failed: Self::get(&self.publish_failed),
            round_trips: Self::get(&self.round_trips),
            received: Self::get(&self.received),
            gaps: Self::get(&self.gaps),
            reordered: Self::get(&self.reordered),
            malformed: Self::get(&self.malformed),
            undeliverable: Self::get(&self.undeliverable),
            reconnects: Self::get(&self.reconnects),
            lagged: Self::get(&self.lagged),
            subscriptions: Self::get(&self.subscriptions),
        }
    }
}

/// One node's cluster counters, from [`Cluster::stats`](super::Cluster::stats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// This node's id.
    pub node: String,
    /// Publications Redis accepted (session broadcasts and direct sends).
    pub published: u64,
    /// Publications that failed; each came back to its caller as an error.
    pub publish_failed: u64,
    /// Pipelines sent to Redis to carry those publications; at most one per
    /// publication, fewer when publications were batched.
    pub round_trips: u64,
    /// Publications from other nodes received here.
    pub received: u64,
    /// Publications from other nodes that never arrived, counted from the gaps in
    /// each node's per-session numbering. Pub/sub is at-most-once: this is the loss.
    /// A jump of more than 1,024 numbers is counted once a later publication of
    /// that node follows it (one frame alone could be forged).
    pub gaps: u64,
    /// Publications that arrived with a number at or below one already seen.
    pub reordered: u64,
    /// Publications that were not valid frames (a node of another frame version
    /// among them), did not decode, or were over a bound (a payload or notice
    /// over `max_payload`); dropped. Also the numbers of a broadcast that jumped
    /// ahead and that its node's next publication showed to be none of its
    /// own (it was delivered when it came).
    pub malformed: u64,
    /// Direct sends that arrived for a key no longer held here, or whose client
    /// refused them.
    pub undeliverable: u64,
    /// Reconnections to Redis.
    pub reconnects: u64,
    /// Publications the Redis client received but dropped before this node read
    /// them (its buffer overflowed). Lost broadcasts among them also count as
    /// gaps; lost direct sends are lost.
    pub lagged: u64,
    /// Session channels this node is subscribed to now.
    pub subscriptions: u64,
}

/// Something that happened in the cluster, from [`Cluster::events`](super::Cluster::events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A node's heartbeat expired; its keys were released.
    NodeDown {
        /// The node.
        node: String,
        /// The keys it held, now released; at most
        /// [`ClusterBuilder::max_keys_listed`](super::ClusterBuilder::max_keys_listed).
        keys: Vec<String>,
        /// Keys it held and released that `keys` leaves out, for the bound.
        omitted: u64,
    },
    /// A connection here lost its key to a newer one on another node, and was
    /// closed with [`CloseReason::TakenOver`](crate::CloseReason::TakenOver).
    TakenOver {
        /// The key.
        key: String,
        /// The node that holds it now.
        node: String,
    },
    /// The connection to Redis came back; subscriptions and presence were renewed.
    Reconnected,
    /// Another process beats under this node's id. Each drops the other's
    /// publications as its own and takes keys from it: give every node its own id.
    /// Reported at each heartbeat that finds the other process's mark.
    IdConflict {
        /// The id both use.
        node: String,
    },
}
