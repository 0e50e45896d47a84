//! `churn`: one client's whole life: register, attach to one of 100 sessions, detach,
//! unregister, and drop its receiver (the connection task ending).
//!
//! The sessions are not empty: each keeps [`RESIDENTS`] resident members, as rooms on a live
//! server do, so churn measures joining and leaving a session rather than creating and
//! destroying it.

use std::hint::black_box;

use baselines::Contender;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{timed_chunks, Msg};

const SESSIONS: u64 = 100;
const RESIDENTS: usize = 10;

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C) {
    let _residents: Vec<C::Rx> = (0..SESSIONS)
        .flat_map(|session| (0..RESIDENTS).map(move |_| session))
        .map(|session| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, session));
            inbox
        })
        .collect();
    let mut session = 0;
    group.bench_function(BenchmarkId::from_parameter(registry.name()), |b| {
        b.iter_custom(|iters| {
            timed_chunks(
                iters,
                u64::MAX,
                || {
                    session = (session + 1) % SESSIONS;
                    let (id, inbox) = registry.register();
                    assert!(registry.attach(id, session));
                    assert!(registry.detach(id, session));
                    assert!(registry.unregister(id));
                    drop(black_box(inbox));
                },
                || {},
            )
        });
    });
    assert_eq!(registry.session_count(), SESSIONS as usize);
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(1));
    contender(&mut group, common::switchboard());
    contender(&mut group, common::dashmap());
    contender(&mut group, common::mutex());
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = churn
}
criterion_main!(benches);
