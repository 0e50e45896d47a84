//! One shard of client slots: a paged slot array with a free list.
//!
//! # Design
//!
//! Slots live in pages that double in size (64, 128, 256, … slots; see
//! [`paging`](crate::paging)), allocated on first use and never moved, so a
//! reader indexes straight into them without a lock. Each slot is an
//! [`SlotCell`]: empty, or the current occupant's entry. Readers load the slot and
//! accept the entry only if its full [`ClientId`] (generation included) equals the
//! one they were given, so a stale id never reaches the next occupant.
//!
//! Allocation sits behind the shard's mutex; only register and unregister take it.
//! Each slot ever handed out has 8 bytes of bookkeeping there: its generation,
//! which outlives its occupants, and a 4-byte link that threads the free slots into
//! a list, reused last-in first-out (the warmest first). A registering thread starts
//! at its own home shard, so threads rarely meet on one lock.
//!
//! The index allocator was a [`slab::Slab<()>`](https://docs.rs/slab) beside the
//! generations. Its entry is an enum over a `usize` free-list key, 16 bytes a slot,
//! for what a 4-byte link next to the 4-byte generation does: at 100k clients that
//! was 21 of the 216 bytes the registry spent per client (`stress memory`,
//! `registry_bytes_per_client`), and this list took 5 of them back out.
//!
//! # Memory
//!
//! An entry (its channel, profile and session list) is freed once its client has
//! left, its receiver is gone and no session's member cell still holds it (dead
//! cells go at the session's next compaction). The slot array itself stays at its
//! high-water mark: 8 bytes per slot and 8 of generation and free link, so a burst
//! of a million clients leaves about 16 MB behind after they go, and reuses it for
//! the next burst. Dropping the registry frees it.

use std::cell::Cell;
use std::hash::{Hash, Hasher};

use crate::paging;
#[cfg(all(test, not(switchboard_loom)))]
use crate::sync::Arc;
use crate::sync::{lock, AtomicUsize, Mutex, OnceLock, Ordering, SlotCell};
use crate::ClientId;

/// The first page holds `2^PAGE_SHIFT` slots.
const PAGE_SHIFT: u32 = 6;
/// Enough pages to cover every index a [`ClientId`] can name.
const PAGES: usize = (ClientId::INDEX_BITS - PAGE_SHIFT) as usize;
/// Slots per shard: the pages' total, just under `2^INDEX_BITS`.
pub(crate) const SLOTS_PER_SHARD: usize = (1 << ClientId::INDEX_BITS) - (1 << PAGE_SHIFT);

type Page<T> = Box<[SlotCell<T>]>;

/// `Meta::next_free` of a slot that is not free: occupied, or retired for good
/// once its generation is exhausted.
const NOT_FREE: u32 = u32::MAX;
/// `Allocator::free` when no slot is free, and the last free slot's link.
const END: u32 = u32::MAX - 1;

/// One slot's bookkeeping: 8 bytes.
#[derive(Clone, Copy)]
struct Meta {
    /// The slot's current generation.
    generation: u32,
    /// The next free slot if this one is free, `END` if it is the last, or
    /// `NOT_FREE`.
    next_free: u32,
}

struct Allocator {
    /// Every slot ever handed out, by index.
    slots: Vec<Meta>,
    /// The most recently freed slot, or `END`.
    free: u32,
}

/// A shard of slots holding `T` (a client entry).
pub(crate) struct Shard<T> {
    pages: [OnceLock<Page<T>>; PAGES],
    alloc: Mutex<Allocator>,
    /// Occupied slots.
    ///
    /// Ordering: `Relaxed`; a count that synchronises nothing, read only for
    /// reporting.
    live: AtomicUsize,
}

