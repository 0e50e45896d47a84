//! [`Positions`]: the session writer's map from a live member's id to its cell.
//!
//! A `HashMap<ClientId, usize>` spends 16 bytes a bucket on a copy of the id and a
//! position, about 22 bytes per member once its buckets are at the usual load. The
//! cells already know their members, so this table stores only the cell's
//! position, 4 bytes a bucket: its hash is taken from the low 32 bits of the
//! member's id (shard and slot), which each cell keeps in what was its padding, and
//! a match is confirmed against the full id in the member's entry. Rehashing reads
//! the cells, never the entries behind them.

use hashbrown::HashTable;

use super::{Member, Page};
use crate::sync::Arc;
use crate::ClientId;

/// A page of cells, published (shared) or still being filled by a compaction.
pub(super) trait Cells<M> {
    fn cells(&self) -> &[Member<M>];
}

impl<M> Cells<M> for Page<M> {
    fn cells(&self) -> &[Member<M>] {
        self
    }
}

impl<M> Cells<M> for Arc<Page<M>> {
    fn cells(&self) -> &[Member<M>] {
        self
    }
}

/// Live members' cells, by member id. Every position names a written cell.
pub(super) struct Positions {
    table: HashTable<u32>,
    hasher: crate::sync::HashSeed,
}

/// The part of an id a cell keeps: shard and slot, the low 32 bits.
pub(super) fn short(id: ClientId) -> u32 {
    id.as_u64() as u32
}

/// The cell at `cell` in pages of `Member`s laid out as [`paging`](crate::paging)
/// splits them.
fn cell_at<M, P: Cells<M>>(pages: &[P], cell: u32) -> Option<&Member<M>> {
    let (page, offset) = crate::paging::split(cell as usize, super::PAGE_SHIFT);
    pages.get(page)?.cells().get(offset)
}

impl Positions {
    pub(super) fn new() -> Self {
        Self {
            table: HashTable::new(),
            hasher: crate::sync::HashSeed::default(),
        }
    }

    /// Empties the table for `live` members to be inserted: it keeps its buckets
    /// unless they are more than four times what `live` needs (a session that
    /// shrank), so that a compaction allocates nothing in the common case.
    pub(super) fn reset(&mut self, live: usize) {
        if self.table.capacity() > 4 * live.max(super::COMPACT_SLACK) {
            self.table = HashTable::with_capacity(live);
        } else {
            self.table.clear();
        }
    }

    fn hash(&self, short: u32) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(short)
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The cell of `id`, if it is a live member.
    pub(super) fn get<M, P: Cells<M>>(&self, id: ClientId, pages: &[P]) -> Option<usize> {
        let hash = self.hash(short(id));
        self.table
            .find(hash, |&cell| holds(pages, cell, id))
            .map(|&cell| cell as usize)
    }

    /// Records that `cell`, already written with `id`'s entry, holds a member
    /// absent from the table.
    pub(super) fn insert<M, P: Cells<M>>(&mut self, id: ClientId, cell: usize, pages: &[P]) {
        // `cell` < `MAX_CELLS` = `u32::MAX`, so it fits.
        let Ok(cell) = u32::try_from(cell) else {
            return;
        };
        let hash = self.hash(short(id));
        let hasher = &self.hasher;
        self.table.insert_unique(hash, cell, |&cell| {
            use std::hash::BuildHasher;
            hasher.hash_one(cell_at(pages, cell).map_or(0, Member::short))
        });
    }

    /// Removes `id`; returns its cell if it was a live member.
    pub(super) fn remove<M, P: Cells<M>>(&mut self, id: ClientId, pages: &[P]) -> Option<usize> {
        let hash = self.hash(short(id));
        let entry = self
            .table
            .find_entry(hash, |&cell| holds(pages, cell, id))
            .ok()?;
        Some(entry.remove().0 as usize)
    }
}

/// Whether `cell` holds `id`: the short id in the cell first, then the entry.
fn holds<M, P: Cells<M>>(pages: &[P], cell: u32, id: ClientId) -> bool {
    cell_at(pages, cell)
        .is_some_and(|member| member.short() == short(id) && member.id() == Some(id))
}
