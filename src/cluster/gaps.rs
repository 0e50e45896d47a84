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
//! A receiver that leaves a session (its last local member left) forgets the
//! session's streams: what is published while it is away is not a gap, and the
//! first number it hears after it joins again is a first one. The forget comes
//! after every frame Redis sent it before the unsubscribe and before any of a
//! later subscription (`inbound.rs`, `subscription.rs`); a frame from before,
//! handled after it, would set the stream up again at its old number and turn
//! everything published while the node was away into gaps.
//!
//! Frames come from Redis, where any client can publish, so what they can make
//! this tracker hold is bounded: at most [`MAX_NODES`] sending nodes (the one
//! heard from least recently makes room for a new one), and at most
//! [`MAX_STREAMS`] streams over all of them (past it, the node with the most
//! streams is forgotten: a flood of forged ones, or a sender whose streams then
//! start over, uncounted, at their next number), each with at most one pending
//! jump (below).
//!
//! What one forged frame can do to a stream it names (a real node's id and epoch):
//!
//! * Numbered exactly next (its first number one past the last seen), it is
//!   indistinguishable from the real one: it takes its numbers, and the real
//!   frames with those numbers (at most a bundle's, [`MAX_BUNDLE`]) are dropped as
//!   stale.
//! * Numbered further ahead (a jump), it never makes a real frame stale: a jump
//!   is held as *pending*, beside the last number, until the next frame of the
//!   stream says what it was. A frame numbered past the pending jump follows it:
//!   the jump is believed, and its gaps counted if they were not yet. A frame that
//!   continues from the last number instead refutes it: the pending frame was no
//!   publication of that node, and [`GapTracker::take_refuted`] counts its
//!   numbers (as malformed). A jump that misses at most [`COUNTED_AT_ONCE`]
//!   numbers is counted when it arrives, so one forged frame can add at most that
//!   many gaps; a larger one only once a later frame follows it, so a forged one
//!   adds none. A number more than [`MAX_JUMP`] past is no loss a publisher could
//!   cause, and is refused outright.
//! * The first frame heard of a stream (this node just joined, or forgot the
//!   sender) has nothing before it to be a jump from. Until a later frame follows
//!   it, a frame numbered below it starts the stream over and its numbers count
//!   as refuted: one forged far ahead makes no real frame stale either.
//!
//! A pending frame is delivered when it arrives, believed or not: frames are not
//! authenticated, and a jump is what the first publication after an outage looks
//! like, which must not wait for the next one. Counting stays exact for real
//! jumps (numbers that failed to publish, in an outage of any length) except
//! where nothing follows the jump: a jump of more than [`COUNTED_AT_ONCE`] at the
//! very end of a stream goes uncounted, like the stream's tail. A forged new epoch
//! restarts a stream, and a gap across it goes uncounted: the frames are not
//! authenticated (see the README on Redis ACLs).
//!
//! [`MAX_BUNDLE`]: super::envelope::MAX_BUNDLE

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

/// The most numbers a jump may miss and be counted when it arrives; a larger
/// jump is counted once a later frame follows it. About two of a publisher's
/// batches (512 each), so that the failures of a short Redis outage are counted
/// at once; it is also what one forged frame can add to the count.
pub(crate) const COUNTED_AT_ONCE: u64 = 1024;

/// What a received number says about the stream it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The first number seen from this node in this session, or in a new epoch
    /// of it, or one below a first frame nothing followed yet; nothing to compare.
    First,
    /// A later number, to deliver; `missed` gaps to count now: those before it,
    /// or those of a pending jump it follows (see the module docs).
    Next { missed: u64 },
    /// A number at or below one already seen in this epoch (for a run, its
    /// every number), or one of a pending jump's again.
    Stale,
    /// A run whose first `stale` numbers were already seen in this epoch and the
    /// rest not: no publisher writes one, but a replayed bundle would be one.
    Overlap { stale: u64 },
    /// A number more than [`MAX_JUMP`] ahead (of the last one, or of a pending
    /// jump): forged or corrupt, not tracked.
    Implausible,
}

/// One sending node's streams.
#[derive(Debug)]
struct Sender {
    /// When this node was last heard from, in observations; for eviction.
    heard: u64,
    /// Per session, what was heard of its stream.
    last: HashMap<SessionId, Heard>,
}

/// One stream as heard here.
#[derive(Debug, Clone, Copy)]
struct Heard {
    epoch: u32,
    /// The last number of the run of numbers believed so far.
    last: u64,
    /// A jump not yet followed by a later frame: its first and last numbers, both
    /// above `last + 1`.
    pending: Option<(u64, u64)>,
    /// The first number of the stream's first frame, until a later one follows
    /// it: nothing was heard before it to tell a forged one far ahead from the
    /// node's own, so a frame numbered below it starts the stream over rather
    /// than count as stale.
    unconfirmed: Option<u64>,
}