impl<T> Shard<T> {
    pub(crate) fn new() -> Self {
        Self {
            pages: std::array::from_fn(|_| OnceLock::new()),
            alloc: Mutex::new(Allocator {
                slots: Vec::new(),
                free: END,
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// The slot at `index`, if its page exists.
    #[inline]
    pub(crate) fn slot(&self, index: usize) -> Option<&SlotCell<T>> {
        let (page, offset) = paging::split(index, PAGE_SHIFT);
        self.pages.get(page)?.get()?.get(offset)
    }

    /// Reserves a free slot; returns its index and current generation, or `None`
    /// when the shard has no slot left.
    pub(crate) fn reserve(&self) -> Option<(usize, u32)> {
        let mut alloc = lock(&self.alloc);
        let alloc = &mut *alloc;
        let index = match alloc.slots.get_mut(alloc.free as usize) {
            Some(meta) => {
                let index = alloc.free as usize;
                alloc.free = meta.next_free;
                meta.next_free = NOT_FREE;
                index
            }
            None => {
                // A slot never handed out: it needs its page.
                let index = alloc.slots.len();
                if index >= SLOTS_PER_SHARD {
                    return None;
                }
                let (page, _) = paging::split(index, PAGE_SHIFT);
                // Pages are created only here, under `alloc`, so never concurrently.
                self.pages[page].get_or_init(|| {
                    (0..paging::page_len(page, PAGE_SHIFT))
                        .map(|_| SlotCell::empty())
                        .collect()
                });
                alloc.slots.push(Meta {
                    generation: 0,
                    next_free: NOT_FREE,
                });
                index
            }
        };
        // Relaxed: see `live`. A load and a store, not an RMW: every change to it
        // is made under `alloc`, which orders them.
        self.live
            .store(self.live.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some((index, alloc.slots[index].generation))
    }

    /// Empties the slot of `id` and makes it reusable under the next generation.
    ///
    /// The caller guarantees `id` occupies the slot and that no other call frees it.
    pub(crate) fn release(&self, id: ClientId) {
        let index = id.index();
        if let Some(slot) = self.slot(index) {
            slot.store(None);
        }
        let mut alloc = lock(&self.alloc);
        let alloc = &mut *alloc;
        // An index past the slots, or one already free, was not occupied: the
        // caller's guarantee failed, and pushing it would corrupt the list.
        if let Some(meta) = alloc.slots.get_mut(index) {
            // Retire the slot rather than wrap: a wrapped generation could alias an
            // id still held somewhere. A retired slot never joins the free list.
            if let (NOT_FREE, Some(next)) = (meta.next_free, meta.generation.checked_add(1)) {
                meta.generation = next;
                // `index` < `SLOTS_PER_SHARD` < `END`, so it fits and is no sentinel.
                if let Ok(link) = u32::try_from(index) {
                    meta.next_free = alloc.free;
                    alloc.free = link;
                }
            }
        }
        // Relaxed: see `live`; under `alloc`, as in `reserve`.
        self.live
            .store(self.live.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }

    /// Occupied slots.
    pub(crate) fn live(&self) -> usize {
        // Relaxed: see `live`.
        self.live.load(Ordering::Relaxed)
    }

    /// Calls `f` with every occupant, for teardown and listings.
    pub(crate) fn for_each_occupied(&self, mut f: impl FnMut(&T)) {
        let slots = lock(&self.alloc).slots.len();
        for index in 0..slots {
            if let Some(slot) = self.slot(index) {
                slot.with(|entry| {
                    if let Some(entry) = entry {
                        f(entry);
                    }
                });
            }
        }
    }

    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) fn set_generation(&self, index: usize, generation: u32) {
        if let Some(meta) = lock(&self.alloc).slots.get_mut(index) {
            meta.generation = generation;
        }
    }
}

thread_local! {
    /// This thread's home shard hint, fixed at first use, with the last shard count
    /// it was reduced for and the result: a register then divides only when the
    /// count changes, not every time (a 64-bit division takes tens of cycles).
    static HOME: Cell<Option<(usize, usize, usize)>> = const { Cell::new(None) };
}

/// A per-thread starting shard: spreads registering threads over the shards.
pub(crate) fn home(shards: usize) -> usize {
    HOME.with(|home| {
        let hint = match home.get() {
            Some((_, count, reduced)) if count == shards => return reduced,
            Some((hint, _, _)) => hint,
            None => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::thread::current().id().hash(&mut hasher);
                hasher.finish() as usize
            }
        };
        let reduced = hint % shards;
        home.set(Some((hint, shards, reduced)));
        reduced
    })
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused_under_a_new_generation() {
        let shard: Shard<u32> = Shard::new();
        let (a, ga) = shard.reserve().unwrap_or_default();
        let (b, _) = shard.reserve().unwrap_or_default();
        assert_ne!(a, b);
        assert_eq!(shard.live(), 2);
        shard.release(ClientId::pack(0, a, ga));
        assert_eq!(shard.reserve(), Some((a, ga + 1)));
        assert_eq!(shard.live(), 2);
    }

    #[test]
    fn free_slots_are_reused_warmest_first_and_each_once() {
        let shard: Shard<u32> = Shard::new();
        let taken: Vec<_> = (0..4).filter_map(|_| shard.reserve()).collect();
        let [(a, ga), (b, gb), ..] = taken[..] else {
            panic!("four reservations in a fresh shard: {taken:?}");
        };
        shard.release(ClientId::pack(0, a, ga));
        shard.release(ClientId::pack(0, b, gb));
        // A second release of a free slot must not put it on the list twice.
        shard.release(ClientId::pack(0, b, gb + 1));
        assert_eq!(shard.reserve(), Some((b, gb + 1)));
        assert_eq!(shard.reserve(), Some((a, ga + 1)));
        assert_eq!(
            shard.reserve(),
            Some((4, 0)),
            "the list is empty: a new slot"
        );
    }

    #[test]
    fn a_slot_whose_generation_would_wrap_is_retired() {
        let shard: Shard<u32> = Shard::new();
        let (a, _) = shard.reserve().unwrap_or_default();
        shard.set_generation(a, u32::MAX);
        shard.release(ClientId::pack(0, a, u32::MAX));
        let (next, generation) = shard.reserve().unwrap_or_default();
        assert_ne!(next, a, "the exhausted slot must not come back");
        assert_eq!(generation, 0);
    }

    #[test]
    fn pages_appear_as_slots_are_reserved() {
        let shard: Shard<u32> = Shard::new();
        assert!(
            shard.slot(0).is_none(),
            "no page before the first reservation"
        );
        for _ in 0..65 {
            assert!(shard.reserve().is_some());
        }
        assert!(shard.slot(64).is_some());
        assert!(shard.slot(64 + 128).is_none());
        assert!(shard.slot(SLOTS_PER_SHARD).is_none());
        assert!(shard.slot(usize::MAX >> 8).is_none());
    }

    #[test]
    fn occupants_are_listed() {
        let shard: Shard<u32> = Shard::new();
        let (a, _) = shard.reserve().unwrap_or_default();
        let (b, _) = shard.reserve().unwrap_or_default();
        for (index, value) in [(a, 10), (b, 20)] {
            if let Some(slot) = shard.slot(index) {
                slot.store(Some(Arc::new(value)));
            }
        }
        let mut seen = Vec::new();
        shard.for_each_occupied(|v| seen.push(*v));
        assert_eq!(seen, vec![10, 20]);
    }
}
