//! The registry's wall clock: milliseconds since the Unix epoch, as stamped on
//! every registration (`connected_at`) and read by `connected_within` queries.
//!
//! On Linux it reads `CLOCK_REALTIME_COARSE`: the kernel's real-time clock as of
//! its last tick, served by the vDSO from memory without reading the CPU's
//! counter. On the 2-vCPU VM the benches run on, `SystemTime::now()` took about
//! 35 ns, the coarse read about 6 ns: the precise clock was the single largest
//! cost of a registration (a churn cycle took about 225 ns). The price is
//! resolution: a stamp may be up to one tick (the clock's resolution,
//! `clock_getres`, 4 ms here; 1–10 ms with the usual kernel `HZ`) earlier than
//! `SystemTime::now()` read at the same moment, and clients registered within
//! one tick share a stamp. Redis stamps its commands from a cached clock for the
//! same reason. Queries compare stamps with a cutoff read from this same clock,
//! so `connected_within` is consistent with `connected_at`. Elsewhere, and if
//! the coarse read fails, it is `SystemTime::now()`.
#![allow(
    unsafe_code,
    reason = "one call of clock_gettime through libc; see the SAFETY"
)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now, to the coarse clock's resolution (see
/// the module docs); 0 before the epoch.
#[inline]
pub(crate) fn now_millis() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(millis) = coarse_millis() {
        return millis;
    }
    precise_millis()
}

#[cfg(target_os = "linux")]
#[inline]
fn coarse_millis() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which is
    // valid and exclusive for the call; it reads nothing else of ours.
    // CLOCK_REALTIME_COARSE exists since Linux 2.6.32; a kernel without it
    // returns an error, answered by the precise clock.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } != 0;
    if failed {
        return None;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    // The kernel keeps `tv_nsec` below 10^9; the conversion only guards a bad value.
    let subsec = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    Some(secs.saturating_mul(1_000).saturating_add(subsec))
}

fn precise_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since
        .as_secs()
        .saturating_mul(1_000)
        .saturating_add(u64::from(since.subsec_millis()))
}

/// [`now_millis`] as a `SystemTime`.
pub(crate) fn now() -> SystemTime {
    millis_to_time(now_millis())
}

/// A stamp from [`now_millis`] as a `SystemTime`; the epoch if it overflows.
pub(crate) fn millis_to_time(millis: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(millis))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stamp is the wall clock's, to one tick: not a monotonic clock (whose
    /// epoch is boot) nor seconds mistaken for milliseconds.
    #[test]
    fn a_stamp_is_the_wall_clock_to_within_a_tick() {
        for _ in 0..1_000 {
            let before = precise_millis();
            let stamp = now_millis();
            let after = precise_millis();
            // A tick is at most 10 ms with the usual HZ; allow a slow scheduler
            // some room too, but far less than any unit or epoch mistake.
            assert!(
                stamp <= after && stamp + 50 >= before,
                "stamp {stamp} outside {before}..={after}"
            );
        }
    }

    #[test]
    fn stamps_never_run_backwards_between_reads() {
        let mut last = now_millis();
        for _ in 0..10_000 {
            let next = now_millis();
            assert!(next >= last, "{next} after {last}");
            last = next;
        }
    }
}
