//! [`Directory`]: the map from keys to member sets, for sessions and for the
//! profile index sets alike.
//!
//! A set retires when its last member leaves (unless a session was opened to stay);
//! a retired set takes no member again, so the directory forgets it and the next
//! join under its key creates a fresh one. That hand-over (create, join, retry past
//! a retired set, forget only the set that retired, never its successor) happens
//! here and nowhere else; callers join, leave and look up.

use std::hash::Hash;

use crate::client::ClientEntry;
use crate::error::UnknownSession;
use crate::sync::{Arc, ConcurrentMap, EntryArc};
use crate::ClientId;

use super::{Joined, Left, Session, SessionId};

/// A key of a [`Directory`]; it says how the set it names is created.
pub(crate) trait SetKey: Hash + Eq + Clone {
    /// A new, empty set for this key.
    fn new_set<M>(&self) -> Session<M>;
}

impl SetKey for SessionId {
    /// Named: a client's memberships keep only the set, and leaving needs its key.
    #[inline]
    fn new_set<M>(&self) -> Session<M> {
        Session::named(self.clone())
    }
}

/// What [`Directory::join`] did.
pub(crate) enum Join<M> {
    /// Joined this set.
    Added(Arc<Session<M>>),
    /// Was a member already; nothing changed.
    AlreadyMember,
    /// The set holds as many members as one layout can address.
    Full,
}

/// Member sets by key.
pub(crate) struct Directory<K, M> {
    sets: ConcurrentMap<K, Arc<Session<M>>>,
}

impl<K: SetKey, M> Directory<K, M> {
    pub(crate) fn new() -> Self {
        Self {
            sets: ConcurrentMap::new(),
        }
    }

    /// The set `key` names, if it has members or was opened. Takes no lock.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<Arc<Session<M>>> {
        self.sets.get(key)
    }

    /// Adds `id` to the set `key` names, creating the set if there is none.
    #[inline]
    pub(crate) fn join(&self, key: &K, id: ClientId, entry: &EntryArc<ClientEntry<M>>) -> Join<M> {
        loop {
            let set = self
                .sets
                .get_or_insert_with(key, || Arc::new(key.new_set()));
            match set.join(id, entry) {
                Joined::Added => return Join::Added(set),
                Joined::AlreadyMember => return Join::AlreadyMember,
                Joined::Full => return Join::Full,
                Joined::Retired => self.forget(key, &set),
            }
        }
    }

    /// Removes `id` from the set `key` names, if there is one.
    pub(crate) fn leave(&self, key: &K, id: ClientId) {
        if let Some(set) = self.sets.get(key) {
            if set.leave(id) == Left::RemovedAndRetired {
                self.forget(key, &set);
            }
        }
    }

    /// Sets in the directory.
    pub(crate) fn len(&self) -> usize {
        self.sets.len()
    }

    /// Every key with its set, in no particular order.
    pub(crate) fn entries(&self) -> Vec<(K, Arc<Session<M>>)> {
        self.sets.entries()
    }

    /// Removes a retired set, unless a successor already replaced it.
    fn forget(&self, key: &K, set: &Arc<Session<M>>) {
        self.sets
            .remove_if(key, |current| Arc::ptr_eq(current, set));
    }
}

impl<M> Directory<SessionId, M> {
    /// Removes `id` from `session`, one of its memberships, and a session that
    /// retired from the directory under the key it keeps.
    #[inline]
    pub(crate) fn leave_session(&self, session: &Arc<Session<M>>, id: ClientId) {
        if session.leave(id) == Left::RemovedAndRetired {
            if let Some(key) = session.key() {
                self.forget(key, session);
            }
        }
    }

    /// Creates the session `key` names if needed and keeps it open while empty.
    pub(crate) fn open(&self, key: &SessionId) {
        loop {
            let session = self
                .sets
                .get_or_insert_with(key, || Arc::new(key.new_set()));
            if session.pin() {
                return;
            }
            self.forget(key, &session);
        }
    }

    /// Stops keeping a session open: it goes now if empty, or with its last member.
    ///
    /// # Errors
    ///
    /// [`UnknownSession`] if no such session exists.
    pub(crate) fn release(&self, key: SessionId) -> Result<(), UnknownSession> {
        let Some(session) = self.sets.get(&key) else {
            return Err(UnknownSession(key));
        };
        if session.unpin() {
            self.forget(&key, &session);
        }
        Ok(())
    }
}
