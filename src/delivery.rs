//! Delivery: direct sends, broadcasts, the slow-consumer policy, and their reports.
//!
//! A broadcast is three hops: the session directory gives the [`Session`], its
//! snapshot gives the members, and each member's channel takes a clone of the
//! message. No lock is taken and no per-recipient lookup is made. Clients found
//! closed (or full, under [`SlowConsumerPolicy::Disconnect`]) are unregistered after
//! the walk, through the one unregister path.

use std::collections::HashSet;
use std::time::Duration;

use crate::channel::{CloseReason, Rejected};
use crate::config::SlowConsumerPolicy;
use crate::error::{BroadcastError, SendError};
use crate::registry::Registry;
use crate::session::Session;
use crate::sync::Arc;
use crate::{ClientId, SessionId};

/// What one broadcast did.
///
/// `delivered + dropped + closed + disconnected == recipients`, where `recipients`
/// is the number of members in the snapshot the broadcast read (less the excluded
/// client, for [`Registry::broadcast_except`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[must_use = "the report says who did not get the message"]
#[non_exhaustive]
pub struct BroadcastReport {
    /// Members the broadcast addressed.
    pub recipients: usize,
    /// Messages queued.
    pub delivered: usize,
    /// Members skipped because their channel was full ([`SlowConsumerPolicy::Drop`]).
    pub dropped: usize,
    /// Members whose channel had closed (they left, or their receiver was dropped);
    /// each is unregistered.
    pub closed: usize,
    /// Members this broadcast disconnected because their channel was full
    /// ([`SlowConsumerPolicy::Disconnect`]).
    pub disconnected: usize,
}

impl BroadcastReport {
    /// Whether every addressed member got the message.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.delivered == self.recipients
    }

    fn merge(&mut self, other: &Self) {
        self.recipients += other.recipients;
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.closed += other.closed;
        self.disconnected += other.disconnected;
    }
}

/// What [`Registry::broadcast_many`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "the report says who did not get the message"]
#[non_exhaustive]
pub struct MultiBroadcastReport {
    /// Totals over the distinct clients addressed.
    pub report: BroadcastReport,
    /// Keys that named no open session.
    pub unknown: Vec<SessionId>,
}

/// Why a member was not reached, recorded during the walk and acted on after it.
enum Casualty {
    Closed(ClientId),
    Full(ClientId),
}

