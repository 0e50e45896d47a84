//! `mixed`: broadcasts, direct sends and churn at once on every worker, with slow consumers
//! and abrupt disconnects, for each contender in turn.
//!
//! With two or more workers, even-numbered drivers send (broadcasts, and a direct send every
//! fourth operation) and odd-numbered drivers churn (moves, replacements, short-lived
//! clients); a single worker does both.

use std::collections::BTreeMap;
use std::sync::Arc;

use baselines::{DashMapRegistry, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::load::{self, Driver, Run, CHURNER, EVERYTHING, SENDER};
use super::{isolated, Ctx, HeapCheck};
use crate::heap;
use crate::latency::{Percentiles, Recorder};
use crate::message::{Msg, DISCARDED};
use crate::rng::Rng;
use crate::subject::Subject;
use crate::world::World;

/// Order in which contenders appear in results.
pub const CONTENDERS: [&str; 3] = ["switchboard", "dashmap", "mutex"];

/// One contender's mixed run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mixed {
    /// What the drivers did.
    pub run: Run,
    /// Messages queued (broadcast and direct) per second.
    pub delivered_per_s: f64,
    /// Register/attach/detach/unregister calls per second.
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

/// Runs the mixed workload for every contender.
pub async fn run(ctx: &Arc<Ctx>) -> MixedResult {
    let recorders: Vec<Arc<Recorder>> = CONTENDERS
        .iter()
        .map(|c| Arc::new(Recorder::new("mixed", c)))
        .collect();
    let start = heap::live_bytes();
    let mut contenders = BTreeMap::new();
    let results = [
        isolated_one::<SwitchboardRegistry<Msg>>(ctx, &recorders[0]).await,
        isolated_one::<DashMapRegistry<Msg>>(ctx, &recorders[1]).await,
        isolated_one::<MutexRegistry<Msg>>(ctx, &recorders[2]).await,
    ];
    for (name, result) in CONTENDERS.into_iter().zip(results) {
        if let Some(result) = result {
            contenders.insert(name, result);
        }
    }
    let heap = ctx.heap_check("mixed/teardown", start);
    MixedResult { contenders, heap }
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

async fn isolated_one<S: Subject>(ctx: &Arc<Ctx>, recorder: &Arc<Recorder>) -> Option<Mixed> {
    let scope = format!("mixed/{}", recorder.contender);
    ctx.progress.phase(format!("mixed: {}", recorder.contender));
    let recorder = Arc::clone(recorder);
    isolated(
        ctx,
        &scope,
        |c| async move { one::<S>(&c, &recorder).await },
    )
    .await
}

async fn one<S: Subject>(ctx: &Ctx, recorder: &Arc<Recorder>) -> Mixed {
    let plan = &ctx.plan;
    let setup = plan.setup("mixed", &plan.mixed);
    ctx.timeline.track(recorder);
    let discarded = DISCARDED.get();
    let world = World::<S>::new(setup, Arc::clone(recorder), Arc::clone(&ctx.violations));
    let mut rng = Rng::new(plan.seed, 3);
    world.populate(&mut rng);
    world.checkpoint("populated").await;
    let mut drivers = drivers(plan.workers, plan.seed);
    let run = load::run(
        &world,
        &mut drivers,
        plan.mixed.duration,
        plan.checkpoint_every,
        |_, _| {},
    )
    .await;
    world.teardown().await;
    ctx.balance(
        &format!("mixed/{}/teardown", world.name()),
        discarded,
        &[world.balance_entry()],
    );
    let retained_bytes = world.retained_bytes();
    drop(world);
    ctx.timeline.untrack(recorder);
    let latency = recorder.summary();
    ctx.absorb(recorder);
    Mixed {
        run,
        delivered_per_s: run.delivery_rate(),
        churn_per_s: run.churn_rate(),
        latency,
        retained_bytes,
    }
}
