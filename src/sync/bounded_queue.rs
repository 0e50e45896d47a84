//! [`BoundedQueue`]: the channel's compact multi-producer, single-consumer ring.
//!
//! The channel admits a message only after taking a *permit* (see `channel.rs`), so
//! fewer than `capacity` messages are ever in the queue or on their way into it.
//! That lets the ring skip everything an unbounded or MPMC queue needs: producers
//! claim an index with one `fetch_add` and never find their slot taken, and the
//! single consumer keeps its position in a word no producer writes.
//!
//! # Memory
//!
//! The first [`INLINE`] slots live inside the queue (and so inside the channel's one
//! allocation, made at registration): a client's first messages never allocate on
//! the sender's thread, which is what makes the first broadcast to a million fresh
//! clients as cheap as a warm one. The other `capacity - INLINE` slots are one
//! array allocated once, when the ring first needs it: by the receiver after it
//! takes its second message (on its own task's thread), or by a sender whose
//! message lands past the inline slots first. It is freed with the queue.
//!
//! # Protocol
//!
//! Each slot has a `stamp` naming what it holds, in units of indexes doubled so
//! that one word tells "free for index `i`" (`2i`) from "holds index `i`"
//! (`2i + 1`) even when `capacity` is 1. Slot `s` starts free for index `s`.
//!
//! * A producer holding a permit claims index `i = tail.fetch_add(1)`, writes the
//!   value into slot `i % capacity` and stores `2i + 1` (`Release`).
//! * The consumer at index `h` reads slot `h % capacity` only once its stamp is
//!   `2h + 1` (`Acquire`: the value is fully written), moves the value out and
//!   stores `2(h + capacity)`, freeing it for the next lap (`Release`).
//!
//! **Why a producer's slot is free.** Index `i`'s producer and every producer of a
//! lower index took a permit before claiming. When the last of those permits was
//! taken, the count was at most `capacity`, so at least `i + 1 - capacity`
//! releases preceded it in the permit word's order; the consumer releases in index
//! order, after freeing each slot, so index `i - capacity`'s slot was freed by
//! then. The hand-over is a happens-before chain: the free (`Release` stamp) is
//! sequenced before its permit release (a `Release` RMW), which the last permit
//! taker's `Acquire` CAS reads through the RMW chain; that taker's `AcqRel`
//! `fetch_add` on `tail` is read, again through an RMW chain, by index `i`'s
//! `AcqRel` `fetch_add`. So the producer's `Acquire` load of the stamp sees the
//! free. It checks anyway: the std build spins (never observed), and the loom
//! build panics so that a broken chain fails the model instead of hanging it.
#![allow(
    unsafe_code,
    reason = "slots hold values moved in and out by raw pointer; see each SAFETY"
)]

use std::mem::MaybeUninit;

use super::{AtomicPtr, AtomicUsize, Ordering, UnsafeCell};

/// Slots kept inside the queue itself.
pub(crate) const INLINE: usize = 4;

