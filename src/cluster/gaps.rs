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
//! A stream is a sending node's numbering of one session in one epoch. A
//! publisher forgets the numbering of sessions it has not published to for a
//! while (`streams.rs`) and numbers them again from 1 in a new epoch; a number in
//! a new epoch starts the stream over here, as a first one, rather than count as
//! stale behind the old epoch's last number.
//!
//! Frames come from Redis, where any client can publish, so what they can make
//! this tracker hold is bounded: at most [`MAX_NODES`] sending nodes (the one
//! heard from least recently makes room for a new one), and at most
//! [`MAX_STREAMS`] streams over all of them (past it, the node with the most
//! streams is forgotten: a flood of forged ones, or a sender whose streams then
//! start over, uncounted, at their next number). A number more than [`MAX_JUMP`]
//! past the last one is no loss a publisher could cause; it is refused, so that
//! one forged frame can neither inflate the count nor stall the stream behind it.
//! A forged new epoch restarts a stream, and a gap across it goes uncounted: the
//! frames are not authenticated (see the README on Redis ACLs).

use std::collections::HashMap;

use crate::SessionId;

/// Sending nodes tracked at most: node ids come from frames anyone with access to
/// Redis can publish.
pub(crate) const MAX_NODES: usize = 1024;

/// Streams tracked at most, over every sending node: about 1,000 sessions on
/// each of 256 nodes.
pub(crate) const MAX_STREAMS: usize = 1 << 18;

/// The largest believable jump: 2^32 publications lost in one gap is over an hour
/// at a million failed publications a second.
pub(crate) const MAX_JUMP: u64 = 1 << 32;

/// What a received number says about the stream it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The first number seen from this node in this session, or in a new epoch
    /// of it; nothing to compare.
    First,
    /// The next number, after `missed` that never arrived.
    Next { missed: u64 },
    /// A number at or below one already seen in this epoch (for a run, its
    /// every number).
    Stale,
    /// A run whose first `stale` numbers were already seen in this epoch and the
    /// rest not: no publisher writes one, but a replayed bundle would be one.
    Overlap { stale: u64 },
    /// A number more than [`MAX_JUMP`] ahead: forged or corrupt, not tracked.
    Implausible,
}

/// One sending node's streams.
#[derive(Debug)]
struct Sender {
    /// When this node was last heard from, in observations; for eviction.
    heard: u64,
    /// Per session, the epoch and the last number seen in it.
    last: HashMap<SessionId, (u32, u64)>,
}

/// The last number seen per (sending node, session). The task that reads
/// publications updates it; the subscription task forgets sessions it leaves.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    /// Per sending node, per session: nested so that a lookup borrows the node id.
    last: HashMap<String, Sender>,
    /// Observations so far: the clock of `Sender::heard`.
    ticks: u64,
    /// Streams held, over every sender.
    streams: usize,
}

impl GapTracker {
    /// One received number.
    #[cfg(test)]
    pub(crate) fn observe(
        &mut self,
        node: &str,
        session: &SessionId,
        epoch: u32,
        seq: u64,
    ) -> Seen {
        self.observe_run(node, session, epoch, seq, 1)
    }