impl<M: Clone + Send + 'static> Registry<M> {
    /// Queues `msg` for one client without waiting.
    ///
    /// A client whose channel turns out to be closed (its receiver was dropped) is
    /// unregistered here. The slow-consumer policy does not apply: a full channel is
    /// reported to the caller, who decides.
    ///
    /// # Errors
    ///
    /// Every error gives the message back: [`SendError::Unknown`] for a stale or
    /// forged id, [`SendError::Full`], or [`SendError::Closed`].
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::SendError;
    ///
    /// let registry = switchboard::Registry::<String>::new();
    /// let (id, rx) = registry.register(Default::default()).unwrap();
    /// registry.send(id, "hi".to_string()).unwrap();
    /// drop(rx); // the connection went away
    /// let err = registry.send(id, "anyone?".to_string()).unwrap_err();
    /// assert!(matches!(err, SendError::Closed(_)));
    /// assert_eq!(err.into_inner(), "anyone?");
    /// assert!(!registry.is_online(id));
    /// ```
    pub fn send(&self, id: ClientId, msg: M) -> Result<(), SendError<M>> {
        let slot = match self.clients().slot(id) {
            Ok(slot) => slot,
            Err(why) => return Err(SendError::Unknown(msg, why)),
        };
        let outcome = slot.with(|entry| match entry {
            Some(entry) if entry.id == id => Ok(entry.chan.try_send(msg)),
            _ => Err(SendError::Unknown(msg, crate::ClientError::Gone(id))),
        })?;
        self.settle_send(id, outcome)
    }

    /// Queues `msg` for one client, waiting up to `timeout` for room in its channel.
    ///
    /// For control messages that must not be dropped. The wait holds no lock and no
    /// snapshot.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), with [`SendError::Timeout`] instead of `Full`.
    /// A `timeout` too large to add to the current instant, such as
    /// [`Duration::MAX`], waits without a deadline.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime with the time driver enabled, as
    /// `tokio::time::timeout` does.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let registry = switchboard::Registry::<u32>::builder().channel_capacity(1).build().unwrap();
    /// let (id, mut rx) = registry.register(Default::default()).unwrap();
    /// registry.send(id, 1).unwrap();
    /// let err = registry.send_timeout(id, 2, Duration::from_millis(10)).await.unwrap_err();
    /// assert_eq!(err.into_inner(), 2);
    /// assert_eq!(rx.recv().await, Some(1));
    /// registry.send_timeout(id, 3, Duration::from_millis(10)).await.unwrap();
    /// # }
    /// ```
    pub async fn send_timeout(
        &self,
        id: ClientId,
        msg: M,
        timeout: Duration,
    ) -> Result<(), SendError<M>> {
        let entry = match self.clients().entry(id) {
            Ok(entry) => entry,
            Err(why) => return Err(SendError::Unknown(msg, why)),
        };
        let outcome = entry.chan.send_timeout(msg, timeout).await;
        drop(entry);
        self.settle_send(id, outcome)
    }

    fn settle_send(
        &self,
        id: ClientId,
        outcome: Result<(), Rejected<M>>,
    ) -> Result<(), SendError<M>> {
        let counters = self.counters();
        match outcome {
            Ok(()) => {
                counters.delivered.add(1);
                Ok(())
            }
            Err(Rejected::Full(msg)) => Err(SendError::Full(msg)),
            Err(Rejected::Timeout(msg)) => Err(SendError::Timeout(msg)),
            Err(Rejected::Closed(msg)) => {
                counters.closed.add(1);
                let _ = self.unregister(id);
                Err(SendError::Closed(msg))
            }
        }
    }

    /// Sends `msg` to every member of a session.
    ///
    /// Reads one snapshot of the membership and takes no lock: a client detached
    /// before the call never receives it, and one attached before it does unless its
    /// channel is full or closed. Never waits on a slow client; see
    /// [`SlowConsumerPolicy`].
    ///
    /// # Errors
    ///
    /// [`BroadcastError::UnknownSession`], with the message, if no such session
    /// exists.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let registry = switchboard::Registry::<Arc<str>>::new();
    /// let (a, mut ra) = registry.register(Default::default()).unwrap();
    /// let (b, mut rb) = registry.register(Default::default()).unwrap();
    /// registry.attach(a, "room").unwrap();
    /// registry.attach(b, "room").unwrap();
    /// let report = registry.broadcast("room", Arc::from("hello"))?;
    /// assert_eq!((report.recipients, report.delivered), (2, 2));
    /// assert_eq!(ra.try_recv().as_deref(), Ok("hello"));
    /// assert_eq!(rb.try_recv().as_deref(), Ok("hello"));
    /// # Ok::<(), switchboard::BroadcastError<Arc<str>>>(())
    /// ```
    pub fn broadcast(
        &self,
        session: impl Into<SessionId>,
        msg: M,
    ) -> Result<BroadcastReport, BroadcastError<M>> {
        let key = session.into();
        match self.sessions().get(&key) {
            Some(session) => Ok(self.deliver(&session, &msg, None, None)),
            None => Err(BroadcastError::UnknownSession(msg, key)),
        }
    }

    /// Sends `msg` to every member of a session except `except`, typically the
    /// sender of a chat message.
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (a, mut ra) = registry.register(Default::default()).unwrap();
    /// let (b, mut rb) = registry.register(Default::default()).unwrap();
    /// registry.attach(a, "room").unwrap();
    /// registry.attach(b, "room").unwrap();
    /// let report = registry.broadcast_except("room", a, 9)?;
    /// assert_eq!(report.recipients, 1);
    /// assert!(ra.try_recv().is_err());
    /// assert_eq!(rb.try_recv(), Ok(9));
    /// # Ok::<(), switchboard::BroadcastError<u8>>(())
    /// ```
    pub fn broadcast_except(
        &self,
        session: impl Into<SessionId>,
        except: ClientId,
        msg: M,
    ) -> Result<BroadcastReport, BroadcastError<M>> {
        let key = session.into();
        match self.sessions().get(&key) {
            Some(session) => Ok(self.deliver(&session, &msg, Some(except), None)),
            None => Err(BroadcastError::UnknownSession(msg, key)),
        }
    }

    /// Sends `msg` to every member of several sessions; a client in more than one of
    /// them receives it once.
    ///
    /// Keys that name no session are listed in the report, not treated as errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (a, mut ra) = registry.register(Default::default()).unwrap();
    /// registry.attach(a, 1).unwrap();
    /// registry.attach(a, 2).unwrap();
    /// let multi = registry.broadcast_many([1u64, 2, 3], 5);
    /// assert_eq!(multi.report.delivered, 1);
    /// assert_eq!(multi.unknown, vec![3u64.into()]);
    /// assert_eq!(ra.try_recv(), Ok(5));
    /// assert!(ra.try_recv().is_err());
    /// ```
    pub fn broadcast_many<I>(&self, sessions: I, msg: M) -> MultiBroadcastReport
    where
        I: IntoIterator,
        I::Item: Into<SessionId>,
    {
        let mut out = MultiBroadcastReport::default();
        let mut seen = HashSet::new();
        for key in sessions {
            let key = key.into();
            match self.sessions().get(&key) {
                Some(session) => {
                    let report = self.deliver(&session, &msg, None, Some(&mut seen));
                    out.report.merge(&report);
                }
                None => out.unknown.push(key),
            }
        }
        out
    }

    /// Broadcasts each of `msgs` to `session`, in order, looking the session up
    /// once: a cluster bundle carries many broadcasts to one session. Without the
    /// session the messages are still taken (and dropped), as separate broadcasts
    /// would take them.
    #[cfg(feature = "cluster")]
    pub(crate) fn broadcast_each(&self, session: &SessionId, msgs: impl IntoIterator<Item = M>) {
        match self.sessions().get(session) {
            Some(session) => {
                for msg in msgs {
                    let _report = self.deliver(&session, &msg, None, None);
                }
            }
            None => msgs.into_iter().for_each(drop),
        }
    }

    /// The walk shared by every broadcast.
    fn deliver(
        &self,
        session: &Arc<Session<M>>,
        msg: &M,
        except: Option<ClientId>,
        mut seen: Option<&mut HashSet<ClientId>>,
    ) -> BroadcastReport {
        let policy = self.config().slow_consumer;
        let mut report = BroadcastReport::default();
        let mut casualties = Vec::new();
        {
            let snapshot = session.snapshot();
            snapshot.for_each(|member| {
                if Some(member.id) == except {
                    return;
                }
                if let Some(seen) = seen.as_deref_mut() {
                    if !seen.insert(member.id) {
                        return;
                    }
                }
                report.recipients += 1;
                match member.chan.try_send(msg.clone()) {
                    Ok(()) => report.delivered += 1,
                    Err(Rejected::Full(_)) if policy == SlowConsumerPolicy::Drop => {
                        report.dropped += 1
                    }
                    Err(Rejected::Full(_) | Rejected::Timeout(_)) => {
                        casualties.push(Casualty::Full(member.id))
                    }
                    Err(Rejected::Closed(_)) => casualties.push(Casualty::Closed(member.id)),
                }
            });
        }
        for casualty in casualties {
            match casualty {
                Casualty::Closed(id) => {
                    report.closed += 1;
                    let _ = self.unregister(id);
                }
                // Counted as disconnected only by the call that did it, so concurrent
                // broadcasts disconnect a client exactly once between them.
                Casualty::Full(id) => {
                    match self.unregister_because(id, CloseReason::SlowConsumer) {
                        Ok(_) => report.disconnected += 1,
                        Err(_) => report.closed += 1,
                    }
                }
            }
        }
        let counters = self.counters();
        counters.delivered.add(report.delivered as u64);
        counters.dropped.add(report.dropped as u64);
        counters.closed.add(report.closed as u64);
        counters.disconnected.add(report.disconnected as u64);
        report
    }
}
