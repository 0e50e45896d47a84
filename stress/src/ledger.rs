//! One client's ledger: the harness's model of what it is attached to, and the rule that
//! decides whether a message it received was allowed to reach it.
//!
//! # The rule, and why it is sound under snapshot semantics
//!
//! Every session has a sequence counter. A broadcast draws its number with an
//! acquire-release `fetch_add(1)` *before* calling the registry; a detach, once the registry
//! has returned, reads the counter with an acquire-release `fetch_add(0)`: the *cut*. Both
//! are read-modify-writes of one atomic, so a broadcast that drew a number `>= cut` drew it
//! after the cut in the counter's modification order, and the cut's release synchronises
//! with its acquire: the detach *happens before* that broadcast read its membership. Such a
//! broadcast must not reach the client. One that drew a smaller number may have read an
//! older snapshot and may legitimately deliver, even after the detach returned.
//!
//! The receiver checks a message against the ledger under the ledger's lock, and the driver
//! holds that lock from before a detach (or unregister) until the cut is recorded, and from
//! before an attach until the attach returns. So a message checked against `Left { cut }`
//! was received before any later re-attach began, and could not owe its delivery to it.
//! Unregistering cuts every attached session and the client's own direct-send counter the
//! same way (a direct message names its target, so only the target's counter orders it).
//!
//! # Membership periods
//!
//! A re-attach starts a new membership period, and must not forgive what arrived between
//! two periods: a message queued while the client was detached may sit in its channel and
//! be received after the re-attach. When an attach begins, the world reads the session's
//! *floor*: the lowest sequence number of a broadcast still in flight (or the counter, if
//! none is). Every broadcast numbered below the floor had returned before the attach began,
//! so one numbered in `[cut, floor)` began after the previous period ended and finished
//! before the next began: it may never reach the client, whenever it is received. Those
//! *gaps* stay in the ledger for the client's life.

use std::fmt;

/// A client's standing in one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Attached, or being attached: any message from the session is allowed.
    Attached,
    /// Detached (or unregistered) once broadcasts had drawn numbers below `cut`.
    Left {
        /// The session counter read after the detach returned.
        cut: u64,
    },
}

/// Whether the client is still registered, and if not, how it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Registered, as far as the harness knows.
    Registered,
    /// The harness unregistered it.
    Unregistered,
    /// Its receiver was dropped mid-run, then it was unregistered.
    Abrupt,
    /// The registry removed it on its own (slow-consumer policy `disconnect`).
    Evicted,
}

/// A message that should not have reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// A broadcast that began after the client left the session reached it.
    AfterLeave {
        /// The session.
        session: u64,
        /// The broadcast's sequence number.
        seq: u64,
        /// The cut taken when it left.
        cut: u64,
    },
    /// A broadcast that began after the client left and returned before it re-attached
    /// reached it: it was queued while the client was not a member.
    BetweenPeriods {
        /// The session.
        session: u64,
        /// The broadcast's sequence number.
        seq: u64,
        /// The gap between the two periods, `[cut, floor)`.
        gap: (u64, u64),
    },
    /// A message from a session the client never joined.
    NeverJoined {
        /// The session.
        session: u64,
    },
    /// A direct send meant for another client.
    Misdelivered {
        /// The client it was meant for.
        target: u64,
    },
    /// A direct send that began after the client was unregistered reached it.
    DirectAfterUnregister {
        /// The send's sequence number.
        seq: u64,
        /// The cut taken when it was unregistered.
        cut: u64,
    },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AfterLeave { session, seq, cut } => write!(
                f,
                "got broadcast #{seq} of session {session}, which began after it left (cut {cut})"
            ),
            Self::BetweenPeriods { session, seq, gap } => write!(
                f,
                "got broadcast #{seq} of session {session}, made while it was detached \
                 (between cut {} and re-attach floor {}) and received after it re-attached",
                gap.0, gap.1
            ),
            Self::NeverJoined { session } => {
                write!(
                    f,
                    "got a broadcast of session {session}, which it never joined"
                )
            }
            Self::Misdelivered { target } => {
                write!(f, "got a direct message meant for client #{target}")
            }
            Self::DirectAfterUnregister { seq, cut } => write!(
                f,
                "got direct message #{seq}, sent after it was unregistered (cut {cut})"
            ),
        }
    }
}

