//! `mixed`: one thread broadcasts to a [`MEMBERS`]-member session while a second thread churns
//! clients through the same session (register, attach, detach, unregister, drop the receiver).
//!
//! The two threads start together at a `Barrier`. The broadcaster works in chunks of
//! [`PER_DRAIN`] broadcasts and drains its members' inboxes between chunks; only the chunks
//! are timed, and a flag tells the churner when a chunk is running. A churn cycle counts only
//! if it began and ended inside a chunk, so both rates are measured over the same contended
//! intervals and neither thread gets the registry to itself while the other drains.
//!
//! Criterion reports the broadcaster's deliveries per second. The churn rate has no place in
//! that report, so the group ends by printing both rates per implementation.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use baselines::Contender;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{drain_all, message, Msg, PER_DRAIN};

const MEMBERS: usize = 1_000;
const SESSION: u64 = 7;

/// Everything one implementation did across all of criterion's runs of it.
#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    /// Time spent inside broadcast chunks: the contended intervals.
    contended: Duration,
    deliveries: u64,
    churn_cycles: u64,
}

impl Rates {
    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.contended.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn deliveries_per_second(&self) -> f64 {
        self.per_second(self.deliveries)
    }

    fn churn_per_second(&self) -> f64 {
        self.per_second(self.churn_cycles)
    }
}

/// One criterion run: `iters` broadcasts against a concurrent churner.
fn run<C: Contender<Msg>>(
    registry: &C,
    inboxes: &mut [C::Rx],
    msg: &Msg,
    iters: u64,
    rates: &mut Rates,
) -> Duration {
    // Relaxed throughout: the flags only steer counting, and the counts are read after `join`.
    let in_chunk = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(2);
    thread::scope(|scope| {
        let churner = scope.spawn(|| {
            start.wait();
            let mut counted = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let began_inside = in_chunk.load(Ordering::Relaxed);
                let (id, inbox) = registry.register();
                assert!(registry.attach(id, SESSION));
                assert!(registry.detach(id, SESSION));
                assert!(registry.unregister(id));
                drop(inbox);
                if began_inside && in_chunk.load(Ordering::Relaxed) {
                    counted += 1;
                }
            }
            counted
        });

        start.wait();
        let mut spent = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(PER_DRAIN);
            in_chunk.store(true, Ordering::Relaxed);
            let began = Instant::now();
            for _ in 0..n {
                rates.deliveries +=
                    black_box(registry.broadcast(SESSION, msg.clone())).delivered as u64;
            }
            spent += began.elapsed();
            in_chunk.store(false, Ordering::Relaxed);
            drain_all(inboxes);
            left -= n;
        }
        stop.store(true, Ordering::Relaxed);
        rates.churn_cycles += churner
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        rates.contended += spent;
        spent
    })
}

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C) -> Rates {
    let mut inboxes: Vec<C::Rx> = (0..MEMBERS)
        .map(|_| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, SESSION));
            inbox
        })
        .collect();
    let msg = message();
    let mut rates = Rates::default();
    group.bench_function(BenchmarkId::from_parameter(registry.name()), |b| {
        b.iter_custom(|iters| run(&registry, &mut inboxes, &msg, iters, &mut rates));
    });
    rates
}

fn print_table(rows: &[(&str, Rates)]) {
    let dashmap = rows
        .iter()
        .find(|(name, _)| *name == "dashmap")
        .map(|(_, r)| *r);
    println!("\nmixed: broadcast to {MEMBERS} members while churning the same session, over the same contended intervals");
    println!(
        "{:<12} {:>14} {:>14} {:>11} {:>11}",
        "impl", "deliveries/s", "churn ops/s", "deliv/dash", "churn/dash"
    );
    for (name, rates) in rows {
        if rates.contended.is_zero() {
            continue; // filtered out on the command line
        }
        let (d, ch) = (rates.deliveries_per_second(), rates.churn_per_second());
        let ratio = |ours: f64, theirs: Option<f64>| match theirs {
            Some(t) if t > 0.0 => format!("{:.2}x", ours / t),
            _ => "-".to_owned(),
        };
        println!(
            "{name:<12} {d:>14.0} {ch:>14.0} {:>11} {:>11}",
            ratio(d, dashmap.map(|r| r.deliveries_per_second())),
            ratio(ch, dashmap.map(|r| r.churn_per_second())),
        );
    }
    println!();
}

fn mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    let rows = [
        ("switchboard", contender(&mut group, common::switchboard())),
        ("dashmap", contender(&mut group, common::dashmap())),
        ("mutex", contender(&mut group, common::mutex())),
    ];
    group.finish();
    print_table(&rows);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = mixed
}
criterion_main!(benches);