impl Heard {
    fn new(epoch: u32, first: u64, end: u64) -> Self {
        Self {
            epoch,
            last: end,
            pending: None,
            unconfirmed: Some(first),
        }
    }

    /// What `first ..= end` (same epoch) says. Adds the numbers of a refuted
    /// pending jump, or first frame, to `refuted`.
    fn advance(&mut self, first: u64, end: u64, refuted: &mut u64) -> Seen {
        if let Some(f) = self.unconfirmed {
            if first < f {
                // The node numbers in order: the two cannot both be its own, and
                // the later one stands, as the stream's first.
                *refuted += self.last - f + 1;
                *self = Self::new(self.epoch, first, end);
                return Seen::First;
            }
        }
        let seen = self.follow(first, end, refuted);
        if matches!(seen, Seen::Next { .. } | Seen::Overlap { .. }) {
            self.unconfirmed = None;
        }
        seen
    }

    /// [`advance`](Self::advance) past the stream's first frame.
    fn follow(&mut self, first: u64, end: u64, refuted: &mut u64) -> Seen {
        let last = self.last;
        if end <= last {
            return Seen::Stale;
        }
        if first <= last + 1 {
            // Continues the believed run: a pending jump was nothing this node sent.
            if let Some((pf, pe)) = self.pending.take() {
                *refuted += pe - pf + 1;
            }
            self.last = end;
            return match last + 1 - first {
                0 => Seen::Next { missed: 0 },
                stale => Seen::Overlap { stale },
            };
        }
        let mut owed = 0;
        match self.pending {
            Some((pf, pe)) if first >= pf && first <= pe => return Seen::Stale,
            Some((pf, pe)) if first > pe => {
                if first - pe > MAX_JUMP {
                    return Seen::Implausible;
                }
                // A later frame follows the jump: believed.
                let missed = pf - last - 1;
                if missed > COUNTED_AT_ONCE {
                    owed = missed;
                }
                self.last = pe;
                self.pending = None;
                if first == pe + 1 {
                    self.last = end;
                    return Seen::Next { missed: owed };
                }
            }
            Some((pf, pe)) => {
                // Below the jump yet past the run: the two cannot both be the node's
                // (it numbers in order); the later one stands, pending in turn.
                *refuted += pe - pf + 1;
                self.pending = None;
            }
            None => {}
        }
        // A jump from `self.last`, held until a later frame follows it.
        if first - self.last > MAX_JUMP {
            return Seen::Implausible;
        }
        let missed = first - self.last - 1;
        self.pending = Some((first, end));
        let now = if missed <= COUNTED_AT_ONCE { missed } else { 0 };
        Seen::Next { missed: owed + now }
    }
}

