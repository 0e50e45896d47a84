//! `stress`: the load-test harness of switchboard. See `stress --help` and the README.
//!
//! Layout: `cli` (options), `scenarios/` (one file per scenario, plus the load engine and the
//! plan), `world` (one contender under load and its model), `client`/`ledger` (the model of
//! one client), `receiver` (the receiver tasks), `invariants` (the checks), `subject` (the
//! designs behind one trait), `heap` (the counting allocator), `thread_usage` (a thread's
//! CPU time, run-queue wait and page faults), `latency`/`timeline` (histograms),
//! `report`/`chart` (output), `wire/` (`stress ws`: real WebSocket connections against the
//! ws_server example in its own process).

#![deny(missing_debug_implementations)]
#![warn(rust_2018_idioms)]

mod busy;
mod chart;
mod cli;
mod client;
mod cluster;
mod heap;
mod invariants;
mod latency;
mod layout;
mod ledger;
mod message;
mod profiles;
mod progress;
mod receiver;
mod report;
mod rng;
mod scenarios;
mod serial;
mod striped;
mod subject;
mod tally;
mod tasks;
mod thread_usage;
mod timeline;
mod wire;
mod world;

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{Cli, ClusterArgs, Command, Knobs, Scenario, WsArgs};
use crate::invariants::Violations;
use crate::latency::{histogram, Percentiles};
use crate::progress::Progress;
use crate::report::{Invariants, Machine, Ratios, Report, Scenarios, VERSION};
use crate::scenarios::{churn, fanout, memory, mixed, soak, Ctx, Plan};
use crate::timeline::{Point, Timeline};

/// Every allocation is counted, so memory figures are exact.
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    invariants::record_panics();
    let scenario = match cli.command {
        None => Scenario::All,
        Some(Command::Scenario(s)) => s,
        Some(Command::Ws(args)) => return ws_main(&args, &cli.knobs),
        Some(Command::Cluster(args)) => return cluster_main(&args, &cli.knobs),
    };
    let plan = Plan::new(scenario, &cli.knobs);
    let runtime = match runtime(plan.workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // The harness runs as a task, like a server's handlers, so that its wake-ups take the
    // worker's own run queue.
    let (report, points) = match runtime.block_on(async { tokio::spawn(run(plan)).await }) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("stress: the harness task failed: {e}");
            return ExitCode::from(2);
        }
    };
    drop(runtime);

    print!("{}", report.table());
    let mut code = if report.invariants.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &cli.knobs.json {
        if !write_json(&report, path) {
            code = ExitCode::from(2);
        }
    }
    if let Some(path) = &cli.knobs.svg {
        let title = format!(
            "switchboard stress: {} ({} CPUs, {} workers)",
            scenario.name(),
            report.machine.cpus,
            report.config.workers
        );
        match chart::draw(&report, &points, path, &title) {
            Ok(()) => println!("chart written to {}", path.display()),
            Err(e) => {
                eprintln!("stress: {e}");
                code = ExitCode::from(2);
            }
        }
    }
    code
}

/// Writes the JSON report; says where, or why not.
fn write_json(report: &Report, path: &std::path::Path) -> bool {
    let written = serde_json::to_string_pretty(report)
        .map_err(|e| e.to_string())
        .and_then(|json| std::fs::write(path, json + "\n").map_err(|e| e.to_string()));
    match written {
        Ok(()) => {
            println!("report written to {}", path.display());
            true
        }
        Err(e) => {
            eprintln!("stress: cannot write {}: {e}", path.display());
            false
        }
    }
}

/// A multi-thread runtime with `workers` workers, or the exit code for failing to start.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("stress: cannot start the tokio runtime: {e}");
            ExitCode::from(2)
        })
}

/// `stress ws`: the wire run, reported in the same JSON layout, under `wire`.
fn ws_main(args: &WsArgs, knobs: &Knobs) -> ExitCode {
    let args = args.clone();
    process_main(
        "stress ws",
        Scenario::Ws,
        knobs,
        move |knobs, violations| async move {
            let wire = wire::run(&args, &knobs, &violations).await?;
            Ok(Outcome {
                latency_us: wire.latency_us,
                table: wire.table(),
                json: serde_json::to_value(&wire).ok(),
            })
        },
    )
}

/// `stress cluster`: the multi-node run, reported in the same JSON layout, under `wire`
/// (the keys `cluster_publish_rate_vs_redis_benchmark`,
/// `cluster_cross_node_p50_minus_local_ms` and `cluster_redis_round_trips_per_broadcast`
/// are at its top level).
fn cluster_main(args: &ClusterArgs, knobs: &Knobs) -> ExitCode {
    let args = args.clone();
    process_main(
        "stress cluster",
        Scenario::Cluster,
        knobs,
        move |knobs, violations| async move {
            let run = cluster::run(&args, &knobs, &violations).await?;
            Ok(Outcome {
                latency_us: run.cross_node_latency_us,
                table: run.table(),
                json: serde_json::to_value(&run).ok(),
            })
        },
    )
}

