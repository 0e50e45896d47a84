//! Loss accounting. Each session has one publisher, which numbers its messages from 0;
//! every other member that joined must receive every one of them, in order. A client
//! that got fewer lost the difference.

/// What one client saw of its session's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Messages received in sequence (each one after the last).
    pub received: u64,
    /// Messages whose number was not above the last one received: repeats or reordering.
    pub out_of_order: u64,
    /// The next number expected.
    next: u64,
}

impl Seen {
    /// Records message number `seq`.
    pub fn record(&mut self, seq: u64) {
        if seq >= self.next {
            self.received += 1;
            self.next = seq + 1;
        } else {
            self.out_of_order += 1;
        }
    }
}

/// One client at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its session.
    pub session: usize,
    /// Whether it was the session's publisher (which receives nothing of its own).
    pub publisher: bool,
    /// Whether it joined the session; one that never did expects nothing.
    pub joined: bool,
    /// Messages it received in order.
    pub received: u64,
}

/// Messages expected and lost over all clients, given what each session's publisher
/// actually sent (`sent[session]`).
pub fn account(members: &[Member], sent: &[u64]) -> (u64, u64) {
    let mut expected = 0;
    let mut lost = 0;
    for m in members.iter().filter(|m| m.joined && !m.publisher) {
        let want = sent.get(m.session).copied().unwrap_or(0);
        expected += want;
        lost += want.saturating_sub(m.received);
    }
    (expected, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: usize, publisher: bool, received: u64) -> Member {
        Member {
            session,
            publisher,
            joined: true,
            received,
        }
    }

    #[test]
    fn every_member_but_the_publisher_expects_every_message() {
        let members = [
            member(0, true, 0),
            member(0, false, 5),
            member(0, false, 3),
            member(1, true, 0),
            member(1, false, 2),
            Member {
                joined: false,
                ..member(1, false, 0)
            },
        ];
        assert_eq!(account(&members, &[5, 2]), (12, 2));
        assert_eq!(account(&members, &[0, 0]), (0, 0));
    }

    #[test]
    fn gaps_count_as_missing_and_repeats_as_out_of_order() {
        let mut seen = Seen::default();
        for seq in [0, 1, 3, 3, 2, 4] {
            seen.record(seq);
        }
        assert_eq!(seen.received, 4, "0, 1, 3 and 4; 2 came late");
        assert_eq!(seen.out_of_order, 2);
        let (_, lost) = account(&[member(0, false, seen.received)], &[5]);
        assert_eq!(lost, 1);
    }
}
