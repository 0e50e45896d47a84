//! Presence: the heartbeat, the reaper, and the cluster-wide views built on them.
//!
//! Every third of the TTL a node renews its deadline in `B:nodes` with its client
//! count and counters and reconciles its subscriptions; every ninth (and at least
//! every second) it runs the reaper, which releases every node whose deadline
//! passed and announces it on the ctl channel.
//! Any node may reap. Each script call is atomic and releases a bounded chunk,
//! so several reapers share a dead node's chunks, and it is announced once, by
//! the call that finds nothing left of it.
//!
//! A heartbeat that finds its node unknown (Redis restarted empty, or the node was
//! presumed dead during a long pause) re-announces: it claims its keys again where
//! no one else took them, and records its member counts.

use std::time::{Duration, Instant};

use fred::interfaces::LuaInterface;
use fred::prelude::Value;
use serde::Serialize;

use crate::sync::{lock, Arc, Mutex};

use super::takeover::{Keys, Mode};
use super::{ClusterError, Shared};

/// Reap calls one tick makes at most: some four million keys, at
/// [`RELEASE_CHUNK`](super::scripts::RELEASE_CHUNK) a call. Any client of the
/// Redis can make up dead nodes; this bounds the work they cause a tick.
const MAX_REAP_CALLS: usize = 4096;

/// A live node, from [`Cluster::nodes`](super::Cluster::nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Clients connected to it, at its last heartbeat.
    pub clients: u64,
    /// Session channels it is subscribed to.
    pub subscriptions: u64,
    /// Gaps it has counted.
    pub gaps: u64,
    /// Milliseconds since its last heartbeat, on Redis's clock; `None` for a node
    /// that does not record when it beat (an older version).
    pub heartbeat_age_ms: Option<u64>,
    /// Whether it is beating on time.
    pub state: NodeState,
}

/// Live nodes, from [`Cluster::nodes`](super::Cluster::nodes): at most
/// [`ClusterBuilder::max_nodes_listed`](super::ClusterBuilder::max_nodes_listed),
/// those with the earliest heartbeat deadlines, sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Nodes {
    /// The nodes listed.
    pub nodes: Vec<NodeInfo>,
    /// Live nodes left out for the bound.
    pub omitted: u64,
}

impl IntoIterator for Nodes {
    type Item = NodeInfo;
    type IntoIter = std::vec::IntoIter<NodeInfo>;
    fn into_iter(self) -> Self::IntoIter {
        self.nodes.into_iter()
    }
}

/// Whether a live node is beating on time, in [`NodeInfo::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Its last heartbeat is at most two heartbeat periods (two thirds of its TTL)
    /// old, or its age is unknown.
    Up,
    /// It missed a heartbeat: stalled, overloaded or cut off from Redis. It is
    /// released when its TTL runs out unless it beats again.
    Late,
}

impl NodeState {
    /// A node beats every third of its TTL; one beat older than two periods missed one.
    fn of(age_ms: Option<u64>, ttl_ms: Option<u64>) -> Self {
        match (age_ms, ttl_ms) {
            (Some(age), Some(ttl)) if age > ttl / 3 * 2 => Self::Late,
            _ => Self::Up,
        }
    }
}

/// A re-announcement under way: unless it finished, the next heartbeat
/// announces again.
struct Unannounced<'a> {
    keys: &'a Mutex<Keys>,
    done: bool,
}

