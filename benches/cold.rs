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
//! the storm and the first broadcast touch fresh memory, as a server's first event does. Compare
//! `cold_broadcast/switchboard/N` with `broadcast/switchboard/N` for the cost of coldness.

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

use common::{message, now, Msg, CAPACITY};

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

fn contender<C: Contender<Msg>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    make: fn() -> C,
    n: usize,
    timed: Timed,
) {
    let name = make().name();
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                fresh_pages();
                let registry = make();
                let start = now();
                let inboxes: Vec<C::Rx> = (0..n)
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
                drop((registry, inboxes));
            }
            spent
        });
    });
}

fn group(c: &mut Criterion, name: &str, timed: Timed) {
    let mut group = c.benchmark_group(name);
    // One iteration builds a whole registry: few samples, each of one or a few iterations.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.measurement_time(Duration::from_millis(if n >= 100_000 { 500 } else { 200 }));
        contender(&mut group, common::switchboard, n, timed);
        floor(&mut group, n, timed);
        contender(&mut group, common::dashmap, n, timed);
        contender(&mut group, common::mutex, n, timed);
    }
    group.finish();
}

fn cold(c: &mut Criterion) {
    group(c, "cold_broadcast", Timed::First);
    group(c, "storm_then_broadcast", Timed::Storm);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = cold
}
criterion_main!(benches);
