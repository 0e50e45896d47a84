//! `mixed`: broadcasts, direct sends and churn at once on every worker, with slow consumers
//! and abrupt disconnects, for each contender in turn.
//!
//! With two or more workers, even-numbered drivers send (broadcasts, and a direct send every
//! fourth operation) and odd-numbered drivers churn (moves, replacements, short-lived
//! clients); a single worker does both.
//!
//! The three worlds live side by side and take turns: each contender's measured time is cut
//! into [`SLICES`] turns (quick: [`QUICK_SLICES`]), a checkpoint after each, in an order
//! shuffled every round ([`Order`]), after one uncounted warm-up turn each. Run one after the
//! other, each contender met whatever load the machine had during its own block of time
//! (switchboard's always first, on a heap the previous scenario had just freed), and a
//! short quick-mode block took its whole rate from one window.
//!
//! Two phases of as many turns each:
//!
//! - **Free**: every driver as fast as it can. Deliveries per second come from here.
//! - **Paced**: the senders of every contender held to one broadcast load, the slowest
//!   contender's free rate. Churn per second comes from here. Unpaced, a design that
//!   broadcasts faster gives its receivers more messages to take on the same two workers,
//!   so its churners get less of them: the churn figure compared the receivers' share of
//!   the CPU, not the registries under the same load. With one worker one driver does
//!   everything, so nothing is paced and churn comes from the free phase.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use baselines::{DashMapRegistry, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::load::{self, Driver, Op, Run, CHURNER, EVERYTHING, OPS, SENDER};
use super::{median, Ctx, HeapCheck, Order};
use crate::heap;
use crate::latency::{Percentiles, Recorder};
use crate::message::{Msg, DISCARDED};
use crate::rng::Rng;
use crate::subject::Subject;
use crate::tally::Counts;
use crate::world::World;

/// Order in which contenders appear in results.
pub const CONTENDERS: [&str; 3] = ["switchboard", "dashmap", "mutex"];

/// Turns each contender's measured time is cut into (`--quick`: [`QUICK_SLICES`]).
const SLICES: u32 = 8;
/// Turns per contender in quick mode.
const QUICK_SLICES: u32 = 4;

/// One contender's mixed run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mixed {
    /// What the drivers did in the free phase.
    pub run: Run,
    /// What they did in the paced phase (empty if nothing was paced).
    pub paced: Run,
    /// Sends (broadcasts and direct) per second each sending driver was held to in the
    /// paced phase, the same for every contender.
    pub paced_sends_per_s: Option<f64>,
    /// Messages queued (broadcast and direct) per second, free phase: the median over its
    /// turns.
    pub delivered_per_s: f64,
    /// Register/attach/detach/unregister calls per second, paced phase (free phase if
    /// nothing was paced): the median over its turns.
    pub churn_per_s: f64,
    /// Delivery latency of prompt receivers.
    pub latency: Percentiles,
    /// Heap the registry still held after every client left, before it was dropped.
    pub retained_bytes: i64,
}

/// What `mixed` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MixedResult {
    /// Per contender.
    pub contenders: BTreeMap<&'static str, Mixed>,
    /// Live heap around the scenario.
    pub heap: HeapCheck,
}

