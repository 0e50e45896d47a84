//! Typed errors, one enum per concern. Errors that fail to deliver give the message back.

use std::fmt;

use crate::{ClientId, SessionId};

/// Why a [`ClientId`] did not resolve to a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The id was valid once, but its client has left (or the slot was reused).
    #[error("client {0} is not connected")]
    Gone(ClientId),
    /// The id names a shard this registry does not have: it was forged or comes from
    /// another registry.
    #[error("client id {0} names shard that does not exist")]
    NoSuchShard(ClientId),
    /// The id names a slot this registry never allocated: it was forged or comes from
    /// another registry.
    #[error("client id {0} names a slot that was never allocated")]
    NoSuchSlot(ClientId),
    /// No connected client has the key.
    #[error("no connected client has that key")]
    NoSuchKey,
}

/// Why [`Registry::register`](crate::Registry::register) refused a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The builder's [`max_clients`](crate::Builder::max_clients) are connected.
    #[error("client limit of {limit} reached")]
    LimitReached {
        /// The configured limit.
        limit: usize,
    },
    /// Every shard has used all of its 2^24 slots (including retired ones).
    #[error("every shard is out of slots")]
    OutOfSlots,
    /// The profile's `metadata` or `system_info.custom_metadata` is larger than
    /// [`Builder::max_metadata_bytes`](crate::Builder::max_metadata_bytes) as JSON.
    #[error("metadata of {size} bytes exceeds the limit of {limit}")]
    MetadataTooLarge {
        /// Its size as compact JSON.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The profile breaks one of the builder's profile bounds (see [`ProfileLimit`]).
    /// Nothing was registered.
    #[error("{what} is {actual}, over the limit of {limit}")]
    ProfileTooLarge {
        /// Which bound.
        what: ProfileLimit,
        /// What the profile has.
        actual: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// One bound on the size of a client's profile, as a peer reports it.
///
/// A profile comes from the remote peer (a `hello` frame), so each part that grows
/// with it is bounded by a [`Builder`](crate::Builder) setting: every tag and
/// capability costs an index set, and the whole profile is copied on each update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProfileLimit {
    /// The whole profile as compact JSON, in bytes:
    /// [`Builder::max_profile_bytes`](crate::Builder::max_profile_bytes).
    Bytes,
    /// `system_info.tags`: [`Builder::max_tags`](crate::Builder::max_tags).
    Tags,
    /// `system_info.capabilities`:
    /// [`Builder::max_capabilities`](crate::Builder::max_capabilities).
    Capabilities,
    /// `system_info.installed_applications`:
    /// [`Builder::max_installed_applications`](crate::Builder::max_installed_applications).
    InstalledApplications,
}

impl fmt::Display for ProfileLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bytes => "the profile's size in bytes",
            Self::Tags => "the number of tags",
            Self::Capabilities => "the number of capabilities",
            Self::InstalledApplications => "the number of installed applications",
        })
    }
}

/// Why [`Registry::attach`](crate::Registry::attach) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The client is not connected.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The session already addresses 2^32 − 1 member cells.
    #[error("session {0} is full")]
    SessionFull(SessionId),
    /// The client is already attached to
    /// [`Builder::max_sessions_per_client`](crate::Builder::max_sessions_per_client)
    /// sessions. It was not added, and no session was created.
    #[error("client is already in its limit of {limit} sessions; cannot join {session}")]
    TooManySessions {
        /// The session it was not added to.
        session: SessionId,
        /// The configured limit.
        limit: usize,
    },
    /// The session's name is longer than
    /// [`Builder::max_session_name_bytes`](crate::Builder::max_session_name_bytes).
    /// Nothing was created; the name is left out of the error (it is the long part).
    #[error("session name of {len} bytes exceeds the limit of {limit}")]
    SessionNameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Why [`Registry::detach`](crate::Registry::detach) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachError {
    /// The client is not connected.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The client is connected but not a member of the session.
    #[error("client {client} is not attached to session {session}")]
    NotAttached {
        /// The client.
        client: ClientId,
        /// The session it is not in.
        session: SessionId,
    },
}

/// A session key that names no open session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no session {0}")]
pub struct UnknownSession(pub SessionId);

/// Why a direct send failed. Every variant gives the message back.
#[derive(PartialEq, Eq, Clone, thiserror::Error)]
pub enum SendError<M> {
    /// No connected client has this id: it left, its slot was reused, or the id is
    /// forged. See [`ClientError`] for which.
    #[error("{1}")]
    Unknown(M, ClientError),
    /// The client's channel is full; the message was not queued.
    #[error("client channel is full")]
    Full(M),
    /// The client's channel is closed (its receiver was dropped, or it was
    /// disconnected); the client has been unregistered.
    #[error("client channel is closed")]
    Closed(M),
    /// [`send_timeout`](crate::Registry::send_timeout) waited its whole timeout for
    /// capacity.
    #[error("timed out waiting for channel capacity")]
    Timeout(M),
}

