//! `churn`: register, attach, detach, unregister as fast as the workers can, against a
//! background of idle clients in populated sessions; and the cost of one join into a session
//! of 10 members versus one of 100k.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use baselines::{DashMapRegistry, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::load::{self, Driver, Run, CHURN_ONLY};
use super::{isolated, median, Ctx, HeapCheck};
use crate::heap;
use crate::latency::Recorder;
use crate::message::{Msg, DISCARDED};
use crate::rng::Rng;
use crate::subject::Subject;
use crate::world::World;

/// Order in which contenders appear in results.
pub const CONTENDERS: [&str; 3] = ["switchboard", "dashmap", "mutex"];

/// Clients joining (then leaving) per round of the join-cost measurement.
const PROBES: usize = 1_000;
/// Members of each small session in the join-cost measurement.
const SMALL: usize = 10;

/// Median cost of one attach, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct JoinCost {
    /// Into a session of 10 members (the same session every time, as for the large one).
    pub into_small_ns: f64,
    /// Into a session of `join_big` (100k) members.
    pub into_big_ns: f64,
    /// Detach from the large session.
    pub leave_big_ns: f64,
}

/// One contender's churn.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Churn {
    /// What the drivers did.
    pub run: Run,
    /// Register/attach/detach/unregister calls per second.
    pub ops_per_s: f64,
    /// Join cost at both sizes.
    pub join: JoinCost,
}

/// What `churn` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    /// Per contender.
    pub contenders: BTreeMap<&'static str, Churn>,
    /// Live heap around the scenario.
    pub heap: HeapCheck,
}

/// Runs churn and join cost for every contender.
pub async fn run(ctx: &Arc<Ctx>) -> ChurnResult {
    let recorders: Vec<Arc<Recorder>> = CONTENDERS
        .iter()
        .map(|c| Arc::new(Recorder::new("churn", c)))
        .collect();
    let (start, _) = heap::settle().await;
    let mut contenders = BTreeMap::new();
    let joins = [
        isolated_join::<SwitchboardRegistry<Msg>>(ctx, CONTENDERS[0]).await,
        isolated_join::<DashMapRegistry<Msg>>(ctx, CONTENDERS[1]).await,
        isolated_join::<MutexRegistry<Msg>>(ctx, CONTENDERS[2]).await,
    ];
    let runs = [
        isolated_churn::<SwitchboardRegistry<Msg>>(ctx, &recorders[0]).await,
        isolated_churn::<DashMapRegistry<Msg>>(ctx, &recorders[1]).await,
        isolated_churn::<MutexRegistry<Msg>>(ctx, &recorders[2]).await,
    ];
    for ((name, run), join) in CONTENDERS.into_iter().zip(runs).zip(joins) {
        if let (Some(run), Some(join)) = (run, join) {
            contenders.insert(
                name,
                Churn {
                    run,
                    ops_per_s: run.churn_rate(),
                    join,
                },
            );
        }
    }
    let heap = ctx.heap_check("churn/teardown", start).await;
    ChurnResult { contenders, heap }
}

async fn isolated_join<S: Subject>(ctx: &Arc<Ctx>, name: &str) -> Option<JoinCost> {
    ctx.progress.phase(format!("churn: join cost, {name}"));
    isolated(ctx, &format!("churn/join/{name}"), |c| async move {
        join_cost::<S>(&c)
    })
    .await
}

async fn isolated_churn<S: Subject>(ctx: &Arc<Ctx>, recorder: &Arc<Recorder>) -> Option<Run> {
    let scope = format!("churn/{}", recorder.contender);
    ctx.progress.phase(format!("churn: {}", recorder.contender));
    let recorder = Arc::clone(recorder);
    isolated(
        ctx,
        &scope,
        |c| async move { churn::<S>(&c, &recorder).await },
    )
    .await
}

