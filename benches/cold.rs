//! `cold`: a connection storm, then the very first broadcast, per implementation.
//!
//! Every iteration builds a fresh registry (or floor) and registers and attaches `N` clients
//! into one session, then broadcasts once. Two groups:
//!
//! - `cold_broadcast`: only that first broadcast is timed. The floor and the baselines create
//!   their channels when a client registers; a design that defers work to the first message
//!   pays it here.
//! - `storm_then_broadcast`: registering, attaching and the first broadcast, end to end.
//!
//! Before each iteration the allocator returns its free pages to the system (glibc only), so
//! the storm and the first broadcast touch fresh memory, as a server's first event does.
//!
//! The cost of coldness is the first broadcast against a warm one *to the same members*. A
//! broadcast to 100 000 is bound on memory, so its time depends on the registry's memory and
//! on what else holds the shared last-level cache: on the README's 2-core VM one registry
//! read 1.9 ms and the next 3.4 ms a broadcast for its whole life, warm or cold (before the
//! fields a first send touches shared one cache line). A cold figure from one process against
//! `broadcast/switchboard/N` from another compares two different conditions. So every
//! `cold_broadcast` iteration of switchboard also times warm broadcasts on its own registry
//! after the first one, untimed for criterion and as `benches/broadcast.rs` times them (one
//! warm-up chunk, then chunks of [`PER_DRAIN`] with the inboxes drained between them), and
//! the bench prints the first broadcast against that warm one, per iteration, after the case.

use std::hint::black_box;
use std::time::Duration;

use baselines::{Contender, Floor};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{drain_all, message, now, timed_chunks, Msg, CAPACITY, PER_DRAIN};

const SIZES: [usize; 2] = [1_000, 100_000];
const SESSION: u64 = 7;

/// What one iteration timed.
#[derive(Clone, Copy)]
enum Timed {
    /// The first broadcast only.
    First,
    /// Register and attach everyone, then the first broadcast.
    Storm,
}

/// Gives the allocator's free pages back (glibc), so the next iteration faults in fresh ones.
fn fresh_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free; it takes no pointer
    // and invalidates no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn floor(group: &mut BenchmarkGroup<'_, WallTime>, n: usize, timed: Timed) {
    group.bench_function(BenchmarkId::new("floor", n), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                fresh_pages();
                let start = now();
                let (floor, inboxes) = Floor::<Msg>::new(n, CAPACITY);
                let first = now();
                let fanout = black_box(floor.broadcast(message()));
                let end = now();
                assert_eq!(fanout.delivered, n, "the first broadcast missed someone");
                spent += end
                    - if matches!(timed, Timed::First) {
                        first
                    } else {
                        start
                    };
                drop((floor, inboxes));
            }
            spent
        });
    });
}

/// Warm broadcasts timed per iteration for the side-by-side ratio, after one untimed chunk.
const WARM: u64 = PER_DRAIN;

/// The time of `WARM` broadcasts to `inboxes`' registry after its first one, per broadcast,
/// timed as `benches/broadcast.rs` times them. The first chunk, untimed, grows the rings as
/// criterion's warm-up does there.
fn warm_broadcast<C: Contender<Msg>>(registry: &C, inboxes: &mut [C::Rx]) -> Duration {
    let msg = message();
    let mut delivered = 0;
    drain_all(inboxes);
    for _ in 0..PER_DRAIN {
        delivered += black_box(registry.broadcast(SESSION, msg.clone())).delivered;
    }
    drain_all(inboxes);
    let spent = timed_chunks(
        WARM,
        PER_DRAIN,
        || delivered += black_box(registry.broadcast(SESSION, msg.clone())).delivered,
        || {
            drain_all(inboxes);
        },
    );
    assert_eq!(
        delivered as u64,
        (PER_DRAIN + WARM) * inboxes.len() as u64,
        "a channel filled up"
    );
    spent / WARM as u32
}

/// Prints the first broadcast against the warm ones of the same iterations.
fn report_pairs(id: &str, pairs: &[(Duration, Duration)]) {
    if pairs.is_empty() {
        return;
    }
    let mut ratios: Vec<f64> = pairs
        .iter()
        .map(|(first, warm)| first.as_secs_f64() / warm.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let mut firsts: Vec<Duration> = pairs.iter().map(|p| p.0).collect();
    let mut warms: Vec<Duration> = pairs.iter().map(|p| p.1).collect();
    firsts.sort();
    warms.sort();
    let mid = pairs.len() / 2;
    eprintln!(
        "{id}: first broadcast {:.2}x a warm one to the same registry (median of {} \
         iterations, {:.2}-{:.2}x); first {:?}, warm {:?} (medians); target <= 1.25x: {}",
        ratios[mid],
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1],
        firsts[mid],
        warms[mid],
        if ratios[mid] <= 1.25 { "met" } else { "missed" },
    );
}

fn contender<C: Contender<Msg>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    make: fn() -> C,
    n: usize,
    timed: Timed,
    paired: bool,
) {
    let name = make().name();
    let paired = paired && matches!(timed, Timed::First);
    let mut pairs = Vec::new();
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                fresh_pages();
                let registry = make();
                let start = now();
                let mut inboxes: Vec<C::Rx> = (0..n)
                    .map(|_| {
                        let (id, inbox) = registry.register();
                        assert!(registry.attach(id, SESSION));
                        inbox
                    })
                    .collect();
                let first = now();
                let fanout = black_box(registry.broadcast(SESSION, message()));
                let end = now();
                assert_eq!(fanout.delivered, n, "the first broadcast missed someone");
                spent += end
                    - if matches!(timed, Timed::First) {
                        first
                    } else {
                        start
                    };
                if paired {
                    pairs.push((end - first, warm_broadcast(&registry, &mut inboxes)));
                }
                drop((registry, inboxes));
            }
            spent
        });
    });
    report_pairs(&format!("{}/{name}/{n}", group_name(timed)), &pairs);
}

fn group_name(timed: Timed) -> &'static str {
    match timed {
        Timed::First => "cold_broadcast",
        Timed::Storm => "storm_then_broadcast",
    }
}

fn group(c: &mut Criterion, timed: Timed) {
    let mut group = c.benchmark_group(group_name(timed));
    // One iteration builds a whole registry: few samples, each of one or a few iterations.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.measurement_time(Duration::from_millis(if n >= 100_000 { 500 } else { 200 }));
        contender(&mut group, common::switchboard, n, timed, true);
        floor(&mut group, n, timed);
        // Not paired: a warm broadcast to 100 000 takes them tens of milliseconds, and the
        // bound is switchboard's.
        contender(&mut group, common::dashmap, n, timed, false);
        contender(&mut group, common::mutex, n, timed, false);
    }
    group.finish();
}

fn cold(c: &mut Criterion) {
    group(c, Timed::First);
    group(c, Timed::Storm);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = cold
}
criterion_main!(benches);
