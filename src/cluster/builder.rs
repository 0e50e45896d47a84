//! Configuring a node: the Redis URL, its id, timings and options.

use std::time::Duration;

use fred::prelude::{ClientLike, Config, ReconnectPolicy};

use crate::sync::Arc;
use crate::Registry;

use super::codec::Codec;
use super::envelope::{valid_node_id, MAX_NODE_ID};
use super::error::ClusterError;
use super::Cluster;

/// A builder that connects a [`Registry`] to Redis; see [`Cluster::builder`].
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct ClusterBuilder<M> {
    pub(crate) registry: Registry<M>,
    pub(crate) codec: Arc<dyn Codec<M>>,
    pub(crate) url: String,
    pub(crate) node: Option<String>,
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
    pub(crate) sharded: bool,
    pub(crate) reconnect_delay: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_payload: usize,
    pub(crate) publish_queue: usize,
    pub(crate) publish_deadline: Duration,
    pub(crate) max_nodes_listed: usize,
    pub(crate) max_keys_listed: usize,
    pub(crate) max_publish_streams: usize,
}

impl<M> std::fmt::Debug for ClusterBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("sharded", &self.sharded)
            .finish_non_exhaustive()
    }
}

/// A node id that cannot travel in a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id must be 1 to {MAX_NODE_ID} bytes of [A-Za-z0-9._-], got {0:?}")]
pub struct BadNodeId(pub String);

