//! One shard of client slots: a paged slot array with a free list.
//!
//! # Design
//!
//! Slots live in pages that double in size (64, 128, 256, … slots; see
//! [`paging`](crate::paging)), allocated on first use and never moved, so a
//! reader indexes straight into them without a lock. Each slot is an
//! [`SlotCell`]: the current occupant's entry, or, while the slot is free, a tag
//! (a word no pointer can equal, never dereferenced) carrying its [`Vacancy`]: the
//! generation the next occupant gets and the next free slot. Readers load the slot
//! and accept the entry only if its full [`ClientId`] (generation included) equals
//! the one they were given, so a stale id never reaches the next occupant; a tag
//! reads as no occupant at all.
//!
//! Allocation sits behind the shard's mutex; only register and unregister take it.
//! The free slots form a list threaded through their tags, reused last-in
//! first-out (the warmest first), and the lock holds only its head and the
//! high-water mark. A registration starts at the shard of the CPU it runs on
//! ([`home`]), so registrations on different CPUs do not meet on one lock.
//!
//! A slot's generation lives in its occupant's id while it is occupied and in its
//! tag while it is free, so it needs no bookkeeping of its own. The index allocator
//! was a [`slab::Slab<()>`](https://docs.rs/slab) beside the generations: its entry
//! is an enum over a `usize` free-list key, 16 bytes a slot. A 4-byte link beside
//! the 4-byte generation replaced it (8 bytes a slot), and the tag then replaced
//! those: at 100k clients in 131 072 slots that was 21 and then 10.5 of the bytes
//! the registry spends per client (`stress memory`, `registry_bytes_per_client`).
//!
//! # Memory
//!
//! An entry (its channel, profile and session list) is freed once its client has
//! left, its receiver is gone and no session's member cell still holds it (dead
//! cells go at the session's next compaction). The slot array itself stays at its
//! high-water mark: 8 bytes per slot, so a burst of a million clients leaves about
//! 8 MB behind after they go, and reuses it for the next burst. Dropping the
//! registry frees it.

use std::cell::Cell;
use std::hash::{Hash, Hasher};

use crate::paging;
use crate::sync::{AtomicUsize, OnceLock, Ordering, SlotCell, Slotted, SpinLock};
use crate::ClientId;

/// The first page holds `2^PAGE_SHIFT` slots.
const PAGE_SHIFT: u32 = 6;
/// Enough pages to cover every index a [`ClientId`] can name.
const PAGES: usize = (ClientId::INDEX_BITS - PAGE_SHIFT) as usize;
/// Slots per shard: the pages' total, just under `2^INDEX_BITS`.
pub(crate) const SLOTS_PER_SHARD: usize = (1 << ClientId::INDEX_BITS) - (1 << PAGE_SHIFT);

type Page<T> = Box<[SlotCell<T>]>;

/// What a slot holds: something that knows the id it was registered under.
pub(crate) trait Occupant {
    /// The id this occupant holds its slot under.
    fn id(&self) -> ClientId;
}

/// A free slot's tag payload: the generation its next occupant gets, and the next
/// free slot.
///
/// ```text
///  55                        24 23                     0
/// ┌────────────────────────────┬────────────────────────┐
/// │   generation (32 bits)     │  next free slot (24)   │
/// └────────────────────────────┴────────────────────────┘
/// ```
///
/// The link is `END` for the last free slot, and for a slot retired because its
/// generation is exhausted, which is on no list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vacancy(usize);

/// Bits of a [`Vacancy`]'s link: a slot index.
const LINK_BITS: u32 = ClientId::INDEX_BITS;
const LINK_MASK: usize = (1 << LINK_BITS) - 1;
/// The link after the last free slot, and the list head when no slot is free: no
/// slot has this index (`SLOTS_PER_SHARD` < `2^LINK_BITS`).
const END: u32 = (1 << LINK_BITS) - 1;

// A vacancy must fit in a tag: the tagged slot word needs a 64-bit target.
const _: () = assert!(
    LINK_BITS + ClientId::GENERATION_BITS <= crate::sync::TAG_PAYLOAD_BITS,
    "a free slot's generation and link must fit in its tagged slot word (64-bit targets)"
);
const _: () = assert!(SLOTS_PER_SHARD <= END as usize);

impl Vacancy {
    fn pack(generation: u32, next: u32) -> Self {
        debug_assert!(next <= END);
        Self(((generation as usize) << LINK_BITS) | (next as usize & LINK_MASK))
    }

    fn generation(self) -> u32 {
        (self.0 >> LINK_BITS) as u32
    }

