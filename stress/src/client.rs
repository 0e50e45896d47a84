//! A client as the harness sees it: its id, how its receiver behaves, and its ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ledger::Ledger;
use crate::rng::Rng;

/// How a client's receiver task drains its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Takes every message as soon as it arrives; its latencies are recorded.
    Prompt,
    /// Pauses after every message, so its channel fills up.
    Late,
    /// Takes nothing until the client is gone, then drains what was queued.
    Never,
    /// Prompt until `after`, then drops its receiver and unregisters the client.
    Abrupt {
        /// How long after spawning.
        after: Duration,
    },
}

impl Kind {
    /// Draws a kind: `slow` of clients are slow (half late, half never), `abrupt` of them
    /// disconnect abruptly at a uniform time within `window`.
    pub fn draw(rng: &mut Rng, slow: f64, abrupt: f64, window: Duration) -> Self {
        let r = rng.unit();
        if r < slow / 2.0 {
            Self::Late
        } else if r < slow {
            Self::Never
        } else if r < slow + abrupt {
            Self::Abrupt {
                after: window.mul_f64(0.05 + 0.9 * rng.unit()),
            }
        } else {
            Self::Prompt
        }
    }
}

/// One client of one world.
#[derive(Debug)]
pub struct Client<Id> {
    /// The registry's id for it.
    pub id: Id,
    /// The harness's own number for it, unique within a run; direct messages name it.
    pub serial: u64,
    /// How its receiver behaves.
    pub kind: Kind,
    /// What the harness believes about it; see [`Ledger`].
    ledger: Mutex<Ledger>,
    /// Wakes a [`Kind::Never`] receiver once the client is gone, so it drains and ends.
    pub gone: Notify,
    /// The sequence counter of direct sends to this client; see [`ledger`](crate::ledger)
    /// for the protocol. A direct message is checked against its target's ledger only
    /// (one meant for another client is a breach whatever its number), so one counter per
    /// client orders a send after the unregister it must not follow exactly as one
    /// counter for the world did, without a line both workers write on every unregister.
    ///
    /// Ordering: `AcqRel` read-modify-writes only, as for a session's counter.
    direct_seq: AtomicU64,
}

#[cfg(test)]
thread_local! {
    /// Clients made on this thread, for tests of the order things are allocated in.
    pub static MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<Id> Client<Id> {
    /// A freshly registered client.
    pub fn new(id: Id, serial: u64, kind: Kind) -> Self {
        #[cfg(test)]
        MADE.with(|m| m.set(m.get() + 1));
        Self {
            id,
            serial,
            kind,
            ledger: Mutex::new(Ledger::new(serial)),
            gone: Notify::new(),
            direct_seq: AtomicU64::new(0),
        }
    }

    /// Draws the number of a direct send to this client.
    pub fn next_direct(&self) -> u64 {
        // AcqRel RMW: see `direct_seq`.
        self.direct_seq.fetch_add(1, Ordering::AcqRel)
    }

    /// The cut of direct sends, read once the client is gone: a send numbered at or above
    /// it began after the unregister returned.
    pub fn direct_cut(&self) -> u64 {
        // AcqRel RMW: see `direct_seq`.
        self.direct_seq.fetch_add(0, Ordering::AcqRel)
    }

    /// Locks the ledger. Held by drivers across a registry call, and by receivers across a
    /// check; never across an `.await`.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Ledger updates are single assignments; a panicking holder leaves it consistent.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_shares() {
        let mut rng = Rng::new(3, 0);
        let window = Duration::from_secs(10);
        let kinds: Vec<_> = (0..10_000)
            .map(|_| Kind::draw(&mut rng, 0.2, 0.1, window))
            .collect();
        let share = |f: fn(&Kind) -> bool| kinds.iter().filter(|k| f(k)).count() as f64 / 1e4;
        assert!((share(|k| *k == Kind::Late) - 0.1).abs() < 0.02);
        assert!((share(|k| *k == Kind::Never) - 0.1).abs() < 0.02);
        assert!((share(|k| matches!(k, Kind::Abrupt { .. })) - 0.1).abs() < 0.02);
        assert!(kinds.iter().all(|k| match k {
            Kind::Abrupt { after } => *after <= window,
            _ => true,
        }));
        assert_eq!(Kind::draw(&mut rng, 0.0, 0.0, window), Kind::Prompt);
    }

    /// The client's own counter and its ledger together: a send drawn before the cut may
    /// arrive after the unregister, one drawn after it may not.
    #[test]
    fn direct_sends_after_the_cut_are_breaches() {
        use crate::ledger::{Breach, Status};
        use crate::message::DIRECT;

        let client = Client::new(0u32, 9, Kind::Prompt);
        let early: Vec<_> = (0..3).map(|_| client.next_direct()).collect();
        assert_eq!(early, [0, 1, 2]);
        let cut = client.direct_cut();
        client.ledger().gone(Status::Unregistered, |_| 0, cut);
        let late = client.next_direct();
        let ledger = client.ledger();
        assert!(early
            .iter()
            .all(|&seq| ledger.check(DIRECT, seq, 9).is_ok()));
        assert_eq!(
            ledger.check(DIRECT, late, 9),
            Err(Breach::DirectAfterUnregister { seq: late, cut })
        );
    }
}
