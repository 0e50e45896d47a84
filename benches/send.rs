//! `send`: a direct send to a random one of [`CLIENTS`] clients: the id lookup plus the push.
//! The floor indexes its `Vec` of senders, which is the least a lookup can cost.
//!
//! Every implementation sends to the same random sequence. Inboxes are drained, untimed,
//! after every [`CLIENTS`] sends, so a client holds a handful of messages at most and no
//! channel fills (checked after each run).

use std::hint::black_box;

use baselines::{Contender, Floor};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{drain_all, message, timed_chunks, Indices, Msg, CAPACITY};

const CLIENTS: usize = 100_000;

fn floor(group: &mut BenchmarkGroup<'_, WallTime>) {
    let (floor, mut inboxes) = Floor::<Msg>::new(CLIENTS, CAPACITY);
    let msg = message();
    let mut pick = Indices::new(CLIENTS);
    group.bench_function(BenchmarkId::from_parameter(floor.name()), |b| {
        b.iter_custom(|iters| {
            let mut failed = 0_u64;
            let spent = timed_chunks(
                iters,
                CLIENTS as u64,
                || {
                    failed +=
                        u64::from(black_box(floor.send(pick.next_index(), msg.clone())).is_err())
                },
                || {
                    drain_all(&mut inboxes);
                },
            );
            assert_eq!(failed, 0, "a send failed");
            spent
        });
    });
}

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C) {
    let (ids, mut inboxes): (Vec<C::Id>, Vec<C::Rx>) =
        (0..CLIENTS).map(|_| registry.register()).unzip();
    let msg = message();
    let mut pick = Indices::new(CLIENTS);
    group.bench_function(BenchmarkId::from_parameter(registry.name()), |b| {
        b.iter_custom(|iters| {
            let mut failed = 0_u64;
            let spent = timed_chunks(
                iters,
                CLIENTS as u64,
                || {
                    let id = ids[pick.next_index()];
                    failed += u64::from(black_box(registry.send(id, msg.clone())).is_err());
                },
                || {
                    drain_all(&mut inboxes);
                },
            );
            assert_eq!(failed, 0, "a send failed");
            spent
        });
    });
}

fn send(c: &mut Criterion) {
    let mut group = c.benchmark_group("send");
    group.throughput(Throughput::Elements(1));
    contender(&mut group, common::switchboard());
    floor(&mut group);
    contender(&mut group, common::dashmap());
    contender(&mut group, common::mutex());
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = send
}
criterion_main!(benches);
