//! The [`Registry`]: clients, their sessions, and the paths that connect them.

use std::fmt;

use crate::channel::{CloseReason, Receiver};
use crate::client::{ChannelRef, ClientEntry, ClientLock, FleetState};
use crate::client_ref::ClientRef;
use crate::clients::{Clients, Locked};
use crate::clock::{millis_to_time, now_millis};
use crate::config::{Builder, Config};
use crate::error::{AttachError, ClientError, DetachError, RegisterError, UnknownSession};
use crate::events::{Event, EventBus};
use crate::fleet::{index_keys, Fleet};
use crate::profile::{json_size, ClientInfo};
use crate::session::{Directory, Join};
use crate::stats::{Counters, Stats};
use crate::sync::{Arc, EntryArc, WeakArc};
use crate::task::CancelledTask;
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
    inner: Arc<Inner<M>>,
}

/// The parts a registry orchestrates, each owning its state behind its own API.
struct Inner<M> {
    config: Config,
    /// Every connected client's entry, by id.
    clients: Clients<M>,
    /// Every open session, by key.
    sessions: Directory<SessionId, M>,
    /// Keys, profile index sets, tasks and the device config.
    fleet: Fleet<M>,
    events: EventBus,
    counters: Counters,
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
            .field("shards", &self.inner.clients.shard_count())
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
    /// Tasks this unregister cancelled, each listed by exactly one report.
    pub cancelled_tasks: Vec<CancelledTask>,
}

/// A takeover under way: the connection that takes a departing client over,
/// and each of the client's rooms that could not follow it. Passed by one
/// reference, so that a plain departure pays for no more than a null pointer.
struct Takeover<'a, M> {
    successor: &'a EntryArc<ClientEntry<M>>,
    not_moved: Vec<(SessionId, AttachError)>,
}

/// What a takeover did, for [`Registry::register_with_report`]; plain
/// [`Registry::register`] asks for none, so the common path builds none.
struct TakeoverReport {
    took_over: Option<Unregistered>,
    not_moved: Vec<(SessionId, AttachError)>,
}

/// What [`Registry::register_with_report`] did.
#[must_use = "the receiver must be drained, and the report says whether a connection was replaced"]
#[non_exhaustive]
pub struct Registration<M> {
    /// The new client's id.
    pub id: ClientId,
    /// The receiving end of its channel.
    pub receiver: Receiver<M>,
    /// The older connection with the same key that this one took over, if any.
    pub took_over: Option<Unregistered>,
    /// With [`Builder::takeover_moves_sessions`], each room of the connection
    /// taken over that did not move to this one, with the reason `attach` would
    /// give: [`AttachError::TooManySessions`] (this connection, attached elsewhere
    /// while the rooms moved, reached [`Builder::max_sessions_per_client`]),
    /// [`AttachError::SessionFull`], or [`AttachError::Client`] if this connection
    /// left before the room reached it. Should this connection have been taken
    /// over in turn meanwhile, a room goes on to the key's later holder, and a
    /// refusal there is listed here too. Empty without the option.
    pub not_moved: Vec<(SessionId, AttachError)>,
}

