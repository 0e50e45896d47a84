//! The designs under load, behind [`Contender`] plus the few switchboard-only views the
//! invariant checks use.
//!
//! The baselines come from the `baselines` crate, never copied. Everything generic goes
//! through [`Contender`]; [`Subject`] only adds what switchboard can show and the baselines
//! cannot (its member lists, its own broadcast report with `disconnected`, its counters), with
//! defaults that say "not available".

use baselines::{Contender, DashMapRegistry, MutexRegistry, SwitchboardRegistry};
use switchboard::{Registry, SendError, SlowConsumerPolicy, Stats};

use crate::cli::Policy;
use crate::invariants::Outcome;
use crate::message::Msg;

/// How a direct send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued.
    Delivered,
    /// Refused: full channel, closed channel or unknown id (the baselines cannot say which).
    Refused,
    /// Refused because the channel was closed; switchboard then unregistered the client.
    Closed,
}

/// A registry design the harness can drive and check.
pub trait Subject: Contender<Msg> {
    /// Builds one with the run's channel capacity and policy.
    fn build(capacity: usize, policy: Policy) -> Self;

    /// Broadcast, with the design's own report.
    fn deliver(&self, session: u64, msg: Msg) -> Outcome {
        let f = self.broadcast(session, msg);
        Outcome {
            recipients: f.recipients,
            delivered: f.delivered,
            dropped: f.dropped,
            closed: f.closed,
            disconnected: 0,
        }
    }

    /// Direct send.
    fn direct(&self, id: Self::Id, msg: Msg) -> Sent {
        match self.send(id, msg) {
            Ok(()) => Sent::Delivered,
            Err(_) => Sent::Refused,
        }
    }

    /// The members of `session` as the registry lists them, if it can.
    fn members(&self, _session: u64) -> Option<Vec<Self::Id>> {
        None
    }

    /// Whether the registry still holds `id`, if it can say.
    fn is_online(&self, _id: Self::Id) -> Option<bool> {
        None
    }

    /// Whether this design may unregister clients on its own when its slow-consumer policy is
    /// `disconnect`.
    fn evicts(&self) -> bool {
        false
    }

    /// Whether every recipient a broadcast reports got its own clone of the message (false
    /// for designs that count a member who vanished mid-broadcast as `closed`).
    fn clones_every_recipient(&self) -> bool {
        true
    }

    /// The registry's own delivery counters, if it keeps them.
    fn stats(&self) -> Option<Stats> {
        None
    }

    /// Heap bytes of the channel `rx` drains, counted apart from the registry, for designs
    /// whose receiver keeps more than its channel alive. `None`: a receiver keeps its channel
    /// and nothing else, so what it holds once the registry is dropped is the channel's.
    fn channel_bytes(_rx: &Self::Rx) -> Option<usize> {
        None
    }
}

impl Subject for DashMapRegistry<Msg> {
    fn build(capacity: usize, _policy: Policy) -> Self {
        Self::new(capacity)
    }

    fn clones_every_recipient(&self) -> bool {
        false
    }
}

impl Subject for MutexRegistry<Msg> {
    fn build(capacity: usize, _policy: Policy) -> Self {
        Self::new(capacity)
    }
}

impl Subject for SwitchboardRegistry<Msg> {
    fn build(capacity: usize, policy: Policy) -> Self {
        let policy = match policy {
            Policy::Drop => SlowConsumerPolicy::Drop,
            Policy::Disconnect => SlowConsumerPolicy::Disconnect,
        };
        match Registry::builder()
            .channel_capacity(capacity)
            .slow_consumer(policy)
            .build()
        {
            Ok(registry) => Self::new(registry),
            // clap bounds the capacity to 1..=2^20, which the builder accepts.
            Err(e) => unreachable!("capacity {capacity} passed clap but not the builder: {e}"),
        }
    }

    fn deliver(&self, session: u64, msg: Msg) -> Outcome {
        match self.registry().broadcast(session, msg) {
            Ok(r) => Outcome {
                recipients: r.recipients,
                delivered: r.delivered,
                dropped: r.dropped,
                closed: r.closed,
                disconnected: r.disconnected,
            },
            Err(_) => Outcome::default(),
        }
    }

    /// A receiver keeps its client's whole entry (the channel lives inside it), so the
    /// channel's share is counted directly: the channel struct and its ring, if allocated.
    fn channel_bytes(rx: &Self::Rx) -> Option<usize> {
        Some(switchboard::bench_support::channel_bytes(rx))
    }

    fn direct(&self, id: Self::Id, msg: Msg) -> Sent {
        match self.registry().send(id, msg) {
            Ok(()) => Sent::Delivered,
            Err(SendError::Closed(_)) => Sent::Closed,
            Err(_) => Sent::Refused,
        }
    }

    fn members(&self, session: u64) -> Option<Vec<Self::Id>> {
        Some(self.registry().members(session).unwrap_or_default())
    }

    fn is_online(&self, id: Self::Id) -> Option<bool> {
        Some(self.registry().is_online(id))
    }

    fn evicts(&self) -> bool {
        // Under `SlowConsumerPolicy::Disconnect`. (Clients it unregisters because their channel
        // closed are the harness's own abrupt drops, which the harness unregisters anyway.)
        true
    }

    fn stats(&self) -> Option<Stats> {
        Some(self.registry().stats())
    }
}
