//! The subscription lifecycle: a node listens on a session's channel exactly while
//! it has local members there.
//!
//! Every change goes through [`Shared::sync_sessions`], serialised by one lock: it
//! reads the session's local member count *now*, subscribes on the first member,
//! unsubscribes after the last, and records the count in Redis for the cluster-wide
//! [`member_count`](super::Cluster::member_count), before it lets go of the lock.
//! Because it reads the count rather than trusting the caller's event, two racing
//! changes cannot leave a wrong subscription or count behind: the later sync sees
//! the final count and writes it last.
//!
//! For the same reason one pass covers every change made before it reads, so
//! syncs are coalesced: a caller queues its sessions in [`Pending`], takes the
//! lock, and syncs every session queued by then in one pass. A caller that finds
//! its sessions taken by an earlier holder has nothing left to do: that pass read
//! the counts after the caller's change and finished before the caller got the
//! lock, so the caller takes that pass's outcome. However many callers stop
//! waiting while Redis is slow, the lock sees one pass per holder with work, not
//! one per call; and a pass stops at its first failed command, so that during an
//! outage it waits out one command timeout, not one per session.
//!
//! Leaving a session also forgets its numbering in the gap tracker (what others
//! publish while this node is away is no gap), still under the lock: the inbound
//! task forgets it after handling every frame heard before the unsubscribe, and
//! no later subscription to it can start before (`inbound.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fred::error::Error as FredError;
use fred::interfaces::{ClientLike, FredResult, LuaInterface, PubsubInterface};
use fred::prelude::{Options, Value};
use fred::types::{ClusterHash, MultipleStrings};
use fred::util::redis_keyslot;
use tokio::sync::oneshot;

use crate::sync::{lock, Mutex, Ordering};
use crate::SessionId;

use super::inbound::Forget;
use super::names::Names;
use super::{ClusterError, Shared};

/// Sessions queued for the next sync pass, and what the last pass made of each
/// session a caller still waits for. Both are bounded by the sessions of the
/// syncs in flight: a caller's entries go when it has its answer.
#[derive(Default)]
pub(crate) struct Pending {
    queued: HashSet<SessionId>,
    waiting: HashMap<SessionId, Waiting>,
}

struct Waiting {
    callers: usize,
    /// Written under the subscription lock by each pass over the session.
    failed: Option<FredError>,
}

/// A caller's sessions, queued and counted as waited for until it is dropped
/// (should the runtime drop the caller's task midway, too).
struct Waiter<'a> {
    pending: &'a Mutex<Pending>,
    sessions: Vec<SessionId>,
}

impl<'a> Waiter<'a> {
    fn queue(pending: &'a Mutex<Pending>, sessions: Vec<SessionId>) -> Self {
        let mut p = lock(pending);
        for session in &sessions {
            p.queued.insert(session.clone());
            p.waiting
                .entry(session.clone())
                .or_insert(Waiting {
                    callers: 0,
                    failed: None,
                })
                .callers += 1;
        }
        drop(p);
        Self { pending, sessions }
    }