impl<M> fmt::Debug for Registration<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("took_over", &self.took_over)
            .field("not_moved", &self.not_moved)
            .finish_non_exhaustive()
    }
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
        Self::from_config(Config::default())
    }

    /// Starts configuring a registry.
    pub fn builder() -> Builder<M> {
        Builder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let clients = Clients::new(config.shards, config.max_clients);
        let device_config = config.device_config.clone();
        let events = EventBus::new(config.event_capacity);
        Self {
            inner: Arc::new(Inner {
                config,
                clients,
                sessions: Directory::new(),
                fleet: Fleet::new(device_config),
                events,
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
    #[inline]
    pub fn register(&self, info: ClientInfo) -> Result<(ClientId, Receiver<M>), RegisterError> {
        self.admit(info, None)
    }

    /// Registers a client, reporting the connection it took over, if any.
    ///
    /// When `info.key` names a client that is already online, the new connection
    /// takes the key over: the key resolves to the old connection until this one is
    /// in place and to the new one from then on, never to neither or both. The old
    /// connection is then unregistered: its channel closes (its writer task sees the
    /// end), its tasks are cancelled, and with
    /// [`Builder::takeover_moves_sessions`] its sessions move to the new one.
    ///
    /// # Errors
    ///
    /// As [`register`](Self::register), plus [`RegisterError::MetadataTooLarge`] and
    /// [`RegisterError::ProfileTooLarge`] (see [`Builder::max_profile_bytes`] and
    /// the count limits next to it); nothing is registered then.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, Registry};
    ///
    /// let registry = Registry::<u8>::new();
    /// let (first, mut first_rx) = registry.register(ClientInfo::new().with_key("dev"))?;
    /// let again = registry.register_with_report(ClientInfo::new().with_key("dev"))?;
    /// assert_eq!(again.took_over.map(|old| old.id), Some(first));
    /// assert_eq!(registry.id_of("dev"), Some(again.id));
    /// assert!(first_rx.try_recv().is_err()); // closed: the old writer task ends
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    pub fn register_with_report(&self, info: ClientInfo) -> Result<Registration<M>, RegisterError> {
        let mut report = TakeoverReport {
            took_over: None,
            not_moved: Vec::new(),
        };
        let (id, receiver) = self.admit(info, Some(&mut report))?;
        Ok(Registration {
            id,
            receiver,
            took_over: report.took_over,
            not_moved: report.not_moved,
        })
    }

    /// [`register_with_report`](Self::register_with_report), filling `report`
    /// if one is given and a takeover happens.
    fn admit(
        &self,
        mut info: ClientInfo,
        report: Option<&mut TakeoverReport>,
    ) -> Result<(ClientId, Receiver<M>), RegisterError> {
        let inner = &*self.inner;
        let plain = info.is_blank();
        // A blank profile has no metadata to measure: checking it out of line
        // cost ~27 instructions a plain registration.
        if !plain {
            check_metadata(&info, inner.config.max_metadata_bytes)?;
            inner
                .config
                .profile_bounds
                .check(&info)
                .map_err(|(what, actual, limit)| RegisterError::ProfileTooLarge {
                    what,
                    actual,
                    limit,
                })?;
        }
        let (id, slot) = inner.clients.reserve()?;
        let connected_at = now_millis();
        let mut fleet = None;
        let mut merged_with = None;
        if !plain {
            info.connected_at = millis_to_time(connected_at);
            let config = inner.fleet.config();
            if let Some(merged) = config.merge(info.key.as_deref(), &info.system_info) {
                let reported = std::mem::replace(&mut info.system_info, merged);
                fleet = Some(Box::new(FleetState {
                    reported: Some(reported),
                    ..FleetState::default()
                }));
            }
            // Only a keyed client has a config entry a reload could change.
            merged_with = info.key.is_some().then_some(config);
        }
        let profiled = info.is_profiled();
        let mut indexed = if profiled {
            index_keys(&info)
        } else {
            Vec::new()
        };
        let key = info.key.clone();
        // Counted twice from the start, for the slot and the receiver: no locked
        // increment for the slot's handle.
        let (entry, for_slot) = EntryArc::new_pair(ClientEntry::new(
            id,
            inner.config.channel_capacity,
            connected_at,
            fleet,
        ));
        if !plain {
            entry.profile.store(Some(Arc::new(info)));
        }
        // The client's lock is taken before the entry becomes findable and held
        // until its index sets and key are in place. An unregister, update or attach
        // that finds the id meanwhile waits, and then sees the whole registration:
        // nothing it removes can be added back by this one (issue 10, race 1).
        let old = if key.is_none() && merged_with.is_none() && indexed.is_empty() {
            // Nothing to add after the slot: no half-done registration for the
            // lock to hide, so the common plain client skips it.
            slot.fill(for_slot);
            None
        } else {
            let mut state = ClientLock::new(slot.fill_locked(for_slot));
            let old = key
                .as_deref()
                .and_then(|key| inner.fleet.claim_key(key, id));
            if let Some(used) = merged_with {
                if self.merge_latest_config(&entry, &mut state, &used) {
                    indexed = index_keys(&entry.info());
                }
            }
            for index_key in &indexed {
                inner.fleet.join_index(index_key, id, &entry);
            }
            old
        };
        if profiled {
            inner.events.publish(|| Event::Joined {
                id,
                key: key.clone(),
            });
        }
        if let Some((key, old)) = key.zip(old) {
            let mut takeover = Takeover {
                successor: &entry,
                not_moved: Vec::new(),
            };
            let departed = self.depart(
                old,
                CloseReason::TakenOver { by: Some(id) },
                Some(&mut takeover),
            );
            if departed.is_ok() {
                inner
                    .events
                    .publish(|| Event::TakenOver { key, old, new: id });
            }
            if let Some(report) = report {
                report.took_over = departed.ok();
                report.not_moved = takeover.not_moved;
            }
        }
        Ok((id, Receiver::new(ChannelRef::from_entry(entry))))
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
        self.unregister_because(id, CloseReason::Unregistered)
    }

    /// Disconnects a client on the application's behalf (an operator's kick), giving
    /// a reason that its connection can pass on to the peer.
    ///
    /// The same as [`unregister`](Self::unregister), except that the client's
    /// [`Receiver::close_reason`] reports [`CloseReason::Kicked`] with `reason`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if `who` names no connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, CloseReason};
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, mut rx) = registry.register(ClientInfo::new().with_key("dev"))?;
    /// let gone = registry.kick("dev", "firmware too old")?;
    /// assert_eq!(gone.id, id);
    /// assert!(!registry.is_online("dev"));
    /// assert!(matches!(rx.close_reason(), Some(CloseReason::Kicked { reason }) if reason == "firmware too old"));
    /// assert!(rx.try_recv().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kick<'k>(
        &self,
        who: impl Into<ClientRef<'k>>,
        reason: impl Into<String>,
    ) -> Result<Unregistered, ClientError> {
        let id = self.lookup(who.into())?.id;
        self.unregister_because(
            id,
            CloseReason::Kicked {
                reason: reason.into(),
            },
        )
    }

    /// The one path every departure takes: unregister, a closed channel, the
    /// disconnect policy, and takeover.
    pub(crate) fn unregister_because(
        &self,
        id: ClientId,
        cause: CloseReason,
    ) -> Result<Unregistered, ClientError> {
        self.depart(id, cause, None)
    }

    /// [`unregister_because`](Self::unregister_because), naming the connection
    /// that takes `id` over, if any: rooms moved to it follow it onwards if it was
    /// itself taken over meanwhile, and those that find no place are listed.
    #[inline]
    fn depart(
        &self,
        id: ClientId,
        cause: CloseReason,
        takeover: Option<&mut Takeover<'_, M>>,
    ) -> Result<Unregistered, ClientError> {
        let client = self.inner.clients.lock(id)?;
        self.depart_entry(client, cause, takeover)
    }

    /// [`depart`](Self::depart) for the client whose lock its id took. The lock
    /// is given up once `connected` is false; the slot is emptied near the end, and
    /// until then the entry stays in it (only this call may empty it), unpinned.
    // Out of line, as LLVM chose before the clients moved to their own file: inlined
    // into `depart`, it pushed the channel's close out of line instead, +55 Ir per
    // unregister under callgrind (`churn_cycle`).
    #[inline(never)]
    fn depart_entry(
        &self,
        client: ClientLock<'_, M>,
        cause: CloseReason,
        takeover: Option<&mut Takeover<'_, M>>,
    ) -> Result<Unregistered, ClientError> {
        let id = client.entry().id;
        // Only rooms follow a successor; without moves it has nothing to do here.
        let mut takeover = takeover.filter(|_| self.inner.config.takeover_moves_sessions);
        let departing = client.disconnect(|state| {
            if let Some(takeover) = &takeover {
                state.fleet().successor = Some(WeakArc::new(takeover.successor));
            }
            let tasks = state.fleet.as_mut().map(|f| std::mem::take(&mut f.tasks));
            (
                std::mem::take(&mut state.sessions),
                tasks.unwrap_or_default(),
            )
        });
        let Some((entry, (sessions, tasks))) = departing else {
            return Err(ClientError::Gone(id));
        };
        let info = entry.profile.with(|info| info.cloned());
        // The key stops resolving before the slot is freed; a successor's mapping
        // (takeover) is left alone.
        if let Some(key) = info.as_ref().and_then(|i| i.key.as_deref()) {
            self.inner.fleet.release_key(key, id);
        }
        entry.chan.close_because(cause);
        // A client that left its rooms before it left (as in the churn bench) skips
        // the walk: the sized allocation's checks and the call into the closure
        // cost ~35 instructions for nothing.
        let keys = match sessions.len() {
            0 => Vec::new(),
            count => {
                let mut keys = Vec::with_capacity(count);
                sessions.into_each(|session| {
                    // Every session in a client's memberships is a named one.
                    if let Some(key) = session.key() {
                        if let Some(takeover) = takeover.as_deref_mut() {
                            // Joined before this client leaves, so the room never empties.
                            if let Err(why) = self.join_successor(takeover.successor, key) {
                                takeover.not_moved.push((key.clone(), why));
                            }
                        }
                        keys.push(key.clone());
                    }
                    self.inner.sessions.leave_session(&session, id);
                });
                keys
            }
        };
        if let Some(info) = &info {
            for index_key in index_keys(info) {
                self.inner.fleet.leave_index(&index_key, id);
            }
        }
        // Most clients own no task; the empty collect alone cost ~30 instructions.
        let cancelled_tasks = if tasks.is_empty() {
            Vec::new()
        } else {
            tasks
                .into_iter()
                .filter_map(|task| self.cancel_task(task, id))
                .collect()
        };
        // This call alone flipped `connected`, so it alone frees the slot.
        let freed = self.inner.clients.release(entry);
        debug_assert!(freed, "{id} left its slot twice");
        if info.as_ref().is_some_and(|i| i.is_profiled()) {
            self.inner.events.publish(|| Event::Left {
                id,
                key: info.as_ref().and_then(|i| i.key.clone()),
            });
        }
        Ok(Unregistered {
            id,
            sessions: keys,
            cancelled_tasks,
        })
    }

    /// Adds the connection that took a client over to one of that client's rooms.
    ///
    /// If the successor was itself taken over meanwhile, the room goes to its
    /// successor, and so on: the key's final holder ends in every room (issue 10,
    /// race 3). A successor that simply left ends the chain, and the room with it.
    /// Each step looks at one client under its lock, where `connected` and
    /// `successor` change together, or, once it has left its slot, at its final
    /// state.
    ///
    /// The record of a successor is weak (`FleetState::successor`). Should the
    /// successor have been freed before this step reads it (it departed in full,
    /// its writer let go of it, and the epoch reclaimed it, all while this room
    /// was on its way), the room goes to whoever holds the key now, once; if
    /// nobody does, it ends there.
    ///
    /// # Errors
    ///
    /// Why the room was left behind: as [`attach`](Self::attach) for the client
    /// it reached, [`ClientError::Gone`] for the last one of the chain if that one
    /// left, and [`ClientError::NoSuchKey`] if nobody holds the key.
    fn join_successor(
        &self,
        successor: &EntryArc<ClientEntry<M>>,
        key: &SessionId,
    ) -> Result<(), AttachError> {
        let mut to = EntryArc::clone(successor);
        let mut looked_up = false;
        loop {
            let next = match self.inner.clients.lock_entry(&to) {
                Locked::Held(mut client) => {
                    if client.connected {
                        // A full session, or a successor in its limit of
                        // sessions, leaves the room behind, as `attach` would;
                        // the departure lists it.
                        return self.attach_locked(&mut client, key.clone()).map(drop);
                    }
                    client.successor()
                }
                Locked::Departed(state) => state.successor(),
            };
            to = match next {
                Some(Some(next)) => next,
                Some(None) if !looked_up => {
                    looked_up = true;
                    self.key_holder_entry(&to).ok_or(ClientError::NoSuchKey)?
                }
                None | Some(None) => return Err(ClientError::Gone(to.id).into()),
            };
        }
    }

    /// The entry of the client that holds `client`'s key now, if any.
    fn key_holder_entry(&self, client: &ClientEntry<M>) -> Option<EntryArc<ClientEntry<M>>> {
        let info = client.info();
        let holder = self.inner.fleet.key_holder(info.key.as_deref()?)?;
        self.inner.clients.entry(holder).ok()
    }

    /// Adds a client to a session, creating the session if it does not exist.
    ///
    /// Returns `true` if the client joined, `false` if it was already a member
    /// (attaching twice is a no-op). Costs O(1) whatever the session's size, plus a
    /// scan of the client's own sessions, at most
    /// [`Builder::max_sessions_per_client`] of them.
    ///
    /// # Errors
    ///
    /// [`AttachError::Client`] if the id does not name a connected client,
    /// [`AttachError::SessionNameTooLong`] if the name is longer than
    /// [`Builder::max_session_name_bytes`], [`AttachError::TooManySessions`] if the
    /// client is already in [`Builder::max_sessions_per_client`] sessions, and
    /// [`AttachError::SessionFull`] if the session has no room. After any of them
    /// the client is not a member and no session was created for it.
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
        let key = session.into();
        let limit = self.inner.config.peer_bounds.session_name_bytes;
        if let SessionId::Name(name) = &key {
            if name.len() > limit {
                return Err(AttachError::SessionNameTooLong {
                    len: name.len(),
                    limit,
                });
            }
        }
        let mut client = self.inner.clients.lock_connected(id)?;
        self.attach_locked(&mut client, key)
    }

    /// [`attach`](Self::attach) for a connected client whose lock the caller holds.
    fn attach_locked(
        &self,
        client: &mut ClientLock<'_, M>,
        key: SessionId,
    ) -> Result<bool, AttachError> {
        let id = client.entry().id;
        if client.position(&key).is_some() {
            return Ok(false);
        }
        // Under the client's lock, which guards its list: racing attaches of one
        // client are counted one after the other, so only `limit` of them pass.
        let limit = self.inner.config.peer_bounds.sessions_per_client;
        if client.sessions.len() >= limit {
            return Err(AttachError::TooManySessions {
                session: key,
                limit,
            });
        }
        match self.inner.sessions.join(&key, id, client.entry()) {
            Join::Added(session) => {
                client.sessions.push(session);
                Ok(true)
            }
            // The client's state says it is not a member, and the state is only
            // changed under its lock, which we hold.
            Join::AlreadyMember => Ok(false),
            Join::Full => Err(AttachError::SessionFull(key)),
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
        let key = session.into();
        let mut client = self.inner.clients.lock_connected(id)?;
        let Some(position) = client.position(&key) else {
            return Err(DetachError::NotAttached {
                client: id,
                session: key,
            });
        };
        if let Some(session) = client.sessions.swap_remove(position) {
            self.inner.sessions.leave_session(&session, id);
        }
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
        self.inner.sessions.open(&session.into());
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
        self.inner.sessions.release(session.into())
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
        let count = session.live();
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
        let state = self.inner.clients.lock_connected(id)?;
        Ok(state.sessions.keys().cloned().collect())
    }

    /// The client's profile, after any device-config merge. A cheap snapshot that
    /// takes no lock; later updates do not change it.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if `who` names no connected client.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::ClientInfo;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("bob")).unwrap();
    /// assert_eq!(registry.info(id)?.key.as_deref(), Some("bob"));
    /// assert_eq!(registry.info("bob")?.key.as_deref(), Some("bob"));
    /// # Ok::<(), switchboard::ClientError>(())
    /// ```
    pub fn info<'k>(&self, who: impl Into<ClientRef<'k>>) -> Result<Arc<ClientInfo>, ClientError> {
        Ok(self.lookup(who.into())?.info())
    }

    /// Whether `who` (an id or a key) names a connected client. Takes no lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::ClientInfo;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("k")).unwrap();
    /// assert!(registry.is_online(id) && registry.is_online("k"));
    /// let _ = registry.unregister(id);
    /// assert!(!registry.is_online(id) && !registry.is_online("k"));
    /// ```
    #[must_use]
    pub fn is_online<'k>(&self, who: impl Into<ClientRef<'k>>) -> bool {
        self.lookup(who.into()).is_ok()
    }

    /// Connected clients. Sums the shards' counts; takes no lock.
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.inner.clients.len()
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
            .entries()
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Every connected client's id, shard by shard.
    #[must_use]
    pub fn client_ids(&self) -> Vec<ClientId> {
        let mut ids = Vec::with_capacity(self.client_count());
        self.inner.clients.for_each(|entry| ids.push(entry.id));
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
        let fleet = &self.inner.fleet;
        Stats {
            clients: self.client_count(),
            devices: fleet.kind_count(crate::ClientKind::Device),
            orchestrators: fleet.kind_count(crate::ClientKind::Orchestrator),
            by_platform: fleet.platform_counts(),
            sessions: self.session_count(),
            tasks: fleet.task_count(),
            delivered: c.delivered.sum(),
            dropped: c.dropped.sum(),
            closed: c.closed.sum(),
            disconnected: c.disconnected.sum(),
        }
    }

    /// Every connected client's entry, by id: the way into a client for every
    /// path that starts from one.
    #[inline]
    pub(crate) fn clients(&self) -> &Clients<M> {
        &self.inner.clients
    }

    /// Every open session, by key.
    #[inline]
    pub(crate) fn sessions(&self) -> &Directory<SessionId, M> {
        &self.inner.sessions
    }

    /// The settings the registry was built with.
    #[inline]
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Keys, profile index sets, tasks and the device config.
    #[inline]
    pub(crate) fn fleet(&self) -> &Fleet<M> {
        &self.inner.fleet
    }

    /// Presence events, for subscribers.
    #[inline]
    pub(crate) fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Delivery totals.
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The connected client `who` names: the id's occupant, or the key's current
    /// connection.
    ///
    /// A key is read and then its connection looked up; if a takeover replaced that
    /// connection in between, the key is read again, so a key that is held the
    /// whole time never looks unheld. Retries only while takeovers keep landing.
    pub(crate) fn lookup(
        &self,
        who: ClientRef<'_>,
    ) -> Result<EntryArc<ClientEntry<M>>, ClientError> {
        let key = match who {
            ClientRef::Id(id) => return self.inner.clients.entry(id),
            ClientRef::Key(key) => key,
        };
        let mut id = self
            .inner
            .fleet
            .key_holder(key)
            .ok_or(ClientError::NoSuchKey)?;
        loop {
            match self.inner.clients.entry(id) {
                Ok(entry) => return Ok(entry),
                Err(gone) => match self.inner.fleet.key_holder(key) {
                    Some(now) if now != id => id = now,
                    Some(_) => return Err(gone),
                    None => return Err(ClientError::NoSuchKey),
                },
            }
        }
    }
}

