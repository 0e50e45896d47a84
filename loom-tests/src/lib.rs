//! Model checks of switchboard's concurrency, and the harness they share.
//!
//! The scenarios in `tests/` drive the library's real public API. Each is written
//! once, against this crate's [`check`], [`thread::spawn`], [`StartLine`] and
//! [`Clock`], and runs in one of two ways:
//!
//! * **Under loom** (`--cfg switchboard_loom`), [`check`] is a loom model: loom runs
//!   the scenario once per interleaving of the library's atomics and locks, up to the
//!   preemption bound, and the library's `sync` facade hands loom every primitive.
//! * **Without the cfg**, [`check`] runs the scenario [`SMOKE_ITERATIONS`] times on
//!   real threads that start together, so `cargo test --workspace` exercises the
//!   same scenarios and invariants as multi-threaded smoke tests.
//!
//! # Running the models
//!
//! ```text
//! RUSTFLAGS="--cfg switchboard_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=3 cargo test -p loom-tests --release
//! ```
//!
//! Measured on the shared 2-core machine at `LOOM_MAX_PREEMPTIONS=3` with a warm
//! build and `--test-threads=1` (nothing else running): 66 s end to end, of which
//! 52 s in the models: 35.7 s for `channel.rs` (models 8 and 9, two sends or a send
//! and a close against a parking receiver, explore 153,691 and 182,840
//! interleavings in 16.0 s and 18.3 s; the others 177 to 3,286 each), 12.4 s for
//! `models.rs` (model 4 alone 86,805 in 9.5 s; it explored 22,272 while the client
//! lock was a loom mutex: the slot's lock bit that replaced it is loom atomics, a
//! condition variable and a swap, each a scheduling point), 3.0 s for `races.rs`
//! and 0.5 s for `slot_lock.rs`.
//! Add `-- --nocapture --test-threads=1` to see each model's interleaving count,
//! time and reached cases (see [`check`]).
//!
//! `RUSTFLAGS` applies to every crate in the graph, so it must stay the same
//! between runs to reuse the build; `-C debug-assertions` keeps the library's
//! `debug_assert!`s armed in the release build. Without `LOOM_MAX_PREEMPTIONS`,
//! [`check`] bounds preemptions at [`DEFAULT_PREEMPTIONS`] anyway.
//!
//! # What loom sees, and what it does not
//!
//! Every atomic, `Arc`, mutex, snapshot cell, queue, waker slot and map of the
//! registry is a loom type under the cfg, and the lock-free ones keep their real
//! algorithm; the library's `src/sync.rs` lists exactly what stays outside loom's
//! view. `tests/channel.rs` polls receivers and waiting senders with [`block_on`],
//! so a lost wakeup is a deadlock that fails the model.
//!
//! The harness's own bookkeeping ([`Cases`], the run counter) is `std` and outside
//! the model; it never holds a lock across a loom operation.
//!
//! [`Clock`] ticks are loom atomics, so that loom explores where each tick falls
//! relative to the other threads' work (a plain `std` counter would not be a
//! scheduling point, and a tick taken at the start of a thread's turn would always
//! come first). They are `Relaxed` read-modify-writes: their one modification order
//! is the schedule's real-time order, and they add no happens-before edge that
//! could hide a missing one in the library.

#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms, unreachable_pub)]

#[cfg(switchboard_loom)]
use loom::sync::atomic::AtomicUsize as TickCounter;
use std::collections::BTreeMap;
#[cfg(not(switchboard_loom))]
use std::sync::atomic::AtomicUsize as TickCounter;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Threads, from loom under the cfg and from `std` otherwise.
pub mod thread {
    #[cfg(switchboard_loom)]
    pub use loom::thread::{spawn, JoinHandle};
    #[cfg(not(switchboard_loom))]
    pub use std::thread::{spawn, JoinHandle};
}

/// A one-shard registry of `u32` messages whose channels hold `capacity`: the shape
/// every model starts from.
pub fn registry(capacity: usize) -> switchboard::Registry<u32> {
    switchboard::Registry::builder()
        .shards(1)
        .channel_capacity(capacity)
        .build()
        .expect("valid settings")
}

/// Registers a plain client.
pub fn register(
    registry: &switchboard::Registry<u32>,
) -> (switchboard::ClientId, switchboard::Receiver<u32>) {
    registry
        .register(switchboard::ClientInfo::new())
        .expect("no client limit and slots to spare")
}

/// Everything the receiver holds, and how it ended.
pub fn drain(rx: &mut switchboard::Receiver<u32>) -> (Vec<u32>, switchboard::TryRecvError) {
    let mut got = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(msg) => got.push(msg),
            Err(end) => return (got, end),
        }
    }
}

