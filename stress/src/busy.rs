//! Busy time per kind of task: how long a task's polls took, summed, the way
//! `tokio-metrics` measures a task's poll durations.
//!
//! On two workers the senders, the churners and the receivers share the CPU, so a
//! design's deliveries per second are bounded by what a message costs all of them
//! together. Summing each kind's poll time tells the registry's share (the senders'
//! calls) apart from the receivers', whose work per message is the same for every
//! design. Two clock reads per poll: a receiver polls once per wake-up, however many
//! messages it then takes, and a driver once per operation.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::time::Instant;

/// Runs `fut`, handing `add` the wall time in nanoseconds each of its polls took.
///
/// A poll runs on one worker without yielding, so its wall time is that worker's time
/// in the task, unless the OS preempted the worker mid-poll (then it counts too).
pub async fn clocked<F: Future>(add: impl Fn(u64), fut: F) -> F::Output {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        let start = Instant::now();
        let out = fut.as_mut().poll(cx);
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        add(ns);
        out
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// Every poll is timed, the pending one too, and time between polls is not.
    #[tokio::test]
    async fn sums_the_time_inside_each_poll() {
        let (polls, ns) = (Cell::new(0u32), Cell::new(0u64));
        let mut first = true;
        let work = poll_fn(|cx| {
            std::thread::sleep(Duration::from_millis(5));
            if std::mem::take(&mut first) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(7)
        });
        let add = |n| {
            polls.set(polls.get() + 1);
            ns.set(ns.get() + n);
        };
        let start = Instant::now();
        assert_eq!(clocked(add, work).await, 7);
        let wall = start.elapsed().as_nanos() as u64;
        assert_eq!(polls.get(), 2);
        assert!(ns.get() >= 10_000_000, "{} ns", ns.get());
        assert!(ns.get() <= wall, "{} ns of {wall}", ns.get());
    }
}
