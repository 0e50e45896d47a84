//! [`unique_mut`]: `Arc::get_mut` with loads where `std` takes a lock.
//!
//! `std`'s `Arc::get_mut` briefly locks the weak count with a compare-and-swap,
//! so that no `Weak` can upgrade while it checks the strong count: a locked
//! instruction on x86 even when the answer is no. A session's compaction asks it
//! of the layout it replaced and each of that layout's pages (about four per
//! compaction of a small room), and no `Weak` is made of either. Two loads and a
//! fence answer the same question there: no `Weak` exists, and none can be made
//! without a strong handle, of which the caller holds the only one.
#![allow(
    unsafe_code,
    reason = "a `&mut` into an `Arc` the loads prove unshared; see the SAFETY"
)]

use super::Arc;

/// Values of which no `Weak` is ever made: the only ones [`unique_mut`] takes.
///
/// Without `std`'s weak-count lock, a `Weak` could upgrade between the strong and
/// the weak load of `unique_mut` and be dropped before the second, which would then
/// hand out `&mut` beside a live strong handle.
///
/// # Safety
///
/// No code may call `Arc::downgrade` on an `Arc` of the implementing type.
pub(crate) unsafe trait NeverWeak {}

/// The value of `arc`, mutably, if `arc` is its only handle (strong or weak);
/// else `None`. As `Arc::get_mut`, without its locked instruction in the std
/// build.
#[inline]
pub(crate) fn unique_mut<T: NeverWeak>(arc: &mut Arc<T>) -> Option<&mut T> {
    #[cfg(not(switchboard_loom))]
    {
        use std::sync::atomic::{fence, Ordering};
        if Arc::strong_count(arc) != 1 {
            return None;
        }
        // Acquire: `strong_count` is a relaxed load; the fence makes every access
        // of the threads whose drops brought the count to 1 (their `Release`
        // decrements) happen-before ours, as `get_mut`'s acquire does. Before the
        // weak load, so that a `Weak` such a thread made before its drop is seen.
        fence(Ordering::Acquire);
        // `weak_count` is 0 only when no `Weak` exists; with one strong count,
        // ours, nobody can make one (that needs a strong handle) nor upgrade one.
        if Arc::weak_count(arc) != 0 {
            return None;
        }
        // SAFETY: the count is 1 and no `Weak` exists, and `&mut arc` is that one
        // handle, so no other reference to the value exists or can be made while
        // the returned borrow (tied to `arc`) lives.
        Some(unsafe { &mut *Arc::as_ptr(arc).cast_mut() })
    }
    #[cfg(switchboard_loom)]
    {
        Arc::get_mut(arc)
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    // SAFETY: not true of `i32` in general, but of the `Weak` below, which this test
    // makes only to check that it is refused, with no other thread to upgrade it.
    unsafe impl NeverWeak for i32 {}

    #[test]
    fn only_the_sole_handle_gets_the_value() {
        let mut arc = Arc::new(1);
        *unique_mut(&mut arc).expect("one handle") += 1;
        let other = Arc::clone(&arc);
        assert!(unique_mut(&mut arc).is_none(), "a second strong handle");
        drop(other);
        let weak = Arc::downgrade(&arc);
        assert!(
            unique_mut(&mut arc).is_none(),
            "a weak handle could upgrade"
        );
        drop(weak);
        assert_eq!(unique_mut(&mut arc).copied(), Some(2));
    }
}
