//! What one stretch of code cost its own thread, beside its wall time: CPU time, time spent
//! runnable but waiting for a CPU, and page faults, its thread's and the whole process's.
//!
//! On two vCPUs shared with other work, a 15 ms broadcast's wall time can be half waiting
//! for a CPU, and one broadcast's page faults may land on the thread that runs its
//! receivers, not on the broadcaster's. These readings tell the two apart from work the
//! broadcast did itself. Linux only (`CLOCK_THREAD_CPUTIME_ID`, `getrusage`,
//! `/proc/thread-self/schedstat`); elsewhere, or where a source is missing, a field reads 0.

use serde::Serialize;

/// A stretch's cost, from [`Mark::since`]. Counts are `f64` so that medians of them are too.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// CPU time of the calling thread, in nanoseconds.
    pub cpu_ns: f64,
    /// Time the calling thread was runnable but another task had its CPU, in nanoseconds
    /// (the kernel's schedstat run-queue wait).
    pub wait_ns: f64,
    /// Minor and major page faults taken by the calling thread.
    pub faults: f64,
    /// Page faults taken by every thread of the process, the calling one included.
    pub process_faults: f64,
}

/// The counters at one instant, on the thread that took it.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    cpu_ns: i64,
    wait_ns: i64,
    faults: i64,
    process_faults: i64,
}

impl Mark {
    /// Reads the counters now.
    pub fn now() -> Self {
        Self {
            cpu_ns: thread_cpu_ns(),
            wait_ns: run_queue_wait_ns(),
            faults: faults(Who::Thread),
            process_faults: faults(Who::Process),
        }
    }

    /// What passed since `self` was taken; call it on the same thread.
    pub fn since(&self) -> Usage {
        let now = Self::now();
        let d = |a: i64, b: i64| (b - a).max(0) as f64;
        Usage {
            cpu_ns: d(self.cpu_ns, now.cpu_ns),
            wait_ns: d(self.wait_ns, now.wait_ns),
            faults: d(self.faults, now.faults),
            process_faults: d(self.process_faults, now.process_faults),
        }
    }
}

/// CPU time of the whole process so far (every thread, user and system), in nanoseconds;
/// 0 where it cannot be read.
#[cfg(target_os = "linux")]
pub fn process_cpu_ns() -> i64 {
    cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(not(target_os = "linux"))]
pub fn process_cpu_ns() -> i64 {
    0
}

#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> i64 {
    cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[cfg(target_os = "linux")]
fn cpu_clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc == 0 {
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> i64 {
    0
}

/// The second field of `/proc/thread-self/schedstat`: nanoseconds spent on a run queue.
fn run_queue_wait_ns() -> i64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Who {
    Thread,
    Process,
}

#[cfg(target_os = "linux")]
fn faults(who: Who) -> i64 {
    let whom = match who {
        Who::Thread => libc::RUSAGE_THREAD,
        Who::Process => libc::RUSAGE_SELF,
    };
    // SAFETY: `rusage` is plain old data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    let rc = unsafe { libc::getrusage(whom, &mut usage) };
    if rc == 0 {
        usage.ru_minflt + usage.ru_majflt
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn faults(_who: Who) -> i64 {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{process_cpu_ns, Mark};

    #[test]
    fn process_cpu_counts_every_thread() {
        let (process, this) = (process_cpu_ns(), Mark::now());
        std::thread::spawn(|| {
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_millis(50) {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        let (spent, own) = (process_cpu_ns() - process, this.since().cpu_ns);
        assert!(
            spent >= 40_000_000,
            "50 ms spun on another thread read as {spent} ns"
        );
        assert!(
            own < 20_000_000.0,
            "the waiting thread itself read {own} ns"
        );
    }

    #[test]
    fn touching_fresh_pages_counts_faults_and_spinning_counts_cpu() {
        const PAGES: usize = 64;
        let len = PAGES * 4096;
        // Pages straight from the kernel: the allocator could hand back pages this
        // process had already touched, which fault no more.
        // SAFETY: an anonymous private mapping with no address hint touches no existing
        // memory; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let mark = Mark::now();
        for page in 0..PAGES {
            // SAFETY: `page * 4096 < len`, inside the writable mapping made above.
            unsafe { map.cast::<u8>().add(page * 4096).write_volatile(1) };
        }
        let used = mark.since();
        // Work until the thread's clock shows a millisecond of CPU, or give up after ten
        // seconds of wall time, however loaded the machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mark.since().cpu_ns < 1_000_000.0 && std::time::Instant::now() < deadline {
            std::hint::black_box((0..1000).sum::<u64>());
        }
        let cpu_ns = mark.since().cpu_ns;
        // SAFETY: `map` is the mapping made above, of `len` bytes, and nothing uses it now.
        unsafe { libc::munmap(map, len) };
        assert!(used.faults >= PAGES as f64, "{used:?}");
        assert!(used.process_faults >= used.faults, "{used:?}");
        assert!(cpu_ns >= 1_000_000.0, "{cpu_ns} ns of CPU in ten seconds");
    }
}
