//! Task sessions: work an orchestrator dispatched to a device.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TaskError;
use crate::events::Event;
use crate::{ClientError, ClientId, ClientKind};

/// A task's identity, unique within its registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(u64);

impl TaskId {
    /// The raw number.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`as_u64`](Self::as_u64); the registry validates it when used.
    #[must_use]
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

/// An open task: who dispatched it, and where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Task {
    /// The task.
    pub id: TaskId,
    /// The orchestrator that opened it.
    pub orchestrator: ClientId,
    /// The device it runs on.
    pub device: ClientId,
}

/// Why a task was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Its orchestrator disconnected.
    OrchestratorDisconnected,
    /// Its device disconnected.
    DeviceDisconnected,
}

/// A task that an unregister cancelled, with the side that survived it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CancelledTask {
    /// The task.
    pub task: Task,
    /// Why it was cancelled.
    pub reason: CancelReason,
}

impl<M> crate::Registry<M> {
    /// Opens a task from an orchestrator to a device, recorded on both sides.
    ///
    /// # Errors
    ///
    /// [`TaskError::Offline`] if either side is not connected,
    /// [`TaskError::WrongKind`] unless `orchestrator` is a
    /// [`ClientKind::Orchestrator`] and `device` a
    /// [`ClientKind::Device`], [`TaskError::AtCapacity`] if
    /// the device already runs its configured `max_concurrent_tasks`, and
    /// [`TaskError::TooManyTasks`] if either side already has
    /// [`Builder::max_tasks_per_client`](crate::Builder::max_tasks_per_client) open
    /// tasks. Nothing is opened after any of them.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, ClientKind, Registry};
    ///
    /// let registry = Registry::<u8>::new();
    /// let (o, _ro) = registry.register(ClientInfo::new().with_key("o").with_kind(ClientKind::Orchestrator))?;
    /// let (d, _rd) = registry.register(ClientInfo::new().with_key("d").with_kind(ClientKind::Device))?;
    /// let task = registry.open_task(o, d)?;
    /// assert_eq!(registry.tasks_of_device(d)?.len(), 1);
    /// registry.complete_task(task)?;
    /// assert!(registry.complete_task(task).is_err());
    /// assert!(registry.tasks_of_orchestrator(o)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_task(&self, orchestrator: ClientId, device: ClientId) -> Result<TaskId, TaskError> {
        let o = self.clients().entry(orchestrator)?;
        let d = self.clients().entry(device)?;
        if o.info().kind != Some(ClientKind::Orchestrator) || orchestrator == device {
            return Err(TaskError::WrongKind {
                client: orchestrator,
                expected: ClientKind::Orchestrator,
            });
        }
        let device_info = d.info();
        if device_info.kind != Some(ClientKind::Device) {
            return Err(TaskError::WrongKind {
                client: device,
                expected: ClientKind::Device,
            });
        }
        // Two clients' locks, always in id order.
        let (mut o_state, mut d_state) = if orchestrator < device {
            let o_state = self.clients().lock(orchestrator)?;
            (o_state, self.clients().lock(device)?)
        } else {
            let d_state = self.clients().lock(device)?;
            (self.clients().lock(orchestrator)?, d_state)
        };
        for (state, id) in [(&o_state, orchestrator), (&d_state, device)] {
            if !state.connected {
                return Err(ClientError::Gone(id).into());
            }
        }
        if let Some(limit) = device_info.max_concurrent_tasks() {
            if d_state.tasks().len() as u64 >= limit {
                return Err(TaskError::AtCapacity { device, limit });
            }
        }
        // Under both sides' locks, which guard their lists: racing opens are
        // counted one after the other, so neither side passes its bound.
        let limit = self.config().peer_bounds.tasks_per_client;
        for (state, client) in [(&o_state, orchestrator), (&d_state, device)] {
            if state.tasks().len() >= limit {
                return Err(TaskError::TooManyTasks { client, limit });
            }
        }
        let id = self.fleet().insert_task(orchestrator, device);
        o_state.fleet().tasks.push(id);
        d_state.fleet().tasks.push(id);
        Ok(id)
    }

    /// Completes a task, removing it from both sides.
    ///
    /// # Errors
    ///
    /// [`TaskError::UnknownTask`] if the task already completed, was cancelled, or
    /// never existed: completing twice is reported, not a panic.
    pub fn complete_task(&self, task: TaskId) -> Result<Task, TaskError> {
        let task = self
            .fleet()
            .remove_task(task)
            .ok_or(TaskError::UnknownTask(task))?;
        for side in [task.orchestrator, task.device] {
            if let Ok(mut client) = self.clients().lock(side) {
                if let Some(fleet) = client.fleet.as_mut() {
                    fleet.tasks.retain(|t| *t != task.id);
                }
            }
        }
        Ok(task)
    }

    /// Open tasks this orchestrator dispatched, oldest first.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the client is not connected.
    pub fn tasks_of_orchestrator(&self, orchestrator: ClientId) -> Result<Vec<Task>, ClientError> {
        Ok(self
            .tasks_of(orchestrator)?
            .into_iter()
            .filter(|t| t.orchestrator == orchestrator)
            .collect())
    }

    /// Open tasks running on this device, oldest first.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the client is not connected.
    pub fn tasks_of_device(&self, device: ClientId) -> Result<Vec<Task>, ClientError> {
        Ok(self
            .tasks_of(device)?
            .into_iter()
            .filter(|t| t.device == device)
            .collect())
    }

    fn tasks_of(&self, id: ClientId) -> Result<Vec<Task>, ClientError> {
        let ids = self.clients().lock(id)?.tasks().to_vec();
        Ok(ids
            .into_iter()
            .filter_map(|t| self.fleet().task(t))
            .collect())
    }

    /// Cancels `task` because `gone` left, unless it already ended; tells the
    /// surviving side through the event stream.
    pub(crate) fn cancel_task(&self, task: TaskId, gone: ClientId) -> Option<CancelledTask> {
        // Whoever removes the task from the map cancels it: exactly once.
        let task = self.fleet().remove_task(task)?;
        let (reason, survivor) = if task.orchestrator == gone {
            (CancelReason::OrchestratorDisconnected, task.device)
        } else {
            (CancelReason::DeviceDisconnected, task.orchestrator)
        };
        if let Ok(mut client) = self.clients().lock(survivor) {
            if let Some(fleet) = client.fleet.as_mut() {
                fleet.tasks.retain(|t| *t != task.id);
            }
        }
        self.events().publish(|| Event::TaskCancelled {
            task: task.id,
            orchestrator: task.orchestrator,
            device: task.device,
            reason,
        });
        Some(CancelledTask { task, reason })
    }
}