impl<M> SendError<M> {
    /// Takes back the message that was not delivered.
    #[must_use = "the undelivered message is returned here"]
    pub fn into_inner(self) -> M {
        match self {
            Self::Unknown(m, _) | Self::Full(m) | Self::Closed(m) | Self::Timeout(m) => m,
        }
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(_, why) => f.debug_tuple("Unknown").field(&"..").field(why).finish(),
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
            Self::Timeout(_) => f.write_str("Timeout(..)"),
        }
    }
}

/// Why a broadcast reached nobody. Gives the message back.
#[derive(PartialEq, Eq, Clone, thiserror::Error)]
pub enum BroadcastError<M> {
    /// No open session has this key.
    #[error("no session {1}")]
    UnknownSession(M, SessionId),
}

impl<M> BroadcastError<M> {
    /// Takes back the message that was not delivered.
    #[must_use = "the undelivered message is returned here"]
    pub fn into_inner(self) -> M {
        match self {
            Self::UnknownSession(m, _) => m,
        }
    }
}

impl<M> fmt::Debug for BroadcastError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSession(_, s) => f
                .debug_tuple("UnknownSession")
                .field(&"..")
                .field(s)
                .finish(),
        }
    }
}

/// Why a [`Receiver::try_recv`](crate::Receiver::try_recv) returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued right now.
    #[error("channel is empty")]
    Empty,
    /// The channel is closed and everything sent before the close was received.
    #[error("channel is closed")]
    Closed,
}

/// Why [`Builder::build`](crate::Builder::build) rejected its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The shard count must be 1 to 256.
    #[error("shard count {0} is outside 1..=256")]
    Shards(usize),
    /// The channel capacity must be 1 to 2^20.
    #[error("channel capacity {0} is outside 1..=1048576")]
    ChannelCapacity(usize),
    /// A client limit of zero would refuse every client.
    #[error("client limit must be at least 1")]
    MaxClients,
    /// The event buffer must hold 1 to 2^20 events.
    #[error("event capacity {0} is outside 1..=1048576")]
    EventCapacity(usize),
    /// A per-client bound (the builder method named) of zero would refuse every
    /// attach or task; `usize::MAX` is how to turn one off.
    #[error("{0} must be at least 1")]
    ZeroBound(&'static str),
}

/// A kind name other than `device` or `orchestrator`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown client kind {0:?}: expected \"device\" or \"orchestrator\"")]
pub struct UnknownKind(pub String);

/// Why a device-config file was rejected. The registry is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The extension is not `.yaml`, `.yml`, `.json` or `.toml`.
    #[error("{0}: unsupported config format (use .yaml, .yml, .json or .toml)")]
    Format(String),
    /// The text is malformed.
    #[error("line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line (0 if the parser gave none).
        line: usize,
        /// 1-based column (0 if the parser gave none).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The text parsed but is not a map of keys to maps of fields of the right types.
    #[error("config shape: {0}")]
    Shape(String),
}

/// Why a profile update failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The client is not connected.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The updated `custom_metadata` is larger than the configured limit.
    #[error("metadata of {size} bytes exceeds the limit of {limit}")]
    MetadataTooLarge {
        /// Its size as compact JSON.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The updated profile breaks one of the builder's profile bounds (see
    /// [`ProfileLimit`]). The profile is unchanged.
    #[error("{what} is {actual}, over the limit of {limit}")]
    ProfileTooLarge {
        /// Which bound.
        what: ProfileLimit,
        /// What the updated profile has.
        actual: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Why a task could not be opened or completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// One side is not connected.
    #[error(transparent)]
    Offline(#[from] ClientError),
    /// The client on one side has the wrong kind.
    #[error("client {client} is not of kind {expected}")]
    WrongKind {
        /// The client.
        client: ClientId,
        /// The kind it must have.
        expected: crate::ClientKind,
    },
    /// The device already runs its `max_concurrent_tasks`.
    #[error("device {device} already runs its limit of {limit} tasks")]
    AtCapacity {
        /// The device.
        device: ClientId,
        /// Its limit.
        limit: u64,
    },
    /// One side already has
    /// [`Builder::max_tasks_per_client`](crate::Builder::max_tasks_per_client) open
    /// tasks. Nothing was opened.
    #[error("client {client} already has its limit of {limit} open tasks")]
    TooManyTasks {
        /// The side at its limit (the orchestrator is checked first).
        client: ClientId,
        /// The configured limit.
        limit: usize,
    },
    /// No open task has this id (it completed, was cancelled, or never existed).
    #[error("no open task {0}")]
    UnknownTask(crate::TaskId),
}
