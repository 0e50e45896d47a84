//! [`WakerSlot`]: one task's waker, handed between threads by a protocol run on
//! another word, so that storing and taking it cost no locked instruction of their own.
//!
//! `atomic-waker`'s `AtomicWaker` guards its waker with a state word of its own: two
//! locked RMWs to register and two to wake. The channel already decides, with RMWs on
//! its `state` word, who may touch its receiver's waker (the receiver while it is not
//! parked; the one send or close whose RMW clears `RX_PARKED`, until it clears
//! `RX_WAKING`; see `channel.rs`), so a plain cell whose accesses that protocol orders
//! is enough. It is built on the facade's [`UnsafeCell`], so loom checks that no two
//! accesses ever overlap.
#![allow(
    unsafe_code,
    reason = "the waker is reached through a raw pointer by whichever thread the caller's protocol makes its owner; see each SAFETY"
)]

use std::task::Waker;

use super::UnsafeCell;

/// A cell holding at most one [`Waker`], accessed only by its current owner.
pub(crate) struct WakerSlot(UnsafeCell<Option<Waker>>);

// SAFETY: `Waker` is `Send + Sync`, and the callers' contracts (one owner at a time,
// handed over with release/acquire) rule out overlapping accesses.
unsafe impl Sync for WakerSlot {}

impl WakerSlot {
    pub(crate) fn new() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// Holds `waker` from now on; keeps the stored one if it wakes the same task,
    /// which saves the clone (a reference-count RMW for most wakers).
    ///
    /// # Safety
    ///
    /// The caller owns the slot: no other thread accesses it until the caller hands
    /// it over with a `Release` write that the next owner reads with `Acquire`.
    #[inline]
    pub(crate) unsafe fn set(&self, waker: &Waker) {
        self.0.with_mut(|slot| {
            // SAFETY: the caller owns the slot (the contract above).
            let slot = unsafe { &mut *slot };
            match slot {
                Some(old) if old.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        });
    }

    /// Takes the stored waker, if any.
    ///
    /// # Safety
    ///
    /// As for [`set`](Self::set).
    #[inline]
    pub(crate) unsafe fn take(&self) -> Option<Waker> {
        // SAFETY: the caller owns the slot (the contract above).
        self.0.with_mut(|slot| unsafe { (*slot).take() })
    }
}
