//! `join_cost`: one client attaches to and detaches from a session that already holds `N`
//! members. For switchboard it must not grow with `N`.

use baselines::Contender;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{timed_chunks, Msg};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const SESSION: u64 = 7;

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C, n: usize) {
    let _members: Vec<C::Rx> = (0..n)
        .map(|_| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, SESSION));
            inbox
        })
        .collect();
    let (probe, _probe_inbox) = registry.register();
    group.bench_function(BenchmarkId::new(registry.name(), n), |b| {
        b.iter_custom(|iters| {
            timed_chunks(
                iters,
                u64::MAX,
                || {
                    assert!(registry.attach(probe, SESSION));
                    assert!(registry.detach(probe, SESSION));
                },
                || {},
            )
        });
    });
}

fn join_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("join_cost");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        contender(&mut group, common::switchboard(), n);
        contender(&mut group, common::dashmap(), n);
        contender(&mut group, common::mutex(), n);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = join_cost
}
criterion_main!(benches);