/// Joins a scenario thread, failing the scenario if it panicked.
pub fn join<T>(handle: thread::JoinHandle<T>) -> T {
    handle.join().expect("scenario thread panicked")
}

/// Runs a future to completion on the calling thread: loom's `block_on` under the
/// cfg (a future that is never woken is a deadlock, which fails the model), a
/// thread-parking executor otherwise.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    #[cfg(switchboard_loom)]
    return loom::future::block_on(future);
    #[cfg(not(switchboard_loom))]
    return park::block_on(future);
}

#[cfg(not(switchboard_loom))]
mod park {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(out) => return out,
                // A wake that came before the park leaves its token: no lost wakeup.
                Poll::Pending => std::thread::park(),
            }
        }
    }
}

/// Times each smoke test (no cfg) runs its scenario.
pub const SMOKE_ITERATIONS: usize = 1000;

/// The preemption bound [`check`] uses when `LOOM_MAX_PREEMPTIONS` is not set.
pub const DEFAULT_PREEMPTIONS: usize = 2;

/// The longest execution, in scheduling points, [`check`] allows when
/// `LOOM_MAX_BRANCHES` is not set (loom's own default is 1 000). A bound on
/// one execution's length, not on what is explored: model 2b's setup (sixteen
/// attach and detach rounds before its threads start) passes 1 000 once the
/// session's member cells and the entry's handles are loom-visible, and explores
/// the same 5 227 interleavings under any larger bound.
pub const DEFAULT_MAX_BRANCHES: usize = 5_000;

/// Runs the scenario `f`: every interleaving under loom, [`SMOKE_ITERATIONS`]
/// times on real threads otherwise.
///
/// `f` reports which of the expected `cases` each run took through [`Cases::hit`].
/// Under loom, `check` then asserts that every case was reached by some
/// interleaving, so a model cannot pass by never reaching the race it is about
/// (real threads may miss rare ones, so the smoke tests only count them). It prints
/// `name`, the number of interleavings loom explored, the time it took, and each
/// case's count to stderr (shown with `--nocapture`).
///
/// # Panics
///
/// If the scenario panics in any run, if a run hits a case not in `cases`, or,
/// under loom, if a case is never hit.
pub fn check<F>(name: &str, cases: &[&'static str], f: F)
where
    F: Fn(&Cases) + Send + Sync + 'static,
{
    let seen = Cases::new(cases);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let how = run(&seen, &runs, f);
    let counts = seen.counts();
    let report = format!(
        "model {name}: {} runs in {:.2?} ({how}, debug assertions {}); cases {counts:?}",
        // Relaxed: a plain count, read after every run has finished.
        runs.load(Ordering::Relaxed),
        started.elapsed(),
        if cfg!(debug_assertions) { "on" } else { "off" },
    );
    eprintln!("{report}");
    if cfg!(switchboard_loom) {
        let missed: Vec<_> = counts.iter().filter(|(_, n)| **n == 0).collect();
        assert!(
            missed.is_empty(),
            "loom never reached {missed:?} in {report}"
        );
    }
}

/// Runs `f` under loom; returns how, for the report.
#[cfg(switchboard_loom)]
fn run<F>(seen: &Cases, runs: &Arc<std::sync::atomic::AtomicUsize>, f: F) -> String
where
    F: Fn(&Cases) + Send + Sync + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = DEFAULT_MAX_BRANCHES;
    }
    let (seen, counter) = (seen.clone(), Arc::clone(runs));
    builder.check(move || {
        // Relaxed: see `check`. The closure runs once per explored interleaving.
        counter.fetch_add(1, Ordering::Relaxed);
        f(&seen);
    });
    format!("loom, preemption bound {:?}", builder.preemption_bound)
}

/// Runs `f` [`SMOKE_ITERATIONS`] times on real threads; returns how.
#[cfg(not(switchboard_loom))]
fn run<F>(seen: &Cases, runs: &Arc<std::sync::atomic::AtomicUsize>, f: F) -> String
where
    F: Fn(&Cases) + Send + Sync + 'static,
{
    for _ in 0..SMOKE_ITERATIONS {
        // Relaxed: see `check`.
        runs.fetch_add(1, Ordering::Relaxed);
        f(seen);
    }
    "real threads".to_owned()
}

