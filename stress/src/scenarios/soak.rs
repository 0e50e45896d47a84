//! `soak`: switchboard alone, holding its population under a random mix of everything
//! (broadcasts, direct sends, moves, replacements, short-lived clients, slow consumers,
//! abrupt disconnects) for `--duration`, with invariants checked every second.
//!
//! Beside the world's plain clients, two tasks keep [`Profiles`] busy: keyed, tagged
//! devices registering, taking over, updating and leaving. Each checkpoint also compares
//! their index sets and key map with the profiles' model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baselines::SwitchboardRegistry;
use serde::Serialize;

use super::load::{self, Driver, Run, EVERYTHING};
use super::{Ctx, HeapCheck};
use crate::heap::{self, Footprint};
use crate::latency::{Percentiles, Recorder};
use crate::message::{Msg, DISCARDED};
use crate::profiles::Profiles;
use crate::rng::Rng;
use crate::world::World;
use baselines::Contender;

/// What `soak` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// What the drivers did.
    pub run: Run,
    /// Clients held at the start.
    pub clients: usize,
    /// Fewest and most clients registered at a checkpoint.
    pub clients_min_max: (usize, usize),
    /// Messages queued per second.
    pub delivered_per_s: f64,
    /// Register/attach/detach/unregister calls per second.
    pub churn_per_s: f64,
    /// Delivery latency of prompt receivers.
    pub latency: Percentiles,
    /// Memory once populated.
    pub populated: Footprint,
    /// Largest live heap and RSS seen at a checkpoint.
    pub peak: Footprint,
    /// Profile operations (register, take over, update, leave) beside the plain clients.
    pub profile_ops: usize,
    /// Heap the registry still held after every client left, before it was dropped.
    pub retained_bytes: i64,
    /// Live heap around the scenario.
    pub heap: HeapCheck,
}

/// Runs the soak.
pub async fn run(ctx: &Ctx) -> Soak {
    let plan = &ctx.plan;
    let recorder = Arc::new(Recorder::new("soak", "switchboard"));
    let (start, _) = heap::settle().await;
    ctx.progress.phase(format!(
        "soak: switchboard, {} clients, {:.0?}",
        plan.soak.layout.clients, plan.soak.duration
    ));
    ctx.timeline.track(&recorder);
    let discarded = DISCARDED.get();
    let world = World::<SwitchboardRegistry<Msg>>::new(
        plan.setup("soak", &plan.soak),
        Arc::clone(&recorder),
        Arc::clone(&ctx.violations),
    );
    let mut rng = Rng::new(plan.seed, 4);
    world.populate(&mut rng);
    world.checkpoint("populated").await;
    let populated = Footprint::now();
    let mut peak = populated;
    let mut clients_min_max = (usize::MAX, 0);
    let mut drivers: Vec<_> = (0..plan.workers)
        .map(|i| Driver::new(EVERYTHING, plan.seed, i))
        .collect();
    let every = (plan.soak.duration.as_secs() / 10).max(1);
    let profiles = Arc::new(Profiles::new(
        world.subject.registry().clone(),
        PROFILE_KEYS,
        Arc::clone(&world.outside),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let steppers: Vec<_> = (0..PROFILE_TASKS)
        .map(|i| {
            let (world, profiles, stop) =
                (Arc::clone(&world), Arc::clone(&profiles), Arc::clone(&stop));
            let mut rng = Rng::new(plan.seed, 10 + i);
            tokio::spawn(async move {
                // Relaxed: a stop flag; one more step after it is set is harmless.
                while !stop.load(Ordering::Relaxed) {
                    {
                        let _no_checkpoint = world.beside().await;
                        if let Err(e) = profiles.step(&mut rng) {
                            world
                                .violations
                                .push(format!("{}/profiles", world.scope()), e);
                        }
                    }
                    tokio::time::sleep(PROFILE_PAUSE).await;
                }
            })
        })
        .collect();
    let run = load::run(
        &world,
        &mut drivers,
        plan.soak.duration,
        plan.checkpoint_every,
        |n, w| {
            let now = Footprint::now();
            peak.heap = peak.heap.max(now.heap);
            peak.rss = peak.rss.max(now.rss);
            let problems = profiles.check();
            ctx.violations.checked(1);
            for p in problems {
                ctx.violations
                    .push(format!("{}/checkpoint {n}/profiles", w.scope()), p);
            }
            let clients = w.subject.client_count();
            clients_min_max = (
                clients_min_max.0.min(clients),
                clients_min_max.1.max(clients),
            );
            if n % every == 0 {
                ctx.progress.note(format!(
                    "soak {n:>4}s: {clients} clients, heap {}, {} violations",
                    crate::invariants::bytes(now.heap),
                    ctx.violations.total()
                ));
            }
        },
    )
    .await;
    // Relaxed: see the steppers.
    stop.store(true, Ordering::Relaxed);
    for stepper in steppers {
        if let Err(e) = stepper.await {
            ctx.violations.push(
                "soak/switchboard/profiles",
                format!("a profile task failed: {e}"),
            );
        }
    }
    for p in profiles.check() {
        ctx.violations.push("soak/switchboard/profiles/end", p);
    }
    let profile_ops = profiles.ops();
    profiles.clear();
    drop(profiles);
    world.teardown().await;
    ctx.balance(
        "soak/switchboard/teardown",
        discarded,
        &[world.balance_entry()],
    );
    let retained_bytes = world.retained_bytes();
    drop(world);
    ctx.timeline.untrack(&recorder);
    let heap = ctx.heap_check("soak/teardown", start).await;
    let latency = recorder.summary();
    ctx.absorb(&recorder);
    Soak {
        run,
        clients: plan.soak.layout.clients,
        clients_min_max,
        delivered_per_s: run.delivery_rate(),
        churn_per_s: run.churn_rate(),
        latency,
        populated,
        peak,
        profile_ops,
        retained_bytes,
        heap,
    }
}

/// Keys the profile holders use; few, so that takeovers are frequent.
const PROFILE_KEYS: usize = 32;
/// Tasks stepping profiles at once.
const PROFILE_TASKS: u64 = 2;
/// Pause between one task's profile steps: a few thousand steps a second in all.
const PROFILE_PAUSE: Duration = Duration::from_micros(500);
