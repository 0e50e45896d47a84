//! Session membership: keys, and the snapshots that broadcasts read.
//!
//! # Design
//!
//! A session's members live in an append-only array of write-once cells, in pages
//! that double in size (see [`paging`](crate::paging)). Each cell is 16 bytes: a
//! write-once handle to the member's client entry (which holds its id and channel),
//! and `removed_at`: the version of the first snapshot that no longer contains it.
//!
//! The page list and one atomic *state word* form a [`Layout`], published through a
//! [`SnapshotCell`]. The state word packs the number of cells in use and the version
//! of the newest snapshot. A broadcast loads the layout, then the word, and walks
//! cells `0..len`, delivering to every cell with `removed_at > version`: one
//! contiguous walk, no lock, no lookup per recipient. What it reads is a
//! [`Membership`].
//!
//! * **Join** writes the next free cell, then stores a word with `len + 1` and the
//!   next version. Nothing is copied or allocated; a new page is added when the last
//!   is full, which publishes a new layout with the page list (O(log n) pointers)
//!   extended, not the members copied.
//! * **Leave** stores the next version into the member's `removed_at`, then stores a
//!   word with that version. Nothing is copied or allocated.
//! * **Compaction.** Left cells keep their slot until the session is compacted: when
//!   dead cells outnumber live ones (and at least [`COMPACT_SLACK`]), the writer
//!   copies the live members into fresh pages and publishes a new layout with the
//!   version restarted. Each compaction of `n` live members is paid for by more than
//!   `n` leaves, so joins and leaves cost O(1) amortised whatever the session's size,
//!   and dead cells never exceed `max(live, COMPACT_SLACK) + 1`. A copy borrows its
//!   old cell's count until the layout is published; then the old cell hands the
//!   count over if no snapshot holds the old layout (or a page of it), and the copy
//!   takes one of its own otherwise, so most members are copied without a locked
//!   instruction.
//! * **Graveyard.** The departed members of the replaced layout are not all
//!   dropped with it: when no snapshot holds it any more (the writer's `Arc` is the
//!   last), their handles move to a writer-side list that each later leave pops
//!   one of. A compaction of a small room would otherwise free a dozen entries
//!   at once, overflowing the allocator's per-thread cache, so that the next dozen
//!   registrations all took its slow path; one free per leave is what the next
//!   registration allocates. A batch larger than `GRAVEYARD_MAX`, or a layout a
//!   snapshot still holds, is dropped at once as before. The list holds at most
//!   one compaction's dead cells and empties on retirement, so a session holds at
//!   most twice the dead-cell bound above in departed handles.
//! * **Spare pages.** The same proof (no snapshot holds the replaced layout) makes
//!   its pages as private as fresh ones: a session of at most `SPARE_MAX` cells
//!   empties them and keeps them, with the layout's own allocation, for its next
//!   compaction or growth, which would otherwise allocate four to six blocks and
//!   free as many. Such a session is also compacted into room for every cell its
//!   next compaction can find, so churn at a steady size never grows it in
//!   between. Spares hold at most `SPARE_MAX` cells (1 KiB) and go on retirement;
//!   a page a reader still holds is never kept.
//!
//! # Invariants
//!
//! Writers are serialised by the session's writer lock; readers take no lock.
//!
//! 1. Cells below a published `len` are initialised before the word that publishes
//!    that `len`, and never rewritten except for `removed_at`.
//! 2. A member removed in version `v` has `removed_at = v`, stored before the word of
//!    version `v`. So a snapshot of version `≥ v` always sees it removed, and one of
//!    version `< v` sees it present whichever value it reads. A broadcast therefore
//!    reaches exactly the members of the snapshot it loaded.
//! 3. A layout's word only changes while the layout is current. Versions are
//!    compared only within one layout: compaction starts fresh cells, so it may
//!    restart the count; growth shares the cells, so it keeps counting.
//! 4. `positions` (writer-side) maps each live member to its cell, and holds exactly
//!    the live members of the newest snapshot whenever the writer lock is free.
//! 5. The graveyard holds only handles moved out of a layout that no snapshot
//!    holds and none can load again (it was replaced first), so no broadcast
//!    reaches them; the writer only ever drops them. Spare pages and the spare
//!    layout come from such a layout too, emptied (every cell unwritten and
//!    `PRESENT`), and are published again only by a store of the snapshot cell.

use std::fmt;

use crate::client::ClientEntry;
use crate::paging;
use crate::sync::{
    unique_mut, Arc, AtomicU32, AtomicU64, AtomicUsize, EntryArc, NeverWeak, OnceArc, Ordering,
    Snapshot, SnapshotCell, SpinLock, ValueArc,
};
use crate::ClientId;

mod directory;
mod positions;

pub(crate) use directory::{Directory, Join, SetKey};
use positions::Positions;

/// The key of a session (a room, a channel, a task), chosen by the application.
///
/// Numbers and names are different variants, so `7` and `"7"` are different
/// sessions and never collide.
///
/// # Examples
///
/// ```
/// use switchboard::SessionId;
///
/// assert_eq!(SessionId::from(7u64), SessionId::Num(7));
/// assert_ne!(SessionId::from(7u64), SessionId::from("7"));
/// assert_eq!(SessionId::from("lobby").to_string(), "lobby");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionId {
    /// A numeric key.
    Num(u64),
    /// A named key. Cloning it is a reference-count increment.
    Name(ValueArc<str>),
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Num(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Num(n) => write!(f, "SessionId({n})"),
            Self::Name(s) => write!(f, "SessionId({s:?})"),
        }
    }
}

impl From<u64> for SessionId {
    fn from(n: u64) -> Self {
        Self::Num(n)
    }
}

impl From<&str> for SessionId {
    fn from(s: &str) -> Self {
        Self::Name(ValueArc::from(s))
    }
}

impl From<String> for SessionId {
    fn from(s: String) -> Self {
        Self::Name(ValueArc::from(s))
    }
}

impl From<&SessionId> for SessionId {
    fn from(s: &SessionId) -> Self {
        s.clone()
    }
}

/// Serialised as a JSON number (`Num`) or string (`Name`), so the two stay apart.
impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Num(n) => s.serialize_u64(*n),
            Self::Name(name) => s.serialize_str(name),
        }
    }
}

