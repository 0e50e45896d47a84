//! Sessions that span several nodes, over Redis (the `cluster` feature).
//!
//! A [`Cluster`] sits on a [`Registry`] and a Redis server. Each gateway node runs
//! one; together they behave like one registry:
//!
//! * **Broadcast across nodes.** [`Cluster::broadcast`] delivers to local members
//!   and publishes once to the session's Redis channel. Every other node with
//!   members there delivers to them; a node ignores its own publications. A node
//!   subscribes to a session's channel when it gets its first local member and
//!   unsubscribes after its last leaves, so traffic reaches only nodes that need
//!   it. [`ClusterBuilder::sharded`] uses `SPUBLISH`/`SSUBSCRIBE` for Redis Cluster.
//! * **Presence.** Each node renews a heartbeat with a TTL and records the keys its
//!   clients hold. [`Cluster::locate`], [`Cluster::send_to_key`],
//!   [`Cluster::member_count`] and [`Cluster::nodes`] read that state. A node that
//!   dies without cleaning up is released within its TTL, and
//!   [`ClusterEvent::NodeDown`] lists the keys it held.
//! * **Takeover across nodes.** A key registered on node B while it is online on
//!   node A is claimed atomically in Redis (a Lua script); A closes its connection
//!   with [`CloseReason::TakenOver`](crate::CloseReason::TakenOver).
//! * **Gaps are counted.** Pub/sub is at-most-once. Each node numbers its
//!   publications per session; receivers count the numbers they never saw
//!   ([`ClusterStats::gaps`]). A node keeps a bounded number of numberings
//!   ([`ClusterBuilder::max_publish_streams`]); one it forgot starts again in a
//!   new epoch, which receivers follow from there. When Redis restarts, every node reconnects,
//!   subscribes again to each session it has members in, and re-announces itself.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchboard::cluster::{Cluster, Raw};
//! use switchboard::{ClientInfo, Registry};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry: Registry<Arc<str>> = Registry::new();
//! let cluster = Cluster::builder(registry, Raw)
//!     .url("redis://127.0.0.1:6379")
//!     .node_id("gw-1")
//!     .connect()
//!     .await?;
//! let (alice, mut rx) = cluster.register(ClientInfo::new().with_key("alice")).await?;
//! cluster.attach(alice, "lobby").await?;
//! // Reaches lobby members on every node, with one Redis round trip.
//! cluster.broadcast("lobby", Arc::from("hello")).await?;
//! # let _ = rx.recv().await;
//! # Ok(()) }
//! ```
//!
//! # Trade-offs
//!
//! * Membership changes made through the cluster ([`Cluster::attach`],
//!   [`Cluster::register`], ...) take effect in Redis before they return. Changes
//!   made on the [`Registry`] directly are picked up by the next heartbeat.
//!   Their Redis work runs on a task of its own: a caller that stops waiting (a
//!   timeout, a `select!`) does not stop it halfway, unless the node itself
//!   stops (its last handle dropped; see [`Cluster`]).
//! * While Redis is unreachable, cross-node publications fail (and come back to
//!   the caller), registrations with a key fail, and local delivery goes on.
//! * Delivery across nodes is at-most-once and in order per publishing node and
//!   session; losses are counted, never hidden.
//!
//! # Correctness
//!
//! `tests/cluster.rs` runs two or three nodes in one process against a real
//! `redis-server`, including one restarted mid-run; `tests/redis_cluster.rs`
//! runs two against a three-master Redis Cluster (what it shows is listed at
//! [`ClusterBuilder::sharded`]); `stress cluster` runs three `ws_server`
//! processes.

mod batch;
mod builder;
mod clock;
mod codec;
mod envelope;
mod error;
mod gaps;
mod inbound;
mod names;
mod presence;
mod publisher;
mod scripts;
mod stats;
mod streams;
mod subscription;
mod takeover;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, LuaInterface};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::sync::{lock, Arc, AsyncMutex, Mutex};
use crate::{
    BroadcastReport, ClientId, ClientInfo, Receiver, Registration, Registry, SessionId,
    Unregistered,
};

pub use builder::{BadNodeId, ClusterBuilder};
pub use codec::{Codec, CodecError, Json, Raw};
pub use error::{ClusterError, PublishError, RedisError, SendToKeyError};
pub use presence::{NodeInfo, NodeState, Nodes};
pub use stats::{ClusterEvent, ClusterStats};

use clock::RedisClock;
use gaps::GapTracker;
use names::Names;
use publisher::{Outgoing, Publisher};
use scripts::Scripts;
use stats::Counters;
use takeover::{Keys, Mode};

