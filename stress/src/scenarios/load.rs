//! The load engine shared by churn, mixed and soak: driver tasks performing a weighted mix
//! of operations in windows, with a checkpoint between windows.
//!
//! Drivers are tokio tasks on the same runtime as the receivers, as a server's request
//! handlers would be, and yield after every operation. Each window spawns the drivers with a
//! deadline and joins them, so a checkpoint always sees a quiet registry; time spent in
//! checkpoints is excluded from rates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::busy;
use crate::client::Kind;
use crate::rng::Rng;
use crate::subject::Subject;
use crate::tally::Counts;
use crate::thread_usage;
use crate::world::World;

/// One operation a driver can perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Broadcast to a random session.
    Broadcast,
    /// Send to a random seated client.
    Direct,
    /// Detach a seated client from one of its sessions and attach it to a random one.
    Move,
    /// Unregister a seated client and seat a new one in its home sessions.
    Replace,
    /// Register a short-lived client, attach it twice, detach once, unregister, drain.
    Transient,
}

/// Kinds of operation, the length of [`Run::ops`].
pub const OPS: usize = 5;

impl Op {
    /// Its place in [`Run::ops`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Operations and their weights.
#[derive(Debug, Clone, Copy)]
pub struct Mix(pub &'static [(Op, u32)]);

/// Broadcasts, with a direct send every fourth operation.
pub const SENDER: Mix = Mix(&[(Op::Broadcast, 3), (Op::Direct, 1)]);
/// Membership changes of every kind.
pub const CHURNER: Mix = Mix(&[(Op::Move, 5), (Op::Replace, 3), (Op::Transient, 2)]);
/// Register, attach, detach, unregister: nothing else.
pub const CHURN_ONLY: Mix = Mix(&[(Op::Transient, 1)]);
/// Everything at once.
pub const EVERYTHING: Mix = Mix(&[
    (Op::Broadcast, 4),
    (Op::Direct, 2),
    (Op::Move, 2),
    (Op::Replace, 1),
    (Op::Transient, 1),
]);

impl Mix {
    fn pick(self, rng: &mut Rng) -> Op {
        let total: u32 = self.0.iter().map(|&(_, w)| w).sum();
        let mut r = rng.below(total as usize) as u32;
        for &(op, w) in self.0 {
            if r < w {
                return op;
            }
            r -= w;
        }
        Op::Broadcast
    }
}

/// One driver task's state between windows.
#[derive(Debug)]
pub struct Driver {
    mix: Mix,
    rng: Rng,
    ops: [u64; OPS],
    /// Operations per second it holds itself to; `None`: as many as it can.
    pace: Option<f64>,
}

impl Driver {
    /// A driver performing `mix`, seeded from `seed` and its `index`.
    pub fn new(mix: Mix, seed: u64, index: usize) -> Self {
        Self {
            mix,
            rng: Rng::new(seed, 1000 + index as u64),
            ops: [0; OPS],
            pace: None,
        }
    }

    /// Holds the driver to `per_s` operations a second from now on (`None`: unpaced).
    pub fn pace(&mut self, per_s: Option<f64>) {
        self.pace = per_s;
    }

    /// Whether it only sends (broadcasts and direct sends), changing no membership.
    pub fn only_sends(&self) -> bool {
        self.mix
            .0
            .iter()
            .all(|&(op, _)| matches!(op, Op::Broadcast | Op::Direct))
    }
}

/// Operations an unpaced driver performs between two reads of the clock for its window's
/// deadline. A read took about 70 ns on the two-core VM this was measured on, against
/// 3-4 µs of worker time for a short-lived client: the same cost for every design, which
/// diluted their ratios. The window overruns by at most this many operations less one
/// (tens of microseconds); rates divide by the time the window really took (see [`run`]).
const DEADLINE_EVERY: u64 = 8;

async fn drive<S: Subject>(world: Arc<World<S>>, mut d: Driver, until: Instant) -> Driver {
    let start = Instant::now();
    let mut done = 0u64;
    while (d.pace.is_none() && done % DEADLINE_EVERY != 0) || Instant::now() < until {
        if let Some(per_s) = d.pace {
            // Ahead of its schedule: wait. The timer ticks in milliseconds, so the pace is
            // kept on average over the window, not operation by operation.
            if done as f64 >= per_s * start.elapsed().as_secs_f64() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        done += 1;
        let op = d.mix.pick(&mut d.rng);
        perform(&world, op, &mut d.rng).await;
        d.ops[op.index()] += 1;
        tokio::task::yield_now().await;
    }
    d
}

async fn perform<S: Subject>(world: &Arc<World<S>>, op: Op, rng: &mut Rng) {
    let sessions = world.sessions();
    let seats = world.seats();
    match op {
        Op::Broadcast => {
            let _ = world.broadcast(rng.below(sessions) as u64);
        }
        Op::Direct => {
            if let Some(client) = world.seat(rng.below(seats)) {
                world.send_to(&client);
            }
        }
        Op::Move => {
            let seat = rng.below(seats);
            let client = world.seat(seat);
            match client {
                Some(client) if client.ledger().is_registered() => {
                    let from = client.ledger().attached().next();
                    if let Some(from) = from {
                        world.detach(&client, from);
                    }
                    world.attach(&client, rng.below(sessions) as u64);
                }
                // Its occupant left (abruptly, or evicted): seat someone new.
                _ => world.replace(seat, rng),
            }
        }
        Op::Replace => world.replace(rng.below(seats), rng),
        Op::Transient => {
            let (client, rx) = world.connect_here(Kind::Prompt);
            let (a, b) = (rng.below(sessions) as u64, rng.below(sessions) as u64);
            world.attach(&client, a);
            world.attach(&client, b);
            tokio::task::yield_now().await;
            world.detach(&client, a);
            world.unregister(&client);
            world.drain(&client, rx).await;
        }
    }
}

/// What a run of windows did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Run {
    /// Time the drivers ran, checkpoints excluded.
    pub active_s: f64,
    /// CPU time the whole process spent over `active_s` (every worker and thread: the
    /// drivers, the receivers and tokio itself), in seconds; 0 where it cannot be read.
    pub cpu_s: f64,
    /// Windows (one checkpoint after each).
    pub checkpoints: u64,
    /// Counts accumulated while the drivers ran.
    pub counts: Counts,
    /// Broadcast, direct, move, replace and transient operations performed.
    pub ops: [u64; OPS],
}

impl Run {
    /// Messages queued per second.
    pub fn delivery_rate(&self) -> f64 {
        self.counts.queued() as f64 / self.active_s.max(1e-9)
    }

    /// Register, attach, detach and unregister calls per second.
    pub fn churn_rate(&self) -> f64 {
        self.counts.churn_ops as f64 / self.active_s.max(1e-9)
    }

    /// Cores the process kept busy while the drivers ran, on average: under the worker
    /// count when tokio left a worker idle (both drivers on one worker, or parked).
    pub fn cores_busy(&self) -> f64 {
        self.cpu_s / self.active_s.max(1e-9)
    }

    /// CPU time per register, attach, detach or unregister call, in nanoseconds: the
    /// whole process's, harness and scheduler included, so the same overhead sits on
    /// every design's figure.
    pub fn cpu_per_churn_op_ns(&self) -> f64 {
        self.cpu_s * 1e9 / (self.counts.churn_ops as f64).max(1.0)
    }
}

/// Runs `drivers` against `world` for `total`, checkpointing every `every`; calls
/// `after_checkpoint` with the checkpoint's number after each.
pub async fn run<S: Subject>(
    world: &Arc<World<S>>,
    drivers: &mut Vec<Driver>,
    total: Duration,
    every: Duration,
    mut after_checkpoint: impl FnMut(u64, &World<S>),
) -> Run {
    let mut run = Run::default();
    let mut left = total;
    let before = world.tally.snapshot();
    let mut active = Duration::ZERO;
    let mut cpu_ns = 0i64;
    while !left.is_zero() {
        let window = left.min(every);
        left -= window;
        let cpu_start = thread_usage::process_cpu_ns();
        let start = Instant::now();
        let until = start + window;
        let handles: Vec<_> = drivers
            .drain(..)
            .map(|d| {
                if !world.setup.clock_polls {
                    return tokio::spawn(drive(Arc::clone(world), d, until));
                }
                // Busy time by kind of driver, to tell the senders' share of the CPU from
                // the receivers' (see `busy`).
                let (w, sends) = (Arc::clone(world), d.only_sends());
                let add = move |ns| match sends {
                    true => w.tally.send_busy_ns.add(ns),
                    false => w.tally.churn_busy_ns.add(ns),
                };
                tokio::spawn(busy::clocked(add, drive(Arc::clone(world), d, until)))
            })
            .collect();
        for handle in handles {
            match handle.await {
                Ok(d) => drivers.push(d),
                Err(e) => world.violations.push(
                    world.scope().to_owned(),
                    format!("a driver task failed: {e}"),
                ),
            }
        }
        active += start.elapsed();
        cpu_ns += (thread_usage::process_cpu_ns() - cpu_start).max(0);
        run.checkpoints += 1;
        world
            .checkpoint(&format!("checkpoint {}", run.checkpoints))
            .await;
        after_checkpoint(run.checkpoints, world);
    }
    // Checkpoints may discover evictions; they change no other count.
    run.counts = world.tally.snapshot().since(&before);
    run.active_s = active.as_secs_f64();
    run.cpu_s = cpu_ns as f64 / 1e9;
    for d in drivers.iter() {
        for (sum, n) in run.ops.iter_mut().zip(d.ops) {
            *sum += n;
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_pick_by_weight() {
        let mut rng = Rng::new(11, 0);
        let n = 20_000;
        let broadcasts = (0..n)
            .filter(|_| SENDER.pick(&mut rng) == Op::Broadcast)
            .count();
        let share = broadcasts as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        assert!((0..100).all(|_| CHURN_ONLY.pick(&mut rng) == Op::Transient));
    }

    #[test]
    fn rates_divide_by_active_time() {
        let run = Run {
            active_s: 2.0,
            counts: Counts {
                delivered: 300,
                direct_ok: 100,
                churn_ops: 50,
                ..Counts::default()
            },
            ..Run::default()
        };
        assert_eq!(run.delivery_rate(), 200.0);
        assert_eq!(run.churn_rate(), 25.0);
    }

    #[test]
    fn cpu_figures_divide_by_active_time_and_by_operations() {
        let run = Run {
            active_s: 2.0,
            cpu_s: 3.0,
            counts: Counts {
                churn_ops: 1_500_000,
                ..Counts::default()
            },
            ..Run::default()
        };
        assert_eq!(run.cores_busy(), 1.5);
        assert_eq!(run.cpu_per_churn_op_ns(), 2_000.0);
    }
}
