//! The cold broadcast: a connection storm, then the very first message to everyone.
//!
//! A live event sees this: N viewers connect and join one session, and then the first
//! broadcast goes out. Each repetition builds a fresh registry (or floor), registers and
//! attaches N clients (timed: the **storm**), spawns one prompt receiver task per client and
//! lets them all park, then times the **first broadcast** alone. The floor and the baselines
//! create their channels when a client registers; a design that defers work to the first
//! message pays it here, on the broadcaster's thread.
//!
//! Contenders take turns, rotating who goes first, and each repetition tears down completely
//! before the next, so every first broadcast meets clients nobody has sent to yet. Before each
//! one the allocator gives its free pages back to the system ([`fresh_pages`]), so the storm
//! and the first broadcast find memory as a server's first event does: never touched, paid for
//! in page faults by whoever touches it first. Without that, each repetition would reuse the
//! pages the one before it freed and the first broadcast would look warmer than it is.
//!
//! Right before it is timed, each first broadcast meets the caches as a warm one does: a
//! warm sample in [`fanout`](super::fanout) follows another contender's broadcast to as many
//! members and its receivers' drain, so a [`Neighbour`] of `n` members broadcasts and drains
//! first. Timed straight after its own storm and its receivers parking, a cold broadcast found
//! its own entries in the caches that a warm one had lost to the contender before it, and
//! `cold_broadcast_vs_warm_100k` read 0.57-0.87: cold beating warm, from where the data sat.
//! Once the receivers took it, one untimed broadcast lets switchboard's receivers grow their
//! rings, the neighbour broadcasts again, and the **reference** broadcast is timed the same
//! way: warm, under the first one's conditions, seconds after it, which is what
//! `cold_broadcast_vs_warm_100k` sets the first against (see [`broadcasts`]).
//!
//! Beside each broadcast's wall time the broadcaster's thread records its CPU time, how long
//! it waited for a CPU, and the page faults it and the whole process took
//! ([`thread_usage`](crate::thread_usage)). On a shared machine a 100k broadcast's wall time
//! can be half waiting; these say whether a slow first broadcast did more work or waited
//! longer, and whose thread paid for first-touch pages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baselines::{DashMapRegistry, Fanout, Floor, Inbox, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::{median, Ctx};
use crate::invariants::Violations;
use crate::message::{Msg, EVERYONE};
use crate::subject::Subject;
use crate::tasks::{TaskCount, TaskGuard};
use crate::thread_usage::{Mark, Usage};

/// One contender's cold figures at one size: medians over [`samples`](Self::samples).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cold {
    /// Registering and attaching every member, in nanoseconds.
    pub storm_ns: f64,
    /// The first broadcast after the storm, in nanoseconds.
    pub first_ns: f64,
    /// The reference: the third broadcast, once the receivers drained the first two
    /// and the [`Neighbour`] broadcast again; a warm broadcast met under the first
    /// one's conditions (the name is the JSON's, from when it was the second).
    pub second_ns: f64,
    /// The storm and the first broadcast, end to end (the median of their sums).
    pub storm_then_broadcast_ns: f64,
    /// What the first broadcast cost the broadcaster's thread (each field a median).
    pub first_usage: Usage,
    /// The same for the reference broadcast.
    pub second_usage: Usage,
    /// Repetitions.
    pub samples: usize,
}

/// Repetitions at `n` members: fewer at the sizes where one takes a second. At 100k a
/// broadcast costs its thread about 7 ms of CPU, and on a shared machine waiting for a
/// CPU adds 0-20 ms to whichever broadcast a preemption hits. A median of two (the quick
/// pass's count before) read `cold_broadcast_vs_warm_100k` at 0.87-1.39 across runs of
/// one build; nine read 0.90-1.18, for about 30 s more of the quick pass.
pub fn repetitions(n: usize, quick: bool) -> usize {
    match (quick, n >= 100_000) {
        (true, true) => 9,
        (true, false) => 3,
        (false, true) => 15,
        (false, false) => 9,
    }
}

/// What the receivers of one repetition share.
#[derive(Debug, Default)]
struct Receivers {
    tasks: TaskCount,
    /// Tasks that have run at least once. Relaxed everywhere: only counted, and the count is
    /// read after the tasks had time to park, which no ordering could make exact anyway.
    started: AtomicUsize,
    /// Messages received. Relaxed: the waiter only needs to see it reach the total.
    received: AtomicUsize,
}

/// `_task` first: it must drop last (parameters drop in reverse order).
async fn receive<R: Inbox<Msg>>(_task: TaskGuard, shared: Arc<Receivers>, mut rx: R) {
    shared.started.fetch_add(1, Ordering::Relaxed);
    while let Some(msg) = rx.recv().await {
        shared.received.fetch_add(1, Ordering::Relaxed);
        msg.received();
    }
}

