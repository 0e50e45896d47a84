//! A connected client's slot occupant: its channel, profile and memberships.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::channel::Channel;
use crate::profile::{ClientInfo, SystemInfo};
use crate::session::Session;
use crate::sync::{Arc, Mutex, SlotCell};
use crate::task::TaskId;
use crate::{ClientId, SessionId};

/// A client's slot occupant.
pub(crate) struct ClientEntry<M> {
    pub(crate) id: ClientId,
    pub(crate) chan: Arc<Channel<M>>,
    /// Milliseconds since the Unix epoch at registration.
    pub(crate) connected_at: u64,
    /// The merged profile; empty for a plain client whose profile is all defaults,
    /// which then costs nothing beyond this pointer.
    pub(crate) profile: SlotCell<ClientInfo>,
    /// Membership bookkeeping. Lock order: a client's state before any session's
    /// writer; two clients' states in id order.
    pub(crate) state: Mutex<ClientState<M>>,
}

pub(crate) struct ClientState<M> {
    /// False from the moment an unregister starts; every change then refuses.
    pub(crate) connected: bool,
    pub(crate) sessions: Vec<(SessionId, Arc<Session<M>>)>,
    /// Tasks and reported info of fleet clients, and the successor of a client
    /// that was taken over; `None` for plain ones.
    pub(crate) fleet: Option<Box<FleetState<M>>>,
}

pub(crate) struct FleetState<M> {
    pub(crate) tasks: Vec<TaskId>,
    /// What the client itself reported, when a device-config entry changed it.
    pub(crate) reported: Option<SystemInfo>,
    /// The connection that took this one over, set when `connected` turns false
    /// because of it. Rooms still on their way to this client follow it there.
    pub(crate) successor: Option<Arc<ClientEntry<M>>>,
}

impl<M> Default for FleetState<M> {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            reported: None,
            successor: None,
        }
    }
}

impl<M> ClientState<M> {
    pub(crate) fn position(&self, key: &SessionId) -> Option<usize> {
        self.sessions.iter().position(|(k, _)| k == key)
    }

    pub(crate) fn tasks(&self) -> &[TaskId] {
        self.fleet.as_deref().map_or(&[], |f| &f.tasks)
    }

    pub(crate) fn fleet(&mut self) -> &mut FleetState<M> {
        self.fleet.get_or_insert_with(Default::default)
    }
}

impl<M> ClientEntry<M> {
    /// The client's profile, with `connected_at` filled in.
    pub(crate) fn info(&self) -> Arc<ClientInfo> {
        self.profile.with(|info| match info {
            Some(info) => Arc::clone(info),
            None => Arc::new(ClientInfo {
                connected_at: millis_to_time(self.connected_at),
                ..ClientInfo::default()
            }),
        })
    }
}

pub(crate) fn now_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn millis_to_time(millis: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(UNIX_EPOCH)
}

impl<M> fmt::Debug for ClientEntry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