/// Read from a non-negative integer (`Num`) or a string (`Name`).
///
/// ```
/// use switchboard::SessionId;
///
/// let ids: Vec<SessionId> = serde_json::from_str(r#"[7, "7", "lobby"]"#)?;
/// assert_eq!(ids, [SessionId::Num(7), SessionId::from("7"), SessionId::from("lobby")]);
/// assert!(serde_json::from_str::<SessionId>("-1").is_err());
/// assert_eq!(serde_json::to_string(&ids)?, r#"[7,"7","lobby"]"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SessionId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a session id: a non-negative integer or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<SessionId, E> {
                Ok(SessionId::Num(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<SessionId, E> {
                u64::try_from(n)
                    .map(SessionId::Num)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SessionId, E> {
                Ok(SessionId::from(s))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `removed_at` of a member that has not left.
const PRESENT: u32 = u32::MAX;
/// The last version a layout may reach; a join or leave that finds it restarts
/// the count with a compaction first, so no stamp ever reaches `PRESENT`.
const MAX_VERSION: u32 = u32::MAX - 1;
/// Cells one layout may address: `len` is 32 bits of the state word.
const MAX_CELLS: usize = u32::MAX as usize;
/// The first page holds `2^PAGE_SHIFT` cells: small, since most sessions are.
const PAGE_SHIFT: u32 = 2;
/// Dead cells tolerated before compaction regardless of the live count.
pub(crate) const COMPACT_SLACK: usize = 16;
/// Most departed members a compaction hands to the graveyard; a larger batch is
/// freed at once, as its cost is spread over as many leaves anyway.
const GRAVEYARD_MAX: usize = 4 * COMPACT_SLACK;
/// Most cells a session keeps in spare pages: pages of 4, 8, 16 and 32 cells, the
/// layout of up to 60 members, about 1 KiB. Larger sessions compact rarely
/// enough per leave that fresh pages cost little.
const SPARE_MAX: usize = 4 * COMPACT_SLACK;

/// One member cell, as a broadcast sees it: 16 bytes, four to a cache line.
pub(crate) struct Member<M> {
    /// The member's entry: empty until a join writes the cell, then never changed.
    /// The id and the channel are read through it, so the cell keeps no copies.
    entry: OnceArc<ClientEntry<M>>,
    /// Version of the first snapshot without this member, or `PRESENT`.
    ///
    /// Ordering: `Relaxed` on both sides. A reader whose snapshot is new enough to
    /// exclude the member acquired the state word stored after this store, which
    /// makes the store visible; an older reader delivers whichever value it sees.
    removed_at: AtomicU32,
    /// The low 32 bits of the member's id, for the writer's [`Positions`]: they
    /// rehash from the cells rather than the entries. It fills what would be
    /// padding.
    ///
    /// Ordering: `Relaxed`; only writers read or write it, under the writer lock.
    short: AtomicU32,
}

impl<M> Member<M> {
    fn empty() -> Self {
        Self {
            entry: OnceArc::new(),
            removed_at: AtomicU32::new(PRESENT),
            short: AtomicU32::new(0),
        }
    }

    /// Writes the cell for the member `entry`; false if it was already written.
    ///
    /// Only a writer writes cells, under the writer lock (a join, or a compaction
    /// filling pages no reader can reach yet), so no two setters race: a store,
    /// not a compare-and-swap, one locked instruction fewer per join.
    fn set(&self, entry: EntryArc<ClientEntry<M>>) -> bool {
        let short = positions::short(entry.id);
        let fresh = self.entry.set(entry).is_ok();
        if fresh {
            // Relaxed: see `short`. Only the write that filled the cell names it.
            self.short.store(short, Ordering::Relaxed);
        }
        fresh
    }

    /// See `short`.
    fn short(&self) -> u32 {
        // Relaxed: see `short`.
        self.short.load(Ordering::Relaxed)
    }

    /// The member's id, once the cell is written.
    fn id(&self) -> Option<ClientId> {
        self.entry.get().map(|entry| entry.id)
    }

    /// The member's entry if the cell is written and the member is in the snapshot
    /// of `version`. Cells below a published `len` are always written (invariant
    /// 1); an unwritten one is skipped rather than trusted.
    #[inline]
    fn in_snapshot(&self, version: u32) -> Option<&ClientEntry<M>> {
        // Relaxed: see `removed_at`.
        if self.removed_at.load(Ordering::Relaxed) > version {
            self.entry.get()
        } else {
            None
        }
    }
}

type Page<M> = Box<[Member<M>]>;

// SAFETY: nothing downgrades an `Arc` of a page or of a layout (`unique_mut`'s
// condition): readers hold them through snapshots, the writer through `Arc`s.
#[allow(
    unsafe_code,
    reason = "the marker `unique_mut` asks for; see the SAFETY"
)]
unsafe impl<M> NeverWeak for Page<M> {}
// SAFETY: as for `Page`.
#[allow(
    unsafe_code,
    reason = "the marker `unique_mut` asks for; see the SAFETY"
)]
unsafe impl<M> NeverWeak for Layout<M> {}

/// A page list and the state word that says how much of it a snapshot sees.
pub(crate) struct Layout<M> {
    pages: Vec<Arc<Page<M>>>,
    /// `len << 32 | version` of the newest snapshot in this layout.
    ///
    /// Ordering: stored with `Release` after the cells and `removed_at` values it
    /// publishes, read with an `AcqRel` RMW by readers (invariants 1 and 2; see
    /// `Session::snapshot` for why an RMW).
    state: AtomicU64,
    /// Live members of the newest snapshot; a size hint.
    ///
    /// Ordering: `Relaxed`; read for counts, never to decide what to deliver.
    live: AtomicUsize,
}

fn pack(len: usize, version: u32) -> u64 {
    ((len as u64) << 32) | u64::from(version)
}

/// What one broadcast reads: a layout and one word of it.
pub(crate) struct Membership<M> {
    layout: Snapshot<Layout<M>>,
    len: usize,
    version: u32,
}

impl<M> Membership<M> {
    /// Members of this snapshot, in join order: their entries, which hold the id
    /// and the channel.
    #[inline]
    pub(crate) fn for_each(&self, mut f: impl FnMut(&ClientEntry<M>)) {
        self.for_each_cell(|_, entry| f(entry));
    }

    /// [`for_each`](Self::for_each), with each member's cell.
    #[inline]
    fn for_each_cell(&self, mut f: impl FnMut(&Member<M>, &ClientEntry<M>)) {
        let mut remaining = self.len;
        for page in self.layout.pages.iter() {
            let n = remaining.min(page.len());
            for cell in &page[..n] {
                if let Some(entry) = cell.in_snapshot(self.version) {
                    f(cell, entry);
                }
            }
            remaining -= n;
            if remaining == 0 {
                break;
            }
        }
    }

    /// Members of this snapshot, newest first, while `f` returns true.
    pub(crate) fn for_each_rev_while(&self, mut f: impl FnMut(&ClientEntry<M>) -> bool) {
        for cell in (0..self.len).rev() {
            let (page, offset) = paging::split(cell, PAGE_SHIFT);
            let Some(member) = self
                .layout
                .pages
                .get(page)
                .and_then(|p| p.get(offset))
                .and_then(|cell| cell.in_snapshot(self.version))
            else {
                continue;
            };
            if !f(member) {
                return;
            }
        }
    }

    /// Live members of the session now (not necessarily of this snapshot).
    pub(crate) fn live(&self) -> usize {
        // Relaxed: see `Layout::live`.
        self.layout.live.load(Ordering::Relaxed)
    }
}

/// Writer-side state, behind the session's writer lock.
struct Writer<M> {
    layout: Arc<Layout<M>>,
    len: usize,
    version: u32,
    /// Cell of each live member.
    positions: Positions,
    /// Entries of departed members from the layout the last compaction replaced,
    /// released one per leave (see "Graveyard" in the module docs).
    graveyard: Released<M>,
    /// Emptied pages of replaced layouts that no snapshot holds, by page index,
    /// for the next compaction or growth to fill instead of allocating (see
    /// "Spare pages" in the module docs).
    spare: Vec<Option<Arc<Page<M>>>>,
    /// The allocation of the last layout a compaction replaced, once no snapshot
    /// held it, with its page list emptied: the next compaction publishes in it.
    spare_layout: Option<Arc<Layout<M>>>,
    /// The application keeps this session open while it is empty.
    pinned: bool,
    /// Emptied and unpinned: no longer in the directory, refuses joins.
    retired: bool,
}