/// Runs the mixed workload for every contender, the contenders taking turns.
pub async fn run(ctx: &Arc<Ctx>) -> MixedResult {
    let plan = &ctx.plan;
    let recorders: Vec<Arc<Recorder>> = CONTENDERS
        .iter()
        .map(|c| Arc::new(Recorder::new("mixed", c)))
        .collect();
    let (start, _) = heap::settle().await;
    let discarded = DISCARDED.get();
    let slices = if plan.quick { QUICK_SLICES } else { SLICES };
    let slice = plan.mixed.duration / slices;
    let mut sides: [Box<dyn Turns>; 3] = [
        Side::<SwitchboardRegistry<Msg>>::build(ctx, &recorders[0], slices).await,
        Side::<DashMapRegistry<Msg>>::build(ctx, &recorders[1], slices).await,
        Side::<MutexRegistry<Msg>>::build(ctx, &recorders[2], slices).await,
    ];
    let mut order = Order::new(plan.seed, 3, sides.len());
    // Round 0 warms every side up (its receivers' first wake-ups, its channels' first
    // pushes) and is not counted.
    for round in 0..=slices {
        let phase = if round == 0 {
            Phase::WarmUp
        } else {
            Phase::Free
        };
        for &i in order.next_round() {
            sides[i].turn(slice, phase).await;
        }
    }
    let rates: Option<Vec<f64>> = sides.iter().map(|s| s.send_rate()).collect();
    let pace = rates.map(|r| r.into_iter().fold(f64::INFINITY, f64::min));
    if let Some(pace) = pace.filter(|p| p.is_finite() && *p > 0.0) {
        for side in &mut sides {
            side.pace(pace);
        }
        for _ in 0..slices {
            for &i in order.next_round() {
                sides[i].turn(slice, Phase::Paced).await;
            }
        }
    }
    let mut contenders = BTreeMap::new();
    let mut counts = Vec::new();
    for ((name, side), recorder) in CONTENDERS.into_iter().zip(sides).zip(&recorders) {
        let (mixed, balance) = side.finish().await;
        ctx.timeline.untrack(recorder);
        ctx.absorb(recorder);
        contenders.insert(name, mixed);
        counts.push(balance);
    }
    // All three lived at once, so their message handles are balanced together.
    ctx.balance("mixed/teardown", discarded, &counts);
    let heap = ctx.heap_check("mixed/teardown", start).await;
    MixedResult { contenders, heap }
}

/// One contender of the mixed run: its world, its drivers, what its counted turns did.
struct Side<S: Subject> {
    world: Arc<World<S>>,
    drivers: Vec<Driver>,
    recorder: Arc<Recorder>,
    /// Heap the world and its empty registry took when built.
    empty_bytes: i64,
    /// The counted free turns, summed.
    run: Run,
    /// The paced turns, summed.
    paced: Run,
    /// What the sending drivers were held to, once paced.
    pace: Option<f64>,
    /// The drivers' operation counts so far (theirs accumulate over their life).
    ops_so_far: [u64; OPS],
    /// Deliveries per second of each free turn.
    free_deliveries: Vec<f64>,
    /// Churn calls per second of each free turn, then of each paced one.
    free_churn: Vec<f64>,
    paced_churn: Vec<f64>,
}

/// A side's future, boxed so that sides of every design fit one array.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A side's result and its world's final counts, for the message balance.
type Finished = (Mixed, (Counts, bool));

/// What a turn counts towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing: the side warms up.
    WarmUp,
    /// The free phase: every driver as fast as it can.
    Free,
    /// The paced phase: see [`Turns::pace`].
    Paced,
}

/// A side, whatever its design.
trait Turns: Send {
    /// Runs the drivers for `slice`, then a checkpoint; adds the turn to `phase`'s result.
    fn turn(&mut self, slice: Duration, phase: Phase) -> Boxed<'_, ()>;

    /// Sends per second per sending driver in the free phase; `None` if no driver only
    /// sends (one worker).
    fn send_rate(&self) -> Option<f64>;

    /// Holds every sending driver to `per_s` sends a second from now on.
    fn pace(&mut self, per_s: f64);

    /// Tears the world down; returns the result and the world's final counts.
    fn finish(self: Box<Self>) -> Boxed<'static, Finished>;
}