/// One node of a cluster: a [`Registry`] joined to the others through Redis.
///
/// Cloning gives another handle to the same node. The node's background tasks
/// (heartbeat, subscriptions, receiver) stop when the last handle is dropped; the
/// other nodes then release it within its TTL. [`Cluster::shutdown`] leaves at
/// once instead.
///
/// # Cancel safety
///
/// The Redis work of [`register`](Self::register),
/// [`unregister`](Self::unregister), [`attach`](Self::attach) and
/// [`detach`](Self::detach), and a [`broadcast`](Self::broadcast)'s publication,
/// run to the end whether or not their caller still waits, as long as a handle
/// to the node is left. A caller waiting holds one; but once the last handle is
/// dropped, the node closes its Redis connections beneath work that callers
/// stopped waiting for, and that work fails where it got to (a registration
/// whose claim fails is unregistered here). Redis is then cleaned up as for a
/// node that crashed: the other nodes release this node's keys and member
/// counts within its TTL. To leave Redis in order at once, call
/// [`shutdown`](Self::shutdown).
pub struct Cluster<M> {
    shared: Arc<Shared<M>>,
    tasks: Arc<Tasks>,
}

impl<M> Clone for Cluster<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            tasks: Arc::clone(&self.tasks),
        }
    }
}

impl<M> std::fmt::Debug for Cluster<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

/// Aborts the node's tasks and closes its connections when the last handle goes.
/// Presence is left to expire: that is what other nodes see of a crash.
/// Work that callers stopped waiting for ([`to_the_end`], [`Handoff`]) holds only
/// the [`Shared`] state, so it fails from then on rather than keep the
/// connections open; the TTL cleans up after it.
/// The publisher is apart, with the signal that stops it between batches
/// ([`Cluster::shutdown`]).
struct Tasks(
    Mutex<Vec<JoinHandle<()>>>,
    Client,
    SubscriberClient,
    Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
);

impl Tasks {
    /// Made before the clients connect: should `connect` fail or be given up on
    /// (its future dropped), dropping it stops what was started and closes them,
    /// rather than leave them reconnecting for good.
    fn new(client: Client, subscriber: SubscriberClient) -> Self {
        Self(Mutex::new(Vec::new()), client, subscriber, Mutex::new(None))
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in lock(&self.0).drain(..) {
            task.abort();
        }
        // No caller is left waiting: each held a handle.
        if let Some((_, task)) = lock(&self.3).take() {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, subscriber) = (self.1.clone(), self.2.clone());
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            });
        }
    }
}

pub(crate) struct Shared<M> {
    registry: Registry<M>,
    codec: Arc<dyn Codec<M>>,
    node: String,
    /// This process's token, beside its node id in Redis: a heartbeat that finds
    /// another one there tells of two live processes under one id.
    run: String,
    names: Arc<Names>,
    scripts: Scripts,
    ttl: Duration,
    sharded: bool,
    max_payload: usize,
    /// How long after sending a publication Redis still accepts it.
    publish_deadline: Duration,
    /// The most nodes `nodes()` lists, and keys a node-down event lists.
    max_nodes_listed: usize,
    max_keys_listed: usize,
    /// What a takeover or node-down notice from Redis may hold.
    limits: envelope::Limits,
    client: Client,
    subscriber: SubscriberClient,
    counters: Arc<Counters>,
    gaps: Mutex<GapTracker>,
    /// Sessions whose channel this node is subscribed to; the lock serialises
    /// every subscription change.
    subs: AsyncMutex<HashSet<SessionId>>,
    /// Sessions queued for the next sync under the lock of `subs`, which syncs
    /// them all in one pass, and the outcomes their callers wait for.
    pending: Mutex<subscription::Pending>,
    /// To the inbound task: sessions unsubscribed from, to forget in order with
    /// the frames. One at a time, under the lock of `subs`.
    forgets: mpsc::Sender<inbound::Forget>,
    /// Sessions a sync failed on, until one succeeds (the reconcile looks at
    /// them too): Redis may lack their member count, and may or may not have
    /// run the (un)subscribe whose answer never came, so the next sync says
    /// both again.
    unrecorded: Mutex<HashSet<SessionId>>,
    /// Keys this node's clients hold, and claims in flight.
    keys: Mutex<Keys>,
    publish: mpsc::Sender<Outgoing>,
    clock: Arc<RedisClock>,
    events: broadcast::Sender<ClusterEvent>,
}

/// Why a message could not be encoded for the other nodes.
enum Unsendable {
    Codec(codec::CodecError),
    TooLarge(usize),
}

impl Unsendable {
    fn with<M>(self, msg: M) -> PublishError<M> {
        match self {
            Self::Codec(e) => PublishError::Codec(msg, e),
            Self::TooLarge(n) => PublishError::TooLarge(msg, n),
        }
    }
}

impl<M> Shared<M> {
    /// The `KEYS` of every presence script: the key base `{prefix}`, which the
    /// scripts read from `ARGV` anyway. Declared only so that fred sends the
    /// call to the Redis Cluster master owning that slot: a script without
    /// `KEYS` goes to any master, and the others refuse it ("non local key").
    fn presence_keys(&self) -> Vec<String> {
        vec![self.names.base.clone()]
    }
}

