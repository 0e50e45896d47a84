//! Presence events: a lossy stream a dashboard can follow.

use serde::Serialize;

use crate::task::{CancelReason, TaskId};
use crate::ClientId;

/// Something that happened to a profiled client (one with a key, kind or platform)
/// or to a task.
///
/// Anonymous clients raise no events, so plain chat traffic pays nothing for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A profiled client registered.
    Joined {
        /// Its id.
        id: ClientId,
        /// Its key, if it has one.
        key: Option<String>,
    },
    /// A profiled client left (unregistered, disconnected, or taken over).
    Left {
        /// Its id.
        id: ClientId,
        /// Its key, if it has one.
        key: Option<String>,
    },
    /// A new connection took over a key from an older one.
    TakenOver {
        /// The key.
        key: String,
        /// The connection that lost the key and was unregistered.
        old: ClientId,
        /// The connection that now holds it.
        new: ClientId,
    },
    /// A task ended because one side disconnected.
    TaskCancelled {
        /// The task.
        task: TaskId,
        /// Its orchestrator.
        orchestrator: ClientId,
        /// Its device.
        device: ClientId,
        /// Which side left.
        reason: CancelReason,
    },
}

/// The registry's event fan-out.
///
/// Built on `tokio::sync::broadcast`: publishing never waits for a subscriber, and
/// a subscriber that falls more than the buffer behind gets `RecvError::Lagged(n)`
/// and skips ahead.
pub(crate) struct EventBus {
    tx: tokio::sync::broadcast::Sender<Event>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(capacity);
        Self { tx }
    }

    /// Publishes `event` to current subscribers, if any.
    pub(crate) fn publish(&self, event: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            // An error only means the last subscriber left meanwhile.
            let _ = self.tx.send(event());
        }
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