impl<S: Subject> Side<S> {
    /// Builds and populates the world, its clients' abrupt disconnects spread over the whole
    /// run of `slices` turns (plus the warm-up) of every contender.
    async fn build(ctx: &Arc<Ctx>, recorder: &Arc<Recorder>, slices: u32) -> Box<dyn Turns> {
        let plan = &ctx.plan;
        ctx.progress.phase(format!("mixed: {}", recorder.contender));
        let mut setup = plan.setup("mixed", &plan.mixed);
        // MIXED splits the free phase's worker time by kind of task.
        setup.clock_polls = true;
        let turns = CONTENDERS.len() as u32 * (2 * slices + 1);
        setup.abrupt_window = plan.mixed.duration / slices * turns;
        ctx.timeline.track(recorder);
        let before = heap::live_bytes();
        let world = World::<S>::new(setup, Arc::clone(recorder), Arc::clone(&ctx.violations));
        let empty_bytes = heap::live_bytes() - before;
        let mut rng = Rng::new(plan.seed, 3);
        world.populate(&mut rng);
        world.checkpoint("populated").await;
        Box::new(Self {
            world,
            drivers: drivers(plan.workers, plan.seed),
            recorder: Arc::clone(recorder),
            empty_bytes,
            run: Run::default(),
            paced: Run::default(),
            pace: None,
            ops_so_far: [0; OPS],
            free_deliveries: Vec::new(),
            free_churn: Vec::new(),
            paced_churn: Vec::new(),
        })
    }
}

impl<S: Subject> Turns for Side<S> {
    fn turn(&mut self, slice: Duration, phase: Phase) -> Boxed<'_, ()> {
        Box::pin(async move {
            // The warm-up's latencies are not the measurement's either.
            self.recorder.pause(phase == Phase::WarmUp);
            let t = load::run(&self.world, &mut self.drivers, slice, slice, |_, _| {}).await;
            self.recorder.pause(false);
            let ops = std::mem::replace(&mut self.ops_so_far, t.ops);
            let into = match phase {
                Phase::WarmUp => None,
                Phase::Free => {
                    self.free_deliveries.push(t.delivery_rate());
                    self.free_churn.push(t.churn_rate());
                    Some(&mut self.run)
                }
                Phase::Paced => {
                    self.paced_churn.push(t.churn_rate());
                    Some(&mut self.paced)
                }
            };
            if let Some(r) = into {
                r.active_s += t.active_s;
                r.checkpoints += t.checkpoints;
                r.counts = r.counts.plus(&t.counts);
                for ((sum, now), before) in r.ops.iter_mut().zip(t.ops).zip(ops) {
                    *sum += now - before;
                }
            }
        })
    }

    fn send_rate(&self) -> Option<f64> {
        let senders = self.drivers.iter().filter(|d| d.only_sends()).count();
        let sends = self.run.ops[Op::Broadcast.index()] + self.run.ops[Op::Direct.index()];
        (senders > 0 && self.run.active_s > 0.0)
            .then(|| sends as f64 / senders as f64 / self.run.active_s)
    }

    fn pace(&mut self, per_s: f64) {
        self.pace = Some(per_s);
        for d in self.drivers.iter_mut().filter(|d| d.only_sends()) {
            d.pace(Some(per_s));
        }
    }

    fn finish(self: Box<Self>) -> Boxed<'static, Finished> {
        Box::pin(async move {
            let Self {
                world,
                recorder,
                empty_bytes,
                run,
                paced,
                pace,
                mut free_deliveries,
                mut free_churn,
                mut paced_churn,
                ..
            } = *self;
            world.teardown().await;
            let balance = world.balance_entry();
            // What the registry kept beyond its empty self, told apart from the other
            // worlds' heap by what dropping this one frees.
            let before = heap::live_bytes();
            drop(world);
            let retained_bytes = before - heap::live_bytes() - empty_bytes;
            let latency = recorder.summary();
            // Medians over turns: a turn the machine's other tenants starved is one sample
            // of several, not a share of one sum.
            let churn = if pace.is_some() {
                &mut paced_churn
            } else {
                &mut free_churn
            };
            let mixed = Mixed {
                run,
                paced,
                paced_sends_per_s: pace,
                delivered_per_s: median(&mut free_deliveries),
                churn_per_s: median(churn),
                latency,
                retained_bytes,
            };
            (mixed, balance)
        })
    }
}

/// The drivers of a mixed run on `workers` workers.
pub fn drivers(workers: usize, seed: u64) -> Vec<Driver> {
    if workers == 1 {
        return vec![Driver::new(EVERYTHING, seed, 0)];
    }
    (0..workers)
        .map(|i| Driver::new(if i % 2 == 0 { SENDER } else { CHURNER }, seed, i))
        .collect()
}