impl<M: 'static> Shared<M> {
    /// The payload for `msg`, if the other nodes accept it: they drop payloads
    /// over `max_payload`, so the sender refuses them rather than report success.
    fn encode(&self, msg: &M) -> Result<bytes::Bytes, Unsendable> {
        let payload = self.codec.encode(msg).map_err(Unsendable::Codec)?;
        if payload.len() > self.max_payload {
            return Err(Unsendable::TooLarge(payload.len()));
        }
        Ok(payload)
    }
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Claims a new registration's key (reserved before the registry took it)
    /// and records the rooms of the connection it took over here; unregisters
    /// it again if the claim failed, so that a key is never held without Redis
    /// knowing.
    async fn settle_registration(
        self: Arc<Self>,
        reserved: Option<takeover::Reserved<M>>,
        reg: Registration<M>,
    ) -> Result<Registration<M>, ClusterError> {
        if let Some(reserved) = reserved {
            if let Err(e) = self.claim_reserved(reserved, reg.id, Mode::Force).await {
                let _ = self.registry.unregister(reg.id);
                return Err(e);
            }
        }
        if let Some(old) = &reg.took_over {
            // Not an error to the caller: the client is registered and its key
            // claimed, so failing now would leave a connection nobody drains
            // holding the key. The heartbeat's reconcile retries the sync.
            let _ = self.sync_sessions(old.sessions.iter().cloned()).await;
        }
        Ok(reg)
    }

    /// Releases the key of connection `id`, unregistered here already, and
    /// records the rooms it left: both, even when the first fails (the
    /// heartbeat retries what failed), and the first error is returned.
    async fn settle_leave(
        self: Arc<Self>,
        key: Option<String>,
        id: ClientId,
        sessions: Vec<SessionId>,
    ) -> Result<(), ClusterError> {
        let released = match key {
            Some(key) => self.release(&key, id).await,
            None => Ok(()),
        };
        let synced = self.sync_sessions(sessions).await;
        released.and(synced)
    }

    /// Unregisters a client whose registration nobody waits for any more: nobody
    /// holds its receiver, so it would hold its key with a channel nobody drains.
    async fn abandon(self: Arc<Self>, id: ClientId) {
        let key = self.registry.info(id).ok().and_then(|i| i.key.clone());
        if let Ok(gone) = self.registry.unregister(id) {
            let _ = self.settle_leave(key, id, gone.sessions).await;
        }
    }

    /// As [`abandon`](Self::abandon), from code that cannot wait (a `Drop`): the
    /// client leaves the registry at once, and Redis is told on a task of its
    /// own. Without a runtime to run it, the heartbeat's orphan release and
    /// reconcile tell Redis, should the node live on.
    fn leave_now(self: &Arc<Self>, id: ClientId) {
        let key = self.registry.info(id).ok().and_then(|i| i.key.clone());
        let Ok(gone) = self.registry.unregister(id) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Arc::clone(self).settle_leave(key, id, gone.sessions));
        }
    }
}

/// Runs `work` on a task of its own and waits for it. A caller that stops
/// waiting (a timeout, a `select!`, its task aborted) leaves the work running to
/// the end, unless the node stops meanwhile ([`Tasks`]): stopped halfway, it
/// would leave the node's subscriptions, gap numbering or Redis's member counts
/// out of line with the registry, with nothing left to look at them again.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, ClusterError>> + Send + 'static,
) -> Result<T, ClusterError> {
    match tokio::spawn(work).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Nothing aborts the task: only a runtime shutting down cancels it.
        Err(_) => Err(cancelled()),
    }
}

/// The error for work whose task the runtime dropped (it is shutting down).
fn cancelled() -> ClusterError {
    fred::error::Error::new(
        fred::error::ErrorKind::Canceled,
        "the runtime shut down before the cluster's work finished",
    )
    .into()
}

/// The caller's end of a registration settled on a task of its own
/// ([`Cluster::register_with_report`]). Dropped before the outcome was taken, it
/// has the client unregistered again: nobody holds its receiver.
struct Handoff<M: Clone + Send + Sync + 'static> {
    outcome: oneshot::Receiver<Result<Registration<M>, ClusterError>>,
    /// The task settling it: asked why, when it ends without an answer.
    task: JoinHandle<()>,
    shared: Arc<Shared<M>>,
    taken: bool,
}

impl<M: Clone + Send + Sync + 'static> Handoff<M> {
    async fn wait(mut self) -> Result<Registration<M>, ClusterError> {
        let outcome = (&mut self.outcome).await;
        self.taken = true;
        match outcome {
            Ok(outcome) => outcome,
            // No answer: the task panicked, or the runtime is shutting down.
            // Either way its guard unregistered the client.
            Err(_) => match (&mut self.task).await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => Err(cancelled()),
            },
        }
    }
}

/// Held by the task settling a registration until the outcome is known: should
/// the task unwind (a panic) or be dropped unfinished (the runtime shutting
/// down), it unregisters the client, whose receiver nobody will be given.
struct Unsettled<'a, M: Clone + Send + Sync + 'static> {
    shared: &'a Arc<Shared<M>>,
    id: ClientId,
    done: bool,
}