    /// `count` consecutive numbers from `first`, received together (a bundle, or
    /// a single broadcast when `count` is 1): what they say is what they would
    /// say arriving one by one, in order, so a gap is counted per number.
    pub(crate) fn observe_run(
        &mut self,
        node: &str,
        session: &SessionId,
        epoch: u32,
        first: u64,
        count: u64,
    ) -> Seen {
        // The decoder refuses runs past u64::MAX; saturating is only a backstop.
        let end = first.saturating_add(count.max(1) - 1);
        self.ticks += 1;
        // Two lookups on the path every publication takes; a node's first costs more.
        if let Some(sender) = self.last.get_mut(node) {
            sender.heard = self.ticks;
            match sender.last.get_mut(session) {
                Some((e, last)) if *e != epoch => {
                    (*e, *last) = (epoch, end);
                    return Seen::First;
                }
                Some((_, last)) if first > *last && first - *last > MAX_JUMP => {
                    return Seen::Implausible
                }
                Some((_, last)) if first > *last => {
                    let missed = first - *last - 1;
                    *last = end;
                    return Seen::Next { missed };
                }
                Some((_, last)) if end > *last => {
                    let stale = *last - first + 1;
                    *last = end;
                    return Seen::Overlap { stale };
                }
                Some(_) => return Seen::Stale,
                None if self.streams < MAX_STREAMS => {
                    sender.last.insert(session.clone(), (epoch, end));
                    self.streams += 1;
                    return Seen::First;
                }
                None => {}
            }
        }
        if self.streams >= MAX_STREAMS {
            self.evict_largest();
        }
        if !self.last.contains_key(node) && self.last.len() >= MAX_NODES {
            self.evict_oldest();
        }
        let ticks = self.ticks;
        let sender = self.last.entry(node.to_owned()).or_insert_with(|| Sender {
            heard: ticks,
            last: HashMap::new(),
        });
        sender.last.insert(session.clone(), (epoch, end));
        self.streams += 1;
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
            self.forget_node(&node);
        }
    }

    /// Makes room for a new stream: forgets the node with the most, which frees
    /// at least `MAX_STREAMS / MAX_NODES` of them, so this linear pass runs at
    /// most once per 256 new streams.
    fn evict_largest(&mut self) {
        let largest = self
            .last
            .iter()
            .max_by_key(|(_, s)| s.last.len())
            .map(|(node, _)| node.clone());
        if let Some(node) = largest {
            self.forget_node(&node);
        }
    }

    /// Forgets a session this node unsubscribed from: what others publish while it
    /// is away is not a gap.
    pub(crate) fn forget_session(&mut self, session: &SessionId) {
        for sender in self.last.values_mut() {
            if sender.last.remove(session).is_some() {
                self.streams -= 1;
            }
        }
    }

    /// Forgets a node that went down.
    pub(crate) fn forget_node(&mut self, node: &str) {
        if let Some(sender) = self.last.remove(node) {
            self.streams -= sender.last.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_the_missing_numbers() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1, 5), Seen::First);
        assert_eq!(g.observe("a", &s, 1, 6), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, 10), Seen::Next { missed: 3 });
        assert_eq!(g.observe("a", &s, 1, 9), Seen::Stale);
        assert_eq!(g.observe("b", &s, 1, 1), Seen::First);
        g.forget_session(&s);
        assert_eq!(g.observe("a", &s, 1, 20), Seen::First);
    }

    #[test]
    fn a_forged_jump_neither_counts_nor_poisons_the_stream() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1, 1), Seen::First);
        let jump = g.observe("a", &s, 1, u64::MAX);
        assert!(!matches!(jump, Seen::Next { .. }), "{jump:?}");
        assert_eq!(g.observe("a", &s, 1, 2), Seen::Next { missed: 0 });
    }

    #[test]
    fn forged_node_ids_are_bounded() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("real", &s, 1, 1), Seen::First);
        for i in 0..10 * MAX_NODES {
            g.observe(&format!("forged-{i}"), &s, 1, 1);
            // The real node keeps publishing through the flood.
            g.observe("real", &s, 1, 2 + i as u64);
        }
        assert!(g.last.len() <= MAX_NODES, "{} nodes tracked", g.last.len());
        let next = 2 + 10 * MAX_NODES as u64;
        assert_eq!(g.observe("real", &s, 1, next + 1), Seen::Next { missed: 1 });
    }

    #[test]
    fn streams_are_bounded_across_nodes_and_sessions() {
        let mut g = GapTracker::default();
        let room = SessionId::from("room");
        assert_eq!(g.observe("real", &room, 1, 1), Seen::First);
        // A few forged nodes on ever more sessions, while the real node publishes.
        for i in 0..MAX_STREAMS + 1000 {
            let node = ["x", "y", "z"][i % 3];
            g.observe(node, &SessionId::from(i as u64), 1, 1);
            if i % 1000 == 0 {
                let seq = 2 + i as u64 / 1000;
                assert_eq!(g.observe("real", &room, 1, seq), Seen::Next { missed: 0 });
            }
        }
        let held: usize = g.last.values().map(|s| s.last.len()).sum();
        assert!(held <= MAX_STREAMS, "{held} streams tracked");
        assert_eq!(held, g.streams, "the count follows what is held");
        g.forget_session(&room);
        g.forget_node("x");
        let held: usize = g.last.values().map(|s| s.last.len()).sum();
        assert_eq!(held, g.streams);
    }

    #[test]
    fn a_run_counts_as_its_numbers_one_by_one() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe_run("a", &s, 1, 1, 10), Seen::First);
        assert_eq!(g.observe("a", &s, 1, 11), Seen::Next { missed: 0 });
        // A lost bundle of 5 (12..=16): every number of it is a gap.
        assert_eq!(g.observe_run("a", &s, 1, 17, 3), Seen::Next { missed: 5 });
        assert_eq!(g.observe("a", &s, 1, 20), Seen::Next { missed: 0 });
        assert_eq!(g.observe_run("a", &s, 1, 15, 6), Seen::Stale);
        // Replayed with new numbers after it: the old part is stale, the rest taken.
        assert_eq!(g.observe_run("a", &s, 1, 19, 4), Seen::Overlap { stale: 2 });
        assert_eq!(g.observe("a", &s, 1, 23), Seen::Next { missed: 0 });
        assert_eq!(
            g.observe_run("a", &s, 1, 24 + MAX_JUMP, 2),
            Seen::Implausible
        );
        assert_eq!(g.observe_run("a", &s, 2, 1, 4), Seen::First);
        assert_eq!(g.observe("a", &s, 2, 5), Seen::Next { missed: 0 });
    }

    #[test]
    fn a_new_epoch_starts_the_stream_over() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 7, 1), Seen::First);
        assert_eq!(g.observe("a", &s, 7, 500), Seen::Next { missed: 498 });
        // The publisher forgot this numbering and started again at 1.
        assert_eq!(g.observe("a", &s, 8, 1), Seen::First);
        assert_eq!(g.observe("a", &s, 8, 3), Seen::Next { missed: 1 });
        assert_eq!(g.observe("a", &s, 8, 2), Seen::Stale);
    }
}