impl Drop for Unannounced<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.keys).unannounced = true;
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Renews this node's heartbeat; re-announces it if Redis did not know it.
    pub(crate) async fn heartbeat(&self) -> Result<(), ClusterError> {
        let known = self.renew().await?;
        // The flag, not `known`, decides: the renewal above makes this node known
        // even when the announcement that follows fails.
        let announce = {
            let mut keys = lock(&self.keys);
            let due = !known || keys.unannounced;
            keys.unannounced = false;
            due
        };
        if announce {
            // Due again if it fails, or stops halfway (`connect` given up on, or
            // the task aborted as the node stops).
            let mut due = Unannounced {
                keys: &self.keys,
                done: false,
            };
            self.announce().await?;
            due.done = true;
        }
        Ok(())
    }

    /// Renews this node's deadline in Redis; returns whether Redis knew it.
    async fn renew(&self) -> Result<bool, ClusterError> {
        let s = self.counters.snapshot(&self.node);
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let args = vec![
            self.names.base.clone(),
            self.node.clone(),
            ttl.to_string(),
            self.run.clone(),
            "clients".into(),
            self.registry.client_count().to_string(),
            "subscriptions".into(),
            s.subscriptions.to_string(),
            "gaps".into(),
            s.gaps.to_string(),
            "ttl".into(),
            ttl.to_string(),
        ];
        let (known, now, clash): (i64, u64, i64) = self
            .client
            .eval(self.scripts.heartbeat.text(), self.presence_keys(), args)
            .await?;
        self.clock.observe(now);
        if clash == 1 {
            let node = self.node.clone();
            let _ = self.events.send(super::ClusterEvent::IdConflict { node });
        }
        Ok(known == 1)
    }

    /// Renews this node's deadline if a third of the TTL passed since
    /// `renewed`, as the heartbeat would: for work on the heartbeat's task that
    /// makes one round trip per key, which with keys enough takes longer than
    /// the TTL. Should Redis have forgotten the node, the next heartbeat
    /// re-announces it.
    pub(crate) async fn keep_alive(&self, renewed: &mut Instant) -> Result<(), ClusterError> {
        if renewed.elapsed() < self.ttl / 3 {
            return Ok(());
        }
        if !self.renew().await? {
            lock(&self.keys).unannounced = true;
        }
        *renewed = Instant::now();
        Ok(())
    }

    /// Claims every key held here that no other live node took meanwhile, closes
    /// the local holders of those it did take, and records every member count.
    ///
    /// It renews the node's deadline as often as the heartbeat would: one claim
    /// at a time, many keys take longer than the TTL, and a node released
    /// halfway, live as it is, is reported down, loses the keys claimed so far,
    /// and starts over, to be cut short again.
    async fn announce(&self) -> Result<(), ClusterError> {
        let held: Vec<(String, crate::ClientId)> = lock(&self.keys)
            .held
            .iter()
            .map(|(k, h)| (k.clone(), h.id))
            .collect();
        let mut renewed = Instant::now();
        for (key, id) in held {
            self.keep_alive(&mut renewed).await?;
            self.claim(&key, id, Mode::IfFree).await?;
        }
        let sessions = self.known_sessions().await;
        self.sync_sessions(sessions).await
    }

    /// Releases every node whose heartbeat expired (or `node`); each is announced
    /// on the ctl channel, where every node (this one too) turns it into a
    /// [`ClusterEvent::NodeDown`](super::ClusterEvent::NodeDown).
    ///
    /// One script call releases at most a chunk (`scripts::DOWN`), so Redis serves
    /// other clients between calls; the calls follow each other at once, so a
    /// node is released within this tick whatever it held, up to
    /// [`MAX_REAP_CALLS`] chunks (the rest at the next tick).
    pub(crate) async fn reap(&self, node: Option<&str>) -> Result<(), ClusterError> {
        let args = vec![
            self.names.base.clone(),
            self.names.ctl.clone(),
            node.unwrap_or("").to_owned(),
            self.max_keys_listed.to_string(),
        ];
        for _ in 0..MAX_REAP_CALLS {
            let reaping: i64 = self
                .client
                .eval(self.scripts.down.text(), self.presence_keys(), args.clone())
                .await?;
            if reaping <= 0 {
                break;
            }
        }
        Ok(())
    }

    /// The session's members on every live node; refused rather than short when
    /// more live nodes than [`ClusterBuilder::max_nodes_listed`] would have to be
    /// read.
    ///
    /// [`ClusterBuilder::max_nodes_listed`]: super::ClusterBuilder::max_nodes_listed
    pub(crate) async fn members(&self, token: String) -> Result<u64, ClusterError> {
        let (sum, omitted): (u64, u64) = self
            .client
            .eval(
                self.scripts.members.text(),
                self.presence_keys(),
                vec![
                    self.names.base.clone(),
                    token,
                    self.max_nodes_listed.to_string(),
                ],
            )
            .await?;
        if omitted > 0 {
            return Err(ClusterError::TooManyNodes { omitted });
        }
        Ok(sum)
    }

    pub(crate) async fn nodes(&self) -> Result<Nodes, ClusterError> {
        let raw: Vec<Value> = self
            .client
            .eval(
                self.scripts.nodes.text(),
                self.presence_keys(),
                vec![
                    self.names.base.clone(),
                    self.max_nodes_listed.to_string(),
                    super::envelope::MAX_NODE_ID.to_string(),
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(raw.len() / 2);
        let mut it = raw.into_iter();
        let mut omitted = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        while let (Some(id), Some(info)) = (it.next(), it.next()) {
            let Some(id) = id.as_string() else {
                omitted += 1;
                continue;
            };
            let fields: Vec<Value> = info.convert().unwrap_or_default();
            let mut node = NodeInfo {
                id,
                clients: 0,
                subscriptions: 0,
                gaps: 0,
                heartbeat_age_ms: None,
                state: NodeState::Up,
            };
            let mut ttl = None;
            let mut f = fields.into_iter();
            while let (Some(k), Some(v)) = (f.next(), f.next()) {
                let v: Option<u64> = v.as_string().and_then(|v| v.parse().ok());
                match k.as_string().as_deref() {
                    Some("clients") => node.clients = v.unwrap_or(0),
                    Some("subscriptions") => node.subscriptions = v.unwrap_or(0),
                    Some("gaps") => node.gaps = v.unwrap_or(0),
                    Some("age") => node.heartbeat_age_ms = v,
                    Some("ttl") => ttl = v,
                    _ => {}
                }
            }
            node.state = NodeState::of(node.heartbeat_age_ms, ttl);
            out.push(node);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Nodes {
            nodes: out,
            omitted,
        })
    }
}

/// The heartbeat task: release keys whose connections left the registry behind
/// the cluster's back, beat and reconcile every third of the TTL, and reap at
/// least three times as often, so that a dead node is released at most a ninth of
/// the TTL (and at most a second) after its deadline. Errors (Redis down) are
/// retried at the next tick.
pub(crate) async fn run<M: Clone + Send + Sync + 'static>(shared: Arc<Shared<M>>) {
    let (period, beat_every) = schedule(shared.ttl);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let beat = n % beat_every == 0;
        if beat {
            // Before the heartbeat, so that a re-announcement skips them.
            let _ = shared.release_orphans().await;
            let _ = shared.release_doubtful().await;
        }
        if beat && shared.heartbeat().await.is_ok() {
            let sessions = shared.known_sessions().await;
            let _ = shared.sync_sessions(sessions).await;
        }
        let _ = shared.reap(None).await;
    }
}

