//! A client as the harness sees it: its id, how its receiver behaves, and its ledger.

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
        }
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
}
