//! The connected clients: the shards their entries live in, the admission count,
//! and the id-to-entry lookups every path starts with.
//!
//! [`Clients`] owns this state; the registry reaches it only through the methods
//! here. A [`ClientId`] names a shard and a slot in it, so a lookup is two indexings
//! and one generation check, with no map and no lock. Registering finds a slot
//! ([`Clients::reserve`]), the caller fills it, and the one departure path empties
//! it again ([`Clients::release`]).
#![allow(
    unsafe_code,
    reason = "a departed entry's state is read without its lock; see the SAFETY"
)]

use crate::client::{ClientEntry, ClientLock, ClientState, Departing};
use crate::error::{ClientError, RegisterError};
use crate::shard::{self, Reserved, Shard};
use crate::sync::{AtomicUsize, EntryArc, Ordering, SlotCell};
use crate::ClientId;

/// The shards of client slots, and how many clients they admitted.
pub(crate) struct Clients<M> {
    shards: Box<[Shard<ClientEntry<M>>]>,
    /// [`Builder::max_clients`](crate::Builder::max_clients).
    max_clients: Option<usize>,
    /// Connected clients, kept only when `max_clients` is set.
    ///
    /// Ordering: `Relaxed`; the limit check needs only the modification order of
    /// this one counter.
    admitted: AtomicUsize,
}

impl<M> Clients<M> {
    /// `shards` empty shards, admitting at most `max_clients` at a time.
    pub(crate) fn new(shards: usize, max_clients: Option<usize>) -> Self {
        Self {
            shards: (0..shards).map(|_| Shard::new()).collect(),
            max_clients,
            admitted: AtomicUsize::new(0),
        }
    }