/// The reaper's period, and every how many periods the node beats (at most every
/// third of the TTL). The period is a ninth of the TTL, and at most a second, so
/// that a dead node is released within a second of its deadline whatever the TTL.
fn schedule(ttl: Duration) -> (Duration, u64) {
    let period = (ttl / 9).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let every = (ttl / 3).as_nanos() / period.as_nanos();
    (period, u64::try_from(every).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{schedule, NodeState};

    #[test]
    fn a_dead_node_is_reaped_within_a_second_of_its_deadline_at_any_ttl() {
        for ms in [300, 1_000, 3_000, 9_000, 10_000, 30_000, 300_000] {
            let ttl = Duration::from_millis(ms);
            let (period, every) = schedule(ttl);
            assert!(
                period <= Duration::from_secs(1),
                "ttl {ttl:?}: reaps every {period:?}"
            );
            let beat = period * u32::try_from(every).unwrap();
            assert!(beat <= ttl / 3, "ttl {ttl:?}: beats every {beat:?}");
            assert!(
                beat + period > ttl / 3,
                "ttl {ttl:?}: beats every {beat:?}, too often"
            );
        }
    }

    #[test]
    fn a_node_is_late_once_it_missed_a_beat() {
        assert_eq!(NodeState::of(Some(1000), Some(3000)), NodeState::Up);
        assert_eq!(NodeState::of(Some(2000), Some(3000)), NodeState::Up);
        assert_eq!(NodeState::of(Some(2001), Some(3000)), NodeState::Late);
        assert_eq!(NodeState::of(None, Some(3000)), NodeState::Up);
        assert_eq!(NodeState::of(Some(9000), None), NodeState::Up);
    }
}