struct Slot<T> {
    /// `2i` when free for index `i`, `2i + 1` when holding index `i`'s value.
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    fn free_for(index: usize) -> Self {
        Self {
            stamp: AtomicUsize::new(free(index)),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

/// What a producer does if its slot is not yet free, which the permit hand-off
/// rules out (see the module docs): spin in the std build, fail the model under loom.
#[cfg(not(switchboard_loom))]
#[inline]
fn slot_not_yet_free(_index: usize) {
    std::hint::spin_loop();
}

#[cfg(switchboard_loom)]
fn slot_not_yet_free(index: usize) {
    panic!("slot for index {index} not yet free: the permit hand-off failed");
}

fn free(index: usize) -> usize {
    index.wrapping_mul(2)
}

fn full(index: usize) -> usize {
    index.wrapping_mul(2).wrapping_add(1)
}

/// A bounded MPSC ring; its callers bound it (see the module docs).
///
/// `repr(C)`, in this order: a push reads `tail` and `capacity` and writes a slot,
/// and a client's first message goes to `inline[0]`, so those three sit together,
/// and in one cache line with the channel's permit word before them (see
/// `Channel`). In the compiler's order they spread over four lines of the
/// client's entry, and the first broadcast to 100 000 fresh clients fetched all
/// four for each.
#[repr(C)]
pub(crate) struct BoundedQueue<T> {
    /// The next index to claim.
    ///
    /// Ordering: `AcqRel`, a link of the happens-before chain in the module docs.
    tail: AtomicUsize,
    capacity: usize,
    inline: [Slot<T>; INLINE],
    /// The next index to read. Only the consumer reads or writes it: `Relaxed`.
    head: AtomicUsize,
    /// Null, or the `capacity - INLINE` slots after the inline ones, from
    /// `Box::<[Slot<T>]>::into_raw`; set once, freed by `Drop`.
    ///
    /// Ordering: `Release` publishes the initialised stamps, `Acquire` reads them.
    rest: AtomicPtr<Slot<T>>,
}

// SAFETY: values move between threads through the slots (`T: Send`); the queue
// hands each one to exactly one consumer, and shares no `&T`.
unsafe impl<T: Send> Send for BoundedQueue<T> {}
// SAFETY: as above; every shared access to a slot's value is ordered by its stamp.
unsafe impl<T: Send> Sync for BoundedQueue<T> {}

impl<T> BoundedQueue<T> {
    /// Bytes from the queue's start to the end of the last field a client's first
    /// push touches (`tail`, `capacity`, `inline[0]`).
    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) const FIRST_PUSH_BYTES: usize = {
        use std::mem::{offset_of, size_of};
        let tail = offset_of!(Self, tail) + size_of::<AtomicUsize>();
        let capacity = offset_of!(Self, capacity) + size_of::<usize>();
        let slot = offset_of!(Self, inline) + size_of::<Slot<T>>();
        let end = if tail > capacity { tail } else { capacity };
        if end > slot {
            end
        } else {
            slot
        }
    };

    /// An empty queue of `capacity` (at least 1) slots; allocates nothing more.
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity > 0);
        Self {
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
            capacity,
            inline: std::array::from_fn(Slot::free_for),
            rest: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Appends `value`.
    ///
    /// # Safety
    ///
    /// The caller holds one of at most `capacity` permits, taken with an `Acquire`
    /// RMW on the permit word and given back (`Release` RMW) only after the consumer
    /// has popped a value; see the module docs.
    #[inline]
    pub(crate) unsafe fn push(&self, value: T) {
        // AcqRel: see `tail`.
        let index = self.tail.fetch_add(1, Ordering::AcqRel);
        let position = index % self.capacity;
        let slot = match position.checked_sub(INLINE) {
            None => &self.inline[position],
            // SAFETY: `rest_or_allocate` returns the live outer slots, and
            // `INLINE <= position < capacity`.
            Some(outer) => unsafe { &*self.rest_or_allocate().add(outer) },
        };
        // Acquire: pairs with the consumer's `Release` free of this slot.
        while slot.stamp.load(Ordering::Acquire) != free(index) {
            slot_not_yet_free(index);
        }
        slot.value.with_mut(|cell| {
            // SAFETY: the stamp says the slot is free for `index`, which only this
            // producer claimed: no one else reads or writes the value now.
            unsafe { (*cell).write(value) };
        });
        // Release: publishes the value to the consumer's `Acquire` check.
        slot.stamp.store(full(index), Ordering::Release);
    }

    /// Takes the oldest value, if it has been fully pushed.
    ///
    /// # Safety
    ///
    /// Only one thread pops at a time (the channel's one `Receiver`).
    #[inline]
    pub(crate) unsafe fn pop(&self) -> Option<T> {
        // Relaxed: only the consumer writes `head`.
        let index = self.head.load(Ordering::Relaxed);
        let slot = self.slot(index)?;
        // Acquire: pairs with the producer's `Release`; the value is written.
        if slot.stamp.load(Ordering::Acquire) != full(index) {
            return None;
        }
        let value = slot.value.with(|cell| {
            // SAFETY: the stamp says the slot holds `index`'s value, and the single
            // consumer (the caller's contract) is the only reader; the producer that
            // wrote it is done, and no other producer writes until the free below.
            unsafe { (*cell).assume_init_read() }
        });
        // Release: the value is moved out before the slot goes to the next lap.
        slot.stamp
            .store(free(index.wrapping_add(self.capacity)), Ordering::Release);
        // Relaxed: see `head`.
        self.head.store(index.wrapping_add(1), Ordering::Relaxed);
        if index == 1 && self.capacity > INLINE {
            // The client receives: give it the rest of its ring now, on its own
            // thread, rather than on a broadcaster's later.
            let _ = self.rest_or_allocate();
        }
        Some(value)
    }

    /// Whether a push has claimed the slot [`pop`](Self::pop) takes next and not yet
    /// written it: `pop` said `None` although a message is on its way, possibly
    /// ahead of others already written. Only the consumer calls this.
    pub(crate) fn push_in_progress(&self) -> bool {
        // Relaxed on both: only the consumer writes `head`, and a `tail` read late
        // only makes the caller stop waiting for a push that did not happen before
        // it; the caller's own earlier pushes are ordered by program order.
        self.tail.load(Ordering::Relaxed) != self.head.load(Ordering::Relaxed)
    }

    /// Bytes of the outer slots if they are allocated, else 0: what the queue holds
    /// on the heap beyond itself.
    pub(crate) fn heap_bytes(&self) -> usize {
        // Acquire: see `rest`; only null-or-not is read.
        if self.rest.load(Ordering::Acquire).is_null() {
            0
        } else {
            (self.capacity.max(INLINE) - INLINE) * std::mem::size_of::<Slot<T>>()
        }
    }

    /// The slot for `index`, if it exists yet.
    #[inline]
    fn slot(&self, index: usize) -> Option<&Slot<T>> {
        let position = index % self.capacity;
        match position.checked_sub(INLINE) {
            None => Some(&self.inline[position]),
            Some(outer) => {
                // Acquire: see `rest`.
                let rest = self.rest.load(Ordering::Acquire);
                // SAFETY: a non-null `rest` points at `capacity - INLINE` slots that
                // live until `Drop`, and `INLINE <= position < capacity`.
                (!rest.is_null()).then(|| unsafe { &*rest.add(outer) })
            }
        }
    }

    /// The outer slots, allocated now if no one has yet. Only called when
    /// `capacity > INLINE`, or harmlessly (an empty allocation) otherwise.
    fn rest_or_allocate(&self) -> *mut Slot<T> {
        // Acquire: see `rest`.
        let current = self.rest.load(Ordering::Acquire);
        if !current.is_null() {
            return current;
        }
        let slots: Box<[Slot<T>]> = (INLINE..self.capacity.max(INLINE))
            .map(Slot::free_for)
            .collect();
        let fresh = Box::into_raw(slots).cast::<Slot<T>>();
        // AcqRel: publish ours (Release) or read the winner's (Acquire).
        match self.rest.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from `Box::into_raw` of this queue's outer
                // slots just above and was never shared.
                drop(unsafe { self.rest_box(fresh) });
                winner
            }
        }
    }