impl<M: Clone + Send + Sync + 'static> ClusterBuilder<M> {
    pub(crate) fn new(registry: Registry<M>, codec: impl Codec<M>) -> Self {
        Self {
            registry,
            codec: Arc::new(codec),
            url: "redis://127.0.0.1:6379".to_owned(),
            node: None,
            prefix: "switchboard".to_owned(),
            ttl: Duration::from_secs(3),
            sharded: false,
            reconnect_delay: Duration::from_millis(100),
            command_timeout: Duration::from_secs(2),
            max_payload: 1 << 20,
            publish_queue: 65_536,
            publish_deadline: Duration::from_millis(500),
            max_nodes_listed: 1_000,
            max_keys_listed: 1_000,
            max_publish_streams: 65_536,
        }
    }

    /// The Redis server, as a `redis://host:port` URL. Default `redis://127.0.0.1:6379`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// This node's id, unique in the cluster. Default: random.
    ///
    /// A node that connects under the id of a node Redis still counts as live
    /// takes the id over: the earlier holder is released at once, as after its
    /// TTL (a [`ClusterEvent::NodeDown`](super::ClusterEvent::NodeDown) lists its
    /// keys). That is what a process restarted under a fixed id needs; two live
    /// processes must never share one (each is told, with
    /// [`ClusterEvent::IdConflict`](super::ClusterEvent::IdConflict)).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node = Some(id.into());
        self
    }

    /// The prefix of every Redis key and channel, so that several clusters can share
    /// one server. Default `switchboard`. Must not be empty
    /// ([`ClusterError::EmptyPrefix`] from [`connect`](Self::connect)).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a node's heartbeat lives; a node silent this long is dead and its
    /// keys are released. It beats every third of this. Default 3 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// Session channels use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), for
    /// Redis Cluster deployments. Default off.
    ///
    /// # On Redis Cluster
    ///
    /// Give [`url`](Self::url) a `redis-cluster://host:port?node=host:port&...`
    /// URL. Each session channel lives on the shard that owns its slot, and a
    /// publication reaches only that shard; the presence keys share the hash
    /// tag `{prefix}`, so they (and every presence script) live on one master,
    /// which carries all of that traffic.
    ///
    /// What the tests show (`tests/redis_cluster.rs`, on three masters without
    /// replicas, two nodes): broadcasts crossing nodes in sessions on every
    /// shard, alone and many at once with batches in flight, in order per
    /// author; each subscription made and
    /// dropped on the master that owns it, an attach returning only once that
    /// master has run it; [`Cluster::send_to_key`](super::Cluster::send_to_key),
    /// takeovers and [`Cluster::member_count`](super::Cluster::member_count)
    /// across nodes; and delivery resuming, with every subscription back,
    /// after every master closed every subscriber connection (`CLIENT KILL
    /// TYPE pubsub`). As with one server, publications made while the
    /// subscriptions come back may be lost (and are counted as gaps).
    ///
    /// Not tested, so not claimed: a failover to a replica, a master
    /// restarted or added, and slots moving between masters. When a slot moves,
    /// Redis drops the shard subscriptions in it; nothing here subscribes
    /// again before the next reconnect, so those sessions may go unheard
    /// until then.
    ///
    /// Off, on Redis Cluster, broadcasts cross nodes as well, in order with
    /// batches in flight (tested), but every publication is forwarded to every
    /// master.
    pub fn sharded(mut self, on: bool) -> Self {
        self.sharded = on;
        self
    }

    /// The pause between reconnection attempts. Default 100 ms.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// The largest payload accepted from Redis; larger publications count as
    /// malformed. This node refuses to publish larger ones
    /// ([`PublishError::TooLarge`](super::PublishError::TooLarge)), so give every
    /// node the same limit. Default 1 MiB.
    ///
    /// It bounds the control notices too (takeovers, and node-downs on the
    /// channel every node reads), but never below 64 KiB: a longer one is
    /// dropped unread and counted as malformed. A node-down listing [`max_keys_listed`](Self::max_keys_listed)
    /// keys of up to a kilobyte each fits the default; a longer one is lost as an
    /// event (its keys are released all the same).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Publications waiting for Redis, at most; more fail with
    /// [`PublishError::Busy`](super::PublishError::Busy). Default 65,536.
    pub fn publish_queue(mut self, n: usize) -> Self {
        self.publish_queue = n.max(1);
        self
    }

    /// How long after it is sent Redis still accepts a publication. A publication
    /// that cannot be confirmed fails after twice this, and Redis refuses it from
    /// then on, so that "failed" is final. Default 500 ms.
    ///
    /// Not with [`sharded`](Self::sharded): a sharded batch is pipelined
    /// `SPUBLISH`es, which carry no deadline. Each caller hears its own
    /// command's answer, but a publication reported failed (its answer lost, or
    /// fred gave up on it after writing it) may still have reached the members
    /// on other nodes.
    pub fn publish_deadline(mut self, deadline: Duration) -> Self {
        self.publish_deadline = deadline.max(Duration::from_millis(10));
        self
    }

    /// The most nodes [`Cluster::nodes`] returns; the rest are counted in
    /// [`Nodes::omitted`](super::Nodes::omitted). Whoever can write to Redis
    /// decides how many nodes it lists, so the answer (and the script building
    /// it) is bounded. [`Cluster::member_count`] reads the counts of as many live
    /// nodes at most, and fails with
    /// [`ClusterError::TooManyNodes`](super::ClusterError::TooManyNodes) rather
    /// than leave some out. Default 1,000.
    pub fn max_nodes_listed(mut self, n: usize) -> Self {
        self.max_nodes_listed = n.max(1);
        self
    }

    /// The most keys a [`ClusterEvent::NodeDown`](super::ClusterEvent::NodeDown)
    /// lists; the rest are released all the same and counted in its `omitted`.
    /// Give every node the same limit: the node that reaps writes the list. A
    /// node reading a longer list keeps this many keys and only counts the rest;
    /// a listed key longer than the registry's
    /// [`max_profile_bytes`](crate::Builder::max_profile_bytes) (no client could
    /// have registered it) is counted, not listed. Default 1,000.
    pub fn max_keys_listed(mut self, n: usize) -> Self {
        self.max_keys_listed = n;
        self
    }

    /// The most sessions this node keeps a publication numbering for. Past it,
    /// the numbering of a session not published to for a while (while at least
    /// half as many other sessions were) is forgotten; its next publication starts
    /// a new numbering, in a new epoch, which the other nodes follow from there.
    /// A publication lost just before a numbering is forgotten is then not
    /// counted as a gap. Default 65,536.
    pub fn max_publish_streams(mut self, n: usize) -> Self {
        self.max_publish_streams = n.max(2);
        self
    }

    /// Connects to Redis, subscribes to this node's channels, announces the node
    /// and starts its background tasks (heartbeat, reaper, subscriptions).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] if Redis cannot be reached or the URL is invalid;
    /// a [`BadNodeId`] inside [`ClusterError::Config`];
    /// [`ClusterError::EmptyPrefix`]. Nothing is left running
    /// then: the tasks started are stopped and the connections closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropped before it returns, it stops the tasks it started and
    /// closes its connections, as on an error. What it wrote to Redis stays, as
    /// a node that died at once would leave it: released within the TTL.
    pub async fn connect(self) -> Result<Cluster<M>, ClusterError> {
        let node = self.node.clone().unwrap_or_else(random_id);
        if !valid_node_id(&node) {
            return Err(ClusterError::Config(BadNodeId(node)));
        }
        if self.prefix.is_empty() {
            return Err(ClusterError::EmptyPrefix);
        }
        let config = Config::from_url(&self.url)?;
        let delay = u32::try_from(self.reconnect_delay.as_millis()).unwrap_or(u32::MAX);
        let mut builder = fred::types::Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_constant(0, delay))
            .with_config(|c| {
                // Already fred's default, stated because the publisher relies on it:
                // with it, a command reaches fred's queue on its future's first
                // poll. `Interrupt` would first await a CLIENT UNBLOCK.
                c.blocking = fred::types::config::Blocking::Block;
            })
            .with_connection_config(|c| {
                c.connection_timeout = self.command_timeout;
                c.internal_command_timeout = self.command_timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = self.command_timeout;
                p.broadcast_channel_capacity = 1 << 14;
            });
        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let tasks = super::Tasks::new(client.clone(), subscriber.clone());
        client.init().await?;
        subscriber.init().await?;
        Cluster::start(self, node, client, subscriber, tasks).await
    }
}

fn random_id() -> String {
    format!("node-{}", random_token())
}

/// 16 hex digits, different per call and per process.
pub(crate) fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}