    fn next(self) -> u32 {
        (self.0 & LINK_MASK) as u32
    }
}

/// A slot [`Shard::reserve`] handed out, for the caller to fill.
pub(crate) struct Reserved<'a, T: Slotted> {
    pub(crate) index: usize,
    /// The generation the occupant's id carries.
    pub(crate) generation: u32,
    /// The slot itself, found once here rather than again by index.
    pub(crate) slot: &'a SlotCell<T>,
}

struct Allocator {
    /// Slots ever handed out; every slot below it has its page.
    used: usize,
    /// The most recently freed slot, or `END`.
    free: u32,
}

/// A shard of slots holding `T` (a client entry).
pub(crate) struct Shard<T: Slotted> {
    pages: [OnceLock<Page<T>>; PAGES],
    /// A [`SpinLock`]: held for a few dozen instructions (a page's creation aside,
    /// once per page), so a waiter spins briefly, and its store release saves
    /// register and unregister a locked instruction each.
    alloc: SpinLock<Allocator>,
    /// Occupied slots.
    ///
    /// Ordering: `Relaxed`; a count that synchronises nothing, read only for
    /// reporting.
    live: AtomicUsize,
}

impl<T: Slotted> Shard<T> {
    pub(crate) fn new() -> Self {
        Self {
            pages: std::array::from_fn(|_| OnceLock::new()),
            alloc: SpinLock::new(Allocator { used: 0, free: END }),
            live: AtomicUsize::new(0),
        }
    }

    /// The slot at `index`, if its page exists.
    #[inline]
    pub(crate) fn slot(&self, index: usize) -> Option<&SlotCell<T>> {
        let (page, offset) = paging::split(index, PAGE_SHIFT);
        self.pages.get(page)?.get()?.get(offset)
    }

    /// Reserves a free slot, or `None` when the shard has no slot left.
    ///
    /// The slot keeps its tag until the caller stores the occupant: readers find
    /// nobody there meanwhile, and only the list head says the slot is free.
    #[inline]
    pub(crate) fn reserve(&self) -> Option<Reserved<'_, T>> {
        let mut alloc = self.alloc.lock();
        let head = alloc.free;
        let listed = match head {
            END => None,
            head => self.slot(head as usize).and_then(|slot| {
                // Free slots' tags are written under `alloc` (in `release`), which
                // orders them before this read.
                slot.tag().map(|vacancy| (slot, Vacancy(vacancy)))
            }),
        };
        let reserved = match listed {
            Some((slot, vacancy)) => {
                alloc.free = vacancy.next();
                Reserved {
                    index: head as usize,
                    generation: vacancy.generation(),
                    slot,
                }
            }
            None => {
                // Only `release` links a slot, right after emptying it, and a slot
                // leaves the list (here) before it is filled: the head is `END` or
                // a tagged slot.
                debug_assert_eq!(head, END, "the free list's head is occupied");
                alloc.free = END;
                // A slot never handed out: it needs its page.
                let index = alloc.used;
                if index >= SLOTS_PER_SHARD {
                    return None;
                }
                let (page, offset) = paging::split(index, PAGE_SHIFT);
                // Pages are created only here, under `alloc`, so never concurrently.
                // A fresh slot's tag says generation 0, linked nowhere.
                let page = self.pages[page].get_or_init(|| {
                    (0..paging::page_len(page, PAGE_SHIFT))
                        .map(|_| SlotCell::tagged(Vacancy::pack(0, END).0))
                        .collect()
                });
                let slot = page.get(offset)?;
                alloc.used += 1;
                Reserved {
                    index,
                    generation: 0,
                    slot,
                }
            }
        };
        // Relaxed: see `live`. A load and a store, not an RMW: every change to it
        // is made under `alloc`, which orders them.
        self.live
            .store(self.live.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(reserved)
    }

    /// Occupied slots.
    pub(crate) fn live(&self) -> usize {
        // Relaxed: see `live`.
        self.live.load(Ordering::Relaxed)
    }

    /// Calls `f` with every occupant, for teardown and listings.
    pub(crate) fn for_each_occupied(&self, mut f: impl FnMut(&T)) {
        self.for_each_slot(|slot| {
            slot.with(|entry| {
                if let Some(entry) = entry {
                    f(entry);
                }
            });
        });
    }

    /// Calls `f` with every slot ever handed out. Takes the allocation lock only
    /// to read how many, so `f` may take a slot's lock bit (see the lock order in
    /// `sync/slot_cell.rs`).
    pub(crate) fn for_each_slot(&self, mut f: impl FnMut(&SlotCell<T>)) {
        let slots = self.alloc.lock().used;
        for index in 0..slots {
            if let Some(slot) = self.slot(index) {
                f(slot);
            }
        }
    }
}

