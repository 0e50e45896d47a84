//! A count of live receiver tasks, and a way to wait until none is left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    /// Ordering: `AcqRel` on the decrement and `Acquire` on the read, so that whoever sees
    /// zero also sees everything the tasks did before ending.
    live: AtomicUsize,
    idle: Notify,
}

/// Live tasks of one world.
#[derive(Debug, Default, Clone)]
pub struct TaskCount(Arc<Inner>);

/// Held by a running task; dropping it counts the task as ended.
#[derive(Debug)]
#[must_use = "the task counts as ended when this guard drops"]
pub struct TaskGuard(Arc<Inner>);

impl TaskCount {
    /// Counts one more task; the task owns the returned guard.
    pub fn enter(&self) -> TaskGuard {
        // Relaxed: the increment happens before the spawn that publishes the guard.
        self.0.live.fetch_add(1, Ordering::Relaxed);
        TaskGuard(Arc::clone(&self.0))
    }

    /// Tasks still running.
    pub fn live(&self) -> usize {
        // Acquire: see `live`.
        self.0.live.load(Ordering::Acquire)
    }

    /// Waits until no task is left or `limit` passes; returns how many are left.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.0.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a last task ending in between still wakes us.
            idle.as_mut().enable();
            let live = self.live();
            if live == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.live();
            }
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        // AcqRel: see `live`.
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_last_task() {
        let count = TaskCount::default();
        let guards: Vec<_> = (0..3).map(|_| count.enter()).collect();
        assert_eq!(count.live(), 3);
        let waiter = tokio::spawn({
            let count = count.clone();
            async move { count.wait_idle(Duration::from_secs(5)).await }
        });
        drop(guards);
        assert_eq!(waiter.await.ok(), Some(0));
        let _stuck = count.enter();
        assert_eq!(count.wait_idle(Duration::from_millis(20)).await, 1);
    }
}
