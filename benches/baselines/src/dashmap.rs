//! The `DashMap` registry: two concurrent maps and an id counter.
//!
//! This is the design in the reference plan (FEAT-027), generalised from "one attached session
//! per client" to "any number of sessions", which is what the contract asks of every contender:
//!
//! ```text
//! clients:  DashMap<u64, Entry { sender, sessions: HashSet<u64> }>
//! sessions: DashMap<u64, DashSet<u64>>        // reverse index: session -> client ids
//! next_id:  AtomicU64
//! ```
//!
//! A broadcast clones the session's ids out of its `DashSet`, then looks each one up in
//! `clients` and calls `try_send`: one hash lookup and one shard read lock per recipient. That
//! per-recipient lookup is the cost switchboard's contiguous sender arrays remove.
//!
//! # Lock order
//!
//! `attach` and `detach` update the session index while holding the client's `clients` shard
//! guard, so an `unregister` of the same client waits for them and then sees every session
//! they added. Nothing takes a `clients` guard while holding a `sessions` guard, so the two maps
//! are always locked in the order clients, then sessions, and cannot deadlock.
//!
//! # Departures from the plan
//!
//! The plan's `send_to_client` awaits `send` and unregisters a client whose channel is closed.
//! Here sends are `try_send` and a closed channel is only reported: every contender drops on a
//! full channel and leaves cleanup to `unregister`, so they all do the same work.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ::dashmap::{DashMap, DashSet};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{Contender, Fanout};

/// A client's channel and the sessions it is in.
struct Entry<M> {
    sender: mpsc::Sender<M>,
    /// Forward index, so `unregister` visits only this client's sessions.
    sessions: HashSet<u64>,
}

/// A client registry built from `DashMap`s, as in the reference plan.
///
/// # Examples
///
/// ```
/// use baselines::{Contender, DashMapRegistry};
///
/// let registry = DashMapRegistry::new(32);
/// let (id, mut inbox) = registry.register();
/// registry.attach(id, 1);
/// assert_eq!(registry.broadcast(1, "hello").delivered, 1);
/// assert_eq!(inbox.try_recv(), Ok("hello"));
/// ```
pub struct DashMapRegistry<M> {
    clients: DashMap<u64, Entry<M>>,
    sessions: DashMap<u64, DashSet<u64>>,
    /// Only uniqueness matters, which `fetch_add` gives at any ordering: `Relaxed`.
    next_id: AtomicU64,
    capacity: usize,
}

impl<M> DashMapRegistry<M> {
    /// Creates an empty registry whose client channels hold `channel_capacity` messages.
    ///
    /// # Panics
    ///
    /// Panics if `channel_capacity` is zero, which [`mpsc::channel`] rejects.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::{Contender, DashMapRegistry};
    ///
    /// let registry = DashMapRegistry::<u64>::new(32);
    /// assert_eq!(registry.client_count(), 0);
    /// ```
    pub fn new(channel_capacity: usize) -> Self {
        // Fail here rather than on the first register.
        assert!(channel_capacity > 0, "channel capacity must be at least 1");
        Self {
            clients: DashMap::new(),
            sessions: DashMap::new(),
            next_id: AtomicU64::new(0),
            capacity: channel_capacity,
        }
    }

    /// Takes `id` out of `session`'s member set, removing the set if that emptied it.
    fn leave(&self, id: u64, session: u64) {
        if let Some(members) = self.sessions.get(&session) {
            members.remove(&id);
        }
        // Re-checked under the shard's write lock, so a concurrent attach is never lost.
        self.sessions
            .remove_if(&session, |_, members| members.is_empty());
    }
}

impl<M: Clone + Send + 'static> Contender<M> for DashMapRegistry<M> {
    type Id = u64;
    type Rx = mpsc::Receiver<M>;

    fn name(&self) -> &'static str {
        "dashmap"
    }

    fn register(&self) -> (u64, mpsc::Receiver<M>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.capacity);
        let entry = Entry {
            sender,
            sessions: HashSet::new(),
        };
        self.clients.insert(id, entry);
        (id, receiver)
    }

    fn unregister(&self, id: u64) -> bool {
        let Some((_, entry)) = self.clients.remove(&id) else {
            return false;
        };
        for session in entry.sessions {
            self.leave(id, session);
        }
        true
    }

    fn attach(&self, id: u64, session: u64) -> bool {
        let Some(mut entry) = self.clients.get_mut(&id) else {
            return false;
        };
        // The client guard stays held so a racing unregister sees this session.
        if entry.sessions.insert(session) {
            self.sessions.entry(session).or_default().insert(id);
        }
        true
    }

    fn detach(&self, id: u64, session: u64) -> bool {
        let Some(mut entry) = self.clients.get_mut(&id) else {
            return false;
        };
        if !entry.sessions.remove(&session) {
            return false;
        }
        self.leave(id, session);
        true
    }

    fn send(&self, id: u64, msg: M) -> Result<(), M> {
        match self.clients.get(&id) {
            Some(entry) => entry.sender.try_send(msg).map_err(TrySendError::into_inner),
            None => Err(msg),
        }
    }

    fn broadcast(&self, session: u64, msg: M) -> Fanout {
        // Clone the ids out so no `sessions` guard is held while `clients` is read.
        let ids: Vec<u64> = match self.sessions.get(&session) {
            Some(members) => members.iter().map(|id| *id).collect(),
            None => return Fanout::default(),
        };
        let mut fanout = Fanout::default();
        for id in ids {
            match self.clients.get(&id) {
                Some(entry) => fanout.record(entry.sender.try_send(msg.clone())),
                None => fanout.record_vanished(),
            }
        }
        fanout
    }

    fn client_count(&self) -> usize {
        self.clients.len()
    }

    fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

impl<M> fmt::Debug for DashMapRegistry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DashMapRegistry")
            .field("clients", &self.clients.len())
            .field("sessions", &self.sessions.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::DashMapRegistry;
    use crate::{Contender, Fanout};

    crate::contender::contract::contract_tests!(DashMapRegistry::new);

    #[test]
    fn name_is_dashmap() {
        assert_eq!(Contender::<()>::name(&DashMapRegistry::new(1)), "dashmap");
    }

    #[test]
    fn member_gone_before_lookup_counts_as_closed() {
        let registry = DashMapRegistry::new(1);
        let (id, mut inbox) = registry.register();
        assert!(registry.attach(id, 1));
        // What a broadcast sees if the client unregisters between reading the session's
        // members and looking the client up.
        registry.sessions.entry(1).or_default().insert(id + 1);

        let fanout = registry.broadcast(1, 5);
        let expected = Fanout {
            recipients: 2,
            delivered: 1,
            dropped: 0,
            closed: 1,
        };
        assert_eq!(fanout, expected);
        assert_eq!(inbox.try_recv(), Ok(5));
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn zero_capacity_panics_at_construction() {
        let _ = DashMapRegistry::<()>::new(0);
    }
}