impl<M: Clone + Send + Sync + 'static> Drop for Unsettled<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.leave_now(self.id);
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Drop for Handoff<M> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        // Closed, the channel either holds the outcome already, or the task's
        // send fails and the task unregisters the client itself.
        self.outcome.close();
        let Ok(Ok(reg)) = self.outcome.try_recv() else {
            return;
        };
        self.shared.leave_now(reg.id);
    }
}

/// Where [`Cluster::send_to_key`] delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivered {
    /// To a connection on this node.
    Local,
    /// Published to the node holding the key.
    Remote(String),
}

impl<M: Clone + Send + Sync + 'static> Cluster<M> {
    /// Starts configuring a node over `registry`, with `codec` for its messages.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::cluster::{Cluster, Raw};
    ///
    /// let builder = Cluster::builder(switchboard::Registry::<String>::new(), Raw)
    ///     .url("redis://127.0.0.1:6400")
    ///     .node_id("gw-1");
    /// # drop(builder);
    /// ```
    pub fn builder(registry: Registry<M>, codec: impl Codec<M>) -> ClusterBuilder<M> {
        ClusterBuilder::new(registry, codec)
    }

    async fn start(
        b: ClusterBuilder<M>,
        node: String,
        client: Client,
        subscriber: SubscriberClient,
        tasks: Tasks,
    ) -> Result<Self, ClusterError> {
        let names = Arc::new(Names::new(&b.prefix));
        let counters = Arc::new(Counters::default());
        let (publish, rx) = mpsc::channel(b.publish_queue);
        let (events, _) = broadcast::channel(1024);
        let clock = Arc::new(RedisClock::default());
        // `sync_sessions` waits for each forget under the subscription lock.
        let (forgets, forgets_rx) = mpsc::channel(1);
        let scripts = Scripts::new();
        // Loaded once here; each batch then names it by its hash (`publisher.rs`).
        let publish_script = fred::bytes_utils::Str::from(scripts::publish(&node));
        let publish_sha: fred::bytes_utils::Str =
            client.script_load(publish_script.clone()).await?;
        let limits = envelope::Limits {
            // A small payload bound must not cost takeover notices.
            notice_bytes: b.max_payload.max(envelope::MIN_NOTICE_BYTES),
            keys_listed: b.max_keys_listed,
            // A key travels in the profile, so no registered key is longer.
            key_bytes: b.registry.config().profile_bounds.bytes,
        };
        let shared = Arc::new(Shared {
            registry: b.registry,
            codec: b.codec,
            node: node.clone(),
            run: builder::random_token(),
            names: Arc::clone(&names),
            scripts,
            ttl: b.ttl,
            sharded: b.sharded,
            max_payload: b.max_payload,
            publish_deadline: b.publish_deadline,
            max_nodes_listed: b.max_nodes_listed,
            max_keys_listed: b.max_keys_listed,
            limits,
            client: client.clone(),
            subscriber: subscriber.clone(),
            counters: Arc::clone(&counters),
            gaps: Mutex::new(GapTracker::default()),
            subs: AsyncMutex::new(HashSet::new()),
            pending: Mutex::new(subscription::Pending::default()),
            forgets,
            unrecorded: Mutex::new(HashSet::new()),
            keys: Mutex::new(Keys::default()),
            publish,
            clock: Arc::clone(&clock),
            events,
        });
        lock(&tasks.0).extend([
            tokio::spawn(inbound::run(Arc::clone(&shared), forgets_rx)),
            // Subscribes again after every reconnect (not fred's own
            // resubscription: see `Shared::resubscribe`).
            tokio::spawn(inbound::reconnects(Arc::clone(&shared))),
        ]);
        let (stop, stopped) = oneshot::channel();
        let publisher = tokio::spawn(
            Publisher {
                node: node.clone(),
                names: Arc::clone(&names),
                max_streams: b.max_publish_streams,
                link: Arc::new(publisher::Link {
                    client,
                    sharded: b.sharded,
                    counters,
                    clock,
                    script: publish_script,
                    sha: publish_sha,
                    deadline: b.publish_deadline,
                    refused: tokio::sync::Notify::new(),
                }),
            }
            .run(rx, stopped),
        );
        *lock(&tasks.3) = Some((stop, publisher));
        // A process restarted under this id within its TTL: the earlier run is
        // dead, so release what it held (other nodes hear a node-down, and forget
        // its numbering) before this run announces itself.
        shared.reap(Some(&node)).await?;
        // Run by Redis before `connect` returns: a send to this node made after it
        // must find the node channel subscribed.
        shared
            .subscribe(vec![names.node_channel(&node), names.ctl.clone()])
            .await?;
        shared.heartbeat().await?;
        lock(&tasks.0).push(tokio::spawn(presence::run(Arc::clone(&shared))));
        Ok(Self {
            shared,
            tasks: Arc::new(tasks),
        })
    }

    /// The local registry.
    pub fn registry(&self) -> &Registry<M> {
        &self.shared.registry
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Registers a client here; a keyed client is claimed cluster-wide, and a
    /// connection holding the key on another node is closed with
    /// [`CloseReason::TakenOver`](crate::CloseReason::TakenOver).
    /// [`register_with_report`](Self::register_with_report) also tells of a
    /// connection taken over on this node.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Register`] as [`Registry::register`];
    /// [`ClusterError::Redis`] if the claim failed, in which case the client is
    /// unregistered again: a key is never held without Redis knowing. Once the
    /// claim succeeded the call succeeds: should Redis then fail to hear that a
    /// connection taken over here left its rooms, the heartbeat's reconcile
    /// records it later.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the work runs on a task of its own from the first poll.
    /// Dropped before it returns, it unregisters the client again (and releases
    /// its key) once Redis has answered the claim, since nobody holds the
    /// receiver; Redis is left as if the client had come and gone. All this
    /// unless the node stops meanwhile (see [`Cluster`]). A panic in that work
    /// unregisters the client too, and is raised again in a caller still waiting.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let (id, rx) = cluster.register(ClientInfo::new().with_key("dev-7")).await?;
    /// assert_eq!(cluster.locate("dev-7").await?.as_deref(), Some(cluster.node_id()));
    /// # drop((id, rx));
    /// # Ok(()) }
    /// ```
    pub async fn register(
        &self,
        info: ClientInfo,
    ) -> Result<(ClientId, Receiver<M>), ClusterError> {
        let reg = self.register_with_report(info).await?;
        Ok((reg.id, reg.receiver))
    }

    /// As [`register`](Self::register), with the registry's report: the
    /// connection with the same key that this one took over *on this node*, and
    /// with [`Builder::takeover_moves_sessions`](crate::Builder::takeover_moves_sessions)
    /// the rooms of it that did not move (see [`Registry::register_with_report`]).
    /// A connection holding the key on another node is closed there, when its
    /// node hears of the claim; it is in no report here.
    ///
    /// # Errors
    ///
    /// As [`register`](Self::register).
    ///
    /// # Cancel safety
    ///
    /// As [`register`](Self::register).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let reg = cluster.register_with_report(ClientInfo::new().with_key("dev-7")).await?;
    /// if let Some(old) = &reg.took_over {
    ///     println!("took over {} here; {} rooms did not move", old.id, reg.not_moved.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn register_with_report(
        &self,
        info: ClientInfo,
    ) -> Result<Registration<M>, ClusterError> {
        // Counted in flight before the registry takes the key: see `reserve_claim`.
        let key = info.key.as_deref().map(|k| self.shared.reserve_claim(k));
        let reg = self.shared.registry.register_with_report(info)?;
        let (tx, outcome) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        // Spawned before the first await: whatever becomes of the caller, the
        // claim is answered and the registration kept or undone in full.
        let task = tokio::spawn(async move {
            let mut unsettled = Unsettled {
                shared: &shared,
                id: reg.id,
                done: false,
            };
            let settled = Arc::clone(&shared).settle_registration(key, reg).await;
            unsettled.done = true;
            drop(unsettled);
            if let Err(Ok(reg)) = tx.send(settled) {
                shared.abandon(reg.id).await;
            }
        });
        Handoff {
            outcome,
            task,
            shared: Arc::clone(&self.shared),
            taken: false,
        }
        .wait()
        .await
    }

    /// Unregisters a client, releases its key and leaves the session channels it
    /// was the last local member of.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Client`] if it is not connected here; [`ClusterError::Redis`]
    /// if Redis could not be told (the client is gone locally all the same, and the
    /// next heartbeat corrects the counts).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the client is unregistered here on the first poll, and the
    /// key's release and the sessions' sync run on a task of their own, to the
    /// end, whether or not the caller waits for them, unless the node stops
    /// meanwhile (see [`Cluster`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let (id, _rx) = cluster.register(ClientInfo::new().with_key("dev-7")).await?;
    /// let gone = cluster.unregister(id).await?;
    /// assert_eq!(cluster.locate("dev-7").await?, None);
    /// # drop(gone);
    /// # Ok(()) }
    /// ```
    pub async fn unregister(&self, id: ClientId) -> Result<Unregistered, ClusterError> {
        let key = self
            .shared
            .registry
            .info(id)
            .ok()
            .and_then(|i| i.key.clone());
        let gone = self.shared.registry.unregister(id)?;
        let (shared, sessions) = (Arc::clone(&self.shared), gone.sessions.clone());
        to_the_end(shared.settle_leave(key, id, sessions)).await?;
        Ok(gone)
    }

    /// Adds a client to a session; the node subscribes to the session's channel
    /// before this returns if it is the first local member, so every later
    /// publication from any node reaches the client.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Attach`] as [`Registry::attach`]; [`ClusterError::Redis`] if
    /// the subscription failed (the heartbeat retries it).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the client is attached here on the first poll, and the
    /// subscription and member count follow on a task of their own, to the end,
    /// whether or not the caller waits for them, unless the node stops meanwhile
    /// (see [`Cluster`]). A caller that stopped waiting has no promise that the
    /// subscription is in place yet.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let (id, _rx) = cluster.register(ClientInfo::new()).await?;
    /// cluster.attach(id, "lobby").await?; // subscribed to "lobby" now
    /// # Ok(()) }
    /// ```
    pub async fn attach(
        &self,
        id: ClientId,
        session: impl Into<SessionId>,
    ) -> Result<bool, ClusterError> {
        let session = session.into();
        let new = self.shared.registry.attach(id, session.clone())?;
        let shared = Arc::clone(&self.shared);
        to_the_end(async move { shared.sync_sessions([session]).await }).await?;
        Ok(new)
    }

    /// Removes a client from a session; the node unsubscribes after its last local
    /// member leaves.
    ///
    /// # Errors
    ///
    /// As [`attach`](Self::attach), with [`ClusterError::Detach`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the client is detached here on the first poll, and the
    /// unsubscription and member count follow on a task of their own, to the
    /// end, whether or not the caller waits for them, unless the node stops
    /// meanwhile (see [`Cluster`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let (id, _rx) = cluster.register(ClientInfo::new()).await?;
    /// cluster.attach(id, "lobby").await?;
    /// cluster.detach(id, "lobby").await?; // the last local member: unsubscribed
    /// # Ok(()) }
    /// ```
    pub async fn detach(
        &self,
        id: ClientId,
        session: impl Into<SessionId>,
    ) -> Result<(), ClusterError> {
        let session = session.into();
        self.shared.registry.detach(id, session.clone())?;
        let shared = Arc::clone(&self.shared);
        to_the_end(async move { shared.sync_sessions([session]).await }).await
    }

    /// Delivers `msg` to the session's local members and publishes it once for
    /// the other nodes. Returns how many local members got it.
    ///
    /// # Errors
    ///
    /// [`PublishError`] with the message when it could not be published; local
    /// members got it all the same unless the error is [`PublishError::Codec`] or
    /// [`PublishError::TooLarge`].
    ///
    /// # Cancel safety
    ///
    /// The local members get the message on the first poll. The publication is
    /// queued for Redis then, and goes out even if the caller stops waiting (Redis
    /// still refuses it past its deadline, as for any publication): a caller that
    /// gave up cannot tell whether the other nodes got it, nor have the message
    /// back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// match cluster.broadcast("lobby", Arc::from("hi")).await {
    ///     Ok(local) => println!("{local} local members; published for the others"),
    ///     Err(e) => {
    ///         let why = e.to_string();
    ///         println!("not published ({why}); the message is back: {}", e.into_inner());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn broadcast(
        &self,
        session: impl Into<SessionId>,
        msg: M,
    ) -> Result<usize, PublishError<M>> {
        let (local, published) = self.publish_session(session.into(), None, msg).await;
        published.map(|()| local.delivered)
    }

    /// As [`broadcast`](Self::broadcast), except to `except` (the author).
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub async fn broadcast_except(
        &self,
        session: impl Into<SessionId>,
        except: ClientId,
        msg: M,
    ) -> Result<usize, PublishError<M>> {
        let (local, published) = self
            .publish_session(session.into(), Some(except), msg)
            .await;
        published.map(|()| local.delivered)
    }

    /// Delivers to the local members and publishes: the local broadcast's report
    /// (empty if no member is here, or if the message was refused before
    /// delivery) beside the publication's outcome. The admin API answers with both.
    pub(crate) async fn publish_session(
        &self,
        session: SessionId,
        except: Option<ClientId>,
        msg: M,
    ) -> (BroadcastReport, Result<(), PublishError<M>>) {
        let payload = match self.shared.encode(&msg) {
            Ok(p) => p,
            Err(e) => return (BroadcastReport::default(), Err(e.with(msg))),
        };
        let local = match except {
            Some(id) => self
                .shared
                .registry
                .broadcast_except(session.clone(), id, msg.clone()),
            None => self.shared.registry.broadcast(session.clone(), msg.clone()),
        };
        // No member here is not an error: the session may have members elsewhere.
        let local = local.unwrap_or_default();
        (local, self.enqueue(session, payload, msg).await)
    }

    async fn enqueue(
        &self,
        session: SessionId,
        payload: bytes::Bytes,
        msg: M,
    ) -> Result<(), PublishError<M>> {
        let (done, answer) = oneshot::channel();
        let out = Outgoing {
            session,
            payload,
            done,
        };
        match self.shared.publish.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(PublishError::Busy(msg)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(PublishError::Closed(msg)),
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Redis(msg, RedisError(e))),
            Err(_) => Err(PublishError::Closed(msg)),
        }
    }

    /// Sends `msg` to the client holding `key`, on whichever node it is connected.
    ///
    /// Redis is asked who holds the key (and the message published to that node) in
    /// one round trip, even when the key is connected here: during a takeover the
    /// old node still has its connection for the moment its notice is in flight,
    /// and only Redis knows it is no longer the holder. For a key known to be
    /// local, [`Registry::send`] skips the round trip.
    ///
    /// # Errors
    ///
    /// [`SendToKeyError::NotFound`] if no live node holds the key; the other
    /// variants when the local send or the publication failed. Each gives the
    /// message back, and a failure is final: as for a broadcast, Redis refuses
    /// the send once the caller could have been told it failed.
    ///
    /// # Cancel safety
    ///
    /// Not all-or-nothing. Once the lookup has been sent, Redis publishes to the
    /// key's node, if that is another one, whether or not the caller still waits;
    /// a key held here is sent to only when the answer reaches a caller still
    /// waiting. So a caller that stopped waiting cannot tell whether the client
    /// got the message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// use switchboard::cluster::Delivered;
    /// match cluster.send_to_key("dev-7", Arc::from("reboot")).await {
    ///     Ok(Delivered::Local) => println!("connected here"),
    ///     Ok(Delivered::Remote(node)) => println!("published to {node}"),
    ///     Ok(_) => {}
    ///     Err(e) => println!("{e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_to_key(&self, key: &str, msg: M) -> Result<Delivered, SendToKeyError<M>> {
        let shared = &self.shared;
        let payload = match shared.encode(&msg) {
            Ok(p) => p,
            Err(e) => return Err(SendToKeyError::Publish(e.with(msg))),
        };
        let Some(frame) = envelope::direct(&shared.node, key, &payload) else {
            return Err(SendToKeyError::NotFound(msg));
        };
        let routed = shared.route(key, frame).await;
        match routed {
            Ok(v) => match v.as_string().filter(|_| !v.is_null()) {
                // Redis says the key is here: deliver without a publication.
                Some(node) if node == shared.node => {
                    match shared.registry.lookup(crate::ClientRef::Key(key)) {
                        Ok(entry) => shared
                            .registry
                            .send(entry.id, msg)
                            .map(|()| Delivered::Local)
                            .map_err(SendToKeyError::Local),
                        Err(_) => Err(SendToKeyError::NotFound(msg)),
                    }
                }
                Some(node) => {
                    Counters::add(&shared.counters.published, 1);
                    Ok(Delivered::Remote(node))
                }
                None => Err(SendToKeyError::NotFound(msg)),
            },
            Err(e) => {
                Counters::add(&shared.counters.publish_failed, 1);
                Err(SendToKeyError::Publish(PublishError::Redis(
                    msg,
                    RedisError(e),
                )))
            }
        }
    }

    /// The live node whose client holds `key`, if any.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] if Redis could not be asked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// if let Some(node) = cluster.locate("dev-7").await? {
    ///     println!("dev-7 is on {node}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn locate(&self, key: &str) -> Result<Option<String>, ClusterError> {
        self.shared.locate(key).await
    }

    /// Members of `session` on every live node, as their nodes last recorded.
    ///
    /// Redis is asked for the counts of at most
    /// [`ClusterBuilder::max_nodes_listed`] live nodes (those [`nodes`](Self::nodes)
    /// lists), and of nothing else in the session's record, which any client of
    /// the server can write to.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] if Redis could not be asked;
    /// [`ClusterError::TooManyNodes`] if more live nodes than that bound would have
    /// to be read: a count that left some out would be short.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// println!("{} in the lobby, on every node", cluster.member_count("lobby").await?);
    /// # Ok(()) }
    /// ```
    pub async fn member_count(&self, session: impl Into<SessionId>) -> Result<usize, ClusterError> {
        let n = self.shared.members(Names::token(&session.into())).await?;
        // At most max_nodes_listed counts of at most 2^40 each (the script's bound).
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Live nodes with their client counts, sorted by id: at most
    /// [`ClusterBuilder::max_nodes_listed`], the others counted in
    /// [`Nodes::omitted`].
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] if Redis could not be asked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// for node in cluster.nodes().await? {
    ///     println!("{}: {} clients", node.id, node.clients);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn nodes(&self) -> Result<Nodes, ClusterError> {
        self.shared.nodes().await
    }

    /// This node's counters: publications, round trips, gaps, ...
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// let stats = cluster.stats();
    /// println!("{} publications lost on the way here", stats.gaps);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> ClusterStats {
        self.shared.counters.snapshot(&self.shared.node)
    }

    /// The sessions this node is subscribed to now.
    pub async fn subscriptions(&self) -> Vec<SessionId> {
        let mut subs: Vec<_> = self.shared.subs.lock().await.iter().cloned().collect();
        subs.sort();
        subs
    }

    /// Follows cluster events: nodes going down, keys taken over, reconnections.
    /// Lossy like [`Registry::subscribe`]: a follower that falls behind skips ahead.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// use switchboard::cluster::ClusterEvent;
    /// let mut events = cluster.events();
    /// while let Ok(event) = events.recv().await {
    ///     if let ClusterEvent::NodeDown { node, keys, omitted } = event {
    ///         println!("{node} died holding {keys:?} and {omitted} more");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.shared.events.subscribe()
    }

    /// Leaves the cluster cleanly: releases this node's keys and member counts at
    /// once (other nodes see a [`ClusterEvent::NodeDown`]), stops the background
    /// tasks and closes the Redis connections. Local clients stay registered.
    ///
    /// Publications first: new ones fail with [`PublishError::Closed`] at once,
    /// the batch already sent to Redis finishes (within twice
    /// [`ClusterBuilder::publish_deadline`]) and its callers get its true
    /// outcome, and those still queued come back unsent with
    /// [`PublishError::Closed`]. A publication reported failed never arrives
    /// (but see [`ClusterBuilder::publish_deadline`] for sharded pub/sub).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] if Redis could not be told; the node then expires
    /// within its TTL.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it runs to the end on a task of its own from the first poll;
    /// a caller that stops waiting only misses the outcome. (Stopped halfway, it
    /// could leave the node beating with its publisher stopped.)
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use switchboard::cluster::{Cluster, Raw};
    /// # use switchboard::{ClientInfo, Registry};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw).connect().await?;
    /// cluster.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        to_the_end(self.stop()).await
    }

    async fn stop(self) -> Result<(), ClusterError> {
        let publisher = lock(&self.tasks.3).take();
        if let Some((stop, task)) = publisher {
            let _ = stop.send(());
            // The publisher's own timeout ends a batch by then; this is a backstop.
            let limit = self.shared.publish_deadline * 2 + Duration::from_millis(500);
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
            }
        }
        for task in lock(&self.tasks.0).drain(..) {
            task.abort();
        }
        let left = self.shared.reap(Some(&self.shared.node)).await;
        let _ = self.shared.subscriber.quit().await;
        let _ = self.shared.client.quit().await;
        left
    }
}