/// Result of [`Session::join`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    Added,
    AlreadyMember,
    /// The session emptied and is leaving the directory; look it up again.
    Retired,
    /// The session holds as many members as one layout can address.
    Full,
}

/// Result of [`Session::leave`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    Removed,
    /// Removed, and that emptied an unpinned session, which is now retired: the
    /// caller removes it from the directory.
    RemovedAndRetired,
    NotMember,
}

/// Entries a writer took out of the session, for its caller to drop once it has
/// released the writer lock: an entry's drop runs foreign code (queued messages,
/// wakers) that may use the session.
type Released<M> = Vec<EntryArc<ClientEntry<M>>>;

/// One member set: its published layout and its writer. Used for sessions and for
/// the profile indexes alike.
pub(crate) struct Session<M> {
    layout: SnapshotCell<Layout<M>>,
    /// The writer lock. A [`SpinLock`], released with a store: `std`'s mutex
    /// releases with a swap (a locked instruction, about 4.5 ns here) to learn
    /// whether to wake a sleeper, and a join and a leave each pay one. Joins and
    /// leaves hold it for a few dozen instructions; a compaction holds it for
    /// O(live members), once per more than `live` leaves, during which a
    /// waiter yields its CPU in a loop instead of sleeping. Broadcasts never take it.
    writer: SpinLock<Writer<M>>,
    /// A session's own key, kept here once so that each member's bookkeeping holds
    /// only the handle (8 bytes, not 24, per client); `None` for an index set,
    /// whose key only its map needs.
    key: Option<SessionId>,
}

impl<M> Session<M> {
    /// An empty session named `key`.
    pub(crate) fn named(key: SessionId) -> Self {
        Self {
            key: Some(key),
            ..Self::new()
        }
    }

    /// The key [`named`](Self::named) gave it; `None` for an index set.
    #[inline]
    pub(crate) fn key(&self) -> Option<&SessionId> {
        self.key.as_ref()
    }

    /// An empty index set: a member set without a key of its own.
    pub(crate) fn new() -> Self {
        let layout = Arc::new(Layout {
            pages: Vec::new(),
            state: AtomicU64::new(0),
            live: AtomicUsize::new(0),
        });
        Self {
            layout: SnapshotCell::new(Arc::clone(&layout)),
            writer: SpinLock::new(Writer {
                layout,
                len: 0,
                version: 0,
                positions: Positions::new(),
                graveyard: Vec::new(),
                spare: Vec::new(),
                spare_layout: None,
                pinned: false,
                retired: false,
            }),
            key: None,
        }
    }

    /// Live members now: a size hint for counts and for picking the smallest set,
    /// read without taking a snapshot (no read-modify-write on the state word).
    pub(crate) fn live(&self) -> usize {
        // Relaxed: see `Layout::live`.
        self.layout.load().live.load(Ordering::Relaxed)
    }

    /// The current membership. Short-lived: never hold it across an `.await`.
    #[inline]
    pub(crate) fn snapshot(&self) -> Membership<M> {
        let layout = self.layout.load();
        // An RMW, not a load: an RMW reads the newest value in the word's
        // modification order, so the snapshot includes every join and leave that
        // returned before this call began, however "before" was established. A load
        // (even SeqCst) may legally return an older value; loom finds that order.
        // One RMW per broadcast, not per recipient.
        let word = layout.state.fetch_add(0, Ordering::AcqRel);
        Membership {
            layout,
            len: (word >> 32) as usize,
            version: word as u32,
        }
    }

    /// Adds `id`, whose entry (and so channel) is `entry`.
    pub(crate) fn join(&self, id: ClientId, entry: &EntryArc<ClientEntry<M>>) -> Joined {
        // Declared before the guard, so dropped after it on every return.
        let _released;
        let mut w = self.writer.lock();
        if w.retired {
            return Joined::Retired;
        }
        if w.positions.get(id, &w.layout.pages).is_some() {
            return Joined::AlreadyMember;
        }
        if w.version >= MAX_VERSION || w.len >= MAX_CELLS {
            _released = self.compact(&mut w);
            if w.len >= MAX_CELLS {
                return Joined::Full;
            }
        }
        let cell = w.len;
        let (page, offset) = paging::split(cell, PAGE_SHIFT);
        if page == w.layout.pages.len() {
            self.grow(&mut w);
        }
        // Cells at or past `len` were never written (invariant 1), so this succeeds.
        let fresh = w.layout.pages[page][offset].set(EntryArc::clone(entry));
        debug_assert!(fresh, "cell {cell} written twice");
        w.len += 1;
        let Writer {
            positions, layout, ..
        } = &mut *w;
        positions.insert(id, cell, &layout.pages);
        w.version += 1;
        publish(&w);
        Joined::Added
    }

    /// Removes `id`.
    pub(crate) fn leave(&self, id: ClientId) -> Left {
        // Declared before the guard, so dropped after it on every return.
        let mut released = Released::new();
        let mut w = self.writer.lock();
        // The stamp below is `version + 1`; at the limit that would be `PRESENT`,
        // so restart the count first, as a join does (a join may publish
        // `MAX_VERSION` itself). Only then is a non-member looked up twice: the
        // common path finds the member once, in the `remove` below.
        if w.version >= MAX_VERSION {
            if w.positions.get(id, &w.layout.pages).is_none() {
                return Left::NotMember;
            }
            released = self.compact(&mut w);
        }
        let Writer {
            positions, layout, ..
        } = &mut *w;
        let Some(cell) = positions.remove(id, &layout.pages) else {
            return Left::NotMember;
        };
        let (page, offset) = paging::split(cell, PAGE_SHIFT);
        // Relaxed: see `Member::removed_at`; the word stored below releases it.
        w.layout.pages[page][offset]
            .removed_at
            .store(w.version + 1, Ordering::Relaxed);
        w.version += 1;
        let dead = w.len - w.positions.len();
        if dead > w.positions.len().max(COMPACT_SLACK) || w.version >= MAX_VERSION {
            released.append(&mut self.compact(&mut w));
        } else {
            publish(&w);
        }
        // One departed member of the last compaction goes per leave: its entry's
        // free then meets the next registration's allocation in the allocator's
        // thread cache, where a batch of them would overflow it. Freed after the
        // lock is released: an entry's drop runs foreign code (queued messages,
        // wakers), which must not hold up the session's writers or re-enter them.
        let freed = w.graveyard.pop();
        let mut buried = Vec::new();
        if w.graveyard.is_empty() {
            buried = std::mem::take(&mut w.graveyard);
        }
        let retired = w.positions.is_empty() && !w.pinned;
        if retired {
            w.retired = true;
            buried = std::mem::take(&mut w.graveyard);
            w.spare = Vec::new();
            w.spare_layout = None;
        }
        drop(w);
        drop(freed);
        drop(buried);
        if retired {
            Left::RemovedAndRetired
        } else {
            Left::Removed
        }
    }

