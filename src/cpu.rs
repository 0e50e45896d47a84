//! The CPU the calling thread is running on, which picks a registration's home
//! shard (see [`shard::home`](crate::shard::home)).
//!
//! On Linux it is `sched_getcpu`, which glibc 2.35 and later answer from the
//! thread's restartable-sequences area, a memory read rather than a system call
//! (older libcs use the vDSO's `getcpu`). The answer may be stale by the time the
//! caller uses it, because the thread can migrate at any moment; a home shard only
//! has to be right most of the time, and any shard is correct. Elsewhere, and
//! under loom, there is no answer and the caller falls back to a per-thread home.
#![cfg_attr(
    all(target_os = "linux", not(switchboard_loom)),
    allow(
        unsafe_code,
        reason = "one call of sched_getcpu through libc; see the SAFETY"
    )
)]

/// The CPU this thread runs on now, or `None` where it cannot be asked.
#[inline]
pub(crate) fn current() -> Option<usize> {
    #[cfg(all(target_os = "linux", not(switchboard_loom)))]
    {
        // SAFETY: `sched_getcpu` takes no arguments, touches none of our memory
        // and reports failure as -1, which the conversion turns into `None`.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }
    #[cfg(not(all(target_os = "linux", not(switchboard_loom))))]
    {
        None
    }
}

/// CPUs this thread may run on (its affinity mask), lowest first.
#[cfg(all(test, target_os = "linux", not(switchboard_loom)))]
pub(crate) fn allowed() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain old data, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, valid and exclusive for the call.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity failed");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below `CPU_SETSIZE`, the set's size in bits.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu` alone. The kernel moves a thread off a CPU its
/// new mask excludes before `sched_setaffinity` returns.
#[cfg(all(test, target_os = "linux", not(switchboard_loom)))]
pub(crate) fn pin_current_thread(cpu: usize) {
    // SAFETY: as in `allowed`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from `allowed`, below `CPU_SETSIZE`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the pointer and size describe `set`, valid for the call; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(rc, 0, "sched_setaffinity to cpu {cpu} failed");
}

#[cfg(all(test, target_os = "linux", not(switchboard_loom)))]
mod tests {
    use super::{allowed, current, pin_current_thread};

    #[test]
    fn a_pinned_thread_reads_the_cpu_it_is_pinned_to() {
        for cpu in allowed().into_iter().take(4) {
            let read = std::thread::spawn(move || {
                pin_current_thread(cpu);
                current()
            })
            .join()
            .unwrap();
            assert_eq!(read, Some(cpu));
        }
    }
}
