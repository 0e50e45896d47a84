//! The invariants, as pure checks, and the list of violations a run collects.
//!
//! Where each check runs:
//!
//! - **Every broadcast and send:** the report adds up ([`outcome_adds_up`]).
//! - **Every receipt:** the client's [`Ledger`](crate::ledger::Ledger) allows it (no message
//!   from a broadcast that began after a detach or unregister returned, none from a session
//!   never joined, no direct message for another client).
//! - **Every checkpoint** (drivers paused): no lost or ghost member
//!   ([`membership_diff`], against `members()` for switchboard), client and session counts
//!   equal the model's, and clients the registry removed on its own are explained by the
//!   slow-consumer policy.
//! - **Teardown:** counts are 0, every receiver task ended, every message handle is accounted
//!   for ([`message_balance`]), every message queued was received or freed by the drop of an
//!   abruptly dropped receiver, counted one by one ([`undelivered_bound`]; the slack left for
//!   a send racing such a drop is printed with its size), and live heap is back within 10 % of
//!   where it started ([`heap_returned`]).

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Heap may end at most this share above (or below) where it started.
pub const HEAP_TOLERANCE: f64 = 0.10;

/// Examples kept word for word per group; the rest are only counted.
const EXAMPLES: usize = 3;
/// Groups kept; violations in further groups are only counted.
const GROUPS: usize = 100;

/// One broken invariant, and what it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Scenario, contender and checkpoint, e.g. `mixed/switchboard/checkpoint 3`.
    pub scope: String,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scope, self.what)
    }
}

/// Violations of one kind in one place: same scope, checkpoint numbers aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The scope, with `checkpoint N` written `checkpoint`.
    pub scope: String,
    /// Violations in the group.
    pub count: u64,
    /// The first few, word for word.
    pub examples: Vec<Violation>,
}

/// The group a scope belongs to.
fn group_of(scope: &str) -> String {
    scope
        .split('/')
        .map(|part| {
            if part.starts_with("checkpoint ") {
                "checkpoint"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Violations found so far, shared by every task.
#[derive(Debug, Default)]
pub struct Violations {
    kept: Mutex<Vec<Group>>,
    /// Ordering: `Relaxed`; a count read after the tasks that bumped it were joined.
    total: AtomicU64,
    /// Checks evaluated, for the report. `Relaxed`, as above.
    checks: AtomicU64,
}

impl Violations {
    /// Records a violation.
    pub fn push(&self, scope: impl Into<String>, what: impl Into<String>) {
        // Relaxed: see `total`.
        self.total.fetch_add(1, Ordering::Relaxed);
        let scope = scope.into();
        let key = group_of(&scope);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match kept.iter().position(|g| g.scope == key) {
            Some(at) => at,
            None if kept.len() < GROUPS => {
                kept.push(Group {
                    scope: key,
                    count: 0,
                    examples: Vec::new(),
                });
                kept.len() - 1
            }
            None => return,
        };
        let group = &mut kept[at];
        group.count += 1;
        if group.examples.len() < EXAMPLES {
            group.examples.push(Violation {
                scope,
                what: what.into(),
            });
        }
    }

    /// Counts `n` checks that were evaluated (passed or not).
    pub fn checked(&self, n: u64) {
        // Relaxed: see `checks`.
        self.checks.fetch_add(n, Ordering::Relaxed);
    }

    /// Evaluates `ok`, recording `what` under `scope` when it is false.
    pub fn expect(&self, ok: bool, scope: &str, what: impl FnOnce() -> String) -> bool {
        self.checked(1);
        if !ok {
            self.push(scope, what());
        }
        ok
    }

    /// Violations recorded.
    pub fn total(&self) -> u64 {
        // Relaxed: see `total`.
        self.total.load(Ordering::Relaxed)
    }

    /// Checks evaluated.
    pub fn checks(&self) -> u64 {
        // Relaxed: see `checks`.
        self.checks.load(Ordering::Relaxed)
    }

    /// The violations, grouped, with a few examples each.
    pub fn groups(&self) -> Vec<Group> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Panics seen anywhere in the process (registry code included), each a violation.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes every panic, on any thread, a violation as well as the usual message.
pub fn record_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let mut panics = PANICS.lock().unwrap_or_else(PoisonError::into_inner);
        panics.push(format!("{what}{at}"));
        // The first few in full; the rest are in the report.
        if panics.len() <= 3 {
            drop(panics);
            default(info);
        }
    }));
}

impl Violations {
    /// Turns the panics recorded so far into violations.
    pub fn collect_panics(&self) {
        let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(PoisonError::into_inner));
        for p in panics {
            self.push("panic", format!("a thread panicked: {p}"));
        }
    }
}

/// The counts of one broadcast, whichever design made it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Members the broadcast addressed.
    pub recipients: usize,
    /// Queued.
    pub delivered: usize,
    /// Skipped: channel full.
    pub dropped: usize,
    /// Channel closed, or member gone mid-broadcast.
    pub closed: usize,
    /// Unregistered by the slow-consumer policy (switchboard only).
    pub disconnected: usize,
}

