//! Shared by every bench file: the short mode, the clock, the message, channel sizing, the
//! contenders and the draining that keeps channels from filling inside a timed section.
//!
//! Two environment variables, both off unless set to something other than `0`:
//!
//! - `SWITCHBOARD_BENCH_QUICK`: the short mode. Same scenarios and sizes, shorter sampling; the
//!   whole suite took 4.6 to 6 minutes on 2 shared cores, against 9.5 for plain `cargo bench`.
//! - `SWITCHBOARD_BENCH_CPU_TIME`: single-threaded benches time the thread's CPU
//!   (`CLOCK_THREAD_CPUTIME_ID`) instead of the wall, so other tenants of a shared machine
//!   preempting the bench do not count. `mixed` always uses the wall: it times two threads.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use baselines::{DashMapRegistry, Inbox, MutexRegistry, SwitchboardRegistry};
use criterion::Criterion;

/// What every bench sends: cloning it is one reference-count increment, as the crate advises.
pub type Msg = Arc<[u8]>;

/// Channel capacity of every client in every implementation: switchboard's default.
pub const CAPACITY: usize = 32;

/// Broadcasts (or sends to one client) between two drains, so no channel is ever full.
pub const PER_DRAIN: u64 = CAPACITY as u64 - 1;

/// Set to anything but `0` for the short mode: same scenarios and sizes, shorter sampling.
pub const QUICK_ENV: &str = "SWITCHBOARD_BENCH_QUICK";

/// A 64-byte payload.
pub fn message() -> Msg {
    Arc::from(&[0x5a_u8; 64][..])
}

/// Set to anything but `0` to time single-threaded benches in thread CPU time.
pub const CPU_TIME_ENV: &str = "SWITCHBOARD_BENCH_CPU_TIME";

fn flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}

/// Whether the short mode is on.
pub fn quick() -> bool {
    flag(QUICK_ENV)
}

/// The clock single-threaded benches read: wall time since the first call, or this thread's
/// CPU time when [`CPU_TIME_ENV`] is set.
pub fn now() -> Duration {
    static CPU: OnceLock<bool> = OnceLock::new();
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    if *CPU.get_or_init(|| flag(CPU_TIME_ENV)) {
        thread_cpu_time()
    } else {
        EPOCH.get_or_init(Instant::now).elapsed()
    }
}

#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable `timespec` for the whole call, which is all
    // `clock_gettime` writes to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    panic!("{CPU_TIME_ENV} needs a unix thread CPU clock")
}

/// Criterion's settings: its defaults, or the short mode's. Command-line flags still win.
pub fn criterion() -> Criterion {
    let c = Criterion::default();
    if quick() {
        c.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10)
    } else {
        c
    }
}

/// switchboard with default shards and the common channel capacity.
pub fn switchboard() -> SwitchboardRegistry<Msg> {
    SwitchboardRegistry::with_capacity(CAPACITY)
}

/// The `DashMap` design.
pub fn dashmap() -> DashMapRegistry<Msg> {
    DashMapRegistry::new(CAPACITY)
}

/// The single-`Mutex` design.
pub fn mutex() -> MutexRegistry<Msg> {
    MutexRegistry::new(CAPACITY)
}

/// Empties every inbox; returns how many messages that took.
pub fn drain_all<M, I: Inbox<M>>(inboxes: &mut [I]) -> usize {
    inboxes.iter_mut().map(Inbox::drain).sum()
}

/// Runs `op` `iters` times in chunks of at most `chunk`, timing only the chunks (with
/// [`now`]) and calling `between` (untimed) after each one. Returns the time spent in `op`.
pub fn timed_chunks(
    iters: u64,
    chunk: u64,
    mut op: impl FnMut(),
    mut between: impl FnMut(),
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(chunk);
        let start = now();
        for _ in 0..n {
            op();
        }
        spent += now() - start;
        between();
        left -= n;
    }
    spent
}

/// A xorshift64* stream of indices below `n`, the same sequence for every implementation.
#[derive(Debug, Clone)]
pub struct Indices {
    state: u64,
    n: u64,
}

impl Indices {
    pub fn new(n: usize) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
            n: n as u64,
        }
    }

    #[inline]
    pub fn next_index(&mut self) -> usize {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        // Multiply-shift: unbiased enough for picking among 100_000 clients.
        ((r * self.n) >> 32) as usize
    }
}