    /// Keeps the session open while empty. Returns false if it already retired.
    pub(crate) fn pin(&self) -> bool {
        let mut w = self.writer.lock();
        if !w.retired {
            w.pinned = true;
        }
        !w.retired
    }

    /// Stops keeping the session open. Returns true if that retired it (it was
    /// empty): the caller removes it from the directory.
    pub(crate) fn unpin(&self) -> bool {
        let mut w = self.writer.lock();
        w.pinned = false;
        if w.positions.is_empty() && !w.retired {
            w.retired = true;
            return true;
        }
        false
    }

    /// A session whose version count starts at `version` rather than 0, so that a
    /// test reaches the `MAX_VERSION` boundary in a few steps, not 2^32.
    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) fn starting_at_version(version: u32) -> Self {
        let s = Self::new();
        {
            let mut w = s.writer.lock();
            w.version = version;
            publish(&w);
        }
        s
    }

    /// Whether the session is retired (out of the directory or on its way out).
    #[cfg(all(test, not(switchboard_loom)))]
    pub(crate) fn is_retired(&self) -> bool {
        self.writer.lock().retired
    }

    /// Publishes a layout with one more page, sharing every existing page.
    fn grow(&self, w: &mut Writer<M>) {
        let next = w.layout.pages.len();
        let mut pages = Vec::with_capacity(next + 1);
        pages.extend(w.layout.pages.iter().cloned());
        pages.push(take_page(&mut w.spare, next));
        // The old layout shares every page with the new one: dropping it frees
        // only its page list.
        drop(self.install(w, pages));
    }

    /// Copies the live members into fresh pages and publishes them with the version
    /// restarted (invariant 3). The pages, the page list and the layout come from
    /// the spares when the last compaction left some. Dead cells' handles go to the
    /// graveyard if the old layout is unshared, else drop with its last snapshot.
    ///
    /// The copies borrow the old cells' counts until [`bury`] settles them: a
    /// handle passed on rather than cloned and dropped, two locked instructions
    /// fewer per member copied. The crate's one `unsafe` block outside `sync/`
    /// and the channel's ring, since the contract spans the layout's install.
    #[allow(
        unsafe_code,
        reason = "copies that borrow a count until bury settles them; see the SAFETY"
    )]
    #[must_use = "the released entries are to be dropped once the writer lock is released"]
    fn compact(&self, w: &mut Writer<M>) -> Released<M> {
        // Leftovers of the compaction before, in a session that shrank since: handed
        // to the caller to free once it released the lock, since an entry's drop runs
        // foreign code (queued messages, wakers) that may use this session, and a
        // panic there must find no copy to settle.
        let mut released = std::mem::take(&mut w.graveyard);
        let live = w.positions.len();
        let mut pages = w
            .spare_layout
            .as_mut()
            .and_then(unique_mut)
            .map(|spare| std::mem::take(&mut spare.pages))
            .unwrap_or_default();
        // A small session gets room for every cell its next compaction can find
        // in use (invariant: dead cells stay at most `max(live, COMPACT_SLACK) + 1`),
        // so that churn at a steady size never grows it, which would publish a
        // layout between compactions.
        let room = live + live.max(COMPACT_SLACK) + 1;
        let cells = if room <= SPARE_MAX { room } else { live.max(1) };
        // One allocation for the page list, not one per doubling of it.
        let mut needed = pages.len();
        while paging::capacity(needed, PAGE_SHIFT) < cells {
            needed += 1;
        }
        pages.reserve_exact(needed - pages.len());
        while paging::capacity(pages.len(), PAGE_SHIFT) < cells {
            pages.push(take_page(&mut w.spare, pages.len()));
        }
        let mut next = 0;
        let old = Membership {
            layout: self.layout.load(),
            len: w.len,
            version: w.version,
        };
        w.positions.reset(live);
        let positions = &mut w.positions;
        // From the first copy until `bury` has settled them all, an unwind would drop
        // the old cells' counts that the published copies borrow: abort instead. Only
        // a broken invariant (an index, a debug assertion) can panic in between; no
        // foreign code runs there (the dead entries drop after `bury`).
        let settling = AbortOnUnwind;
        old.for_each_cell(|cell, member| {
            let (p, o) = paging::split(next, PAGE_SHIFT);
            let copy = &pages[p][o];
            // SAFETY: `bury` below settles every copy (`OnceArc::set_copy`'s
            // contract), before `replaced`, which holds the old cells and so their
            // counts, can drop; nothing between can unwind (`settling` aborts). The
            // writer lock, held throughout, keeps other writers off both cells.
            let copied = unsafe { copy.entry.set_copy(&cell.entry) };
            debug_assert!(copied, "a member cell copied twice or from nothing");
            // Relaxed: see `Member::short`.
            copy.short.store(cell.short(), Ordering::Relaxed);
            positions.insert(member.id, next, &pages);
            next += 1;
        });
        drop(old);
        debug_assert_eq!(next, live);
        let dead = w.len - live;
        w.len = live;
        w.version = 0;
        let replaced = self.install(w, pages);
        let keep_dead = dead <= GRAVEYARD_MAX;
        // Room for every departed entry at once, whether kept or freed below: one
        // allocation, where growing by pushes reallocated a large room's several times.
        w.graveyard.reserve_exact(dead);
        bury(w, replaced);
        std::mem::forget(settling);
        if !keep_dead {
            // Too many to free one per leave: all at once, by the caller (above).
            released.append(&mut w.graveyard);
        }
        released
    }

    /// Publishes a new layout holding `pages` and the writer's current word;
    /// returns the layout it replaced.
    fn install(&self, w: &mut Writer<M>, pages: Vec<Arc<Page<M>>>) -> Arc<Layout<M>> {
        let state = pack(w.len, w.version);
        let live = w.positions.len();
        let layout = match w.spare_layout.take() {
            Some(spare) => refill(spare, pages, state, live),
            None => Err(pages),
        };
        let layout = layout.unwrap_or_else(|pages| {
            Arc::new(Layout {
                pages,
                state: AtomicU64::new(state),
                live: AtomicUsize::new(live),
            })
        });
        self.layout.store(Arc::clone(&layout));
        std::mem::replace(&mut w.layout, layout)
    }
}

/// Refills `layout`, a replaced layout no snapshot holds, for publication; gives
/// `pages` back if it is shared after all.
fn refill<M>(
    mut layout: Arc<Layout<M>>,
    pages: Vec<Arc<Page<M>>>,
    state: u64,
    live: usize,
) -> Result<Arc<Layout<M>>, Vec<Arc<Page<M>>>> {
    let Some(reused) = unique_mut(&mut layout) else {
        return Err(pages);
    };
    reused.pages = pages;
    // Relaxed: no reader can reach the layout until the snapshot cell's store
    // publishes it, which orders these stores before it, as it orders a new
    // layout's initial values.
    reused.state.store(state, Ordering::Relaxed);
    reused.live.store(live, Ordering::Relaxed);
    Ok(layout)
}