    /// Admits one more client and reserves its slot: in the calling thread's home
    /// shard, or the next one with room. The caller stores the entry, whose id is
    /// the one returned, in the slot.
    ///
    /// # Errors
    ///
    /// [`RegisterError::LimitReached`] at `max_clients`, and
    /// [`RegisterError::OutOfSlots`] when every shard is full; nothing is admitted
    /// then.
    #[inline]
    pub(crate) fn reserve(&self) -> Result<(ClientId, &SlotCell<ClientEntry<M>>), RegisterError> {
        if let Some(limit) = self.max_clients {
            // Relaxed: see `admitted`.
            let admitted = self
                .admitted
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                });
            if admitted.is_err() {
                return Err(RegisterError::LimitReached { limit });
            }
        }
        let shards = self.shards.len();
        let home = shard::home(shards);
        let reserved = (0..shards).find_map(|step| {
            // `home + step` < 2 × `shards`: a subtraction wraps it, not a division.
            let shard = match home + step {
                past if past >= shards => past - shards,
                shard => shard,
            };
            self.shards[shard].reserve().map(|r| (shard, r))
        });
        let Some((
            shard,
            Reserved {
                index,
                generation,
                slot,
            },
        )) = reserved
        else {
            self.release_admission();
            return Err(RegisterError::OutOfSlots);
        };
        Ok((ClientId::pack(shard, index, generation), slot))
    }

    /// Empties `entry`'s slot and gives its admission back. Only the departure
    /// that flipped the client's `connected` calls this, once per client (only
    /// [`ClientLock::disconnect`] makes a [`Departing`]).
    ///
    /// Returns whether the slot was still `entry`'s.
    #[inline]
    pub(crate) fn release(&self, entry: Departing<'_, M>) -> bool {
        let freed = self.shards[entry.id.shard()].release(&entry);
        self.release_admission();
        freed
    }

    fn release_admission(&self) {
        if self.max_clients.is_some() {
            // Relaxed: see `admitted`.
            self.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The slot `id` points at, or why it points nowhere.
    #[inline]
    pub(crate) fn slot(&self, id: ClientId) -> Result<&SlotCell<ClientEntry<M>>, ClientError> {
        let shard = self
            .shards
            .get(id.shard())
            .ok_or(ClientError::NoSuchShard(id))?;
        shard.slot(id.index()).ok_or(ClientError::NoSuchSlot(id))
    }

    /// Takes the lock of the client `id` names, if it is still the slot's occupant.
    ///
    /// The write path's way in: one compare-and-swap on the slot's word, which
    /// also keeps the entry in its slot (and so alive) while the lock is held,
    /// with no epoch pin and no reference count (see `client.rs`).
    #[inline]
    pub(crate) fn lock(&self, id: ClientId) -> Result<ClientLock<'_, M>, ClientError> {
        let guard = self.slot(id)?.lock().ok_or(ClientError::Gone(id))?;
        if guard.id != id {
            // Another generation's occupant: let it go at once.
            return Err(ClientError::Gone(id));
        }
        Ok(ClientLock::new(guard))
    }

    /// [`lock`](Self::lock) for a client that is still connected: `Gone` once its
    /// departure has begun (`connected` cleared, entry not yet unlinked), which is
    /// what every call on a live client wants.
    #[inline]
    pub(crate) fn lock_connected(&self, id: ClientId) -> Result<ClientLock<'_, M>, ClientError> {
        let client = self.lock(id)?;
        if client.connected {
            Ok(client)
        } else {
            Err(ClientError::Gone(id))
        }
    }

    /// Takes `entry`'s lock if it is still in its slot; otherwise its state, which
    /// no longer changes.
    pub(crate) fn lock_entry<'a>(&'a self, entry: &'a EntryArc<ClientEntry<M>>) -> Locked<'a, M> {
        let slot = self.slot(entry.id).ok();
        match slot.and_then(|slot| slot.lock_occupant(entry)) {
            Some(guard) => Locked::Held(ClientLock::new(guard)),
            // SAFETY: `entry` was stored in its slot before anyone could name it
            // (registration stores it before handing out its id or its `Arc`), and
            // the slot's `SeqCst` read in `lock_occupant` (an acquire) saw it hold
            // something else, so the entry has left it. Every write to a slot word
            // releases (swaps and exchanges are `SeqCst`, the lock bit's clearing
            // store and a plain registration's fill `Release`), and each one after
            // the unlinking exchange is an RMW reading the one before it, a lock
            // holder's store after such an RMW, or the next occupant's fill, which
            // the shard's allocation lock (held by both the unlinking and the
            // reservation) orders after it; so whichever the read saw, the
            // unlinking is ordered before this.
            None => Locked::Departed(unsafe { entry.departed_state() }),
        }
    }

    /// The entry `id` names, if it is still the slot's occupant.
    pub(crate) fn entry(&self, id: ClientId) -> Result<EntryArc<ClientEntry<M>>, ClientError> {
        self.slot(id)?.with(|entry| match entry {
            Some(entry) if entry.id == id => Ok(EntryArc::clone(entry)),
            _ => Err(ClientError::Gone(id)),
        })
    }

    /// Connected clients. Sums the shards' counts; takes no lock.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(Shard::live).sum()
    }

    /// How many shards there are.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Calls `f` with every slot ever handed out, shard by shard.
    fn for_each_slot(&self, mut f: impl FnMut(&SlotCell<ClientEntry<M>>)) {
        for shard in self.shards.iter() {
            shard.for_each_slot(&mut f);
        }
    }

    /// Calls `f` with every connected client's entry, shard by shard.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&ClientEntry<M>)) {
        for shard in self.shards.iter() {
            shard.for_each_occupied(&mut f);
        }
    }
}

/// What [`Clients::lock_entry`] found.
pub(crate) enum Locked<'a, M> {
    /// The entry is in its slot, locked.
    Held(ClientLock<'a, M>),
    /// The entry has left its slot; its state is final.
    Departed(&'a ClientState<M>),
}

impl<M> Drop for Clients<M> {
    /// Closes every channel, so writer tasks see the end when the registry goes,
    /// and lets go of every client's sessions: a session's member cells hold the
    /// client's entry (its channel lives there), so an entry that kept its sessions
    /// would keep itself alive.
    fn drop(&mut self) {
        self.for_each_slot(|slot| {
            if let Some(mut client) = slot.lock().map(ClientLock::new) {
                client.entry().chan.close();
                let sessions = std::mem::take(&mut client.sessions);
                drop(client);
                drop(sessions);
            }
        });
    }
}
