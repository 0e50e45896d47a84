//! The [`Registry`]: clients, their sessions, and the paths that connect them.

use std::fmt;

use crate::channel::{Channel, Receiver};
use crate::client::{ClientEntry, ClientInfo, ClientState};
use crate::config::{Builder, Config};
use crate::error::{AttachError, ClientError, DetachError, RegisterError, UnknownSession};
use crate::session::{Joined, Left, Session};
use crate::shard::{self, Shard};
use crate::stats::{Counters, Stats};
use crate::sync::{lock, Arc, AtomicUsize, ConcurrentMap, Mutex, OptionCell, Ordering};
use crate::{ClientId, SessionId};

/// The registry of connected clients and their sessions.
///
/// Cloning a `Registry` is cheap and gives another handle to the same registry;
/// share it between connection tasks. `M` is the message type: any
/// `Clone + Send + 'static` value, ideally cheap to clone (an `Arc` or
/// `bytes::Bytes`), since a broadcast clones it once per recipient.
///
/// See the [crate documentation](crate) for the design and an example.
pub struct Registry<M> {
    pub(crate) inner: Arc<Inner<M>>,
}

pub(crate) struct Inner<M> {
    pub(crate) config: Config,
    pub(crate) shards: Box<[Shard<ClientEntry<M>>]>,
    pub(crate) sessions: ConcurrentMap<SessionId, Arc<Session<M>>>,
    /// Connected clients, kept only when `max_clients` is set.
    ///
    /// Ordering: `Relaxed`; the limit check needs only the modification order of
    /// this one counter.
    admitted: AtomicUsize,
    pub(crate) counters: Counters,
}

impl<M> Clone for Registry<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M> fmt::Debug for Registry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("shards", &self.inner.shards.len())
            .field("clients", &self.client_count())
            .field("sessions", &self.session_count())
            .finish()
    }
}