impl<T: Occupant + Slotted> Shard<T> {
    /// Empties `occupant`'s slot and makes it reusable under the next generation.
    ///
    /// Returns false, changing nothing, if `occupant` no longer holds its slot
    /// (the caller's guarantee that only one call frees it failed). A slot whose
    /// generation would wrap is retired instead of freed: a wrapped generation
    /// could alias an id still held somewhere.
    #[inline]
    pub(crate) fn release(&self, occupant: &T::Handle) -> bool {
        let id = occupant.id();
        let index = id.index();
        let Some(slot) = self.slot(index) else {
            return false;
        };
        let unlinked = {
            let mut alloc = self.alloc.lock();
            let (vacancy, listed) = match id.generation().checked_add(1) {
                Some(next) => (Vacancy::pack(next, alloc.free), true),
                None => (Vacancy::pack(u32::MAX, END), false),
            };
            let Some(unlinked) = slot.vacate(occupant, vacancy.0) else {
                return false;
            };
            if listed {
                // `index` < `SLOTS_PER_SHARD` < `END`, so it fits and is no sentinel.
                alloc.free = index as u32;
            }
            // Relaxed: see `live`; under `alloc`, as in `reserve`.
            self.live
                .store(self.live.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            unlinked
        };
        // The entry's release (an epoch pin and a deferral) happens after the lock.
        drop(unlinked);
        true
    }
}

thread_local! {
    /// This thread's home shard hint, fixed at first use, with the last shard count
    /// it was reduced for and the result: a register then divides only when the
    /// count changes, not every time (a 64-bit division takes tens of cycles).
    static HOME: Cell<Option<(usize, usize, usize)>> = const { Cell::new(None) };
}

/// The shard a registration starts at: the one of the CPU it runs on, so two
/// registrations running at the same moment on different CPUs never meet on one
/// allocation lock. A per-thread home (a hash of the thread's id) would put two
/// threads in one shard by chance: half the time with two shards, which made a
/// two-thread churn bench bimodal (`churn_two_threads`).
///
/// Where the CPU cannot be read (see [`cpu`](crate::cpu)), a per-thread home
/// fixed at first use: one thread-local read, inlined into the registration; the
/// hashing stays out of line.
#[inline]
pub(crate) fn home(shards: usize) -> usize {
    if let Some(cpu) = crate::cpu::current() {
        // Shards default to one per CPU, so the division is rare; CPU ids can
        // still exceed the count (an affinity mask, a configured count).
        return if cpu < shards { cpu } else { cpu % shards };
    }
    match HOME.get() {
        Some((_, count, reduced)) if count == shards => reduced,
        cached => rehome(cached.map(|(hint, _, _)| hint), shards),
    }
}

/// [`home`] for a thread's first registration, or after the shard count changed.
#[cold]
fn rehome(hint: Option<usize>, shards: usize) -> usize {
    let hint = hint.unwrap_or_else(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::thread::current().id().hash(&mut hasher);
        hasher.finish() as usize
    });
    let reduced = hint % shards;
    HOME.set(Some((hint, shards, reduced)));
    reduced
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    use crate::sync::Arc;

    /// A slot occupant that is only its id.
    #[derive(Debug)]
    struct Tenant(ClientId);

    impl Slotted for Tenant {
        type Handle = Arc<Self>;
    }

    impl Occupant for Tenant {
        fn id(&self) -> ClientId {
            self.0
        }
    }

    /// Reserves a slot: its index and generation.
    fn reserve<T: Slotted>(shard: &Shard<T>) -> Option<(usize, u32)> {
        shard.reserve().map(|r| (r.index, r.generation))
    }

    /// Reserves a slot and fills it, as a registration does.
    fn occupy(shard: &Shard<Tenant>) -> Arc<Tenant> {
        let reserved = shard.reserve().expect("a fresh shard has room");
        let id = ClientId::pack(0, reserved.index, reserved.generation);
        let tenant = Arc::new(Tenant(id));
        reserved.slot.store(Some(Arc::clone(&tenant)));
        let found = shard.slot(reserved.index);
        assert!(found.is_some_and(|s| std::ptr::eq(s, reserved.slot)));
        tenant
    }

    fn at(id: ClientId) -> (usize, u32) {
        (id.index(), id.generation())
    }