/// Settles a compaction's copies and empties the layout it replaced.
///
/// The new layout's cells borrow the counts of the old cells they were copied
/// from (`OnceArc::set_copy`). If no snapshot holds the old layout any more, each
/// present member's old cell hands its count to its copy (no increment, no
/// decrement), its departed members' entries go to the graveyard (which `compact`
/// empties at once when they are too many to free one per leave; none is dropped
/// here, before every copy is settled), and a small session keeps the emptied pages and the layout's
/// allocation as spares. Otherwise the old cells keep their counts, for the
/// layout's last snapshot to drop, and each copy takes a count of its own; so
/// does each copy from a page an older layout a reader still holds shares.
///
/// `unique_mut` (`Arc::get_mut`) succeeds only for the last count: the snapshot
/// cell gave up its own in `install` (arc-swap turns every reader's borrow of the
/// old value into a count before its store returns), so success means no broadcast can reach these
/// cells again: what the graveyard holds is only ever dropped, and a spare page is
/// as private as a fresh one.
fn bury<M>(w: &mut Writer<M>, mut replaced: Arc<Layout<M>>) {
    let Some(layout) = unique_mut(&mut replaced) else {
        for page in &replaced.pages {
            count_copies(page);
        }
        return;
    };
    let keep = paging::capacity(layout.pages.len(), PAGE_SHIFT) <= SPARE_MAX;
    if keep && w.spare.len() < layout.pages.len() {
        w.spare.resize_with(layout.pages.len(), || None);
    }
    for (index, mut page) in layout.pages.drain(..).enumerate() {
        // A page is shared only with an older layout some reader still holds.
        let Some(cells) = unique_mut(&mut page) else {
            count_copies(&page);
            continue;
        };
        for cell in cells.iter_mut() {
            // Relaxed: this thread owns the cell outright (see above). A load and a
            // store, not a swap: a swap is a locked instruction on x86, and nothing
            // else can write the word between the two.
            let removed = cell.removed_at.load(Ordering::Relaxed);
            if removed == PRESENT {
                // Present, so copied: its count passes to the copy.
                if !cell.entry.hand_over() {
                    // Cells are written in order: the rest are empty too.
                    break;
                }
                continue;
            }
            cell.removed_at.store(PRESENT, Ordering::Relaxed);
            if let Some(entry) = cell.entry.take() {
                // Not dropped here: a drop runs foreign code, and the copies are
                // not all settled yet (`compact`).
                w.graveyard.push(entry);
            }
        }
        if keep {
            w.spare[index] = Some(page);
        }
    }
    if keep {
        w.spare_layout = Some(replaced);
    }
}

/// Aborts the process if dropped while unwinding; forgotten on the way out of the
/// section it guards. See `Session::compact`.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::process::abort();
        }
    }
}

/// Gives each present member of `page`, which a reader may still hold, a count
/// of its own for the copy compaction made of it.
fn count_copies<M>(page: &Page<M>) {
    for cell in page.iter() {
        // Relaxed: see `Member::removed_at`; the writer lock orders every stamp
        // before this read.
        if cell.removed_at.load(Ordering::Relaxed) == PRESENT {
            cell.entry.count_copy();
        }
    }
}

/// Stores the writer's word into its current layout.
fn publish<M>(w: &Writer<M>) {
    // Relaxed: see `Layout::live`.
    w.layout.live.store(w.positions.len(), Ordering::Relaxed);
    // Release: see `Layout::state`. A swap, not a store: readers write the word
    // too (see `Session::snapshot`), and an RMW keeps every write to it in one chain.
    // A store would do against their write-backs (an RMW reads the latest value
    // before its own write), but the swap also acquires the write of a reader
    // that read the old word, which orders that reader before whatever the writer
    // does next: a broadcast that missed this join or leave began before the call
    // returned, however "before" is established (a relaxed clock included).
    w.layout
        .state
        .swap(pack(w.len, w.version), Ordering::AcqRel);
}

fn new_page<M>(len: usize) -> Page<M> {
    (0..len).map(|_| Member::empty()).collect()
}