    /// # Safety
    ///
    /// `ptr` came from `Box::into_raw` of this queue's `capacity - INLINE` slots and
    /// nothing else will use it.
    unsafe fn rest_box(&self, ptr: *mut Slot<T>) -> Box<[Slot<T>]> {
        let len = self.capacity.max(INLINE) - INLINE;
        // SAFETY: the caller's contract.
        unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) }
    }
}

impl<T> Drop for BoundedQueue<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self` means every push and pop has finished and is visible.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut index = head;
        while index != tail {
            if let Some(slot) = self.slot(index) {
                if slot.stamp.load(Ordering::Relaxed) == full(index) {
                    slot.value.with_mut(|cell| {
                        // SAFETY: the slot holds `index`'s value, never popped, and
                        // nothing else can touch it any more.
                        unsafe { (*cell).assume_init_drop() };
                    });
                }
            }
            index = index.wrapping_add(1);
        }
        let rest = self.rest.load(Ordering::Relaxed);
        if !rest.is_null() {
            // SAFETY: `rest` is set once from `Box::into_raw` of `capacity - INLINE`
            // slots, and `&mut self` means no one else holds it.
            drop(unsafe { self.rest_box(rest) });
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_inline_pushes_allocate_no_outer_slots() {
        let queue = BoundedQueue::new(32);
        for i in 0..INLINE {
            // SAFETY: single-threaded, and never more than `capacity` values.
            unsafe { queue.push(i) };
            assert_eq!(unsafe { queue.pop() }, Some(i));
            if i == 0 {
                assert!(queue.rest.load(Ordering::Relaxed).is_null());
            }
        }
        assert!(
            !queue.rest.load(Ordering::Relaxed).is_null(),
            "the consumer allocates the outer slots on its second message"
        );
    }

    #[test]
    fn a_push_past_the_inline_slots_allocates_them_if_the_consumer_has_not() {
        let queue = BoundedQueue::new(8);
        for i in 0..8 {
            // SAFETY: single-threaded, and exactly `capacity` values.
            unsafe { queue.push(i) };
        }
        for i in 0..8 {
            // SAFETY: single consumer.
            assert_eq!(unsafe { queue.pop() }, Some(i));
        }
        // SAFETY: single consumer.
        assert_eq!(unsafe { queue.pop() }, None);
    }

    #[test]
    fn unpopped_values_are_dropped_with_the_queue() {
        let value = std::sync::Arc::new(());
        let queue = BoundedQueue::new(6);
        for _ in 0..6 {
            // SAFETY: single-threaded, and exactly `capacity` values.
            unsafe { queue.push(std::sync::Arc::clone(&value)) };
        }
        // SAFETY: single consumer.
        drop(unsafe { queue.pop() });
        assert_eq!(std::sync::Arc::strong_count(&value), 6);
        drop(queue);
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }
}