    #[test]
    fn vacancies_pack_generation_and_link() {
        for (generation, next) in [(0, 0), (1, END), (u32::MAX, END), (u32::MAX, 12_345)] {
            let v = Vacancy::pack(generation, next);
            assert_eq!((v.generation(), v.next()), (generation, next));
        }
        assert!(Vacancy::pack(u32::MAX, END).0 >> crate::sync::TAG_PAYLOAD_BITS == 0);
    }

    #[test]
    fn freed_slots_are_reused_under_a_new_generation() {
        let shard = Shard::new();
        let a = occupy(&shard);
        let b = occupy(&shard);
        assert_ne!(a.0.index(), b.0.index());
        assert_eq!(shard.live(), 2);
        assert!(shard.release(&a));
        let (index, generation) = at(a.0);
        assert!(
            shard.slot(index).is_some_and(|s| s.with(|v| v.is_none())),
            "a freed slot reads as empty"
        );
        assert_eq!(reserve(&shard), Some((index, generation + 1)));
        assert_eq!(shard.live(), 2);
    }

    #[test]
    fn free_slots_are_reused_warmest_first_and_each_once() {
        let shard = Shard::new();
        let taken: Vec<_> = (0..4).map(|_| occupy(&shard)).collect();
        let (a, b) = (&taken[0], &taken[1]);
        assert!(shard.release(a));
        assert!(shard.release(b));
        // A second release of a free slot must not put it on the list twice.
        assert!(!shard.release(b), "b no longer holds its slot");
        assert_eq!(shard.live(), 2);
        let (ia, ga) = at(a.0);
        let (ib, gb) = at(b.0);
        assert_eq!(reserve(&shard), Some((ib, gb + 1)));
        assert_eq!(reserve(&shard), Some((ia, ga + 1)));
        assert_eq!(
            reserve(&shard),
            Some((4, 0)),
            "the list is empty: a new slot"
        );
    }

    #[test]
    fn a_release_of_someone_else_changes_nothing() {
        let shard = Shard::new();
        let a = occupy(&shard);
        // An impostor with a's id but not a's entry.
        let impostor = Arc::new(Tenant(a.0));
        assert!(!shard.release(&impostor));
        assert_eq!(shard.live(), 1);
        let held = shard
            .slot(a.0.index())
            .and_then(|s| s.with(|v| v.map(|v| Arc::ptr_eq(v, &a))));
        assert_eq!(held, Some(true), "a still holds its slot");
        assert_eq!(reserve(&shard).map(|(index, _)| index), Some(1));
    }

    #[test]
    fn a_slot_whose_generation_would_wrap_is_retired() {
        let shard = Shard::<Tenant>::new();
        let (index, _) = reserve(&shard).unwrap_or_default();
        let worn = Arc::new(Tenant(ClientId::pack(0, index, u32::MAX)));
        if let Some(slot) = shard.slot(index) {
            slot.store(Some(Arc::clone(&worn)));
        }
        assert!(shard.release(&worn));
        let (next, generation) = reserve(&shard).unwrap_or_default();
        assert_ne!(next, index, "the exhausted slot must not come back");
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
            assert!(reserve(&shard).is_some());
        }
        assert!(shard.slot(64).is_some());
        assert!(shard.slot(64 + 128).is_none());
        assert!(shard.slot(SLOTS_PER_SHARD).is_none());
        assert!(shard.slot(END as usize).is_none());
        assert!(shard.slot(usize::MAX >> 8).is_none());
    }

    #[test]
    fn occupants_are_listed() {
        let shard: Shard<u32> = Shard::new();
        let (a, _) = reserve(&shard).unwrap_or_default();
        let (b, _) = reserve(&shard).unwrap_or_default();
        for (index, value) in [(a, 10), (b, 20)] {
            if let Some(slot) = shard.slot(index) {
                slot.store(Some(Arc::new(value)));
            }
        }
        let mut seen = Vec::new();
        shard.for_each_occupied(|v| seen.push(*v));
        assert_eq!(seen, vec![10, 20]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_registration_starts_at_the_shard_of_the_cpu_it_runs_on() {
        let cpus = crate::cpu::allowed();
        let [a, b, ..] = cpus[..] else {
            eprintln!("skipped: needs two CPUs in this thread's affinity mask, has {cpus:?}");
            return;
        };
        // One shard per CPU id, so each CPU has a home of its own.
        let shards = b + 1;
        std::thread::spawn(move || {
            crate::cpu::pin_current_thread(a);
            assert_eq!(home(shards), a);
            // The same thread, moved: its home moves with it.
            crate::cpu::pin_current_thread(b);
            assert_eq!(home(shards), b);
        })
        .join()
        .unwrap();
    }
}
