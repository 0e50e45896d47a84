//! The `cluster` part of the dashboard's snapshots, for a router built with
//! [`router_with_cluster`](super::router_with_cluster).
//!
//! Each snapshot carries this node's id, its subscription and gap counters, the
//! live nodes (id, clients, subscriptions, gaps, heartbeat age and state), and the
//! cluster events since the previous snapshot (a node going down with the keys it
//! held, a key taken over by another node, a reconnection to Redis).
//!
//! # Bounds
//!
//! As the rest of `/events`: cluster events wait in the cluster's shared, bounded
//! buffer, not per subscriber; at most [`MAX_EVENTS`] a snapshot, the rest (and
//! those the buffer dropped) counted in `skipped_events`; at most [`MAX_NODES`]
//! nodes (the rest counted in `more_nodes`) and [`MAX_KEYS`] keys per node-down
//! event (the rest counted in `more_keys`). Redis gets [`REDIS_WAIT`] to list the
//! nodes, so a Redis that does not answer never holds a snapshot back; the
//! snapshot then says why in `redis_error`, with `nodes: null`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::events::ClusterFeed;
use crate::cluster::{Cluster, ClusterEvent, NodeInfo};

/// Cluster events carried by one snapshot.
pub(crate) const MAX_EVENTS: usize = 50;
/// Nodes listed, in id order.
pub(crate) const MAX_NODES: usize = 100;
/// Keys listed per node-down event.
pub(crate) const MAX_KEYS: usize = 20;
/// How long a snapshot waits for Redis to list the nodes.
pub(crate) const REDIS_WAIT: Duration = Duration::from_millis(500);

/// One subscriber's view of the cluster.
pub(crate) struct Tap<M> {
    cluster: Cluster<M>,
    events: broadcast::Receiver<ClusterEvent>,
}

impl<M: Clone + Send + Sync + 'static> Tap<M> {
    pub(crate) fn new(cluster: Cluster<M>) -> Self {
        let events = cluster.events();
        Self { cluster, events }
    }

    /// The events waiting for this subscriber, at most [`MAX_EVENTS`], and how
    /// many it skipped.
    fn drain(&mut self) -> (Vec<serde_json::Value>, u64) {
        let mut events = Vec::new();
        let mut skipped = 0u64;
        loop {
            match self.events.try_recv() {
                Ok(event) if events.len() < MAX_EVENTS => events.push(shown(event)),
                Ok(_) => skipped += 1,
                Err(TryRecvError::Lagged(n)) => skipped += n,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        (events, skipped)
    }

    async fn view(&mut self) -> View {
        let (events, skipped_events) = self.drain();
        let (nodes, more_nodes, redis_error) =
            match tokio::time::timeout(REDIS_WAIT, self.cluster.nodes()).await {
                Ok(Ok(listed)) => {
                    let mut nodes = listed.nodes;
                    let more = nodes.len().saturating_sub(MAX_NODES) as u64;
                    nodes.truncate(MAX_NODES);
                    (Some(nodes), more.saturating_add(listed.omitted), None)
                }
                Ok(Err(e)) => (None, 0, Some(e.to_string())),
                Err(_) => (
                    None,
                    0,
                    Some(format!("Redis did not answer within {REDIS_WAIT:?}")),
                ),
            };
        let stats = self.cluster.stats();
        View {
            node: stats.node,
            subscriptions: stats.subscriptions,
            gaps: stats.gaps,
            nodes,
            more_nodes,
            redis_error,
            events,
            skipped_events,
        }
    }
}

impl<M: Clone + Send + Sync + 'static> ClusterFeed for Tap<M> {
    fn next(&mut self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            // Plain data: serialising it cannot fail.
            serde_json::to_value(self.view().await).unwrap_or_default()
        })
    }
}

/// The snapshot's `cluster` field.
#[derive(Serialize)]
struct View {
    /// This node's id.
    node: String,
    /// Session channels this node is subscribed to.
    subscriptions: u64,
    /// Publications from other nodes that never arrived here.
    gaps: u64,
    /// Live nodes in id order, at most [`MAX_NODES`]; `None` while Redis cannot
    /// be asked.
    nodes: Option<Vec<NodeInfo>>,
    more_nodes: u64,
    redis_error: Option<String>,
    events: Vec<serde_json::Value>,
    skipped_events: u64,
}

/// An event as the dashboard shows it: a node-down lists at most [`MAX_KEYS`] keys.
fn shown(event: ClusterEvent) -> serde_json::Value {
    let capped = match event {
        ClusterEvent::NodeDown {
            node,
            mut keys,
            omitted,
        } => {
            let more_keys = (keys.len().saturating_sub(MAX_KEYS) as u64).saturating_add(omitted);
            keys.truncate(MAX_KEYS);
            return serde_json::json!({
                "event": "node_down",
                "node": node,
                "keys": keys,
                "more_keys": more_keys,
            });
        }
        other => other,
    };
    serde_json::to_value(capped).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_down_lists_a_bounded_number_of_keys() {
        let keys: Vec<String> = (0..MAX_KEYS + 7).map(|i| format!("k{i}")).collect();
        let event = shown(ClusterEvent::NodeDown {
            node: "gw-2".into(),
            keys: keys.clone(),
            omitted: 3,
        });
        assert_eq!(event["event"], "node_down");
        assert_eq!(event["node"], "gw-2");
        assert_eq!(event["keys"], serde_json::json!(keys[..MAX_KEYS]));
        assert_eq!(event["more_keys"], 7 + 3);
        let event = shown(ClusterEvent::Reconnected);
        assert_eq!(event, serde_json::json!({"event": "reconnected"}));
    }
}
