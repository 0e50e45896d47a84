//! The receiving side: every publication this node hears, from its session
//! channels, its node channel and the ctl channel.

use fred::prelude::EventInterface;
use tokio::sync::broadcast::error::RecvError;

use crate::client_ref::ClientRef;
use crate::sync::{lock, Arc};
use crate::SessionId;

use super::envelope::{self, Envelope};
use super::gaps::Seen;
use super::names::Names;
use super::stats::{ClusterEvent, Counters};
use super::Shared;

/// The session of the channel the last publication came on: consecutive
/// publications mostly share one, and this spares parsing (and allocating) its
/// name for each.
#[derive(Default)]
struct LastChannel(Option<(String, SessionId)>);

impl LastChannel {
    fn session(&mut self, names: &Names, channel: &str) -> Option<SessionId> {
        match &self.0 {
            Some((c, s)) if c == channel => Some(s.clone()),
            _ => {
                let session = names.session_of(channel)?;
                self.0 = Some((channel.to_owned(), session.clone()));
                Some(session)
            }
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Counts `count` broadcasts numbered from `first` (one frame, or a bundle)
    /// and checks their numbers. Returns their session and how many of them, from
    /// the first, were seen before and are not delivered again; `None` when none
    /// is delivered: this node's own, stale, or refused.
    fn numbered(
        &self,
        node: &str,
        channel: &str,
        epoch: u32,
        first: u64,
        count: u64,
        last: &mut LastChannel,
    ) -> Option<(SessionId, usize)> {
        let c = &self.counters;
        if node == self.node {
            // Skip-self: local members got it before it was published.
            return None;
        }
        let Some(session) = last.session(&self.names, channel) else {
            Counters::add(&c.malformed, count);
            return None;
        };
        Counters::add(&c.received, count);
        let (seen, refuted) = {
            let mut gaps = lock(&self.gaps);
            let seen = gaps.observe_run(node, &session, epoch, first, count);
            (seen, gaps.take_refuted())
        };
        // Numbers of an earlier frame, delivered as a jump, that this one showed
        // were no publication of that node.
        Counters::add(&c.malformed, refuted);
        let stale = match seen {
            Seen::Next { missed } => {
                Counters::add(&c.gaps, missed);
                0
            }
            Seen::First => 0,
            Seen::Overlap { stale } => stale,
            Seen::Stale => count,
            Seen::Implausible => {
                Counters::add(&c.malformed, count);
                return None;
            }
        };
        Counters::add(&c.reordered, stale);
        // At most `count`, a bundle's length.
        (stale < count).then_some((session, stale as usize))
    }

    /// Delivers one broadcast's payload to the session's local members.
    fn deliver<'a>(&self, session: &SessionId, payloads: impl IntoIterator<Item = &'a [u8]>) {
        let c = &self.counters;
        let msgs = payloads.into_iter().filter_map(|payload| {
            if payload.len() > self.max_payload {
                Counters::add(&c.malformed, 1);
                return None;
            }
            let msg = self.codec.decode(payload);
            if msg.is_err() {
                Counters::add(&c.malformed, 1);
            }
            msg.ok()
        });
        // No local members left (a leave raced the publication): nothing to do.
        self.registry.broadcast_each(session, msgs);
    }

    /// Handles one publication; returns the sessions a takeover closed a member
    /// of, whose subscriptions must be synced.
    fn on_message(&self, channel: &str, bytes: &[u8], last: &mut LastChannel) -> Vec<SessionId> {
        let c = &self.counters;
        let Ok(env) = envelope::decode(bytes, &self.limits) else {
            Counters::add(&c.malformed, 1);
            return Vec::new();
        };
        match env {
            Envelope::Broadcast {
                node,
                epoch,
                seq,
                payload,
            } => {
                let Some((session, skip)) = self.numbered(node, channel, epoch, seq, 1, last)
                else {
                    return Vec::new();
                };
                if skip == 0 {
                    self.deliver(&session, [payload]);
                }
            }
            Envelope::Bundle {
                node,
                epoch,
                first,
                payloads,
            } => {
                let count = payloads.len() as u64;
                let Some((session, skip)) = self.numbered(node, channel, epoch, first, count, last)
                else {
                    return Vec::new();
                };
                self.deliver(&session, payloads.skip(skip));
            }
            Envelope::Direct { key, payload, .. } => {
                Counters::add(&c.received, 1);
                if payload.len() > self.max_payload {
                    Counters::add(&c.malformed, 1);
                    return Vec::new();
                }
                let Ok(msg) = self.codec.decode(payload) else {
                    Counters::add(&c.malformed, 1);
                    return Vec::new();
                };
                let sent = self
                    .registry
                    .lookup(ClientRef::Key(key))
                    .map(|e| self.registry.send(e.id, msg));
                if !matches!(sent, Ok(Ok(()))) {
                    Counters::add(&c.undeliverable, 1);
                }
            }
            Envelope::TakeOver(notice) => return self.on_takeover(notice),
            Envelope::NodeDown(down) => {
                lock(&self.gaps).forget_node(&down.node);
                // Already cut to this node's bound when decoded: the reaping node
                // may list more.
                let _ = self.events.send(ClusterEvent::NodeDown {
                    node: down.node,
                    keys: down.keys,
                    omitted: down.omitted,
                });
            }
        }
        Vec::new()
    }
}

/// Reads every publication the subscriber connection delivers.
pub(crate) async fn run<M: Clone + Send + Sync + 'static>(shared: Arc<Shared<M>>) {
    let mut rx = shared.subscriber.message_rx();
    let mut last = LastChannel::default();
    loop {
        match rx.recv().await {
            Ok(message) => {
                let Some(bytes) = message.value.as_bytes() else {
                    Counters::add(&shared.counters.malformed, 1);
                    continue;
                };
                let left = shared.on_message(&message.channel, bytes, &mut last);
                if !left.is_empty() {
                    // Off this loop: syncing waits for Redis.
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move { shared.sync_sessions(left).await });
                }
            }
            // Lost in the client's buffer: the numbering counts lost broadcasts as
            // gaps; a lost takeover notice is caught up by checking the keys.
            Err(RecvError::Lagged(n)) => {
                Counters::add(&shared.counters.lagged, n);
                recheck_soon(Arc::clone(&shared));
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Rechecks the keys in a task of its own, unless one is running: that one then
/// runs once more when it is done.
fn recheck_soon<M: Clone + Send + Sync + 'static>(shared: Arc<Shared<M>>) {
    {
        let mut keys = lock(&shared.keys);
        if keys.recheck.0 {
            keys.recheck.1 = true;
            return;
        }
        keys.recheck = (true, false);
    }
    tokio::spawn(async move {
        loop {
            let _ = shared.recheck_keys().await;
            let mut keys = lock(&shared.keys);
            if !keys.recheck.1 {
                keys.recheck = (false, false);
                return;
            }
            keys.recheck.1 = false;
        }
    });
}

/// Renews everything after the connection to Redis comes back.
pub(crate) async fn reconnects<M: Clone + Send + Sync + 'static>(shared: Arc<Shared<M>>) {
    let mut rx = shared.subscriber.reconnect_rx();
    loop {
        match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {
                Counters::add(&shared.counters.reconnects, 1);
                let _ = shared.resubscribe().await;
                // Takeover notices published while the subscriber was away are lost.
                let _ = shared.recheck_keys().await;
                let _ = shared.heartbeat().await;
                let _ = shared.events.send(ClusterEvent::Reconnected);
            }
            Err(RecvError::Closed) => return,
        }
    }
}
