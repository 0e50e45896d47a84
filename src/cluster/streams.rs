//! The publisher's numbering: one stream per session it publishes to, each with
//! an epoch and the last number handed out, in a table of bounded size.
//!
//! Receivers count a gap when a stream's number jumps and drop a number at or
//! below one they saw (`gaps.rs`), so a publisher that forgot a stream and
//! numbered it from 1 again would have its publications dropped as stale. A
//! stream made again therefore gets a new epoch, carried in every frame, and a
//! receiver that sees a new epoch starts that stream over.
//!
//! The table holds two generations: the streams used since the last turnover,
//! and those used in the one before. A stream that is used moves to the current
//! generation; when the current one is full, the older one is dropped and the
//! current one becomes the older. So the table holds at most `max` streams, finds
//! one in one lookup (two after a turnover), and forgets a stream only after at
//! least `max / 2` other sessions were published to since its last publication.
//!
//! What forgetting costs: numbers lost at the end of the forgotten epoch, which
//! nothing in that epoch followed, are not counted as gaps, like the end of any
//! stream (pub/sub is at-most-once; see `gaps.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use fred::bytes_utils::Str;

use crate::SessionId;

/// A session this node publishes to: its channel, built once, its epoch and last
/// number, and its group in the batch being numbered (`publisher.rs`), as the
/// batch's count and the group's index.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) channel: Str,
    pub(crate) epoch: u32,
    pub(crate) seq: u64,
    pub(crate) slot: Option<(u64, u16)>,
}

/// This node's own sessions, looked up once per publication: foldhash (seeded per
/// map), where SipHash cost about 300 instructions a lookup.
type Map = HashMap<SessionId, Stream, foldhash::fast::RandomState>;

/// The streams this node numbers, at most `max` of them.
#[derive(Debug)]
pub(crate) struct Streams {
    current: Map,
    older: Map,
    /// Streams per generation, at most.
    half: usize,
    /// The epoch the next new stream gets. It starts at random, so that a
    /// process restarted under the same id does not repeat the epochs its last
    /// run used: receivers that missed its node-down still hold those.
    next_epoch: u32,
}

impl Streams {
    /// A table of at most `max` streams (at least two).
    pub(crate) fn new(max: usize) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Self {
            current: Map::default(),
            older: Map::default(),
            half: (max / 2).max(1),
            // Truncation keeps 32 of the hash's random bits.
            next_epoch: h.finish() as u32,
        }
    }

    /// The session's stream, if it was used in the current generation: the
    /// common case, one lookup.
    pub(crate) fn get_mut(&mut self, session: &SessionId) -> Option<&mut Stream> {
        self.current.get_mut(session)
    }

    /// The session's stream, moved into the current generation, or a new one in a
    /// new epoch; `channel` names the channel of a new one. For a session
    /// [`get_mut`](Self::get_mut) did not find.
    pub(crate) fn admit(
        &mut self,
        session: &SessionId,
        channel: impl FnOnce() -> Str,
    ) -> &mut Stream {
        let stream = match self.older.remove(session) {
            Some(s) => s,
            None => {
                let epoch = self.next_epoch;
                self.next_epoch = epoch.wrapping_add(1);
                Stream {
                    channel: channel(),
                    epoch,
                    seq: 0,
                    slot: None,
                }
            }
        };
        if self.current.len() >= self.half {
            // Turnover: what was not used for a whole generation goes; the
            // dropped map's allocation is kept for the next one.
            std::mem::swap(&mut self.current, &mut self.older);
            self.current.clear();
        }
        self.current.entry(session.clone()).or_insert(stream)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(t: &mut Streams, s: &SessionId) -> (u32, u64) {
        let stream = match t.get_mut(s) {
            Some(st) => st,
            None => t.admit(s, || Str::from("c")),
        };
        stream.seq += 1;
        (stream.epoch, stream.seq)
    }

    #[test]
    fn the_table_stays_within_its_bound() {
        let mut t = Streams::new(8);
        for i in 0..10_000u64 {
            number(&mut t, &SessionId::from(i));
            assert!(t.len() <= 8, "{} streams after {i}", t.len());
        }
    }

    #[test]
    fn a_stream_in_use_keeps_its_numbering_and_a_forgotten_one_gets_a_new_epoch() {
        let mut t = Streams::new(8);
        let hot = SessionId::from("hot");
        let (epoch, _) = number(&mut t, &hot);
        for i in 0..1000u64 {
            number(&mut t, &SessionId::from(i));
            // Used at least once per generation: never forgotten.
            assert_eq!(number(&mut t, &hot), (epoch, i + 2), "after {i}");
        }
        let cold = SessionId::from("cold");
        let (first, _) = number(&mut t, &cold);
        for i in 0..8u64 {
            number(&mut t, &SessionId::from(i + 10_000));
        }
        let (again, seq) = number(&mut t, &cold);
        assert_ne!(again, first, "a stream made again must not reuse its epoch");
        assert_eq!(seq, 1);
    }
}
