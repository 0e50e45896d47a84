//! Gap counting: each node numbers its publications per session, and a receiver
//! counts the numbers it never saw.
//!
//! A gap is seen when a later number arrives, so the count is exact for every
//! missed number that something followed. What it cannot see (pub/sub is
//! at-most-once): numbers at the end of a stream that nothing followed, and
//! numbers before the first one a receiver hears. A message the sending node never
//! took (its caller's connection closed before the server read it) was never
//! numbered, so it is not a gap either.

use std::collections::HashMap;

use crate::SessionId;

/// What a received number says about the stream it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The first number seen from this node in this session; nothing to compare.
    First,
    /// The next number, after `missed` that never arrived.
    Next { missed: u64 },
    /// A number at or below one already seen.
    Stale,
}

/// The last number seen per (sending node, session). The task that reads
/// publications updates it; the subscription task forgets sessions it leaves.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    /// Per sending node, per session: nested so that a lookup borrows the node id.
    last: HashMap<String, HashMap<SessionId, u64>>,
}

impl GapTracker {
    pub(crate) fn observe(&mut self, node: &str, session: &SessionId, seq: u64) -> Seen {
        // Two lookups on the path every publication takes; a node's first costs more.
        if let Some(sessions) = self.last.get_mut(node) {
            return match sessions.get_mut(session) {
                None => {
                    sessions.insert(session.clone(), seq);
                    Seen::First
                }
                Some(last) if seq > *last => {
                    let missed = seq - *last - 1;
                    *last = seq;
                    Seen::Next { missed }
                }
                Some(_) => Seen::Stale,
            };
        }
        self.last
            .insert(node.to_owned(), HashMap::from([(session.clone(), seq)]));
        Seen::First
    }

    /// Forgets a session this node unsubscribed from: what others publish while it
    /// is away is not a gap.
    pub(crate) fn forget_session(&mut self, session: &SessionId) {
        for sessions in self.last.values_mut() {
            sessions.remove(session);
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
}