/// `delivered + dropped + closed + disconnected == recipients`.
pub fn outcome_adds_up(o: &Outcome) -> bool {
    o.delivered + o.dropped + o.closed + o.disconnected == o.recipients
}

/// How a session's members differ from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<Id> {
    /// In the model, not in the registry: lost members.
    pub missing: Vec<Id>,
    /// In the registry, not in the model: ghosts.
    pub extra: Vec<Id>,
    /// Listed by the registry more than once.
    pub duplicated: Vec<Id>,
}

impl<Id> Diff<Id> {
    /// No difference.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.duplicated.is_empty()
    }
}

/// Compares the registry's member list with the model's member set.
pub fn membership_diff<Id: Copy + Eq + Hash>(expected: &HashSet<Id>, actual: &[Id]) -> Diff<Id> {
    let mut seen = HashSet::with_capacity(actual.len());
    let mut diff = Diff {
        missing: Vec::new(),
        extra: Vec::new(),
        duplicated: Vec::new(),
    };
    for &id in actual {
        if !seen.insert(id) {
            diff.duplicated.push(id);
        } else if !expected.contains(&id) {
            diff.extra.push(id);
        }
    }
    diff.missing = expected
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    diff
}

/// Message handles made and ended over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Broadcast calls (each made one original handle).
    pub broadcasts: u64,
    /// Direct send calls (each sent its one handle).
    pub directs: u64,
    /// Recipients over all broadcast reports (each got one clone).
    pub recipients: u64,
    /// Handles received by a receiver.
    pub received: u64,
    /// Handles dropped unreceived.
    pub discarded: u64,
    /// Recipients that may have been counted without a clone: a baseline that finds a member
    /// gone between reading the member list and sending counts it as `closed` without
    /// cloning. Zero for designs that clone for every recipient they report.
    pub uncloned_max: u64,
}

/// Every handle is either received or discarded, and broadcasts made exactly one clone per
/// reported recipient: `received + discarded == broadcasts + directs + recipients`, less up to
/// `uncloned_max`.
///
/// # Errors
///
/// A description of the imbalance.
pub fn message_balance(b: &Balance) -> Result<(), String> {
    let made = b.broadcasts + b.directs + b.recipients;
    let ended = b.received + b.discarded;
    if ended <= made && made - ended <= b.uncloned_max {
        Ok(())
    } else {
        Err(format!(
            "{made} message handles made ({} broadcast originals + {} direct + {} recipient \
             clones) but {ended} ended ({} received + {} discarded)",
            b.broadcasts, b.directs, b.recipients, b.received, b.discarded
        ))
    }
}

/// Messages queued but never received, against what the harness can account for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// Queued (`delivered` by broadcasts, plus accepted direct sends).
    pub queued: u64,
    /// Taken by receivers.
    pub received: u64,
    /// Freed, unreceived, by the drop of an abruptly dropped receiver: counted one by one
    /// as the drop freed them, so no slack is needed for them.
    pub abrupt_lost: u64,
    /// Receivers dropped abruptly.
    pub abrupt_drops: u64,
    /// Channel capacity.
    pub capacity: u64,
}

impl Loss {
    /// Queued, not received, and not freed by an abrupt drop: 0 unless a send was between
    /// taking its permit and writing its message when a receiver was dropped, so that the
    /// message was freed later, with the channel.
    pub fn residual(&self) -> u64 {
        self.queued
            .saturating_sub(self.received)
            .saturating_sub(self.abrupt_lost)
    }

    /// The slack the residual is allowed: 0 without abrupt drops, otherwise one channel's
    /// worth per abrupt drop (a sound bound; the residual is printed beside it).
    pub fn slack(&self) -> u64 {
        self.abrupt_drops * self.capacity
    }
}

/// Every queued message was received or freed by an abrupt drop; what is left over is
/// within [`Loss::slack`] (exactly 0 when nothing was dropped abruptly).
///
/// # Errors
///
/// A description of the excess.
pub fn undelivered_bound(loss: &Loss) -> Result<(), String> {
    let accounted = loss.received + loss.abrupt_lost;
    if accounted > loss.queued {
        return Err(format!(
            "receivers got {} messages and abrupt drops freed {} but only {} were queued",
            loss.received, loss.abrupt_lost, loss.queued
        ));
    }
    let residual = loss.residual();
    if residual > loss.slack() {
        return Err(format!(
            "{residual} queued messages were neither received nor freed by one of the {} \
             abrupt drops (slack {})",
            loss.abrupt_drops,
            loss.slack()
        ));
    }
    Ok(())
}

