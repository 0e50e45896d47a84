//! Checkpoints and teardown: the model compared with the registry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::{lock, World, TEARDOWN_WAIT};
use crate::invariants::{membership_diff, undelivered_bound, Loss};
use crate::subject::Subject;

impl<S: Subject> World<S> {
    /// Compares the registry with the model. The caller has stopped every driver; abrupt
    /// disconnects wait on the gate meanwhile.
    pub async fn checkpoint(&self, label: &str) {
        let _quiet = self.gate.write().await;
        self.compare(label);
    }

    fn compare(&self, label: &str) {
        let scope = format!("{}/{label}", self.scope);
        let v = &self.violations;
        let mut clients = 0usize;
        let mut expected: HashMap<u64, HashSet<S::Id>> = HashMap::new();
        for client in self.known_clients() {
            let mut ledger = client.ledger();
            if !ledger.is_registered() {
                continue;
            }
            if self.guarded(|r| r.is_online(client.id)).flatten() == Some(false) {
                self.discover_gone(&client, &mut ledger, label);
                continue;
            }
            clients += 1;
            for s in ledger.attached() {
                expected.entry(s).or_default().insert(client.id);
            }
        }
        let registered = self.subject.client_count();
        // Relaxed: see `outside`; stored under the gate this checkpoint holds.
        let outside = self.outside.load(Ordering::Relaxed);
        v.expect(registered == clients + outside, &scope, || {
            format!(
                "client_count is {registered}, the model holds {clients} (and {outside} \
                 beside it)"
            )
        });
        let sessions = self.subject.session_count();
        v.expect(sessions == expected.len(), &scope, || {
            format!(
                "session_count is {sessions}, the model has {} non-empty sessions",
                expected.len()
            )
        });
        let empty = HashSet::new();
        for s in 0..self.sessions.len() as u64 {
            let Some(actual) = self.guarded(|r| r.members(s)).flatten() else {
                break;
            };
            let want = expected.get(&s).unwrap_or(&empty);
            let diff = membership_diff(want, &actual);
            v.expect(diff.is_empty(), &scope, || {
                format!(
                    "session {s}: {} lost members {:?}, {} ghosts {:?}, {} listed twice",
                    diff.missing.len(),
                    diff.missing.iter().take(5).collect::<Vec<_>>(),
                    diff.extra.len(),
                    diff.extra.iter().take(5).collect::<Vec<_>>(),
                    diff.duplicated.len()
                )
            });
        }
        let t = self.tally.snapshot();
        // Every eviction is reported as `disconnected` by exactly one broadcast; an abrupt
        // client evicted before the harness noticed shows up as an early abrupt instead.
        v.expect(
            t.evicted <= t.disconnected && t.disconnected <= t.evicted + t.abrupt_early,
            &scope,
            || {
                format!(
                    "{} clients reported disconnected by broadcasts, but the harness found {} \
                     evicted (and {} abrupt ones already gone)",
                    t.disconnected, t.evicted, t.abrupt_early
                )
            },
        );
    }

    /// Final checkpoint, then unregisters everyone, waits for every receiver task, and checks
    /// that the registry is empty and the message counts close.
    pub async fn teardown(&self) {
        self.checkpoint("teardown").await;
        // Relaxed: see `draining`.
        self.draining.store(true, Ordering::Relaxed);
        let scope = format!("{}/teardown", self.scope);
        let v = &self.violations;
        for client in self.known_clients() {
            self.unregister(&client);
        }
        for i in 0..self.seats.len() {
            self.set_seat(i, None);
        }
        lock(&self.orphans).clear();
        let stuck = self.tasks.wait_idle(TEARDOWN_WAIT).await;
        v.expect(stuck == 0, &scope, || {
            format!(
                "{stuck} receiver tasks still running {TEARDOWN_WAIT:?} after their clients \
                 were unregistered (a channel never closed)"
            )
        });
        let (clients, sessions) = (self.subject.client_count(), self.subject.session_count());
        v.expect(clients == 0 && sessions == 0, &scope, || {
            format!(
                "after unregistering everyone: client_count {clients}, session_count {sessions}"
            )
        });
        let t = self.tally.snapshot();
        let loss = Loss {
            queued: t.queued(),
            received: t.received,
            abrupt_lost: t.abrupt_lost,
            abrupt_drops: t.abrupt_drops,
            capacity: self.setup.capacity as u64,
        };
        let bound = undelivered_bound(&loss);
        v.expect(bound.is_ok(), &scope, || bound.err().unwrap_or_default());
        if loss.abrupt_drops > 0 {
            // The one place slack stays: say how much, and how much was used.
            println!(
                "{scope}: loss check: {} queued, {} received, {} freed by {} abrupt drops \
                 (counted exactly); residual {} of slack {}",
                loss.queued,
                loss.received,
                loss.abrupt_lost,
                loss.abrupt_drops,
                loss.residual(),
                loss.slack()
            );
        }
        if let Some(stats) = self.subject.stats() {
            let ours = (
                t.queued(),
                t.dropped,
                t.closed + t.direct_closed,
                t.disconnected,
            );
            let theirs = (
                stats.delivered,
                stats.dropped,
                stats.closed,
                stats.disconnected,
            );
            v.expect(ours == theirs, &scope, || {
                format!("registry stats (delivered, dropped, closed, disconnected) = {theirs:?}, reports add up to {ours:?}")
            });
        }
        // Every receipt was one ledger check.
        v.checked(t.received);
    }
}
