//! `broadcast`: one message to every member of one session, per implementation, beside two
//! floors: tokio's channels and switchboard's own (`own_floor`), the same bare loop, so that
//! switchboard over `own_floor` is the registry's overhead apart from the channel's speed.
//!
//! Receivers are drained between chunks of [`PER_DRAIN`] broadcasts, outside the timed
//! section, so no channel is ever full and every `try_send` delivers (checked after each
//! run). Throughput is in deliveries.

use std::hint::black_box;

use baselines::floor::{Bare, FloorChannel, Own, Tokio};
use baselines::{Contender, Inbox};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

#[allow(dead_code, reason = "each bench file uses a subset of the helpers")]
mod common;

use common::{drain_all, message, timed_chunks, Msg, CAPACITY, PER_DRAIN};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
const SESSION: u64 = 7;

/// A floor over channel `C`: tokio's ([`Tokio`]) or switchboard's own ([`Own`]), one loop.
fn floor<C: FloorChannel<Msg, Rx: Inbox<Msg>>>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    let (floor, mut inboxes) = Bare::<Msg, C>::new(n, CAPACITY);
    let msg = message();
    group.bench_function(BenchmarkId::new(floor.name(), n), |b| {
        b.iter_custom(|iters| {
            let mut delivered = 0;
            let spent = timed_chunks(
                iters,
                PER_DRAIN,
                || delivered += black_box(floor.broadcast(msg.clone())).delivered,
                || {
                    drain_all(&mut inboxes);
                },
            );
            assert_eq!(delivered as u64, iters * n as u64, "a channel filled up");
            spent
        });
    });
}

fn contender<C: Contender<Msg>>(group: &mut BenchmarkGroup<'_, WallTime>, registry: C, n: usize) {
    let mut inboxes: Vec<C::Rx> = (0..n)
        .map(|_| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, SESSION));
            inbox
        })
        .collect();
    let msg = message();
    group.bench_function(BenchmarkId::new(registry.name(), n), |b| {
        b.iter_custom(|iters| {
            let mut delivered = 0;
            let spent = timed_chunks(
                iters,
                PER_DRAIN,
                || delivered += black_box(registry.broadcast(SESSION, msg.clone())).delivered,
                || {
                    drain_all(&mut inboxes);
                },
            );
            assert_eq!(delivered as u64, iters * n as u64, "a channel filled up");
            spent
        });
    });
}

fn broadcast(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        // One implementation alive at a time: 100_000 clients each is memory enough.
        contender(&mut group, common::switchboard(), n);
        floor::<Tokio>(&mut group, n);
        floor::<Own>(&mut group, n);
        contender(&mut group, common::dashmap(), n);
        contender(&mut group, common::mutex(), n);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = broadcast
}
criterion_main!(benches);
