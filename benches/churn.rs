//! `churn`: one client's whole life: register, attach to one of 100 sessions, detach,
//! unregister, and drop its receiver (the connection task ending).
//!
//! The sessions are not empty: each keeps [`RESIDENTS`] resident members, as rooms on a live
//! server do, so churn measures joining and leaving a session rather than creating and
//! destroying it.
//!
//! `churn_two_threads` runs the same life on two threads at once, each picking its
//! sessions at random among the same 100, as two workers of a server do during a
//! connection storm: a join then finds the session's lines in the other core's cache,
//! which the one-thread group never sees. It reports lives per second of wall time over
//! both threads, and reads the wall clock even when `SWITCHBOARD_BENCH_CPU_TIME` is set.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use baselines::Contender;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{timed_chunks, Indices, Msg};

const SESSIONS: u64 = 100;
const RESIDENTS: usize = 10;

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C) {
    let _residents = residents(&registry);
    let mut session = 0;
    group.bench_function(BenchmarkId::from_parameter(registry.name()), |b| {
        b.iter_custom(|iters| {
            timed_chunks(
                iters,
                u64::MAX,
                || {
                    session = (session + 1) % SESSIONS;
                    life(&registry, session);
                },
                || {},
            )
        });
    });
    assert_eq!(registry.session_count(), SESSIONS as usize);
}

/// Threads in `churn_two_threads`.
const THREADS: u64 = 2;

fn residents<C: Contender<Msg>>(registry: &C) -> Vec<C::Rx> {
    (0..SESSIONS)
        .flat_map(|session| (0..RESIDENTS).map(move |_| session))
        .map(|session| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, session));
            inbox
        })
        .collect()
}

/// One client's whole life in `session`.
#[inline]
fn life<C: Contender<Msg>>(registry: &C, session: u64) {
    let (id, inbox) = registry.register();
    assert!(registry.attach(id, session));
    assert!(registry.detach(id, session));
    assert!(registry.unregister(id));
    drop(black_box(inbox));
}

/// One thread's share of a `churn_two_threads` sample: `lives` lives, in sessions drawn
/// from `sessions`.
fn lives<C: Contender<Msg>>(registry: &C, lives: u64, sessions: &mut Indices) {
    for _ in 0..lives {
        life(registry, sessions.next_index() as u64);
    }
}

fn two_threads<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C) {
    let _residents = residents(&registry);
    // Each thread keeps its own stream across samples; the second starts further along,
    // so the two rarely pick the same session at the same moment.
    let mut streams: Vec<Indices> = (0..THREADS)
        .map(|t| {
            let mut s = Indices::new(SESSIONS as usize);
            (0..t * 1_000).for_each(|_| {
                s.next_index();
            });
            s
        })
        .collect();
    group.bench_function(BenchmarkId::from_parameter(registry.name()), |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(THREADS as usize + 1);
            let registry = &registry;
            thread::scope(|scope| {
                for (t, stream) in streams.iter_mut().enumerate() {
                    let share = iters / THREADS + u64::from((t as u64) < iters % THREADS);
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        lives(registry, share, stream);
                    });
                }
                start.wait();
                let began = Instant::now();
                // Leaving the scope joins both threads.
                began
            })
            .elapsed()
        });
    });
    assert_eq!(registry.session_count(), SESSIONS as usize);
    assert_eq!(registry.client_count(), SESSIONS as usize * RESIDENTS);
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(1));
    contender(&mut group, common::switchboard());
    contender(&mut group, common::dashmap());
    contender(&mut group, common::mutex());
    group.finish();
    let mut group = c.benchmark_group("churn_two_threads");
    group.throughput(Throughput::Elements(1));
    two_threads(&mut group, common::switchboard());
    two_threads(&mut group, common::dashmap());
    two_threads(&mut group, common::mutex());
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = churn
}
criterion_main!(benches);