/// Page `index`: the spare one if there is one, else a new one.
fn take_page<M>(spare: &mut [Option<Arc<Page<M>>>], index: usize) -> Arc<Page<M>> {
    spare
        .get_mut(index)
        .and_then(Option::take)
        .unwrap_or_else(|| Arc::new(new_page(paging::page_len(index, PAGE_SHIFT))))
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    /// A client entry for `id(n)`, of any message type: a cell reads its member's id
    /// from the entry.
    fn entry<M>(n: usize) -> EntryArc<ClientEntry<M>> {
        EntryArc::new(ClientEntry::new(id(n), 4, 0, None))
    }

    fn ids<M>(m: &Membership<M>) -> Vec<ClientId> {
        let mut out = Vec::new();
        m.for_each(|member| out.push(member.id));
        out
    }

    fn id(n: usize) -> ClientId {
        ClientId::pack(0, n, 0)
    }

    #[test]
    fn join_and_leave_publish_exact_membership() {
        let s = Session::<u32>::new();
        for n in 0..10 {
            assert_eq!(s.join(id(n), &entry(n)), Joined::Added);
        }
        assert_eq!(s.join(id(3), &entry(3)), Joined::AlreadyMember);
        assert_eq!(s.leave(id(3)), Left::Removed);
        assert_eq!(s.leave(id(3)), Left::NotMember);
        let expected: Vec<_> = (0..10).filter(|&n| n != 3).map(id).collect();
        assert_eq!(ids(&s.snapshot()), expected);
        assert_eq!(s.snapshot().live(), 9);
    }

    /// Readers write the state word too (`snapshot`'s `fetch_add(0)`), which is
    /// sound only because a reader's write is atomic with its read: a reader that
    /// read the word, then wrote it back after a later publication, would undo
    /// it, and every snapshot after that would miss joins that had returned.
    /// Readers here learn how many joins returned (an acquire of the writer's
    /// count) just before each snapshot. This guards against the undo only; the
    /// ordering the writer's swap adds against relaxed clocks is loom model 2's.
    #[test]
    fn racing_snapshots_never_undo_a_published_join() {
        const JOINS: usize = 60_000;
        let s = Session::<u32>::new();
        let joined = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| loop {
                    // Acquire: pairs with the writer's Release below, which comes
                    // after the join's publication.
                    let returned = joined.load(Ordering::Acquire);
                    let seen = s.snapshot().len;
                    assert!(
                        seen >= returned,
                        "a snapshot saw {seen} members after {returned} joins returned"
                    );
                    if returned == JOINS {
                        break;
                    }
                });
            }
            for n in 0..JOINS {
                assert_eq!(s.join(id(n), &entry(n)), Joined::Added);
                // Release: see the readers' Acquire.
                joined.store(n + 1, Ordering::Release);
            }
        });
    }

    #[test]
    fn an_old_snapshot_keeps_its_members_after_they_leave() {
        let s = Session::<u32>::new();
        s.join(id(0), &entry(0));
        s.join(id(1), &entry(1));
        let before = s.snapshot();
        s.leave(id(0));
        s.join(id(2), &entry(2));
        assert_eq!(ids(&before), vec![id(0), id(1)]);
        assert_eq!(ids(&s.snapshot()), vec![id(1), id(2)]);
    }

    #[test]
    fn compaction_bounds_dead_cells_and_preserves_members() {
        let s = Session::<u32>::new();
        for n in 0..100 {
            s.join(id(n), &entry(n));
        }
        let old = s.snapshot();
        for n in (0..100).filter(|n| n % 4 != 0) {
            s.leave(id(n));
            let w = s.writer.lock();
            assert!(w.len - w.positions.len() <= w.positions.len().max(COMPACT_SLACK) + 1);
        }
        let expected: Vec<_> = (0..100).filter(|n| n % 4 == 0).map(id).collect();
        assert_eq!(ids(&s.snapshot()), expected);
        assert_eq!(
            ids(&old).len(),
            100,
            "an old snapshot is untouched by compaction"
        );
        // Members are still removable after their cells moved.
        assert_eq!(s.leave(id(0)), Left::Removed);
        assert_eq!(ids(&s.snapshot()).len(), 24);
    }

    #[test]
    fn churn_in_a_large_session_keeps_memory_bounded() {
        let s = Session::<u32>::new();
        for n in 0..1000 {
            s.join(id(n), &entry(n));
        }
        for round in 0..10_000 {
            s.join(id(1000 + round), &entry(1000 + round));
            s.leave(id(1000 + round));
        }
        let w = s.writer.lock();
        assert_eq!(w.positions.len(), 1000);
        assert!(w.len <= 2 * 1000 + 1, "len {} after churn", w.len);
    }

    type Weak = crate::sync::EntryWeak<ClientEntry<u32>>;

    /// Joins `live` residents, then churns single members through until a
    /// compaction has just happened; returns the residents' entries and the weak
    /// handles of the churned ones.
    fn churned_room(s: &Session<u32>, live: usize) -> (Vec<EntryArc<ClientEntry<u32>>>, Vec<Weak>) {
        churned_room_with(s, live, |_, _| {})
    }

    /// The residents' entries and the churned ones' weak handles.
    type Churned<M> = (
        Vec<EntryArc<ClientEntry<M>>>,
        Vec<crate::sync::EntryWeak<ClientEntry<M>>>,
    );

    /// [`churned_room`] for any message type, with `load` called on each churned
    /// entry (and its round) before it joins.
    fn churned_room_with<M>(
        s: &Session<M>,
        live: usize,
        load: impl Fn(usize, &EntryArc<ClientEntry<M>>),
    ) -> Churned<M> {
        let residents: Vec<_> = (0..live).map(entry).collect();
        for (n, entry) in residents.iter().enumerate() {
            s.join(id(n), entry);
        }
        let mut churned = Vec::new();
        for round in 0.. {
            let entry = entry(live + round);
            load(round, &entry);
            s.join(id(live + round), &entry);
            s.leave(id(live + round));
            churned.push(EntryArc::downgrade(&entry));
            if s.writer.lock().len == live {
                break;
            }
        }
        (residents, churned)
    }

    /// Joins `live` residents (ids from `base`) on both sides of `live + 1` members
    /// that `load` prepared, so that a compaction meets departed cells with
    /// residents still to copy after them; returns the residents and the others' ids.
    fn room_around<M>(
        s: &Session<M>,
        base: usize,
        live: usize,
        load: impl Fn(&EntryArc<ClientEntry<M>>),
    ) -> (Vec<EntryArc<ClientEntry<M>>>, Vec<ClientId>) {
        let residents: Vec<_> = (base..base + live).map(entry).collect();
        let others: Vec<_> = (base + live..base + 2 * live + 1).map(entry).collect();
        for entry in residents.iter().take(live / 2) {
            s.join(entry.id, entry);
        }
        for entry in &others {
            load(entry);
            s.join(entry.id, entry);
        }
        for entry in residents.iter().skip(live / 2) {
            s.join(entry.id, entry);
        }
        (residents, others.iter().map(|entry| entry.id).collect())
    }

    /// Whether one of these leaves panicked (caught); stops at the first.
    fn a_leave_panics<M>(s: &Session<M>, ids: impl IntoIterator<Item = ClientId>) -> bool {
        ids.into_iter().any(|id| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.leave(id))).is_err()
        })
    }

    /// Whether `work`, on a thread of its own, finishes within ten seconds.
    fn finishes(work: impl FnOnce() + Send + 'static) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            work();
            let _ = done.send(());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok()
    }

    /// A message whose drop panics, as a user's `M` may.
    struct Boom(bool);

    impl Drop for Boom {
        fn drop(&mut self) {
            if self.0 && !std::thread::panicking() {
                panic!("a message's drop panicked");
            }
        }
    }

    /// Review: a compaction dropped entries (the last one's graveyard, and the dead
    /// when too many to keep) while its copies still borrowed the old cells' counts,
    /// so a message whose drop panicked unwound through the copies unsettled, and the
    /// published cells lost their counts (a use-after-free once the clients went).
    #[test]
    fn a_message_drop_that_panics_in_a_compaction_leaves_every_member_counted() {
        let s: Session<Boom> = Session::new();
        // Churn until a compaction buries the departed; the first ten hold a
        // message whose drop panics. Leaves pop the graveyard from its end, so the
        // ten are the last left in it, for the next compaction to clear.
        let (residents, _) = churned_room_with(&s, 40, |round, entry| {
            if round < 10 {
                assert!(entry.chan.try_send(Boom(true)).is_ok());
            }
        });
        assert!(
            a_leave_panics(&s, (0..40).map(id)),
            "no leave met the panicking drop"
        );
        let members = ids(&s.snapshot());
        assert!(!members.is_empty());
        for member in members {
            let entry = &residents[member.index()];
            assert_eq!(
                EntryArc::strong_count(entry),
                2,
                "{member:?}: the session's cell lost its count"
            );
        }
    }

    /// The same, for the departed of a compaction too many to keep in the graveyard,
    /// which it frees at once.
    #[test]
    fn a_message_drop_that_panics_among_many_departed_leaves_every_member_counted() {
        let s: Session<Boom> = Session::new();
        let live = GRAVEYARD_MAX + 8;
        let (residents, departed) = room_around(&s, 0, live, |entry| {
            assert!(entry.chan.try_send(Boom(true)).is_ok());
        });
        assert!(
            a_leave_panics(&s, departed),
            "no leave met the panicking drop"
        );
        assert_eq!(ids(&s.snapshot()).len(), live);
        for entry in &residents {
            assert_eq!(
                EntryArc::strong_count(entry),
                2,
                "{:?}: the session's cell lost its count",
                entry.id
            );
        }
    }

    /// A message whose drop calls back into its session, as a user's `M` may.
    struct Reenter(Option<Arc<Session<Reenter>>>);

    impl Drop for Reenter {
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                s.pin();
            }
        }
    }

    /// Queues on `entry` a message that uses `s` when dropped.
    fn reenter(s: &Arc<Session<Reenter>>, entry: &EntryArc<ClientEntry<Reenter>>) {
        assert!(entry.chan.try_send(Reenter(Some(Arc::clone(s)))).is_ok());
    }

    /// Review: a leave freed a buried entry under the session's writer lock, so a
    /// message whose drop used the same session waited on that lock for ever.
    #[test]
    fn a_message_drop_may_use_its_session_when_a_leave_frees_it() {
        let left = finishes(|| {
            let s = Arc::new(Session::<Reenter>::new());
            let (_residents, _) = churned_room_with(&s, 10, |_, entry| reenter(&s, entry));
            // Each leave frees one buried entry, and with it its message.
            for n in 0..10 {
                s.leave(id(n));
            }
        });
        assert!(
            left,
            "a leave held the writer lock while a freed message used the session"
        );
    }

    /// The same when a compaction frees them: the previous compaction's leftovers,
    /// then a room's departed too many to keep.
    #[test]
    fn a_message_drop_may_use_its_session_when_a_compaction_frees_it() {
        let compacted = finishes(|| {
            let s = Arc::new(Session::<Reenter>::new());
            // Leftovers: 40 buried, then residents leave until a compaction clears
            // what the leaves have not popped.
            let (_residents, _) = churned_room_with(&s, 40, |_, entry| reenter(&s, entry));
            for n in 0..40 {
                s.leave(id(n));
            }
            // Too many to keep: residents on both sides of more departed than them.
            let (_residents, departed) =
                room_around(&s, 1000, GRAVEYARD_MAX + 8, |entry| reenter(&s, entry));
            for id in departed {
                s.leave(id);
            }
        });
        assert!(
            compacted,
            "a compaction held the writer lock while a freed message used the session"
        );
    }

    #[test]
    fn a_compaction_frees_departed_entries_one_per_leave() {
        let s = Session::new();
        let (_residents, churned) = churned_room(&s, 10);
        let alive = |w: &[Weak]| w.iter().filter(|w| w.upgrade().is_some()).count();
        let dead = churned.len();
        assert_eq!(dead, COMPACT_SLACK + 1);
        // The compacting leave popped one already.
        assert_eq!(s.writer.lock().graveyard.len(), dead - 1);
        assert_eq!(alive(&churned), dead - 1, "buried, not freed at once");
        for n in 0..3 {
            let entry = entry(100 + n);
            s.join(id(100 + n), &entry);
            s.leave(id(100 + n));
            assert_eq!(alive(&churned), dead - 2 - n, "one freed per leave");
        }
        assert_eq!(ids(&s.snapshot()), (0..10).map(id).collect::<Vec<_>>());
    }

    #[test]
    fn a_snapshot_held_across_compaction_keeps_its_members_and_no_graveyard() {
        let s = Session::<u32>::new();
        let residents: Vec<_> = (0..10).map(entry).collect();
        for (n, entry) in residents.iter().enumerate() {
            s.join(id(n), entry);
        }
        let mut churned = Vec::new();
        let mut held = None;
        for round in 0..=COMPACT_SLACK {
            let entry = entry(10 + round);
            s.join(id(10 + round), &entry);
            if round == COMPACT_SLACK {
                // The last churned member is present in this snapshot, and the
                // leave below compacts while the snapshot is held.
                held = Some(s.snapshot());
            }
            s.leave(id(10 + round));
            churned.push(EntryArc::downgrade(&entry));
        }
        assert_eq!(s.writer.lock().len, 10, "the last leave compacted");
        assert!(
            s.writer.lock().graveyard.is_empty(),
            "a held layout is not buried"
        );
        let held = held.unwrap_or_else(|| s.snapshot());
        let mut expected: Vec<_> = (0..10).map(id).collect();
        expected.push(id(10 + COMPACT_SLACK));
        assert_eq!(
            ids(&held),
            expected,
            "the old snapshot reaches exactly its members"
        );
        assert!(churned.iter().all(|w| w.upgrade().is_some()));
        drop(held);
        assert!(
            churned.iter().all(|w| w.upgrade().is_none()),
            "the last snapshot frees them all"
        );
    }

    /// A compaction's copies borrow the old cells' counts until it settles them:
    /// each resident must end with exactly one count held by the session, whether
    /// the old cell handed its count over (no snapshot held the old layout), or
    /// the copy took one of its own (a snapshot held the layout, or an older
    /// layout a snapshot held shared the page).
    #[test]
    fn a_compaction_leaves_each_resident_one_count_in_the_session() {
        fn counts(residents: &[EntryArc<ClientEntry<u32>>]) -> Vec<usize> {
            residents.iter().map(EntryArc::strong_count).collect()
        }
        fn churn_until_len(s: &Session<u32>, len: usize, next: &mut usize) {
            loop {
                s.join(id(*next), &entry(*next));
                s.leave(id(*next));
                *next += 1;
                if s.writer.lock().len == len {
                    return;
                }
            }
        }
        // No snapshot holds the old layout: its cells hand their counts over.
        let s = Session::new();
        let (residents, _) = churned_room(&s, 10);
        assert_eq!(counts(&residents), [2; 10], "test + session");
        drop(s);
        assert_eq!(counts(&residents), [1; 10]);

        // A snapshot holds it: old and new cells hold one count each. The first
        // compaction made room for the churn, so the held layout is the one the
        // second replaces, not an older one that shares its pages.
        let s = Session::new();
        let (residents, _) = churned_room(&s, 10);
        let held = s.snapshot();
        let mut next = 100;
        let replaced = Arc::as_ptr(&s.writer.lock().layout);
        churn_until_len(&s, 10, &mut next);
        assert!(std::ptr::eq(Arc::as_ptr(&held.layout), replaced));
        assert_eq!(counts(&residents), [3; 10], "test + old cell + copy");
        drop(held);
        assert_eq!(counts(&residents), [2; 10]);
        drop(s);
        assert_eq!(counts(&residents), [1; 10]);

        // The replaced layout is free, but an older one a snapshot holds shares
        // its first two pages (4 + 8 cells, all residents).
        let s = Session::new();
        let residents: Vec<_> = (0..12).map(entry).collect();
        for (n, entry) in residents.iter().enumerate() {
            s.join(id(n), entry);
        }
        let older = s.snapshot();
        let pages = s.writer.lock().layout.pages.len();
        churn_until_len(&s, 12, &mut next);
        assert!(pages < 3, "the churn grew the room into a third page");
        assert_eq!(counts(&residents), [3; 12], "test + shared old cell + copy");
        drop(older);
        assert_eq!(counts(&residents), [2; 12]);
        drop(s);
        assert_eq!(counts(&residents), [1; 12]);
    }

    /// The addresses of the current layout's pages.
    fn page_addresses(s: &Session<u32>) -> Vec<usize> {
        let w = s.writer.lock();
        w.layout
            .pages
            .iter()
            .map(|page| Arc::as_ptr(page) as usize)
            .collect()
    }

    /// Churns single members through a room until it has no dead cell, which
    /// after a join and a leave only a compaction leaves.
    fn churn_until_compacted(s: &Session<u32>, next: &mut usize) {
        loop {
            s.join(id(*next), &entry(*next));
            s.leave(id(*next));
            *next += 1;
            let w = s.writer.lock();
            if w.len == w.positions.len() {
                return;
            }
        }
    }

    #[test]
    fn a_compaction_reuses_the_pages_of_the_layout_it_buried() {
        let s = Session::new();
        let (_residents, _churned) = churned_room(&s, 10);
        let mut next = 1000;
        let first = page_addresses(&s);
        churn_until_compacted(&s, &mut next);
        let second = page_addresses(&s);
        assert!(
            second.iter().all(|page| !first.contains(page)),
            "the pages being replaced were still published"
        );
        churn_until_compacted(&s, &mut next);
        assert_eq!(
            page_addresses(&s),
            first,
            "the third layout is built in the first one's pages"
        );
        assert_eq!(ids(&s.snapshot()), (0..10).map(id).collect::<Vec<_>>());
        let w = s.writer.lock();
        let spare_cells: usize = w.spare.iter().flatten().map(|page| page.len()).sum();
        assert!(spare_cells <= SPARE_MAX, "{spare_cells} spare cells");
    }

    #[test]
    fn a_small_room_churning_at_a_steady_size_publishes_only_at_compaction() {
        let s = Session::new();
        let (_residents, _churned) = churned_room(&s, 10);
        let pages = page_addresses(&s);
        // A whole compaction period: every join and leave up to the next one.
        for next in 1000..1000 + COMPACT_SLACK {
            s.join(id(next), &entry(next));
            s.leave(id(next));
            assert_eq!(page_addresses(&s), pages, "the room grew");
        }
    }

    #[test]
    fn a_held_snapshot_keeps_its_pages_out_of_reuse() {
        let s = Session::new();
        let (_residents, _churned) = churned_room(&s, 10);
        let mut next = 1000;
        let held = s.snapshot();
        let held_pages = page_addresses(&s);
        churn_until_compacted(&s, &mut next);
        churn_until_compacted(&s, &mut next);
        churn_until_compacted(&s, &mut next);
        assert!(
            page_addresses(&s)
                .iter()
                .all(|page| !held_pages.contains(page)),
            "a page a snapshot holds was reused"
        );
        assert_eq!(ids(&held), (0..10).map(id).collect::<Vec<_>>());
    }

    #[test]
    fn retiring_empties_the_graveyard() {
        let s = Session::new();
        let (_residents, churned) = churned_room(&s, 2);
        assert!(!s.writer.lock().graveyard.is_empty());
        assert_eq!(s.leave(id(0)), Left::Removed);
        assert_eq!(s.leave(id(1)), Left::RemovedAndRetired);
        assert!(s.writer.lock().graveyard.is_empty());
        assert!(s.writer.lock().spare.is_empty());
        assert!(s.writer.lock().spare_layout.is_none());
        assert!(churned.iter().all(|w| w.upgrade().is_none()));
    }

    #[test]
    fn compaction_copies_a_rejoined_member_once() {
        let s = Session::<u32>::new();
        for n in 0..4 {
            s.join(id(n), &entry(n));
        }
        // Member 0 leaves and rejoins: its first cell is dead, its second live.
        s.leave(id(0));
        s.join(id(0), &entry(0));
        for round in 0..COMPACT_SLACK * 2 {
            s.join(id(100 + round), &entry(100 + round));
            s.leave(id(100 + round));
        }
        let members = ids(&s.snapshot());
        assert_eq!(
            members.iter().filter(|m| **m == id(0)).count(),
            1,
            "{members:?}"
        );
        assert_eq!(members.len(), 4);
        assert_eq!(s.leave(id(0)), Left::Removed);
        assert_eq!(ids(&s.snapshot()).len(), 3);
        assert_eq!(s.join(id(7), &entry(7)), Joined::Added);
        assert_eq!(ids(&s.snapshot()).len(), 4);
    }

    #[test]
    fn versions_never_reach_the_value_that_means_present() {
        // Three steps below the limit: the joins publish MAX_VERSION - 2 up to
        // MAX_VERSION itself, so the leaves that follow must restart the count
        // rather than stamp MAX_VERSION + 1, which is PRESENT.
        let s = Session::<u32>::starting_at_version(MAX_VERSION - 3);
        for n in 0..3 {
            assert_eq!(s.join(id(n), &entry(n)), Joined::Added);
        }
        for n in 0..3 {
            assert_eq!(
                s.leave(id(n)),
                if n < 2 {
                    Left::Removed
                } else {
                    Left::RemovedAndRetired
                }
            );
            let left: Vec<_> = (0..=n).map(id).collect();
            let members = ids(&s.snapshot());
            assert!(
                members.iter().all(|m| !left.contains(m)),
                "left members {left:?} still in {members:?}"
            );
            let w = s.writer.lock();
            assert!(
                w.version <= MAX_VERSION,
                "version {} past the limit",
                w.version
            );
        }
    }

    #[test]
    fn a_leave_at_the_limit_keeps_the_other_members() {
        let s = Session::<u32>::starting_at_version(MAX_VERSION - 2);
        for n in 0..2 {
            s.join(id(n), &entry(n));
        }
        assert_eq!(s.leave(id(0)), Left::Removed);
        assert_eq!(ids(&s.snapshot()), vec![id(1)]);
        assert_eq!(s.join(id(2), &entry(2)), Joined::Added);
        assert_eq!(ids(&s.snapshot()), vec![id(1), id(2)]);
    }

    #[test]
    fn positions_tell_apart_ids_that_share_a_slot() {
        // Two generations of one slot: the cells' short ids are equal, and only the
        // entry's full id tells them apart.
        let s = Session::new();
        let old = ClientId::pack(0, 5, 0);
        let new = ClientId::pack(0, 5, 1);
        let entry = |id| EntryArc::new(ClientEntry::<u32>::new(id, 4, 0, None));
        assert_eq!(s.join(old, &entry(old)), Joined::Added);
        assert_eq!(s.join(new, &entry(new)), Joined::Added);
        assert_eq!(s.join(new, &entry(new)), Joined::AlreadyMember);
        assert_eq!(s.leave(new), Left::Removed);
        assert_eq!(s.leave(new), Left::NotMember);
        assert_eq!(ids(&s.snapshot()), vec![old]);
        assert_eq!(s.leave(old), Left::RemovedAndRetired);
    }

    #[test]
    fn positions_survive_growth_and_compaction() {
        let s = Session::<u32>::new();
        for n in 0..1000 {
            assert_eq!(s.join(id(n), &entry(n)), Joined::Added);
        }
        for n in (0..1000).filter(|n| n % 3 != 0) {
            assert_eq!(s.leave(id(n)), Left::Removed, "member {n}");
        }
        for n in 0..1000 {
            let expected = if n % 3 == 0 {
                Joined::AlreadyMember
            } else {
                Joined::Added
            };
            assert_eq!(s.join(id(n), &entry(n)), expected, "member {n}");
        }
        assert_eq!(s.snapshot().live(), 1000);
    }

    #[test]
    fn emptying_retires_unless_pinned() {
        let s = Session::<u32>::new();
        assert!(s.pin());
        s.join(id(0), &entry(0));
        assert_eq!(s.leave(id(0)), Left::Removed);
        assert!(!s.is_retired());
        assert!(s.unpin(), "unpinning an empty session retires it");
        assert_eq!(s.join(id(1), &entry(1)), Joined::Retired);

        let t = Session::<u32>::new();
        t.join(id(0), &entry(0));
        assert_eq!(t.leave(id(0)), Left::RemovedAndRetired);
        assert!(!t.pin(), "a retired session cannot be pinned");
    }
}