/// The last number seen per (sending node, session). The task that reads
/// publications updates it, and forgets the sessions this node left when the
/// subscription lifecycle asks (or the lifecycle does, if that task is gone).
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    /// Per sending node, per session: nested so that a lookup borrows the node id.
    last: HashMap<String, Sender>,
    /// Observations so far: the clock of `Sender::heard`.
    ticks: u64,
    /// Streams held, over every sender.
    streams: usize,
    /// Numbers of pending jumps refuted since [`take_refuted`](Self::take_refuted).
    refuted: u64,
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
                Some(heard) if heard.epoch != epoch => {
                    // A pending jump of the old epoch goes with it, uncounted.
                    *heard = Heard::new(epoch, first, end);
                    return Seen::First;
                }
                Some(heard) => return heard.advance(first, end, &mut self.refuted),
                None if self.streams < MAX_STREAMS => {
                    sender
                        .last
                        .insert(session.clone(), Heard::new(epoch, first, end));
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
        sender
            .last
            .insert(session.clone(), Heard::new(epoch, first, end));
        self.streams += 1;
        Seen::First
    }

    /// The numbers of the pending jumps refuted since the last call: frames
    /// numbered ahead that the next frame of their stream showed were no
    /// publication of their node. Their payloads were delivered.
    pub(crate) fn take_refuted(&mut self) -> u64 {
        std::mem::take(&mut self.refuted)
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
    /// is away is not a gap. Only once every frame heard before the unsubscribe
    /// is observed (see the module docs).
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
        assert_eq!(g.observe("a", &s, 1, 11), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, 9), Seen::Stale);
        assert_eq!(g.take_refuted(), 0);
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
    fn a_forged_jump_within_max_jump_neither_counts_nor_stalls_the_stream() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1, 1), Seen::First);
        // Plausible by MAX_JUMP, but nothing follows it: the genuine next number does.
        let forged = g.observe("a", &s, 1, 1 << 32);
        assert_eq!(forged, Seen::Next { missed: 0 }, "no gap counted for it");
        assert_eq!(g.observe("a", &s, 1, 2), Seen::Next { missed: 0 });
        assert_eq!(g.take_refuted(), 1, "the forged number is counted");
        assert_eq!(g.observe("a", &s, 1, 3), Seen::Next { missed: 0 });
        // A jump just past what is counted at once behaves the same.
        let forged = g.observe("a", &s, 1, 3 + COUNTED_AT_ONCE + 2);
        assert_eq!(forged, Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, 4), Seen::Next { missed: 0 });
        // A forged bundle, a replay of its numbers, then a real frame with a gap
        // below it: the bundle is refuted, the real jump pending in its place.
        assert_eq!(
            g.observe_run("a", &s, 1, 1 << 31, 3),
            Seen::Next { missed: 0 }
        );
        assert_eq!(g.observe("a", &s, 1, (1 << 31) + 1), Seen::Stale);
        assert_eq!(g.observe("a", &s, 1, 6), Seen::Next { missed: 1 });
        assert_eq!(g.take_refuted(), 1 + 3);
        assert_eq!(g.observe("a", &s, 1, 7), Seen::Next { missed: 0 });
        // Still refused outright: a number no outage could reach, also past a
        // pending jump.
        assert_eq!(g.observe("a", &s, 1, u64::MAX), Seen::Implausible);
        assert_eq!(g.observe("a", &s, 1, 1 << 20), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, u64::MAX), Seen::Implausible);
        assert_eq!(g.observe("a", &s, 1, 8), Seen::Next { missed: 0 });
        assert_eq!(g.take_refuted(), 1);
    }

    /// A forged frame numbered ahead makes no real frame stale when it is the
    /// first heard of its stream either (the receiver just joined, or forgot
    /// the sender to make room).
    #[test]
    fn a_forged_first_frame_numbered_ahead_does_not_stall_the_stream() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1, 1 << 31), Seen::First);
        // The node's own frames, from where its numbering is.
        assert_eq!(g.observe("a", &s, 1, 7), Seen::First, "delivered");
        assert_eq!(g.take_refuted(), 1, "the forged number is counted");
        assert_eq!(g.observe("a", &s, 1, 8), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, 10), Seen::Next { missed: 1 });
        assert_eq!(g.observe("a", &s, 1, 11), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 1, 9), Seen::Stale);
        // A real first frame that a later one follows stays, as before.
        let t = SessionId::from("hall");
        assert_eq!(g.observe_run("a", &t, 1, 40, 3), Seen::First);
        assert_eq!(g.observe("a", &t, 1, 41), Seen::Stale);
        assert_eq!(g.observe("a", &t, 1, 43), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &t, 1, 5), Seen::Stale);
        assert_eq!(g.take_refuted(), 0);
    }

    #[test]
    fn a_legitimate_jump_is_counted_exactly_once_a_later_frame_follows_it() {
        let mut g = GapTracker::default();
        let s = SessionId::from("room");
        assert_eq!(g.observe("a", &s, 1, 1), Seen::First);
        // An outage: a million publications failed, then publishing resumes.
        let resumed = 1 + 1_000_000 + 1;
        assert_eq!(g.observe("a", &s, 1, resumed), Seen::Next { missed: 0 });
        assert_eq!(
            g.observe("a", &s, 1, resumed + 1),
            Seen::Next { missed: 1_000_000 }
        );
        assert_eq!(g.observe("a", &s, 1, resumed + 2), Seen::Next { missed: 0 });
        // A second outage, resumed by a bundle, then one more gap of two right after.
        let resumed = resumed + 2 + 5_000 + 1;
        assert_eq!(
            g.observe_run("a", &s, 1, resumed, 3),
            Seen::Next { missed: 0 }
        );
        assert_eq!(
            g.observe("a", &s, 1, resumed + 3 + 2),
            Seen::Next { missed: 5_002 }
        );
        assert_eq!(g.observe("a", &s, 1, resumed + 6), Seen::Next { missed: 0 });
        // Two outages with one publication between: each counted, that one not.
        let between = resumed + 6 + 2_000 + 1;
        assert_eq!(g.observe("a", &s, 1, between), Seen::Next { missed: 0 });
        assert_eq!(
            g.observe("a", &s, 1, between + 3_000 + 1),
            Seen::Next { missed: 2_000 }
        );
        assert_eq!(
            g.observe("a", &s, 1, between + 3_000 + 2),
            Seen::Next { missed: 3_000 }
        );
        assert_eq!(g.take_refuted(), 0);
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
        assert_eq!(g.observe("a", &s, 8, 4), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 8, 2), Seen::Stale);
        // A jump pending when the epoch changes goes with it.
        assert_eq!(g.observe("a", &s, 8, 10_000), Seen::Next { missed: 0 });
        assert_eq!(g.observe("a", &s, 9, 1), Seen::First);
        assert_eq!(g.observe("a", &s, 9, 2), Seen::Next { missed: 0 });
        assert_eq!(g.take_refuted(), 0);
    }
}
