//! The cluster layer's errors. Those that carry a message give it back.

use std::fmt;

use crate::{AttachError, ClientError, DetachError, RegisterError};

use super::codec::CodecError;

/// Redis refused a command, or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] pub(crate) fred::error::Error);

/// A cluster operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Redis refused the command or is unreachable.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The local registry refused a registration.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The local registry refused an attach.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The local registry refused a detach.
    #[error(transparent)]
    Detach(#[from] DetachError),
    /// The client is not connected here.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The builder's node id is unusable.
    #[error(transparent)]
    Config(#[from] super::builder::BadNodeId),
    /// The builder's prefix is empty. The presence keys share the hash tag
    /// `{prefix}`, which keeps them on one master of a Redis Cluster, and `{}`
    /// is no hash tag: the presence scripts would fail there.
    #[error("the cluster prefix must not be empty")]
    EmptyPrefix,
    /// More live nodes than
    /// [`ClusterBuilder::max_nodes_listed`](super::ClusterBuilder::max_nodes_listed)
    /// would have to be read for an exact answer; `omitted` of them were not.
    #[error("{omitted} live nodes over max_nodes_listed were not read; the answer would be short")]
    TooManyNodes {
        /// Live nodes left unread.
        omitted: u64,
    },
}

impl From<fred::error::Error> for ClusterError {
    fn from(e: fred::error::Error) -> Self {
        Self::Redis(RedisError(e))
    }
}

/// A cluster broadcast or direct send that did not reach Redis. The message comes
/// back; it was never silently dropped.
#[non_exhaustive]
pub enum PublishError<M> {
    /// Redis refused the publication or could not be reached; local members (if
    /// any) already got the message.
    Redis(M, RedisError),
    /// The codec could not encode the message; nothing was delivered.
    Codec(M, CodecError),
    /// The encoded message is larger than
    /// [`ClusterBuilder::max_payload`](super::ClusterBuilder::max_payload) (its
    /// size in bytes), which other nodes would drop; nothing was delivered.
    TooLarge(M, usize),
    /// The publisher queue is full (Redis is slower than the publishers).
    Busy(M),
    /// The cluster shut down before the publication was sent to Redis; it was
    /// not published, and never will be.
    Closed(M),
}

impl<M> PublishError<M> {
    /// The message that was not published.
    pub fn into_inner(self) -> M {
        match self {
            Self::Redis(m, _)
            | Self::Codec(m, _)
            | Self::TooLarge(m, _)
            | Self::Busy(m)
            | Self::Closed(m) => m,
        }
    }
}

impl<M> fmt::Debug for PublishError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(_, e) => f.debug_tuple("Redis").field(e).finish_non_exhaustive(),
            Self::Codec(_, e) => f.debug_tuple("Codec").field(e).finish_non_exhaustive(),
            Self::TooLarge(_, n) => f.debug_tuple("TooLarge").field(n).finish_non_exhaustive(),
            Self::Busy(_) => f.write_str("Busy(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<M> fmt::Display for PublishError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(_, e) => write!(f, "publish failed: {e}"),
            Self::Codec(_, e) => write!(f, "publish failed: {e}"),
            Self::TooLarge(_, n) => {
                write!(
                    f,
                    "publish failed: {n} bytes is over the cluster's max_payload"
                )
            }
            Self::Busy(_) => f.write_str("publish failed: the publisher queue is full"),
            Self::Closed(_) => f.write_str("publish failed: the cluster is shut down"),
        }
    }
}

impl<M> std::error::Error for PublishError<M> {}

/// Why [`Cluster::send_to_key`](super::Cluster::send_to_key) did not deliver.
pub enum SendToKeyError<M> {
    /// No live node holds the key.
    NotFound(M),
    /// The key is held here but its connection refused the message (full or closed).
    Local(crate::SendError<M>),
    /// The key is held elsewhere and the publication failed.
    Publish(PublishError<M>),
}

impl<M> SendToKeyError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            Self::NotFound(m) => m,
            Self::Local(e) => e.into_inner(),
            Self::Publish(e) => e.into_inner(),
        }
    }
}

impl<M> fmt::Debug for SendToKeyError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(_) => f.write_str("NotFound(..)"),
            Self::Local(e) => f.debug_tuple("Local").field(e).finish(),
            Self::Publish(e) => f.debug_tuple("Publish").field(e).finish(),
        }
    }
}

impl<M> fmt::Display for SendToKeyError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(_) => f.write_str("no live node holds the key"),
            Self::Local(e) => write!(f, "{e}"),
            Self::Publish(e) => write!(f, "{e}"),
        }
    }
}

impl<M> std::error::Error for SendToKeyError<M> {}