/// What a run against servers in their own processes hands back to [`process_main`].
struct Outcome {
    latency_us: Percentiles,
    table: String,
    json: Option<serde_json::Value>,
}

/// Runs `run` (`stress ws`, `stress cluster`) on its own runtime, prints its table and
/// the invariants, and writes the report, with the run's figures under `wire`.
fn process_main<F, Fut>(name: &str, scenario: Scenario, knobs: &Knobs, run: F) -> ExitCode
where
    F: FnOnce(Knobs, Arc<Violations>) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, String>> + Send + 'static,
{
    let started = Instant::now();
    let plan = Plan::new(scenario, knobs);
    let runtime = match runtime(plan.workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let violations = Arc::new(Violations::default());
    let run = run(knobs.clone(), Arc::clone(&violations));
    let outcome = match runtime.block_on(async { tokio::spawn(run).await }) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{name}: the harness task failed: {e}");
            return ExitCode::from(2);
        }
    };
    drop(runtime);
    violations.collect_panics();
    let groups = violations.groups();
    let report = Report {
        version: VERSION,
        machine: Machine::here(),
        config: plan,
        latency_us: outcome.latency_us,
        invariants: Invariants {
            ok: violations.total() == 0,
            violation_count: violations.total(),
            checks: violations.checks(),
            violations: groups.iter().flat_map(|g| g.examples.clone()).collect(),
            groups,
        },
        ratios: Ratios::default(),
        registry_bytes_per_client: None,
        wall_s: started.elapsed().as_secs_f64(),
        scenarios: Scenarios::default(),
        wire: outcome.json,
    };
    print!("{}", outcome.table);
    if report.invariants.ok {
        println!("\nINVARIANTS  ok ({} checks)", report.invariants.checks);
    } else {
        println!(
            "\nINVARIANTS  {} VIOLATED",
            report.invariants.violation_count
        );
        for v in &report.invariants.violations {
            println!("  {v}");
        }
    }
    let mut code = if report.invariants.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &knobs.json {
        if !write_json(&report, path) {
            code = ExitCode::from(2);
        }
    }
    code
}

/// Lets the runtime allocate whatever it allocates lazily (worker thread state, timer
/// entries), so that the first scenario's heap baseline is not taken before it.
async fn warm_up() {
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1 + i % 3)).await;
                tokio::task::yield_now().await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn run(plan: Plan) -> (Report, Vec<Point>) {
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        progress: Progress::new(plan.phases()),
        plan,
        violations: Arc::new(Violations::default()),
        timeline: Timeline::new(),
        overall: Mutex::new(histogram()),
    });
    ctx.progress.note(format!(
        "stress {}: {} workers, capacity {}, policy {:?}",
        ctx.plan.scenario.name(),
        ctx.plan.workers,
        ctx.plan.capacity,
        ctx.plan.policy
    ));
    warm_up().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(Arc::clone(&ctx.timeline).sample(stopped));

    let plan = &ctx.plan;
    let mut s = Scenarios::default();
    if plan.runs(Scenario::Fanout) {
        s.fanout =
            scenarios::isolated(&ctx, "fanout", |c| async move { fanout::run(&c).await }).await;
    }
    if plan.runs(Scenario::Churn) {
        s.churn = scenarios::isolated(&ctx, "churn", |c| async move { churn::run(&c).await }).await;
    }
    if plan.runs(Scenario::Mixed) {
        s.mixed = scenarios::isolated(&ctx, "mixed", |c| async move { mixed::run(&c).await }).await;
    }
    if plan.runs(Scenario::Memory) {
        s.memory = scenarios::isolated(&ctx, "memory", |c| async move { memory::run(&c) }).await;
    }
    if plan.runs(Scenario::Soak) {
        s.soak = scenarios::isolated(&ctx, "soak", |c| async move { soak::run(&c).await }).await;
    }
    let _ = stop.send(true);
    let _ = sampler.await;
    ctx.progress.finish();

    let ratios = Ratios::from(&s, plan.memory_clients);
    let registry_bytes_per_client = s
        .memory
        .as_ref()
        .and_then(|m| m.at("switchboard", plan.memory_clients))
        .map(|b| b.registry_per_client);
    ctx.violations.collect_panics();
    let groups = ctx.violations.groups();
    let violations = groups.iter().flat_map(|g| g.examples.clone()).collect();
    let latency_us = Percentiles::of(&ctx.overall.lock().unwrap_or_else(PoisonError::into_inner));
    let report = Report {
        version: VERSION,
        machine: Machine::here(),
        config: ctx.plan.clone(),
        latency_us,
        invariants: Invariants {
            ok: ctx.violations.total() == 0,
            violation_count: ctx.violations.total(),
            checks: ctx.violations.checks(),
            violations,
            groups,
        },
        ratios,
        registry_bytes_per_client,
        wall_s: started.elapsed().as_secs_f64(),
        scenarios: s,
        wire: None,
    };
    (report, ctx.timeline.points())
}