/// Which of a scenario's expected outcomes its runs reached; see [`check`].
///
/// A `std` mutex even under loom: it is never held across a loom operation, so
/// it cannot block a loom thread, and it is outside what is being checked.
#[derive(Debug, Clone)]
pub struct Cases(Arc<std::sync::Mutex<BTreeMap<&'static str, usize>>>);

impl Cases {
    fn new(cases: &[&'static str]) -> Self {
        Self(Arc::new(std::sync::Mutex::new(
            cases.iter().map(|case| (*case, 0)).collect(),
        )))
    }

    /// Records that this run reached `case`.
    ///
    /// # Panics
    ///
    /// If `case` is not one of the cases given to [`check`].
    pub fn hit(&self, case: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get_mut(case) {
            Some(n) => *n += 1,
            None => panic!("case {case:?} is not declared"),
        }
    }

    fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Lines threads up so that their operations overlap.
///
/// Without the cfg it is a barrier: thread start-up takes far longer than one
/// registry call, so without it the threads of a smoke test would rarely meet.
/// Under loom it does nothing; loom explores every start order anyway.
#[derive(Debug, Clone)]
pub struct StartLine {
    #[cfg(not(switchboard_loom))]
    barrier: Arc<std::sync::Barrier>,
}

impl StartLine {
    /// A start line for `threads` threads, the calling one included.
    #[must_use]
    pub fn new(threads: usize) -> Self {
        #[cfg(switchboard_loom)]
        let _ = threads;
        Self {
            #[cfg(not(switchboard_loom))]
            barrier: Arc::new(std::sync::Barrier::new(threads)),
        }
    }

    /// Waits until every thread of the line has arrived (no cfg only).
    pub fn wait(&self) {
        #[cfg(not(switchboard_loom))]
        self.barrier.wait();
    }

    /// Spawns a thread that waits at this line, then runs `f`.
    pub fn spawn<T, F>(&self, f: F) -> thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let start = self.clone();
        thread::spawn(move || {
            start.wait();
            f()
        })
    }
}

/// The interval of real time in which an operation ran, in [`Clock`] ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Tick taken just before the call.
    pub start: usize,
    /// Tick taken just after it returned.
    pub end: usize,
}

impl Span {
    /// Whether this operation returned before `later` was called, so that every
    /// linearization orders it first.
    #[must_use]
    pub fn precedes(&self, later: &Span) -> bool {
        self.end < later.start
    }
}

/// A tick counter shared by a scenario's threads, for [`Span`]s.
///
/// Ordering: loom-visible `Relaxed` RMWs under the cfg, `SeqCst` on real threads;
/// see the crate docs.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<TickCounter>);

impl Clock {
    /// A clock at tick 0.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` and returns its result with the span it ran in.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> (T, Span) {
        let start = self.tick();
        let out = f();
        let end = self.tick();
        (out, Span { start, end })
    }

    fn tick(&self) -> usize {
        // Relaxed under loom: RMWs on one location follow the schedule, and must
        // not synchronise the threads they time.
        #[cfg(switchboard_loom)]
        let ordering = Ordering::Relaxed;
        // SeqCst on real threads: a tick that follows another in the counter's order
        // also sees everything done before it, as real-time order implies.
        #[cfg(not(switchboard_loom))]
        let ordering = Ordering::SeqCst;
        self.0.fetch_add(1, ordering)
    }
}

/// Every order of the operations `spans` (as indexes into it) that agrees with real
/// time: `i` comes before `j` whenever `j` returned before `i` was called is ruled
/// out. Each is a possible order of the operations' linearization points.
#[must_use]
pub fn linearizations(spans: &[Span]) -> Vec<Vec<usize>> {
    fn extend(spans: &[Span], order: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if order.len() == spans.len() {
            out.push(order.clone());
            return;
        }
        for next in 0..spans.len() {
            let placed = order.contains(&next);
            // `next` may go now only if no unplaced operation must precede it.
            let blocked = (0..spans.len()).any(|other| {
                other != next && !order.contains(&other) && spans[other].precedes(&spans[next])
            });
            if !placed && !blocked {
                order.push(next);
                extend(spans, order, out);
                order.pop();
            }
        }
    }
    let mut out = Vec::new();
    extend(spans, &mut Vec::with_capacity(spans.len()), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linearizations_respect_real_time() {
        let a = Span { start: 0, end: 1 };
        let b = Span { start: 2, end: 5 };
        let c = Span { start: 3, end: 4 };
        // a returned before b and c began; b and c overlap.
        assert_eq!(
            linearizations(&[a, b, c]),
            vec![vec![0, 1, 2], vec![0, 2, 1]]
        );
        assert_eq!(linearizations(&[b, c]).len(), 2);
    }
}