impl Receivers {
    fn spawn<R: Inbox<Msg>>(self: &Arc<Self>, inboxes: Vec<R>) {
        for rx in inboxes {
            let task = self.tasks.enter();
            tokio::spawn(receive(task, Arc::clone(self), rx));
        }
    }

    /// Waits until `n` tasks ran and parked on their empty channel.
    async fn parked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.started.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A started task parks on its first `recv` without yielding in between.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// Waits until `n` messages were received; false after a minute.
    async fn received(&self, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.received.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// One repetition's figures.
#[derive(Clone, Copy)]
struct Sample {
    storm: Duration,
    first: Duration,
    second: Duration,
    first_usage: Usage,
    second_usage: Usage,
}

/// Times one broadcast, with what it cost the calling thread.
fn timed<T>(broadcast: impl FnOnce() -> T) -> (T, Duration, Usage) {
    let mark = Mark::now();
    let start = Instant::now();
    let out = broadcast();
    let took = start.elapsed();
    (out, took, mark.since())
}

fn check(v: &Violations, scope: &str, n: usize, f: &Fanout) {
    v.expect(f.recipients == n && f.delivered == n, scope, || {
        format!("a broadcast to {n} fresh members reported {f:?}")
    });
}

async fn finish(v: &Violations, scope: &str, shared: &Receivers, n: usize) {
    let all = shared.received(n).await;
    v.expect(all, scope, || {
        format!(
            "{} of {n} receivers got the first broadcast within a minute",
            shared.received.load(Ordering::Relaxed)
        )
    });
}

async fn ended(v: &Violations, scope: &str, shared: &Receivers) {
    let stuck = shared.tasks.wait_idle(Duration::from_secs(60)).await;
    v.expect(stuck == 0, scope, || {
        format!("{stuck} receivers still running after the registry let them go")
    });
}

/// Returns the allocator's free memory to the system, so that the next allocations fault in
/// fresh pages. Only glibc can be asked; elsewhere this does nothing and the cold figures are
/// warmer than a first event's.
pub fn fresh_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free; it takes no
    // pointer and invalidates no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What precedes every warm broadcast, for the cold ones to meet too: another contender's
/// broadcast to as many members, and its receivers draining it. A bare floor over tokio
/// channels, its receivers counting like the cold ones; the same for every contender.
struct Neighbour {
    floor: Floor<Msg>,
    shared: Arc<Receivers>,
    n: usize,
    /// Broadcasts it made.
    rounds: usize,
}

impl Neighbour {
    async fn new(n: usize, capacity: usize) -> Self {
        let (floor, inboxes) = Floor::<Msg>::new(n, capacity);
        let shared = Arc::new(Receivers::default());
        shared.spawn(inboxes);
        shared.parked(n).await;
        Self {
            floor,
            shared,
            n,
            rounds: 0,
        }
    }

    /// Broadcasts once and waits until every receiver took it.
    async fn stir(&mut self, v: &Violations, size: usize) {
        let f = self.floor.broadcast(Msg::new(0, 0, EVERYONE, size));
        check(v, "fanout/cold/neighbour", self.n, &f);
        self.rounds += 1;
        finish(
            v,
            "fanout/cold/neighbour",
            &self.shared,
            self.n * self.rounds,
        )
        .await;
    }

    async fn end(self, v: &Violations) {
        drop(self.floor);
        ended(v, "fanout/cold/neighbour", &self.shared).await;
    }
}

async fn design<S: Subject>(ctx: &Ctx, n: usize, neighbour: &mut Neighbour) -> Sample {
    let plan = &ctx.plan;
    fresh_pages();
    let v = &ctx.violations;
    let registry = S::build(plan.capacity, plan.policy);
    let scope = format!("fanout/cold/{}", registry.name());
    let mut ids = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let (id, rx) = registry.register();
        registry.attach(id, 0);
        ids.push(id);
        inboxes.push(rx);
    }
    let storm = start.elapsed();
    let shared = Arc::new(Receivers::default());
    shared.spawn(inboxes);
    shared.parked(n).await;
    let sample = broadcasts(ctx, &scope, &shared, n, neighbour, storm, |msg| {
        registry.broadcast(0, msg)
    })
    .await;
    for id in ids {
        registry.unregister(id);
    }
    ended(v, &scope, &shared).await;
    sample
}

async fn floor(ctx: &Ctx, n: usize, neighbour: &mut Neighbour) -> Sample {
    let plan = &ctx.plan;
    let v = &ctx.violations;
    let scope = "fanout/cold/floor";
    fresh_pages();
    let start = Instant::now();
    let (floor, inboxes) = Floor::<Msg>::new(n, plan.capacity);
    let storm = start.elapsed();
    let shared = Arc::new(Receivers::default());
    shared.spawn(inboxes);
    shared.parked(n).await;
    let sample = broadcasts(ctx, scope, &shared, n, neighbour, storm, |msg| {
        floor.broadcast(msg)
    })
    .await;
    drop(floor);
    ended(v, scope, &shared).await;
    sample
}

/// A repetition's broadcasts once its `n` receivers parked, for a registry and the
/// floor alike: the timed first; one untimed, during which switchboard's receivers grow
/// their rings (each allocates the rest of its ring at its second message); and the
/// timed reference, a warm broadcast. Each timed one follows a [`Neighbour`] stir.
///
/// The reference used to be the second broadcast, which met receivers busy faulting
/// in their rings: they took 13k-20k of 100k messages while it ran, against 45k-90k
/// during a warm one, so less of their work overlapped the broadcaster and, on a quiet
/// machine, it ran 10-20 % below a warm broadcast's cost. The first is set against a
/// warm broadcast, as `cold_broadcast_vs_warm_100k` says.
async fn broadcasts(
    ctx: &Ctx,
    scope: &str,
    shared: &Receivers,
    n: usize,
    neighbour: &mut Neighbour,
    storm: Duration,
    mut broadcast: impl FnMut(Msg) -> Fanout,
) -> Sample {
    let (v, size) = (&ctx.violations, ctx.plan.message_size);
    neighbour.stir(v, size).await;
    let (f, first, first_usage) = timed(|| broadcast(Msg::new(0, 0, EVERYONE, size)));
    check(v, scope, n, &f);
    finish(v, scope, shared, n).await;
    let f = broadcast(Msg::new(0, 1, EVERYONE, size));
    check(v, scope, n, &f);
    finish(v, scope, shared, 2 * n).await;
    neighbour.stir(v, size).await;
    let (f, second, second_usage) = timed(|| broadcast(Msg::new(0, 2, EVERYONE, size)));
    check(v, scope, n, &f);
    finish(v, scope, shared, 3 * n).await;
    Sample {
        storm,
        first,
        second,
        first_usage,
        second_usage,
    }
}

/// Measures every contender's storm and first broadcast at `n` members, in
/// [`fanout::CONTENDERS`](super::fanout::CONTENDERS) order.
pub async fn measure(ctx: &Ctx, n: usize) -> BTreeMap<&'static str, Cold> {
    let reps = repetitions(n, ctx.plan.quick);
    let names = super::fanout::CONTENDERS;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::with_capacity(reps); names.len()];
    let mut nb = Neighbour::new(n, ctx.plan.capacity).await;
    for rep in 0..reps {
        for k in 0..names.len() {
            let i = (rep + k) % names.len();
            let s = match i {
                0 => floor(ctx, n, &mut nb).await,
                1 => design::<SwitchboardRegistry<Msg>>(ctx, n, &mut nb).await,
                2 => design::<DashMapRegistry<Msg>>(ctx, n, &mut nb).await,
                _ => design::<MutexRegistry<Msg>>(ctx, n, &mut nb).await,
            };
            samples[i].push(s);
        }
    }
    nb.end(&ctx.violations).await;
    let ns = |d: Duration| d.as_nanos() as f64;
    names
        .iter()
        .zip(samples)
        .map(|(&name, xs)| {
            let med =
                |f: &dyn Fn(&Sample) -> f64| median(&mut xs.iter().map(f).collect::<Vec<_>>());
            let usage = |u: &dyn Fn(&Sample) -> Usage| Usage {
                cpu_ns: med(&|s| u(s).cpu_ns),
                wait_ns: med(&|s| u(s).wait_ns),
                faults: med(&|s| u(s).faults),
                process_faults: med(&|s| u(s).process_faults),
            };
            let cold = Cold {
                storm_ns: med(&|s| ns(s.storm)),
                first_ns: med(&|s| ns(s.first)),
                second_ns: med(&|s| ns(s.second)),
                storm_then_broadcast_ns: med(&|s| ns(s.storm + s.first)),
                first_usage: usage(&|s| s.first_usage),
                second_usage: usage(&|s| s.second_usage),
                samples: xs.len(),
            };
            (name, cold)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::repetitions;

    #[test]
    fn the_default_run_repeats_more_than_the_quick_one() {
        for n in [10, 100_000] {
            assert!(repetitions(n, false) > repetitions(n, true));
            assert!(repetitions(n, true) >= 2, "a median of one is no median");
        }
    }
}