/// Rejects metadata larger than `limit` bytes of compact JSON.
fn check_metadata(info: &ClientInfo, limit: usize) -> Result<(), RegisterError> {
    let custom = &info.system_info.custom_metadata;
    if info.metadata.is_null() && custom.is_empty() {
        return Ok(());
    }
    let size = json_size(&info.metadata).max(if custom.is_empty() {
        0
    } else {
        json_size(custom)
    });
    if size > limit {
        return Err(RegisterError::MetadataTooLarge { size, limit });
    }
    Ok(())
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_held_past_its_rooms_compactions_keeps_its_messages() {
        let registry = Registry::<u32>::new();
        let join = |registry: &Registry<u32>| {
            let (id, rx) = registry
                .register(ClientInfo::new())
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(registry.attach(id, 1).unwrap_or(false));
            (id, rx)
        };
        let _residents: Vec<_> = (0..10).map(|_| join(&registry)).collect();
        let (id, mut rx) = join(&registry);
        assert!(registry.broadcast(1, 7).is_ok());
        assert!(registry.detach(id, 1).is_ok());
        assert!(registry.unregister(id).is_ok());
        // Enough churn for its dead cell to be compacted into the graveyard, popped
        // and then some: the receiver's own count keeps the entry.
        for _ in 0..4 * crate::session::COMPACT_SLACK {
            let (other, other_rx) = join(&registry);
            assert!(registry.detach(other, 1).is_ok());
            assert!(registry.unregister(other).is_ok());
            drop(other_rx);
        }
        assert_eq!(rx.try_recv().ok(), Some(7));
        assert!(rx.try_recv().is_err());
        assert!(matches!(rx.close_reason(), Some(CloseReason::Unregistered)));
        assert_eq!(registry.members(1).map(|m| m.len()), Ok(10));
    }

    #[test]
    fn dropping_the_registry_frees_entries_still_in_sessions() {
        let registry = Registry::<u8>::new();
        let (id, rx) = registry
            .register(ClientInfo::new())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(registry.attach(id, 1).unwrap_or(false));
        let entry = registry
            .clients()
            .entry(id)
            .unwrap_or_else(|e| panic!("{e}"));
        let weak = EntryArc::downgrade(&entry);
        drop(entry);
        drop(registry);
        drop(rx);
        // The session's member cell holds the entry and the entry held the session:
        // the registry's drop must break that cycle.
        assert!(weak.upgrade().is_none(), "the client's entry leaked");
    }

    /// A connection kept after it was taken over (its writer still holds the
    /// receiver) keeps its own entry, not every later connection of its key: the
    /// record of who took it over must not chain them all together. The registry
    /// is dropped first, so that what its sessions and index sets still hold for
    /// a while (departed members until a compaction) is not counted.
    #[test]
    fn a_kept_connection_does_not_keep_its_keys_later_connections() {
        const RECONNECTS: usize = 50;
        let registry = Registry::<u8>::builder()
            .takeover_moves_sessions(true)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let connect = |registry: &Registry<u8>| {
            let (id, rx) = registry
                .register(ClientInfo::new().with_key("k"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(registry.attach(id, "room").is_ok());
            let entry = registry
                .clients()
                .entry(id)
                .unwrap_or_else(|e| panic!("{e}"));
            (EntryArc::downgrade(&entry), rx)
        };
        let (first, _kept) = connect(&registry);
        let mut later = Vec::new();
        for _ in 0..RECONNECTS {
            // Each one takes over the one before (its room moves along) and is
            // dropped by its writer.
            let (weak, rx) = connect(&registry);
            drop(rx);
            later.push(weak);
        }
        drop(registry);
        let alive = || later.iter().filter(|w| w.strong_count() > 0).count();
        // Unlinked entries wait for the epoch; give it the time it needs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive() > 0 && std::time::Instant::now() < deadline {
            crate::sync::flush_pending();
            crossbeam_epoch::pin().flush();
            std::thread::yield_now();
        }
        assert!(
            first.strong_count() > 0,
            "the kept receiver keeps its own entry"
        );
        assert_eq!(
            alive(),
            0,
            "taken-over connections kept alive through the first one's record"
        );
    }

    /// A room on its way to a successor that was freed meanwhile (the weak record
    /// cannot be followed) goes to whoever holds the key now, or nowhere, and
    /// then says why.
    #[test]
    fn a_room_whose_successor_was_freed_goes_to_the_keys_holder() {
        let registry = Registry::<u8>::builder()
            .takeover_moves_sessions(true)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let keyed = || ClientInfo::new().with_key("k");
        let (a, _a_rx) = registry.register(keyed()).unwrap_or_else(|e| panic!("{e}"));
        let a_entry = registry
            .clients()
            .entry(a)
            .unwrap_or_else(|e| panic!("{e}"));
        // A taken over by a connection that has since been freed entirely: what
        // `depart` leaves, with the successor's last strong reference gone.
        {
            let freed = EntryArc::new(ClientEntry::new(a, 1, 0, None));
            let mut client = registry.clients().lock(a).unwrap_or_else(|e| panic!("{e}"));
            client.connected = false;
            client.fleet().successor = Some(WeakArc::new(&freed));
        }
        let (c, _c_rx) = registry.register(keyed()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            registry.join_successor(&a_entry, &SessionId::from("late")),
            Ok(())
        );
        assert_eq!(
            registry.members("late").map(|m| m.to_vec()),
            Ok(vec![c]),
            "the room reached the key's holder"
        );
        let c_entry = registry
            .clients()
            .entry(c)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(registry.unregister(c).is_ok());
        assert_eq!(
            registry.join_successor(&a_entry, &SessionId::from("later")),
            Err(AttachError::Client(ClientError::NoSuchKey)),
            "the room that ends is reported"
        );
        assert!(
            registry.members("later").is_err(),
            "with nobody holding the key, the room ends"
        );
        // C left with no successor: the chain ends at it.
        assert_eq!(
            registry.join_successor(&c_entry, &SessionId::from("gone")),
            Err(AttachError::Client(ClientError::Gone(c)))
        );
    }

    /// A room the successor cannot join is listed with the reason, the others
    /// move. Deterministic: the successor is already in its limit of sessions,
    /// which through `register` only a racing attach can arrange (see
    /// `tests/fleet.rs`, `takeover_reports_the_rooms_it_could_not_move`).
    #[test]
    fn a_room_the_successor_cannot_join_is_listed() {
        let registry = Registry::<u8>::builder()
            .takeover_moves_sessions(true)
            .max_sessions_per_client(2)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (a, _a_rx) = registry
            .register(ClientInfo::new().with_key("k"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (b, _b_rx) = registry
            .register(ClientInfo::new())
            .unwrap_or_else(|e| panic!("{e}"));
        for (id, room) in [(a, "shared"), (a, "a"), (b, "shared"), (b, "b")] {
            assert_eq!(registry.attach(id, room), Ok(true));
        }
        let b_entry = registry
            .clients()
            .entry(b)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut takeover = Takeover {
            successor: &b_entry,
            not_moved: Vec::new(),
        };
        let gone = registry
            .depart(
                a,
                CloseReason::TakenOver { by: Some(b) },
                Some(&mut takeover),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gone.sessions.len(), 2);
        assert_eq!(
            takeover.not_moved,
            vec![(
                SessionId::from("a"),
                AttachError::TooManySessions {
                    session: "a".into(),
                    limit: 2
                }
            )],
            "a room b already holds is no refusal"
        );
        assert_eq!(
            registry.members("a").map(|m| m.len()),
            Err(UnknownSession("a".into()))
        );
    }
}