#[cfg(test)]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the integration tests' helper; not every item is used here"
)]
#[path = "../../tests/common/redis.rs"]
mod test_redis;
/// The name `tests/common/redis_cluster.rs` finds its sibling under.
#[cfg(test)]
use test_redis as redis;
#[cfg(test)]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the integration tests' helper; not every item is used here"
)]
#[path = "../../tests/common/redis_cluster.rs"]
mod test_redis_cluster;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::test_redis::Redis;
    use crate::cluster::test_redis_cluster::RedisCluster;

    /// A node whose heartbeats are far apart: none runs during a test.
    pub(super) async fn node(redis: &Redis, prefix: &str) -> Cluster<Arc<str>> {
        Cluster::builder(Registry::<Arc<str>>::new(), Raw)
            .url(redis.url())
            .prefix(prefix)
            .node_id("a")
            .ttl(Duration::from_secs(60))
            .connect()
            .await
            .unwrap()
    }

    /// A panic in the task settling a registration reaches the caller waiting
    /// for it, rather than a "runtime shut down" error, and the client does not
    /// stay registered with nobody holding its receiver. No code of the
    /// caller's runs in that task, so the panic is the test's own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_settling_a_registration_reaches_the_caller_and_unregisters() {
        let Some(redis) = Redis::start("settle_panic") else {
            return;
        };
        let cluster = node(&redis, "u4").await;
        let (id, _rx) = cluster.registry().register(ClientInfo::new()).unwrap();
        let (tx, outcome) = oneshot::channel();
        let shared = Arc::clone(&cluster.shared);
        let task = tokio::spawn(async move {
            let _unsettled = Unsettled {
                shared: &shared,
                id,
                done: false,
            };
            let _tx: oneshot::Sender<Result<Registration<Arc<str>>, ClusterError>> = tx;
            panic!("settling went wrong");
        });
        let handoff = Handoff {
            outcome,
            task,
            shared: Arc::clone(&cluster.shared),
            taken: false,
        };
        let waited = tokio::spawn(handoff.wait()).await;
        let panic = waited.expect_err("the caller got an outcome");
        assert!(panic.is_panic(), "{panic}");
        let payload = panic.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"settling went wrong"));
        assert_eq!(cluster.registry().client_count(), 0, "the client stayed");
    }

    /// A sharded node on a three-master Redis Cluster, heartbeats far apart.
    pub(super) async fn sharded_node(redis: &RedisCluster, prefix: &str) -> Cluster<Arc<str>> {
        Cluster::builder(Registry::<Arc<str>>::new(), Raw)
            .url(redis.url())
            .prefix(prefix)
            .node_id("a")
            .ttl(Duration::from_secs(60))
            .sharded(true)
            .connect()
            .await
            .unwrap()
    }

    /// After a reconnect the node subscribes again to every session it holds:
    /// on Redis Cluster one `SSUBSCRIBE` may only name channels of one slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resubscribe_on_redis_cluster_subscribes_each_slot_apart() {
        let Some(redis) = RedisCluster::start("resubscribe_slots") else {
            return;
        };
        let cluster = sharded_node(&redis, "u5").await;
        let (id, _rx) = cluster.register(ClientInfo::new()).await.unwrap();
        let rooms: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
        for room in &rooms {
            cluster.attach(id, room.as_str()).await.unwrap();
        }
        cluster.shared.resubscribe().await.expect("resubscribe");
        for room in &rooms {
            let channel = cluster
                .shared
                .names
                .channel(&SessionId::from(room.as_str()));
            assert_eq!(redis.shardnumsub(&channel), 1, "{channel}");
        }
    }
}