    /// The first failure among this caller's sessions. Read under the
    /// subscription lock once none is queued: each was last synced by a pass
    /// that took it from the queue after this caller queued it.
    fn outcome(&self) -> Result<(), ClusterError> {
        let p = lock(self.pending);
        match self
            .sessions
            .iter()
            .find_map(|s| p.waiting.get(s).and_then(|w| w.failed.clone()))
        {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut p = lock(self.pending);
        for session in &self.sessions {
            if let Some(w) = p.waiting.get_mut(session) {
                w.callers -= 1;
                if w.callers == 0 {
                    p.waiting.remove(session);
                }
            }
        }
    }
}

/// Sessions a pass took from the queue: put back should the pass be dropped
/// midway (its task aborted as the node stops), so that no caller takes the
/// outcome of a pass that never finished.
struct Taken<'a> {
    pending: &'a Mutex<Pending>,
    sessions: Vec<SessionId>,
    done: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.pending).queued.extend(self.sessions.drain(..));
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Brings the subscription and recorded member count of each session in line
    /// with its local members, as they are once this is called.
    ///
    /// # Errors
    ///
    /// The failure of the pass that synced one of `sessions`, if it failed
    /// before that session was done (the heartbeat's reconcile retries).
    pub(crate) async fn sync_sessions(
        &self,
        sessions: impl IntoIterator<Item = SessionId>,
    ) -> Result<(), ClusterError> {
        let sessions: Vec<SessionId> = sessions.into_iter().collect();
        if sessions.is_empty() {
            return Ok(());
        }
        let waiter = Waiter::queue(&self.pending, sessions);
        let mut subs = self.subs.lock().await;
        let mut taken = Taken {
            pending: &self.pending,
            sessions: lock(&self.pending).queued.drain().collect(),
            done: false,
        };
        if !taken.sessions.is_empty() {
            self.sync_pass(&mut subs, &taken.sessions).await;
        }
        taken.done = true;
        let outcome = waiter.outcome();
        drop(subs);
        outcome
    }

    /// Syncs `batch` under the subscription lock, and records each session's
    /// outcome for its callers. The first failed command ends the pass (the
    /// others would most likely wait out the same timeout): every session of the
    /// batch then fails with it, and is kept in `unrecorded` for the reconcile,
    /// which says its subscription and count again.
    async fn sync_pass(&self, subs: &mut HashSet<SessionId>, batch: &[SessionId]) {
        let mut join = Vec::new();
        let mut leave = Vec::new();
        let mut counts: Vec<String> = Vec::with_capacity(batch.len() * 2);
        {
            let unrecorded = lock(&self.unrecorded);
            for session in batch {
                let n = self.registry.member_count(session).unwrap_or(0);
                let have = subs.contains(session);
                // A failed pass may have left it subscribed or not whatever
                // `subs` says: Redis runs an (un)subscribe whose answer never
                // came once it answers again. Said again either way, or a
                // later change that finds nothing to do leaves it so for good.
                let unsure = unrecorded.contains(session);
                if n > 0 && (!have || unsure) {
                    join.push(session.clone());
                } else if n == 0 && (have || unsure) {
                    leave.push(session.clone());
                }
                counts.push(Names::token(session));
                counts.push(n.to_string());
            }
        }
        let mut failed = self.join_sessions(subs, join).await.err();
        if failed.is_none() {
            failed = self.leave_sessions(subs, leave).await.err();
        }
        self.set_subscriptions(subs);
        // Under the lock: a sync that read its counts earlier must not write them
        // after a later one, or Redis keeps a stale count until the next heartbeat.
        if failed.is_none() {
            let mut args = vec![self.names.base.clone(), self.node.clone()];
            args.extend(counts);
            let written: FredResult<Value> = self
                .client
                .eval(self.scripts.counts.text(), self.presence_keys(), args)
                .await;
            failed = written.err();
        }
        {
            // A session left here is in neither the registry nor `subs` any more:
            // kept apart until its count is written, or the reconcile would never
            // look at it again and Redis would keep its old count.
            let mut unrecorded = lock(&self.unrecorded);
            for session in batch {
                if failed.is_some() {
                    unrecorded.insert(session.clone());
                } else {
                    unrecorded.remove(session);
                }
            }
        }
        let mut p = lock(&self.pending);
        for session in batch {
            if let Some(w) = p.waiting.get_mut(session) {
                w.failed.clone_from(&failed);
            }
        }
    }

    /// Subscribes to the sessions' channels, each answered once Redis has run
    /// it; stops at the first failure.
    async fn join_sessions(
        &self,
        subs: &mut HashSet<SessionId>,
        sessions: Vec<SessionId>,
    ) -> FredResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        if self.sharded {
            // One command each: on Redis Cluster their channels hash to
            // different slots.
            for session in sessions {
                self.ssubscribe(vec![self.names.channel(&session)]).await?;
                subs.insert(session);
            }
        } else {
            let channels: Vec<String> = sessions.iter().map(|s| self.names.channel(s)).collect();
            self.subscribe(channels).await?;
            subs.extend(sessions);
        }
        Ok(())
    }

    /// Unsubscribes from the sessions' channels and forgets the numbering of
    /// those it left; stops at the first failure.
    async fn leave_sessions(
        &self,
        subs: &mut HashSet<SessionId>,
        sessions: Vec<SessionId>,
    ) -> FredResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut left: Vec<SessionId> = Vec::with_capacity(sessions.len());
        let mut unsubscribed = Ok(());
        if self.sharded {
            for session in sessions {
                unsubscribed = self
                    .subscriber
                    .sunsubscribe(self.names.channel(&session))
                    .await;
                if unsubscribed.is_err() {
                    break;
                }
                left.push(session);
            }
        } else {
            let channels: Vec<String> = sessions.iter().map(|s| self.names.channel(s)).collect();
            unsubscribed = self.subscriber.unsubscribe(channels).await;
            if unsubscribed.is_ok() {
                left = sessions;
            }
        }
        for session in &left {
            subs.remove(session);
        }
        let forgotten = self.forget_sessions(left).await;
        unsubscribed.and(forgotten)
    }

    /// Forgets the numbering of sessions just unsubscribed from, after every
    /// frame Redis sent on them before: called under the subscription lock, it
    /// waits for the inbound task to handle the frames in its buffer first.
    /// Returns the `PING`'s failure: the pass stops there.
    async fn forget_sessions(&self, sessions: Vec<SessionId>) -> FredResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        // fred answers an `(S)UNSUBSCRIBE` before Redis has run it, as it does a
        // `SUBSCRIBE` (below); the `PING`'s answer comes after, and so after every
        // frame Redis sent before it. Should the `PING` fail, the connection went,
        // and with it whatever else it would have carried. On Redis Cluster each
        // shard's frames come on a connection of their own: one `PING` each.
        let slots: BTreeSet<u16> = if self.sharded {
            sessions
                .iter()
                .map(|s| redis_keyslot(self.names.channel(s).as_bytes()))
                .collect()
        } else {
            BTreeSet::from([self.legacy_slot()])
        };
        let mut pinged = Ok(());
        for slot in slots {
            let ping = self.ping_slot(slot).await;
            pinged = pinged.and(ping);
        }
        let (done, forgotten) = oneshot::channel();
        let forget = Forget {
            sessions: sessions.clone(),
            done,
        };
        if self.forgets.send(forget).await.is_ok() && forgotten.await.is_ok() {
            return pinged;
        }
        // The inbound task is gone: no frame is handled any more.
        let mut gaps = lock(&self.gaps);
        for session in &sessions {
            gaps.forget_session(session);
        }
        pinged
    }

    /// `SUBSCRIBE`, answered once Redis has run it. fred 10.1 answers a
    /// `SUBSCRIBE` when it queues it, before it is even written, and drops
    /// Redis's confirmation; a publication made meanwhile on another connection
    /// would miss this node. A `PING` on the same connection is answered after
    /// the `SUBSCRIBE` has run.
    pub(crate) async fn subscribe(
        &self,
        channels: impl Into<MultipleStrings> + Send,
    ) -> FredResult<()> {
        self.subscriber.subscribe(channels).await?;
        self.ping_slot(self.legacy_slot()).await
    }

    /// `SSUBSCRIBE` to channels of one slot (Redis Cluster refuses more with
    /// `CROSSSLOT`), answered once Redis has run it: under load the order test
    /// lost the first publications after an `SSUBSCRIBE` fred had answered, so
    /// it gets the same `PING`, on the connection to the shard that owns them.
    async fn ssubscribe(&self, channels: Vec<String>) -> FredResult<()> {
        let Some(first) = channels.first() else {
            return Ok(());
        };
        let slot = redis_keyslot(first.as_bytes());
        self.subscriber.ssubscribe(channels).await?;
        self.ping_slot(slot).await
    }

    /// A `PING` on the subscriber connection that carries the commands of
    /// `slot`: on Redis Cluster fred keeps one per shard, and a `PING` sent
    /// without a slot goes to any of them, proving nothing about the others.
    /// A single server ignores the slot.
    async fn ping_slot(&self, slot: u16) -> FredResult<()> {
        let options = Options {
            cluster_hash: Some(ClusterHash::Custom(slot)),
            ..Options::default()
        };
        let _: Value = self.subscriber.with_options(&options).ping(None).await?;
        Ok(())
    }

    /// The slot fred sends every `SUBSCRIBE` and `UNSUBSCRIBE` to on Redis
    /// Cluster (that of the client's id, fred 10.1), so that their `PING` goes
    /// to the same connection.
    fn legacy_slot(&self) -> u16 {
        redis_keyslot(self.subscriber.id().as_bytes())
    }

    fn set_subscriptions(&self, subs: &HashSet<SessionId>) {
        // Relaxed: a gauge read alone, for reports.
        self.counters
            .subscriptions
            .store(subs.len() as u64, Ordering::Relaxed);
    }

    /// Every session that has local members, a subscription, or a count Redis
    /// has not recorded: what a reconcile must look at.
    pub(crate) async fn known_sessions(&self) -> Vec<SessionId> {
        let mut all: HashSet<SessionId> = self.registry.session_ids().into_iter().collect();
        all.extend(self.subs.lock().await.iter().cloned());
        all.extend(lock(&self.unrecorded).iter().cloned());
        all.into_iter().collect()
    }

    /// After a reconnect: subscribe again to this node's own channels and to
    /// every session held.
    ///
    /// fred's own resubscription (`manage_subscriptions`) is not used: it
    /// reads the channels it tracks when the reconnect is announced, before
    /// the commands queued during the outage run, so an `UNSUBSCRIBE` queued
    /// then was followed by a `SUBSCRIBE` of the same channel, and the node
    /// stayed subscribed to a session it had left. (It also sends a
    /// `PSUBSCRIBE` of no pattern, whose error Redis answers and fred hands to
    /// the next command waiting on the connection, failing a sync.)
    pub(crate) async fn resubscribe(&self) -> Result<(), ClusterError> {
        // Held to the end: a leave that ran between reading the sessions and
        // subscribing them again would be undone, with no member left to
        // unsubscribe the session (on Redis Cluster this takes a round trip
        // per slot).
        let held = self.subs.lock().await;
        let mut own = vec![self.names.node_channel(&self.node), self.names.ctl.clone()];
        let sessions = held.iter().map(|s| self.names.channel(s));
        if self.sharded {
            self.subscribe(own).await?;
            // One command per slot: Redis Cluster refuses an `SSUBSCRIBE` whose
            // channels hash to several (`CROSSSLOT`).
            let mut slots: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for channel in sessions {
                let slot = redis_keyslot(channel.as_bytes());
                slots.entry(slot).or_default().push(channel);
            }
            for channels in slots.into_values() {
                self.ssubscribe(channels).await?;
            }
        } else {
            own.extend(sessions);
            self.subscribe(own).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;
    use crate::cluster::test_redis::Redis;
    use crate::cluster::test_redis_cluster::RedisCluster;
    use crate::cluster::tests::sharded_node;
    use crate::cluster::{Cluster, Raw};
    use crate::sync::Arc;
    use crate::{ClientInfo, Registry};

    /// Whether `work` is still waiting after 300 ms with the master on `port`
    /// stopped; it finishes once the master goes on.
    async fn waits_for(
        redis: &RedisCluster,
        port: u16,
        work: impl std::future::Future<Output = FredResult<()>> + Send + 'static,
    ) -> bool {
        redis.freeze(port);
        let task = tokio::spawn(work);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waited = !task.is_finished();
        redis.thaw(port);
        task.await.unwrap().expect("done once the master goes on");
        waited
    }

    /// The forget handshake's `PING` follows every frame of the channels left,
    /// only if it goes to the shard that carried them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forgetting_waits_for_the_master_of_each_channel_left() {
        let Some(redis) = RedisCluster::start("forget_slots") else {
            return;
        };
        let cluster = sharded_node(&redis, "u6").await;
        let shared = Arc::clone(&cluster.shared);
        let mut owners = Vec::new();
        for i in 0.. {
            let session = SessionId::from(format!("r{i}").as_str());
            let owner = redis.owner(&shared.names.channel(&session));
            if owners.iter().any(|(o, _)| *o == owner) {
                continue;
            }
            owners.push((owner, session));
            if owners.len() == 3 {
                break;
            }
        }
        let mut early = Vec::new();
        for (owner, session) in owners {
            let shared = Arc::clone(&shared);
            let forget = async move { shared.forget_sessions(vec![session]).await };
            if !waits_for(&redis, owner, forget).await {
                early.push(owner);
            }
        }
        assert!(
            early.is_empty(),
            "answered with these masters stopped: {early:?}"
        );
    }

    /// A leave made while the node subscribes again after a reconnect stays
    /// made: on a sharded node the resubscription takes a round trip per slot,
    /// and a session it read before the leave must not be subscribed again
    /// after it, with no member left to unsubscribe it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leave_during_a_resubscription_stays_made() {
        let Some(redis) = Redis::start("leave_during_resubscription") else {
            return;
        };
        let cluster = Cluster::builder(Registry::<Arc<str>>::new(), Raw)
            .url(redis.url())
            .prefix("u8")
            .node_id("a")
            .ttl(Duration::from_secs(60))
            .sharded(true)
            .connect()
            .await
            .unwrap();
        let shared = Arc::clone(&cluster.shared);
        let (m, _rx) = cluster.register(ClientInfo::new()).await.unwrap();
        let rooms: Vec<SessionId> = (0..50)
            .map(|i| SessionId::from(format!("r{i}").as_str()))
            .collect();
        for room in &rooms {
            cluster.attach(m, room.clone()).await.unwrap();
        }
        let mut resubscribing = Box::pin(shared.resubscribe());
        // Its first poll reads the sessions held and sends its first command.
        let first = std::future::poll_fn(|cx| Poll::Ready(resubscribing.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "{first:?}");
        for room in &rooms {
            cluster.registry().detach(m, room.clone()).unwrap();
        }
        let (resubscribed, left) = tokio::join!(resubscribing, shared.sync_sessions(rooms.clone()));
        resubscribed.unwrap();
        left.unwrap();
        let still: Vec<String> = rooms
            .iter()
            .map(|r| shared.names.channel(r))
            .filter(|c| {
                redis
                    .cli(&["PUBSUB", "SHARDNUMSUB", c.as_str()])
                    .and_then(|out| out.lines().nth(1).map(|n| n.trim() != "0"))
                    .unwrap_or(false)
            })
            .collect();
        assert!(still.is_empty(), "subscribed with no member: {still:?}");
    }

    /// A `SUBSCRIBE` (the node and ctl channels) is answered once the master
    /// fred sent it to has run it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribe_waits_for_the_master_it_went_to() {
        let Some(redis) = RedisCluster::start("subscribe_slot") else {
            return;
        };
        let cluster = sharded_node(&redis, "u7").await;
        let shared = Arc::clone(&cluster.shared);
        // fred sends every SUBSCRIBE of a clustered client to its id's slot.
        let owner = redis.owner(shared.subscriber.id());
        let subscribe = async move { shared.subscribe(vec!["u7:probe".to_owned()]).await };
        assert!(waits_for(&redis, owner, subscribe).await);
        assert_eq!(
            redis
                .cli(owner, &["PUBSUB", "NUMSUB", "u7:probe"])
                .unwrap()
                .lines()
                .nth(1),
            Some("1")
        );
    }
}