impl<M> Default for Registry<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Registry::unregister`] cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the report lists the sessions whose work the application may need to cancel"]
#[non_exhaustive]
pub struct Unregistered {
    /// The client that left.
    pub id: ClientId,
    /// Every session it was a member of, now without it.
    pub sessions: Vec<SessionId>,
}

impl<M> Registry<M> {
    /// A registry with default settings; see [`Builder`].
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<String>::new();
    /// assert_eq!(registry.client_count(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        match Builder::<M>::new().validate() {
            Ok(config) => Self::from_config(config),
            // The defaults are valid (a unit test proves it); this arm is unreachable.
            Err(_) => Self::from_config(Config {
                shards: 1,
                channel_capacity: 32,
                slow_consumer: Default::default(),
                max_clients: None,
            }),
        }
    }

    /// Starts configuring a registry.
    pub fn builder() -> Builder<M> {
        Builder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let shards = (0..config.shards).map(|_| Shard::new()).collect();
        Self {
            inner: Arc::new(Inner {
                config,
                shards,
                sessions: ConcurrentMap::new(),
                admitted: AtomicUsize::new(0),
                counters: Counters::new(),
            }),
        }
    }

    /// Registers a client and creates its outbound channel.
    ///
    /// Returns the client's id and the receiving end of its channel, which the
    /// connection's writer task drains. The client lands in the calling thread's home
    /// shard, or the next one with room.
    ///
    /// # Errors
    ///
    /// [`RegisterError::LimitReached`] when [`Builder::max_clients`] are connected;
    /// [`RegisterError::OutOfSlots`] when every shard has used all its slots.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, Registry};
    ///
    /// let registry = Registry::<String>::new();
    /// let (id, rx) = registry.register(ClientInfo::new().with_key("alice"))?;
    /// assert!(registry.is_online(id));
    /// assert_eq!(rx.capacity(), 32);
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    pub fn register(&self, info: ClientInfo) -> Result<(ClientId, Receiver<M>), RegisterError> {
        let inner = &*self.inner;
        if let Some(limit) = inner.config.max_clients {
            // Relaxed: see `admitted`.
            let admitted = inner
                .admitted
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                });
            if admitted.is_err() {
                return Err(RegisterError::LimitReached { limit });
            }
        }
        let shards = inner.shards.len();
        let home = shard::home(shards);
        let reserved = (0..shards).find_map(|step| {
            let shard = (home + step) % shards;
            inner.shards[shard]
                .reserve()
                .map(|(index, generation)| (shard, index, generation))
        });
        let Some((shard, index, generation)) = reserved else {
            self.release_admission();
            return Err(RegisterError::OutOfSlots);
        };
        let id = ClientId::pack(shard, index, generation);
        let chan = Arc::new(Channel::new(inner.config.channel_capacity));
        let entry = Arc::new(ClientEntry {
            id,
            chan: Arc::clone(&chan),
            info: Arc::new(info),
            state: Mutex::new(ClientState {
                connected: true,
                sessions: Vec::new(),
            }),
        });
        if let Some(slot) = inner.shards[shard].slot(index) {
            slot.store(Some(entry));
        }
        Ok((id, Receiver::new(chan)))
    }

    /// Unregisters a client: detaches it from every session and closes its channel.
    ///
    /// Idempotent: a second call for the same id returns [`ClientError::Gone`] and
    /// changes nothing. The receiver still yields every message queued before the
    /// call, then `None`. Once this returns, no send or broadcast reaches the client.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the id does not name a connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// registry.attach(id, "room")?;
    /// let report = registry.unregister(id)?;
    /// assert_eq!(report.sessions, vec!["room".into()]);
    /// assert!(registry.unregister(id).is_err());
    /// assert_eq!(registry.session_count(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unregister(&self, id: ClientId) -> Result<Unregistered, ClientError> {
        let entry = self.entry(id)?;
        let sessions = {
            let mut state = lock(&entry.state);
            if !state.connected {
                return Err(ClientError::Gone(id));
            }
            state.connected = false;
            std::mem::take(&mut state.sessions)
        };
        entry.chan.close();
        let keys = sessions
            .iter()
            .map(|session| {
                self.leave(session, id);
                session.key().clone()
            })
            .collect();
        // This call alone flipped `connected`, so it alone frees the slot.
        self.inner.shards[id.shard()].release(id);
        self.release_admission();
        Ok(Unregistered { id, sessions: keys })
    }

    /// Adds a client to a session, creating the session if it does not exist.
    ///
    /// Returns `true` if the client joined, `false` if it was already a member
    /// (attaching twice is a no-op). Costs O(1) whatever the session's size, plus a
    /// scan of the client's own sessions.
    ///
    /// # Errors
    ///
    /// [`AttachError::Client`] if the id does not name a connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// assert!(registry.attach(id, "lobby")?);
    /// assert!(!registry.attach(id, "lobby")?);
    /// assert!(registry.attach(id, 42)?);
    /// assert_eq!(registry.session_count(), 2);
    /// # Ok::<(), switchboard::AttachError>(())
    /// ```
    pub fn attach(&self, id: ClientId, session: impl Into<SessionId>) -> Result<bool, AttachError> {
        let entry = self.entry(id)?;
        let key = session.into();
        let mut state = lock(&entry.state);
        if !state.connected {
            return Err(ClientError::Gone(id).into());
        }
        if state.position(&key).is_some() {
            return Ok(false);
        }
        loop {
            let session = self.session_or_insert(&key);
            match session.join(id, &entry.chan) {
                Joined::Added => {
                    state.sessions.push(session);
                    return Ok(true);
                }
                // The client's state says it is not a member, and the state is only
                // changed under its lock, which we hold.
                Joined::AlreadyMember => return Ok(false),
                Joined::Retired => self.forget_session(&session),
            }
        }
    }

    /// Removes a client from a session. An emptied session disappears unless it was
    /// opened with [`open_session`](Self::open_session).
    ///
    /// # Errors
    ///
    /// [`DetachError::Client`] if the id does not name a connected client, and
    /// [`DetachError::NotAttached`] if it is not a member of the session (including
    /// when no such session exists).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::DetachError;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// registry.attach(id, "lobby").unwrap();
    /// assert!(registry.detach(id, "lobby").is_ok());
    /// assert!(matches!(registry.detach(id, "lobby"), Err(DetachError::NotAttached { .. })));
    /// assert_eq!(registry.session_count(), 0);
    /// ```
    pub fn detach(&self, id: ClientId, session: impl Into<SessionId>) -> Result<(), DetachError> {
        let entry = self.entry(id)?;
        let key = session.into();
        let mut state = lock(&entry.state);
        if !state.connected {
            return Err(ClientError::Gone(id).into());
        }
        let Some(position) = state.position(&key) else {
            return Err(DetachError::NotAttached {
                client: id,
                session: key,
            });
        };
        let session = state.sessions.swap_remove(position);
        self.leave(&session, id);
        Ok(())
    }

    /// Creates a session if needed and keeps it open while it has no members.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// registry.open_session("announcements");
    /// assert_eq!(registry.session_count(), 1);
    /// assert_eq!(registry.members("announcements").map(|m| m.len()), Ok(0));
    /// ```
    pub fn open_session(&self, session: impl Into<SessionId>) {
        let key = session.into();
        loop {
            let session = self.session_or_insert(&key);
            if session.pin() {
                return;
            }
            self.forget_session(&session);
        }
    }

    /// Stops keeping a session open: it disappears now if empty, or when its last
    /// member leaves.
    ///
    /// # Errors
    ///
    /// [`UnknownSession`] if no such session exists.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// registry.open_session("announcements");
    /// registry.release_session("announcements")?;
    /// assert_eq!(registry.session_count(), 0);
    /// # Ok::<(), switchboard::UnknownSession>(())
    /// ```
    pub fn release_session(&self, session: impl Into<SessionId>) -> Result<(), UnknownSession> {
        let key = session.into();
        let session = self.inner.sessions.get(&key).ok_or(UnknownSession(key))?;
        if session.unpin() {
            self.forget_session(&session);
        }
        Ok(())
    }

    /// The members of a session, in join order.
    ///
    /// # Errors
    ///
    /// [`UnknownSession`] if no such session exists.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (a, _ra) = registry.register(Default::default()).unwrap();
    /// let (b, _rb) = registry.register(Default::default()).unwrap();
    /// registry.attach(a, 7).unwrap();
    /// registry.attach(b, 7).unwrap();
    /// assert_eq!(registry.members(7)?, vec![a, b]);
    /// # Ok::<(), switchboard::UnknownSession>(())
    /// ```
    pub fn members(&self, session: impl Into<SessionId>) -> Result<Vec<ClientId>, UnknownSession> {
        let key = session.into();
        let session = self.inner.sessions.get(&key).ok_or(UnknownSession(key))?;
        let snapshot = session.snapshot();
        let mut members = Vec::with_capacity(snapshot.live());
        snapshot.for_each(|m| members.push(m.id));
        Ok(members)
    }

    /// The number of members of a session, without listing them.
    ///
    /// # Errors
    ///
    /// [`UnknownSession`] if no such session exists.
    pub fn member_count(&self, session: impl Into<SessionId>) -> Result<usize, UnknownSession> {
        let key = session.into();
        let session = self.inner.sessions.get(&key).ok_or(UnknownSession(key))?;
        let count = session.snapshot().live();
        Ok(count)
    }

    /// The sessions a client belongs to, in the order it joined them (after a
    /// detach, the last-joined takes the detached one's place).
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the id does not name a connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::SessionId;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// registry.attach(id, "a").unwrap();
    /// registry.attach(id, 2).unwrap();
    /// assert_eq!(registry.sessions_of(id)?, vec![SessionId::from("a"), SessionId::from(2)]);
    /// # Ok::<(), switchboard::ClientError>(())
    /// ```
    pub fn sessions_of(&self, id: ClientId) -> Result<Vec<SessionId>, ClientError> {
        let entry = self.entry(id)?;
        let state = lock(&entry.state);
        if !state.connected {
            return Err(ClientError::Gone(id));
        }
        Ok(state.sessions.iter().map(|s| s.key().clone()).collect())
    }

    /// The profile the client registered with. Takes no lock.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the id does not name a connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::ClientInfo;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("bob")).unwrap();
    /// assert_eq!(registry.info(id)?.key.as_deref(), Some("bob"));
    /// # Ok::<(), switchboard::ClientError>(())
    /// ```
    pub fn info(&self, id: ClientId) -> Result<Arc<ClientInfo>, ClientError> {
        Ok(Arc::clone(&self.entry(id)?.info))
    }

    /// Whether `id` names a connected client. Takes no lock.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// assert!(registry.is_online(id));
    /// let _ = registry.unregister(id);
    /// assert!(!registry.is_online(id));
    /// ```
    #[must_use]
    pub fn is_online(&self, id: ClientId) -> bool {
        self.entry(id).is_ok()
    }

    /// Connected clients. Sums the shards' counts; takes no lock.
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.inner.shards.iter().map(Shard::live).sum()
    }

    /// Open sessions: every session with a member, plus those kept open.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Every open session's key, in no particular order.
    #[must_use]
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.inner
            .sessions
            .values()
            .iter()
            .map(|s| s.key().clone())
            .collect()
    }

    /// Every connected client's id, shard by shard.
    #[must_use]
    pub fn client_ids(&self) -> Vec<ClientId> {
        let mut ids = Vec::with_capacity(self.client_count());
        for shard in self.inner.shards.iter() {
            shard.for_each_occupied(|entry| ids.push(entry.id));
        }
        ids
    }

    /// Sizes and delivery totals.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(Default::default()).unwrap();
    /// registry.send(id, 1).unwrap();
    /// let stats = registry.stats();
    /// assert_eq!((stats.clients, stats.delivered), (1, 1));
    /// ```
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            clients: self.client_count(),
            sessions: self.session_count(),
            delivered: c.delivered.sum(),
            dropped: c.dropped.sum(),
            closed: c.closed.sum(),
            disconnected: c.disconnected.sum(),
        }
    }

    /// The slot `id` points at, or why it points nowhere.
    #[inline]
    pub(crate) fn slot(&self, id: ClientId) -> Result<&OptionCell<ClientEntry<M>>, ClientError> {
        let shard = self
            .inner
            .shards
            .get(id.shard())
            .ok_or(ClientError::NoSuchShard(id))?;
        shard.slot(id.index()).ok_or(ClientError::NoSuchSlot(id))
    }

    /// The entry `id` names, if it is still the slot's occupant.
    pub(crate) fn entry(&self, id: ClientId) -> Result<Arc<ClientEntry<M>>, ClientError> {
        match &*self.slot(id)?.load() {
            Some(entry) if entry.id == id => Ok(Arc::clone(entry)),
            _ => Err(ClientError::Gone(id)),
        }
    }

    fn session_or_insert(&self, key: &SessionId) -> Arc<Session<M>> {
        self.inner
            .sessions
            .get_or_insert_with(key.clone(), || Arc::new(Session::new(key.clone())))
    }

    /// Removes `id` from `session`, and a retired session from the directory.
    pub(crate) fn leave(&self, session: &Arc<Session<M>>, id: ClientId) {
        if session.leave(id) == Left::RemovedAndRetired {
            self.forget_session(session);
        }
    }

    /// Removes a retired session from the directory, unless a successor replaced it.
    fn forget_session(&self, session: &Arc<Session<M>>) {
        self.inner
            .sessions
            .remove_if(session.key(), |current| Arc::ptr_eq(current, session));
    }

    fn release_admission(&self) {
        if self.inner.config.max_clients.is_some() {
            // Relaxed: see `admitted`.
            self.inner.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<M> Drop for Inner<M> {
    /// Closes every channel, so writer tasks see the end when the registry goes.
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            shard.for_each_occupied(|entry| {
                entry.chan.close();
            });
        }
    }
}