async fn churn<S: Subject>(ctx: &Ctx, recorder: &Arc<Recorder>) -> Run {
    let plan = &ctx.plan;
    let mut setup = plan.setup("churn", &plan.churn);
    // Nothing is broadcast here, so slow receivers would change nothing.
    setup.slow = 0.0;
    let discarded = DISCARDED.get();
    let world = World::<S>::new(setup, Arc::clone(recorder), Arc::clone(&ctx.violations));
    let mut rng = Rng::new(plan.seed, 2);
    world.populate(&mut rng);
    world.checkpoint("populated").await;
    let mut drivers = (0..plan.workers)
        .map(|i| Driver::new(CHURN_ONLY, plan.seed, i))
        .collect();
    let run = load::run(
        &world,
        &mut drivers,
        plan.churn.duration,
        plan.checkpoint_every,
        |_, _| {},
    )
    .await;
    world.teardown().await;
    ctx.balance(
        &format!("churn/{}/teardown", world.name()),
        discarded,
        &[world.balance_entry()],
    );
    run
}

/// Median per-attach cost into small and large sessions, in interleaved rounds.
///
/// No messages flow, so receivers are kept in a `Vec` rather than drained by tasks.
fn join_cost<S: Subject>(ctx: &Ctx) -> JoinCost {
    let plan = &ctx.plan;
    let scope = "churn/join";
    let v = &ctx.violations;
    let registry = S::build(plan.capacity, plan.policy);
    let big = plan.join_big;
    let small_sessions = PROBES;
    let mut keep = Vec::with_capacity(big + small_sessions * SMALL + PROBES);
    let mut register = || {
        let (id, rx) = registry.register();
        keep.push(rx);
        id
    };
    let big_members: Vec<_> = (0..big).map(|_| register()).collect();
    for &id in &big_members {
        registry.attach(id, 0);
    }
    let small_members: Vec<_> = (0..small_sessions * SMALL).map(|_| register()).collect();
    for (i, &id) in small_members.iter().enumerate() {
        registry.attach(id, 1 + (i / SMALL) as u64);
    }
    let probes: Vec<_> = (0..PROBES).map(|_| register()).collect();
    v.expect(
        registry.session_count() == 1 + small_sessions,
        &format!("{scope}/{}", registry.name()),
        || format!("{} sessions after setup", registry.session_count()),
    );
    if let Some(members) = registry.members(0) {
        v.expect(members.len() == big, scope, || {
            format!("large session lists {} of {big} members", members.len())
        });
    }

    // Each probe joins and at once leaves, so both sessions stay at their size and both are
    // equally hot: the only difference left between the two is the size. Every attach and
    // detach is timed alone (the clock's cost is the same at both sizes).
    let (mut into_big, mut into_small, mut leave_big) = (Vec::new(), Vec::new(), Vec::new());
    let mut refused = 0usize;
    let mut probe = |p, session: u64, into: &mut Vec<f64>, leave: Option<&mut Vec<f64>>| {
        let start = Instant::now();
        let joined = registry.attach(p, session);
        into.push(start.elapsed().as_nanos() as f64);
        let start = Instant::now();
        let left = registry.detach(p, session);
        if let Some(leave) = leave {
            leave.push(start.elapsed().as_nanos() as f64);
        }
        refused += usize::from(!joined) + usize::from(!left);
    };
    // One small session, the same one every time, like the one large session.
    let small = 1 + plan.seed % small_sessions as u64;
    for round in 0..plan.join_rounds {
        for &p in &probes {
            // Alternate which size goes first, so neither always runs on a warmer cache.
            if round % 2 == 0 {
                probe(p, 0, &mut into_big, Some(&mut leave_big));
                probe(p, small, &mut into_small, None);
            } else {
                probe(p, small, &mut into_small, None);
                probe(p, 0, &mut into_big, Some(&mut leave_big));
            }
        }
    }
    v.expect(refused == 0, scope, || {
        format!(
            "{}: {refused} probe attaches or detaches were refused",
            registry.name()
        )
    });
    for id in big_members.into_iter().chain(small_members).chain(probes) {
        registry.unregister(id);
    }
    let (clients, sessions) = (registry.client_count(), registry.session_count());
    v.expect(clients == 0 && sessions == 0, scope, || {
        format!(
            "{}: {clients} clients and {sessions} sessions left after unregistering everyone",
            registry.name()
        )
    });
    JoinCost {
        into_small_ns: median(&mut into_small),
        into_big_ns: median(&mut into_big),
        leave_big_ns: median(&mut leave_big),
    }
}
