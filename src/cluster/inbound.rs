//! The receiving side: every publication this node hears, from its session
//! channels, its node channel and the ctl channel.
//!
//! The same task forgets the numbering of the sessions this node unsubscribed
//! from ([`Forget`]), in order with the frames: after every one it heard before
//! the unsubscribe. Forgotten any earlier, a frame still in the buffer would set
//! the stream up again at its old number, and the first frame after a rejoin
//! would count everything published meanwhile as gaps.

use std::time::Duration;

use fred::prelude::EventInterface;
use fred::types::Message;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, oneshot};

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

/// Sessions this node unsubscribed from, whose numbering [`run`] forgets once
/// it has handled every frame already in its buffer, and then says `done`.
pub(crate) struct Forget {
    pub(crate) sessions: Vec<SessionId>,
    pub(crate) done: oneshot::Sender<()>,
}

/// Reads every publication the subscriber connection delivers, and forgets
/// sessions when told.
///
/// It never waits for a subscription change (it spawns the syncs a takeover
/// asks for): [`Shared::sync_sessions`] waits for it to forget, holding the
/// subscription lock.
pub(crate) async fn run<M: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<M>>,
    mut forgets: mpsc::Receiver<Forget>,
) {
    let mut rx = shared.subscriber.message_rx();
    let mut last = LastChannel::default();
    loop {
        tokio::select! {
            received = rx.recv() => {
                if !shared.handle(received, &mut last) {
                    return;
                }
            }
            Some(forget) = forgets.recv() => {
                // Every frame Redis sent before the unsubscribe is in the buffer by
                // now (`sync_sessions` waited for a PING after it); none of a later
                // subscription is, as the subscription lock is held till `done`.
                if !shared.handle_queued(&mut rx, &mut last) {
                    return;
                }
                let mut gaps = lock(&shared.gaps);
                for session in &forget.sessions {
                    gaps.forget_session(session);
                }
                drop(gaps);
                let _ = forget.done.send(());
            }
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Handles what the subscriber's buffer gave; false once it is closed.
    fn handle(
        self: &Arc<Self>,
        received: Result<Message, RecvError>,
        last: &mut LastChannel,
    ) -> bool {
        match received {
            Ok(message) => {
                let Some(bytes) = message.value.as_bytes() else {
                    Counters::add(&self.counters.malformed, 1);
                    return true;
                };
                let left = self.on_message(&message.channel, bytes, last);
                if !left.is_empty() {
                    // Off this loop: syncing waits for Redis, and for this loop.
                    let shared = Arc::clone(self);
                    tokio::spawn(async move { shared.sync_sessions(left).await });
                }
            }
            // Lost in the client's buffer: the numbering counts lost broadcasts as
            // gaps; a lost takeover notice is caught up by checking the keys.
            Err(RecvError::Lagged(n)) => {
                Counters::add(&self.counters.lagged, n);
                recheck_soon(Arc::clone(self));
            }
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// Handles the frames in the buffer now (at most its capacity), not those
    /// that arrive meanwhile; false once it is closed.
    fn handle_queued(
        self: &Arc<Self>,
        rx: &mut broadcast::Receiver<Message>,
        last: &mut LastChannel,
    ) -> bool {
        let mut queued = rx.len();
        while queued > 0 {
            let received = match rx.try_recv() {
                Ok(message) => {
                    queued -= 1;
                    Ok(message)
                }
                // The oldest ones were lost (counted as lagged): the rest follow.
                Err(TryRecvError::Lagged(n)) => {
                    queued = queued.saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
                    Err(RecvError::Lagged(n))
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if !self.handle(received, last) {
                return false;
            }
        }
        true
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
                let resubscribed = shared.resubscribe().await.is_ok();
                // Takeover notices published while the subscriber was away are lost.
                let _ = shared.recheck_keys().await;
                let _ = shared.heartbeat().await;
                let _ = shared.events.send(ClusterEvent::Reconnected);
                if !resubscribed {
                    resubscribe_until_done(&shared).await;
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Tries a refused or failed resubscription again, backing off from
/// [`RETRY_FIRST`] to [`RETRY_MOST`], until it holds: nothing else subscribes
/// the node again before the next reconnect (fred's own resubscription is not
/// used, see `Shared::resubscribe`), so one refusal would leave its members
/// deaf to other nodes, and the node to direct sends and notices, for good.
async fn resubscribe_until_done<M: Clone + Send + Sync + 'static>(shared: &Shared<M>) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        if shared.resubscribe().await.is_ok() {
            return;
        }
        pause = (pause * 2).min(RETRY_MOST);
    }
}

/// The first pause before a resubscription is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
const RETRY_MOST: Duration = Duration::from_secs(2);