/// Live heap back within [`HEAP_TOLERANCE`] of where it started.
///
/// # Errors
///
/// A description of the difference.
pub fn heap_returned(start: i64, end: i64) -> Result<(), String> {
    let allowed = (start.max(0) as f64 * HEAP_TOLERANCE) as i64;
    if (end - start).abs() <= allowed {
        Ok(())
    } else {
        Err(format!(
            "live heap {} after teardown, started at {} (allowed ±{})",
            bytes(end),
            bytes(start),
            bytes(allowed)
        ))
    }
}

/// Bytes with a binary-prefixed unit.
pub fn bytes(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let v = n.unsigned_abs() as f64;
    if v >= (1u64 << 30) as f64 {
        format!("{sign}{:.2} GiB", v / (1u64 << 30) as f64)
    } else if v >= (1u64 << 20) as f64 {
        format!("{sign}{:.1} MiB", v / (1u64 << 20) as f64)
    } else if v >= 1024.0 {
        format!("{sign}{:.1} KiB", v / 1024.0)
    } else {
        format!("{sign}{v} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_must_add_up() {
        let ok = Outcome {
            recipients: 5,
            delivered: 2,
            dropped: 1,
            closed: 1,
            disconnected: 1,
        };
        assert!(outcome_adds_up(&ok));
        assert!(!outcome_adds_up(&Outcome {
            recipients: 6,
            ..ok
        }));
    }

    #[test]
    fn membership_diff_names_lost_ghost_and_duplicated_members() {
        let expected: HashSet<u32> = [1, 2, 3].into_iter().collect();
        assert!(membership_diff(&expected, &[3, 1, 2]).is_empty());
        let diff = membership_diff(&expected, &[1, 4, 1]);
        let mut missing = diff.missing.clone();
        missing.sort_unstable();
        assert_eq!(missing, [2, 3]);
        assert_eq!(diff.extra, [4]);
        assert_eq!(diff.duplicated, [1]);
    }

    #[test]
    fn message_balance_catches_leaks_and_double_sends() {
        let b = Balance {
            broadcasts: 10,
            directs: 5,
            recipients: 100,
            received: 90,
            discarded: 25,
            uncloned_max: 0,
        };
        assert!(message_balance(&b).is_ok());
        assert!(message_balance(&Balance { discarded: 24, ..b }).is_err());
        assert!(message_balance(&Balance {
            recipients: 101,
            ..b
        })
        .is_err());
        let vanished = Balance {
            recipients: 101,
            uncloned_max: 1,
            ..b
        };
        assert!(message_balance(&vanished).is_ok());
        assert!(message_balance(&Balance {
            discarded: 27,
            ..vanished
        })
        .is_err());
        assert!(message_balance(&Balance {
            discarded: 23,
            ..vanished
        })
        .is_err());
    }

    #[test]
    fn every_queued_message_is_received_or_freed_by_an_abrupt_drop() {
        let exact = Loss {
            queued: 100,
            received: 100,
            ..Loss::default()
        };
        assert!(undelivered_bound(&exact).is_ok());
        assert!(
            undelivered_bound(&Loss {
                received: 99,
                ..exact
            })
            .is_err(),
            "no abrupt drop: no slack"
        );
        let abrupt = Loss {
            queued: 100,
            received: 60,
            abrupt_lost: 40,
            abrupt_drops: 2,
            capacity: 32,
        };
        assert!(undelivered_bound(&abrupt).is_ok());
        assert_eq!(abrupt.residual(), 0);
        let raced = Loss {
            abrupt_lost: 39,
            ..abrupt
        };
        assert_eq!(raced.residual(), 1);
        assert!(
            undelivered_bound(&raced).is_ok(),
            "within the printed slack"
        );
        assert!(undelivered_bound(&Loss {
            abrupt_lost: 0,
            received: 30,
            ..abrupt
        })
        .is_err());
        assert!(undelivered_bound(&Loss {
            received: 101,
            ..exact
        })
        .is_err());
    }

    #[test]
    fn heap_within_ten_percent() {
        assert!(heap_returned(1_000_000, 1_090_000).is_ok());
        assert!(heap_returned(1_000_000, 910_000).is_ok());
        assert!(heap_returned(1_000_000, 1_200_000).is_err());
    }

    #[test]
    fn violations_are_grouped_and_counted_beyond_those_kept() {
        let v = Violations::default();
        for i in 0..10 {
            v.push(format!("mixed/sb/checkpoint {i}"), format!("v{i}"));
        }
        v.push("mixed/sb/receipt", "late message");
        assert_eq!(v.total(), 11);
        let groups = v.groups();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].scope, "mixed/sb/checkpoint");
        assert_eq!(groups[0].count, 10);
        assert_eq!(groups[0].examples.len(), EXAMPLES);
        assert_eq!(groups[0].examples[1].scope, "mixed/sb/checkpoint 1");
        assert_eq!(groups[1].count, 1);
        assert!(v.expect(true, "s", String::new));
        assert!(!v.expect(false, "s", || "boom".into()));
        assert_eq!(v.checks(), 2);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(-(3 << 20)), "-3.0 MiB");
    }
}
