//! What one contender did in one scenario: striped counters bumped on the hot paths.

use serde::Serialize;

use crate::invariants::Outcome;
use crate::striped::Striped;

/// Running counts of one world (one contender in one scenario).
#[derive(Debug, Default)]
pub struct Tally {
    /// Broadcast calls.
    pub broadcasts: Striped,
    /// Recipients over all broadcast reports.
    pub recipients: Striped,
    /// Broadcast messages queued.
    pub delivered: Striped,
    /// Broadcast messages skipped on a full channel.
    pub dropped: Striped,
    /// Broadcast messages refused by a closed channel.
    pub closed: Striped,
    /// Clients the slow-consumer policy unregistered.
    pub disconnected: Striped,
    /// Direct send calls.
    pub directs: Striped,
    /// Direct sends queued.
    pub direct_ok: Striped,
    /// Direct sends refused by a closed channel (switchboard then unregisters the client).
    pub direct_closed: Striped,
    /// Messages receivers took.
    pub received: Striped,
    /// Register, attach, detach and unregister calls made by the harness.
    pub churn_ops: Striped,
    /// Clients the registry removed on its own, as discovered by the harness.
    pub evicted: Striped,
    /// Receivers dropped abruptly.
    pub abrupt_drops: Striped,
    /// Abrupt disconnects whose unregister found the client already gone.
    pub abrupt_early: Striped,
    /// Messages queued in abruptly dropped receivers, counted as the drop freed them.
    pub abrupt_lost: Striped,
    /// Nanoseconds the sending drivers' polls took (see [`busy`](crate::busy)).
    pub send_busy_ns: Striped,
    /// Nanoseconds the churning drivers' polls took (drivers that also send count here).
    pub churn_busy_ns: Striped,
    /// Nanoseconds the receiver tasks' polls took.
    pub receive_busy_ns: Striped,
    /// Polls of the receiver tasks (each takes every message queued at the time).
    pub receive_polls: Striped,
}

impl Tally {
    /// Adds one broadcast's report.
    pub fn broadcast(&self, o: &Outcome) {
        self.broadcasts.add(1);
        self.recipients.add(o.recipients as u64);
        self.delivered.add(o.delivered as u64);
        self.dropped.add(o.dropped as u64);
        self.closed.add(o.closed as u64);
        self.disconnected.add(o.disconnected as u64);
    }

    /// A copy of the counts now.
    pub fn snapshot(&self) -> Counts {
        Counts {
            broadcasts: self.broadcasts.get(),
            recipients: self.recipients.get(),
            delivered: self.delivered.get(),
            dropped: self.dropped.get(),
            closed: self.closed.get(),
            disconnected: self.disconnected.get(),
            directs: self.directs.get(),
            direct_ok: self.direct_ok.get(),
            direct_closed: self.direct_closed.get(),
            received: self.received.get(),
            churn_ops: self.churn_ops.get(),
            evicted: self.evicted.get(),
            abrupt_drops: self.abrupt_drops.get(),
            abrupt_early: self.abrupt_early.get(),
            abrupt_lost: self.abrupt_lost.get(),
            send_busy_ns: self.send_busy_ns.get(),
            churn_busy_ns: self.churn_busy_ns.get(),
            receive_busy_ns: self.receive_busy_ns.get(),
            receive_polls: self.receive_polls.get(),
        }
    }
}

/// Plain copies of a [`Tally`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs, reason = "the fields mirror `Tally`'s, documented there")]
pub struct Counts {
    pub broadcasts: u64,
    pub recipients: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub closed: u64,
    pub disconnected: u64,
    pub directs: u64,
    pub direct_ok: u64,
    pub direct_closed: u64,
    pub received: u64,
    pub churn_ops: u64,
    pub evicted: u64,
    pub abrupt_drops: u64,
    pub abrupt_early: u64,
    pub abrupt_lost: u64,
    pub send_busy_ns: u64,
    pub churn_busy_ns: u64,
    pub receive_busy_ns: u64,
    pub receive_polls: u64,
}

impl Counts {
    /// Counts accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            broadcasts: self.broadcasts - earlier.broadcasts,
            recipients: self.recipients - earlier.recipients,
            delivered: self.delivered - earlier.delivered,
            dropped: self.dropped - earlier.dropped,
            closed: self.closed - earlier.closed,
            disconnected: self.disconnected - earlier.disconnected,
            directs: self.directs - earlier.directs,
            direct_ok: self.direct_ok - earlier.direct_ok,
            direct_closed: self.direct_closed - earlier.direct_closed,
            received: self.received - earlier.received,
            churn_ops: self.churn_ops - earlier.churn_ops,
            evicted: self.evicted - earlier.evicted,
            abrupt_drops: self.abrupt_drops - earlier.abrupt_drops,
            abrupt_early: self.abrupt_early - earlier.abrupt_early,
            abrupt_lost: self.abrupt_lost - earlier.abrupt_lost,
            send_busy_ns: self.send_busy_ns - earlier.send_busy_ns,
            churn_busy_ns: self.churn_busy_ns - earlier.churn_busy_ns,
            receive_busy_ns: self.receive_busy_ns - earlier.receive_busy_ns,
            receive_polls: self.receive_polls - earlier.receive_polls,
        }
    }

    /// `self` and `other` added up.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            broadcasts: self.broadcasts + other.broadcasts,
            recipients: self.recipients + other.recipients,
            delivered: self.delivered + other.delivered,
            dropped: self.dropped + other.dropped,
            closed: self.closed + other.closed,
            disconnected: self.disconnected + other.disconnected,
            directs: self.directs + other.directs,
            direct_ok: self.direct_ok + other.direct_ok,
            direct_closed: self.direct_closed + other.direct_closed,
            received: self.received + other.received,
            churn_ops: self.churn_ops + other.churn_ops,
            evicted: self.evicted + other.evicted,
            abrupt_drops: self.abrupt_drops + other.abrupt_drops,
            abrupt_early: self.abrupt_early + other.abrupt_early,
            abrupt_lost: self.abrupt_lost + other.abrupt_lost,
            send_busy_ns: self.send_busy_ns + other.send_busy_ns,
            churn_busy_ns: self.churn_busy_ns + other.churn_busy_ns,
            receive_busy_ns: self.receive_busy_ns + other.receive_busy_ns,
            receive_polls: self.receive_polls + other.receive_polls,
        }
    }

    /// Messages queued, by broadcasts and direct sends together.
    pub fn queued(&self) -> u64 {
        self.delivered + self.direct_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_accumulate_and_differences_subtract() {
        let t = Tally::default();
        let o = Outcome {
            recipients: 3,
            delivered: 2,
            dropped: 1,
            ..Outcome::default()
        };
        t.broadcast(&o);
        let first = t.snapshot();
        t.broadcast(&o);
        t.direct_ok.add(4);
        let delta = t.snapshot().since(&first);
        assert_eq!(
            (delta.broadcasts, delta.recipients, delta.queued()),
            (1, 3, 6)
        );
        assert_eq!(first.plus(&delta), t.snapshot());
    }
}