/// The model of one client.
#[derive(Debug)]
pub struct Ledger {
    serial: u64,
    status: Status,
    sessions: Vec<(u64, Membership)>,
    /// Per session, the `[cut, floor)` gaps between membership periods; see the module docs.
    gaps: Vec<(u64, (u64, u64))>,
    direct_cut: Option<u64>,
}

/// What [`Ledger::joining`] changed, for [`Ledger::join_refused`] to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joining {
    before: Option<Membership>,
    added_gap: bool,
}

impl Ledger {
    /// A freshly registered client with harness serial `serial`.
    pub fn new(serial: u64) -> Self {
        Self {
            serial,
            status: Status::Registered,
            sessions: Vec::new(),
            gaps: Vec::new(),
            direct_cut: None,
        }
    }

    /// Whether the harness believes the registry holds this client.
    pub fn is_registered(&self) -> bool {
        self.status == Status::Registered
    }

    /// Sessions the client is attached to.
    pub fn attached(&self) -> impl Iterator<Item = u64> + '_ {
        self.sessions
            .iter()
            .filter(|(_, m)| *m == Membership::Attached)
            .map(|&(s, _)| s)
    }

    /// Whether the client is attached to `session`.
    pub fn is_attached(&self, session: u64) -> bool {
        self.membership(session) == Some(Membership::Attached)
    }

    fn membership(&self, session: u64) -> Option<Membership> {
        self.sessions
            .iter()
            .find(|(s, _)| *s == session)
            .map(|&(_, m)| m)
    }

    fn set(&mut self, session: u64, to: Option<Membership>) {
        let at = self.sessions.iter().position(|(s, _)| *s == session);
        match (at, to) {
            (Some(i), Some(m)) => self.sessions[i].1 = m,
            (Some(i), None) => {
                self.sessions.swap_remove(i);
            }
            (None, Some(m)) => self.sessions.push((session, m)),
            (None, None) => {}
        }
    }

    /// Records an attach about to be made, whose session's floor (see the module docs) was
    /// `floor` when it began; returns what to restore if it fails.
    pub fn joining(&mut self, session: u64, floor: u64) -> Joining {
        let before = self.membership(session);
        let mut added_gap = false;
        if let Some(Membership::Left { cut }) = before {
            if floor > cut {
                self.gaps.push((session, (cut, floor)));
                added_gap = true;
            }
        }
        self.set(session, Some(Membership::Attached));
        Joining { before, added_gap }
    }

    /// Undoes [`joining`](Self::joining) after the registry refused the attach.
    pub fn join_refused(&mut self, session: u64, joining: Joining) {
        if joining.added_gap {
            self.gaps.pop();
        }
        self.set(session, joining.before);
    }

    /// Records a detach that returned, with the cut read after it.
    pub fn left(&mut self, session: u64, cut: u64) {
        self.set(session, Some(Membership::Left { cut }));
    }

    /// Records that the client is gone: every attached session is cut with `cut_of`, and
    /// direct sends with `direct_cut`.
    pub fn gone(&mut self, how: Status, mut cut_of: impl FnMut(u64) -> u64, direct_cut: u64) {
        for (session, membership) in &mut self.sessions {
            if *membership == Membership::Attached {
                *membership = Membership::Left {
                    cut: cut_of(*session),
                };
            }
        }
        self.direct_cut = Some(direct_cut);
        self.status = how;
    }

    /// Whether a message of `session` with number `seq`, for `target`, may reach the client.
    ///
    /// # Errors
    ///
    /// The [`Breach`] it would be.
    pub fn check(&self, session: u64, seq: u64, target: u64) -> Result<(), Breach> {
        if session == crate::message::DIRECT {
            if target != self.serial {
                return Err(Breach::Misdelivered { target });
            }
            return match self.direct_cut {
                Some(cut) if seq >= cut => Err(Breach::DirectAfterUnregister { seq, cut }),
                _ => Ok(()),
            };
        }
        let gap = self
            .gaps
            .iter()
            .find(|(s, (cut, floor))| *s == session && (*cut..*floor).contains(&seq));
        if let Some(&(_, gap)) = gap {
            return Err(Breach::BetweenPeriods { session, seq, gap });
        }
        match self.membership(session) {
            None => Err(Breach::NeverJoined { session }),
            Some(Membership::Attached) => Ok(()),
            Some(Membership::Left { cut }) if seq >= cut => {
                Err(Breach::AfterLeave { session, seq, cut })
            }
            Some(Membership::Left { .. }) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DIRECT, EVERYONE};

    #[test]
    fn broadcasts_before_the_cut_may_arrive_after_the_detach() {
        let mut l = Ledger::new(1);
        l.joining(5, 0);
        assert_eq!(l.check(5, 0, EVERYONE), Ok(()));
        l.left(5, 10);
        assert_eq!(
            l.check(5, 9, EVERYONE),
            Ok(()),
            "began before the detach returned"
        );
        assert_eq!(
            l.check(5, 10, EVERYONE),
            Err(Breach::AfterLeave {
                session: 5,
                seq: 10,
                cut: 10
            })
        );
    }

    #[test]
    fn a_session_never_joined_is_a_breach() {
        let mut l = Ledger::new(1);
        l.joining(5, 0);
        assert_eq!(
            l.check(6, 0, EVERYONE),
            Err(Breach::NeverJoined { session: 6 })
        );
    }

    #[test]
    fn a_refused_attach_restores_the_previous_standing() {
        let mut l = Ledger::new(1);
        l.joining(5, 0);
        l.left(5, 3);
        let before = l.joining(5, 3);
        assert!(l.is_attached(5));
        l.join_refused(5, before);
        assert!(l.check(5, 3, EVERYONE).is_err(), "the old cut is back");
        let fresh = l.joining(8, 0);
        l.join_refused(8, fresh);
        assert_eq!(l.attached().count(), 0);
        assert_eq!(
            l.check(8, 0, EVERYONE),
            Err(Breach::NeverJoined { session: 8 })
        );
    }

    #[test]
    fn reattaching_lifts_the_cut_for_broadcasts_still_in_flight() {
        let mut l = Ledger::new(1);
        l.joining(5, 0);
        l.left(5, 3);
        // Broadcast #3 was still in flight when the re-attach began: it may have read the
        // new membership.
        l.joining(5, 3);
        assert_eq!(l.check(5, 100, EVERYONE), Ok(()));
        assert_eq!(l.check(5, 3, EVERYONE), Ok(()));
    }

    #[test]
    fn a_message_made_between_two_periods_is_a_breach_after_the_reattach() {
        let mut l = Ledger::new(1);
        l.joining(5, 0);
        l.left(5, 3);
        // Broadcasts #3 and #4 began after the cut and returned before the re-attach.
        l.joining(5, 5);
        assert!(l.is_attached(5));
        assert_eq!(l.check(5, 2, EVERYONE), Ok(()), "before the cut");
        assert_eq!(
            l.check(5, 4, EVERYONE),
            Err(Breach::BetweenPeriods {
                session: 5,
                seq: 4,
                gap: (3, 5)
            })
        );
        assert_eq!(
            l.check(5, 5, EVERYONE),
            Ok(()),
            "in flight at the re-attach"
        );
        // A refused re-attach takes its gap back with it.
        l.left(5, 9);
        let joining = l.joining(5, 12);
        l.join_refused(5, joining);
        assert!(
            l.check(5, 10, EVERYONE).is_err(),
            "after the cut of 9 anyway"
        );
        assert_eq!(l.gaps.len(), 1);
    }

    #[test]
    fn going_cuts_every_attached_session_and_direct_sends() {
        let mut l = Ledger::new(7);
        l.joining(1, 0);
        l.joining(2, 0);
        l.left(2, 4);
        l.gone(Status::Unregistered, |s| s * 100, 50);
        assert!(!l.is_registered());
        assert_eq!(l.status, Status::Unregistered);
        assert_eq!(l.check(1, 99, EVERYONE), Ok(()));
        assert!(l.check(1, 100, EVERYONE).is_err());
        assert!(
            l.check(2, 4, EVERYONE).is_err(),
            "an earlier cut is kept, not moved"
        );
        assert_eq!(l.check(DIRECT, 49, 7), Ok(()));
        assert_eq!(
            l.check(DIRECT, 50, 7),
            Err(Breach::DirectAfterUnregister { seq: 50, cut: 50 })
        );
    }

    #[test]
    fn direct_messages_for_someone_else_are_misdelivered() {
        let l = Ledger::new(7);
        assert_eq!(l.check(DIRECT, 0, 7), Ok(()));
        assert_eq!(
            l.check(DIRECT, 0, 8),
            Err(Breach::Misdelivered { target: 8 })
        );
    }
}
