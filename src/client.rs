//! What the registry knows about one connected client.

use std::fmt;

use crate::channel::Channel;
use crate::session::Session;
use crate::sync::{Arc, Mutex};
use crate::{ClientId, SessionId};

/// What the application knows about a client, given at registration.
///
/// One struct, so that new fields never change [`Registry::register`]'s signature.
/// Build it with [`ClientInfo::new`] and the `with_*` methods.
///
/// [`Registry::register`]: crate::Registry::register
///
/// # Examples
///
/// ```
/// let info = switchboard::ClientInfo::new().with_key("device_windows_001");
/// assert_eq!(info.key.as_deref(), Some("device_windows_001"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The application's stable name for the client, if it has one.
    pub key: Option<String>,
}

impl ClientInfo {
    /// An empty profile.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the application's stable name for the client.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A client's slot occupant.
pub(crate) struct ClientEntry<M> {
    pub(crate) id: ClientId,
    pub(crate) chan: Arc<Channel<M>>,
    pub(crate) info: Arc<ClientInfo>,
    /// Membership bookkeeping. Lock order: a client's state before any session's
    /// writer, never the reverse.
    pub(crate) state: Mutex<ClientState<M>>,
}

pub(crate) struct ClientState<M> {
    /// False from the moment an unregister starts; attach then refuses.
    pub(crate) connected: bool,
    pub(crate) sessions: Vec<Arc<Session<M>>>,
}

impl<M> ClientState<M> {
    pub(crate) fn position(&self, key: &SessionId) -> Option<usize> {
        self.sessions.iter().position(|s| s.key() == key)
    }
}

impl<M> fmt::Debug for ClientEntry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
