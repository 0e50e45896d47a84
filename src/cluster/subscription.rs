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
//! Leaving a session also forgets its numbering in the gap tracker (what others
//! publish while this node is away is no gap), still under the lock: the inbound
//! task forgets it after handling every frame heard before the unsubscribe, and
//! no later subscription to it can start before (`inbound.rs`).

use std::collections::HashSet;

use fred::interfaces::{ClientLike, FredResult, LuaInterface, PubsubInterface};
use fred::prelude::Value;
use fred::types::MultipleStrings;
use tokio::sync::oneshot;

use crate::sync::{lock, Ordering};
use crate::SessionId;

use super::inbound::Forget;
use super::names::Names;
use super::{ClusterError, Shared};

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Brings the subscription and recorded member count of each session in line
    /// with its local members.
    pub(crate) async fn sync_sessions(
        &self,
        sessions: impl IntoIterator<Item = SessionId>,
    ) -> Result<(), ClusterError> {
        let mut subs = self.subs.lock().await;
        let mut counts: Vec<String> = Vec::new();
        let mut left = Vec::new();
        let mut recorded = Vec::new();
        let mut failed = None;
        for session in sessions {
            let n = self.registry.member_count(&session).unwrap_or(0);
            let have = subs.contains(&session);
            let channel = self.names.channel(&session);
            if n > 0 && !have {
                let r = if self.sharded {
                    self.ssubscribe(channel).await
                } else {
                    self.subscribe(channel).await
                };
                match r {
                    Ok(()) => {
                        subs.insert(session.clone());
                    }
                    Err(e) => {
                        // The heartbeat's reconcile retries.
                        failed = Some(e);
                        continue;
                    }
                }
            } else if n == 0 && have {
                let r = if self.sharded {
                    self.subscriber.sunsubscribe(channel).await
                } else {
                    self.subscriber.unsubscribe(channel).await
                };
                if let Err(e) = r {
                    failed = Some(e);
                    continue;
                }
                subs.remove(&session);
                left.push(session.clone());
            }
            counts.push(Names::token(&session));
            counts.push(n.to_string());
            recorded.push(session);
        }
        self.forget_sessions(left).await;
        self.set_subscriptions(&subs);
        // Under the lock: a sync that read its counts earlier must not write them
        // after a later one, or Redis keeps a stale count until the next heartbeat.
        if !counts.is_empty() {
            let mut args = vec![self.names.base.clone(), self.node.clone()];
            args.extend(counts);
            let written: Result<Value, _> = self
                .client
                .eval(self.scripts.counts.text(), Vec::<String>::new(), args)
                .await;
            // A session left here is in neither the registry nor `subs` any more:
            // kept apart until its count is written, or the reconcile would never
            // look at it again and Redis would keep its old count.
            let mut unrecorded = lock(&self.unrecorded);
            if let Err(e) = written {
                unrecorded.extend(recorded);
                return Err(e.into());
            }
            for session in &recorded {
                unrecorded.remove(session);
            }
        }
        drop(subs);
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Forgets the numbering of sessions just unsubscribed from, after every
    /// frame Redis sent on them before: called under the subscription lock, it
    /// waits for the inbound task to handle the frames in its buffer first.
    async fn forget_sessions(&self, sessions: Vec<SessionId>) {
        if sessions.is_empty() {
            return;
        }
        // fred answers an `(S)UNSUBSCRIBE` before Redis has run it, as it does a
        // `SUBSCRIBE` (below); the `PING`'s answer comes after, and so after every
        // frame Redis sent before it. Should the `PING` fail, the connection went,
        // and with it whatever else it would have carried.
        let _: FredResult<Value> = self.subscriber.ping(None).await;
        let (done, forgotten) = oneshot::channel();
        let forget = Forget {
            sessions: sessions.clone(),
            done,
        };
        if self.forgets.send(forget).await.is_ok() && forgotten.await.is_ok() {
            return;
        }
        // The inbound task is gone: no frame is handled any more.
        let mut gaps = lock(&self.gaps);
        for session in &sessions {
            gaps.forget_session(session);
        }
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
        let _: Value = self.subscriber.ping(None).await?;
        Ok(())
    }

    /// `SSUBSCRIBE`, answered once Redis has run it: under load the order test
    /// lost the first publications after an `SSUBSCRIBE` fred had answered, so
    /// it gets the same `PING`.
    async fn ssubscribe(&self, channels: impl Into<MultipleStrings> + Send) -> FredResult<()> {
        self.subscriber.ssubscribe(channels).await?;
        let _: Value = self.subscriber.ping(None).await?;
        Ok(())
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

    /// After a reconnect: subscribe again to every session held, whatever the
    /// client library already restored (`SUBSCRIBE` to a channel already
    /// subscribed is harmless).
    pub(crate) async fn resubscribe(&self) -> Result<(), ClusterError> {
        let subs: Vec<String> = self
            .subs
            .lock()
            .await
            .iter()
            .map(|s| self.names.channel(s))
            .collect();
        if subs.is_empty() {
            return Ok(());
        }
        if self.sharded {
            self.ssubscribe(subs).await?;
        } else {
            self.subscribe(subs).await?;
        }
        Ok(())
    }
}
