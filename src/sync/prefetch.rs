//! [`prefetch`]: a hint that a line of memory will be read soon.
//!
//! A broadcast to a large session walks its member cells in order, and every cell
//! points at an entry somewhere else on the heap. At 100k members those entries are
//! not in cache, and each `try_send` would wait for its own. The walk knows the
//! pointers ahead, so it asks for a few entries early; the loads then overlap
//! instead of queueing. A prefetch is only a hint: it never faults and changes
//! nothing the program can observe, so the address may be null or stale.
#![allow(
    unsafe_code,
    reason = "the x86 prefetch intrinsic is an unsafe fn before Rust 1.86; see SAFETY"
)]

/// Asks the CPU to start loading the cache line at `p` into every cache level.
/// A no-op where there is no such instruction, and under loom.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(switchboard_loom)))]
    #[allow(
        unused_unsafe,
        reason = "safe to call from Rust 1.86, unsafe under the 1.85 minimum"
    )]
    // SAFETY: `prefetcht0` reads nothing into the program and never faults, at any
    // address, null or unmapped included; SSE, which it needs, is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(switchboard_loom))))]
    let _ = p;
}
