//! Gap counting: each node numbers its publications per session, and a receiver
//! counts the numbers it never saw.
//!
//! A gap is seen when a later number arrives, so the count is exact for every
//! missed number that something followed. What it cannot see (pub/sub is
//! at-most-once): numbers at the end of a stream that nothing followed, and
//! numbers before the first one a receiver hears. A message the sending node never
//! took (its caller's connection closed before the server read it) was never
//! numbered, so it is not a gap either.
//!
//! Frames come from Redis, where any client can publish, so what they can make
//! this tracker hold is bounded: at most [`MAX_NODES`] sending nodes (the one
//! heard from least recently makes room for a new one), and sessions per node only
//! among those this node is subscribed to. A number more than [`MAX_JUMP`] past
//! the last one is no loss a publisher could cause; it is refused, so that one
//! forged frame can neither inflate the count nor stall the stream behind it.

use std::collections::HashMap;

use crate::SessionId;

/// Sending nodes tracked at most: node ids come from frames anyone with access to
/// Redis can publish.
pub(crate) const MAX_NODES: usize = 1024;

/// The largest believable jump: 2^32 publications lost in one gap is over an hour
/// at a million failed publications a second.
pub(crate) const MAX_JUMP: u64 = 1 << 32;

/// What a received number says about the stream it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The first number seen from this node in this session; nothing to compare.
    First,
    /// The next number, after `missed` that never arrived.
    Next { missed: u64 },
    /// A number at or below one already seen.
    Stale,
    /// A number more than [`MAX_JUMP`] ahead: forged or corrupt, not tracked.
    Implausible,
}

/// One sending node's streams.
#[derive(Debug)]
struct Sender {
    /// When this node was last heard from, in observations; for eviction.
    heard: u64,
    last: HashMap<SessionId, u64>,
}

/// The last number seen per (sending node, session). The task that reads
/// publications updates it; the subscription task forgets sessions it leaves.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    /// Per sending node, per session: nested so that a lookup borrows the node id.
    last: HashMap<String, Sender>,
    /// Observations so far: the clock of `Sender::heard`.
    ticks: u64,
}

impl GapTracker {
    pub(crate) fn observe(&mut self, node: &str, session: &SessionId, seq: u64) -> Seen {
        self.ticks += 1;
        // Two lookups on the path every publication takes; a node's first costs more.
        if let Some(sender) = self.last.get_mut(node) {
            sender.heard = self.ticks;
            return match sender.last.get_mut(session) {
                None => {
                    sender.last.insert(session.clone(), seq);
                    Seen::First
                }
                Some(last) if seq > *last && seq - *last > MAX_JUMP => Seen::Implausible,
                Some(last) if seq > *last => {
                    let missed = seq - *last - 1;
                    *last = seq;
                    Seen::Next { missed }
                }
                Some(_) => Seen::Stale,
            };
        }
        if self.last.len() >= MAX_NODES {
            self.evict_oldest();
        }
        let sender = Sender {
            heard: self.ticks,
            last: HashMap::from([(session.clone(), seq)]),
        };
        self.last.insert(node.to_owned(), sender);
        Seen::First
    }

    /// Makes room for a new node: linear, but only when a new node arrives while
    /// [`MAX_NODES`] are tracked.
    fn evict_oldest(&mut self) {
        let oldest = self
            .last
            .iter()
            .min_by_key(|(_, s)| s.heard)
            .map(|(node, _)| node.clone());
        if let Some(node) = oldest {
            self.last.remove(&node);
        }
    }

    /// Forgets a session this node unsubscribed from: what others publish while it
    /// is away is not a gap.
    pub(crate) fn forget_session(&mut self, session: &SessionId) {
        for sender in self.last.values_mut() {
            sender.last.remove(session);
        }
    }

    /// Forgets a node that went down.
    pub(crate) fn forget_node(&mut self, node: &str) {
        self.last.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_the_missing_numbers() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 5), Seen::First);
        assert_eq!(g.observe("a", &s, 6), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 10), Seen::Next { missed: 3 });
        assert_eq!(g.observe("a", &s, 9), Seen::Stale);
        assert_eq!(g.observe("b", &s, 1), Seen::First);
        g.forget_session(&s);
        assert_eq!(g.observe("a", &s, 20), Seen::First);
    }

    #[test]
    fn a_forged_jump_neither_counts_nor_poisons_the_stream() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1), Seen::First);
        let jump = g.observe("a", &s, u64::MAX);
        assert!(!matches!(jump, Seen::Next { .. }), "{jump:?}");
        assert_eq!(g.observe("a", &s, 2), Seen::Next { missed: 0 });
    }

    #[test]
    fn forged_node_ids_are_bounded() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("real", &s, 1), Seen::First);
        for i in 0..10 * MAX_NODES {
            g.observe(&format!("forged-{i}"), &s, 1);
            // The real node keeps publishing through the flood.
            g.observe("real", &s, 2 + i as u64);
        }
        assert!(g.last.len() <= MAX_NODES, "{} nodes tracked", g.last.len());
        let next = 2 + 10 * MAX_NODES as u64;
        assert_eq!(g.observe("real", &s, next + 1), Seen::Next { missed: 1 });
    }
}
