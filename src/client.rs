//! A connected client's slot occupant: its channel, profile and memberships.
//!
//! # The client's lock
//!
//! A client's bookkeeping ([`ClientState`]) has no lock word of its own: it is
//! behind the lock bit of the slot that holds the entry (`sync/slot_cell.rs`).
//! Taking that bit is one compare-and-swap, and while it is set nobody can unlink
//! the entry, so the holder needs no epoch pin either: attach, detach and
//! unregister each save the pin and the separate lock's CAS this way.
//!
//! Every access to an entry's state goes through a [`ClientLock`] on the slot
//! that holds the entry, except one: once the entry has left its slot, its state
//! never changes again (nobody can lock a slot for an entry it no longer holds), and
//! [`ClientEntry::departed_state`] reads it.
#![allow(
    unsafe_code,
    reason = "the state lives in a cell its slot's lock bit guards; see each SAFETY"
)]

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::channel::Channel;
use crate::profile::{ClientInfo, SystemInfo};
use crate::session::Session;
use crate::shard::Occupant;
use crate::sync::{Arc, EntryArc, Retained, SlotCell, SlotGuard, Slotted, UnsafeCell, WeakArc};
use crate::task::TaskId;
use crate::{ClientId, SessionId};

/// A client's slot occupant.
///
/// One allocation per client: the channel lives inline, and whatever needs the
/// channel to outlive the slot (the receiver, a session's member cell) holds the
/// entry through a [`ChannelRef`].
pub(crate) struct ClientEntry<M> {
    pub(crate) id: ClientId,
    pub(crate) chan: Channel<M>,
    /// Milliseconds since the Unix epoch at registration.
    pub(crate) connected_at: u64,
    /// The merged profile; empty for a plain client whose profile is all defaults,
    /// which then costs nothing beyond this pointer.
    pub(crate) profile: SlotCell<ClientInfo>,
    /// Membership bookkeeping, behind the lock bit of the slot that holds the
    /// entry (see the module docs): reached only through a [`ClientLock`] or, once
    /// the entry has left its slot, [`departed_state`](Self::departed_state). Lock
    /// order: a client's lock before any session's writer; two clients' locks in
    /// id order; never a shard's allocation lock while holding one.
    state: UnsafeCell<ClientState<M>>,
}

impl<M> Slotted for ClientEntry<M> {
    /// Its own count, without `Arc`'s weak-count decrement at the free.
    type Handle = EntryArc<Self>;
}

impl Slotted for ClientInfo {
    /// `Arc`, as [`Registry::info`](crate::Registry::info) hands it out.
    type Handle = Arc<ClientInfo>;
}

// SAFETY: the only field that is not `Sync` on its own is the state cell, which is
// reached through a `ClientLock` (one thread at a time, as `std`'s `Mutex`) or
// read once nobody can write it (`departed_state`): `Mutex<T>`'s bound, `T: Send`.
unsafe impl<M> Sync for ClientEntry<M>
where
    Channel<M>: Sync,
    SlotCell<ClientInfo>: Sync,
    ClientState<M>: Send,
{
}

pub(crate) struct ClientState<M> {
    /// False from the moment an unregister starts; every change then refuses.
    pub(crate) connected: bool,
    pub(crate) sessions: Memberships<M>,
    /// Tasks and reported info of fleet clients, and the successor of a client
    /// that was taken over; `None` for plain ones.
    pub(crate) fleet: Option<Box<FleetState<M>>>,
}

pub(crate) struct FleetState<M> {
    pub(crate) tasks: Vec<TaskId>,
    /// What the client itself reported, when a device-config entry changed it.
    pub(crate) reported: Option<SystemInfo>,
    /// The connection that took this one over, set when `connected` turns false
    /// because of it. Rooms still on their way to this client follow it there.
    /// Weak: a departed connection that something keeps (its writer's receiver,
    /// a thread's batch of unlinked entries) must not keep every later
    /// connection of its key through a chain of these records.
    pub(crate) successor: Option<WeakArc<ClientEntry<M>>>,
}

impl<M> Default for FleetState<M> {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            reported: None,
            successor: None,
        }
    }
}

/// One session a client belongs to: its handle, which spares detach a lookup and
/// knows the session's key ([`Session::key`]), so a membership is 8 bytes.
pub(crate) type Membership<M> = Arc<Session<M>>;

/// A client's sessions in join order, the first held inline: most clients join one
/// or two, and the first join then allocates nothing. The others spill behind one
/// pointer, so a client in one session does not carry an empty `Vec`'s 24 bytes.
/// Removal swaps the last into the removed one's place.
///
/// Invariants: `first` is `Some` whenever `rest` is; `rest` is never empty (the box
/// goes when its last membership does); see [`Spill`] for its own.
pub(crate) struct Memberships<M> {
    first: Option<Membership<M>>,
    rest: Option<Box<Spill<M>>>,
}

/// Memberships a spill holds before it needs a list of its own.
const SPILL_SLOTS: usize = 3;

/// Memberships after the first: up to [`SPILL_SLOTS`] in the spill's own
/// allocation, the rest in `more`. A client in two to four sessions pays one
/// allocation for them, not two (a boxed `Vec` and its buffer): in the stress
/// harness's churn, where every client joins two rooms, that was one allocation
/// and one free per client.
///
/// Invariants: `slots` fill from the front (a `None` is followed only by
/// `None`s), and `more` is non-empty only when every slot is full.
struct Spill<M> {
    slots: [Option<Membership<M>>; SPILL_SLOTS],
    more: Vec<Membership<M>>,
}

impl<M> Spill<M> {
    fn empty() -> Self {
        Self {
            slots: Default::default(),
            more: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.slots.iter().take_while(|s| s.is_some()).count() + self.more.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Membership<M>> {
        self.slots
            .iter()
            .map_while(Option::as_ref)
            .chain(&self.more)
    }

    fn push(&mut self, membership: Membership<M>) {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(membership),
            None => self.more.push(membership),
        }
    }

    /// Takes the last membership out.
    fn pop(&mut self) -> Option<Membership<M>> {
        if let Some(last) = self.more.pop() {
            return Some(last);
        }
        self.slots
            .iter_mut()
            .rev()
            .find(|s| s.is_some())
            .and_then(Option::take)
    }

    fn get_mut(&mut self, n: usize) -> Option<&mut Membership<M>> {
        match self.slots.get_mut(n) {
            Some(slot) => slot.as_mut(),
            None => self.more.get_mut(n - SPILL_SLOTS),
        }
    }

    fn is_empty(&self) -> bool {
        self.slots[0].is_none()
    }
}

impl<M> Default for Memberships<M> {
    fn default() -> Self {
        Self {
            first: None,
            rest: None,
        }
    }
}

impl<M> Memberships<M> {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Membership<M>> {
        self.first
            .iter()
            .chain(self.rest.iter().flat_map(|rest| rest.iter()))
    }

    /// Where `key` is, numbered as [`swap_remove`](Self::swap_remove) takes it: 0 for
    /// the inline first, then the spill. Checks the inline one before touching the
    /// spill: a chained iterator cost attach and detach about 35 instructions each.
    pub(crate) fn position(&self, key: &SessionId) -> Option<usize> {
        let is = |session: &Membership<M>| session.key() == Some(key);
        match &self.first {
            Some(session) if is(session) => Some(0),
            _ => self
                .rest
                .as_ref()
                .and_then(|rest| rest.iter().position(is))
                .map(|n| n + 1),
        }
    }

    /// The keys of the client's sessions, in join order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &SessionId> {
        self.iter().filter_map(|session| session.key())
    }

    pub(crate) fn push(&mut self, membership: Membership<M>) {
        if self.first.is_none() {
            self.first = Some(membership);
            return;
        }
        self.rest
            .get_or_insert_with(|| Box::new(Spill::empty()))
            .push(membership);
    }

    /// Hands each membership to `f` in join order, consuming them. A client in one
    /// session, the common case at unregister, goes through no iterator adapter:
    /// dropping an empty chain of them cost about 50 instructions.
    pub(crate) fn into_each(self, mut f: impl FnMut(Membership<M>)) {
        let Self { first, rest } = self;
        if let Some(first) = first {
            f(first);
        }
        if let Some(rest) = rest {
            let Spill { slots, more } = *rest;
            slots.into_iter().flatten().for_each(&mut f);
            more.into_iter().for_each(f);
        }
    }

    /// Removes the membership at `position` (from [`position`](Self::position)),
    /// moving the last one into its place.
    pub(crate) fn swap_remove(&mut self, position: usize) -> Option<Membership<M>> {
        if position >= self.len() {
            return None;
        }
        let Some(rest) = self.rest.as_mut() else {
            return self.first.take();
        };
        let Some(last) = rest.pop() else {
            return self.first.take();
        };
        if rest.is_empty() {
            self.rest = None;
        }
        let slot = match position {
            0 => self.first.as_mut(),
            n => self.rest.as_mut().and_then(|rest| rest.get_mut(n - 1)),
        };
        match slot {
            Some(slot) => Some(std::mem::replace(slot, last)),
            // `position` named the popped last one.
            None => Some(last),
        }
    }
}

impl<M> ClientState<M> {
    /// The connection that took this client over: `None` if none did, `Some(None)`
    /// if it has been freed since (the record is weak, see `FleetState`).
    pub(crate) fn successor(&self) -> Option<Option<EntryArc<ClientEntry<M>>>> {
        let record = self.fleet.as_ref()?.successor.as_ref()?;
        Some(record.upgrade())
    }

    /// What the client last reported about itself, before a device config was
    /// merged in; `current`'s own system info if it never reported anything else.
    pub(crate) fn reported(&self, current: &ClientInfo) -> SystemInfo {
        self.fleet
            .as_ref()
            .and_then(|f| f.reported.clone())
            .unwrap_or_else(|| current.system_info.clone())
    }

    pub(crate) fn position(&self, key: &SessionId) -> Option<usize> {
        self.sessions.position(key)
    }

    pub(crate) fn tasks(&self) -> &[TaskId] {
        self.fleet.as_deref().map_or(&[], |f| &f.tasks)
    }

    pub(crate) fn fleet(&mut self) -> &mut FleetState<M> {
        self.fleet.get_or_insert_with(Default::default)
    }
}

/// A client's lock, held: the lock bit of the slot that holds its entry. Derefs
/// to the client's state; [`entry`](Self::entry) is the entry itself, alive (and
/// in its slot) while the lock is held, without a pin or a count.
pub(crate) struct ClientLock<'a, M>(SlotGuard<'a, ClientEntry<M>>);

impl<'a, M> ClientLock<'a, M> {
    /// The lock on the entry `guard`'s slot holds.
    #[inline]
    pub(crate) fn new(guard: SlotGuard<'a, ClientEntry<M>>) -> Self {
        Self(guard)
    }

    #[inline]
    pub(crate) fn entry(&self) -> &EntryArc<ClientEntry<M>> {
        &self.0
    }

    /// Marks a connected client as leaving and hands `take` its state, then unlocks;
    /// `None`, changing nothing, if it was already leaving.
    ///
    /// The returned handle keeps the entry usable, unpinned and unlocked, until
    /// [`Clients::release`](crate::clients::Clients::release) takes it to empty the
    /// slot: the call that turns `connected` false is the one that releases the
    /// slot, so nobody else can unlink the entry meanwhile.
    #[inline]
    pub(crate) fn disconnect<R>(
        mut self,
        take: impl FnOnce(&mut ClientState<M>) -> R,
    ) -> Option<(Departing<'a, M>, R)> {
        if !self.connected {
            return None;
        }
        self.connected = false;
        let taken = take(&mut self);
        // SAFETY: `connected` was true and this call made it false, under the lock,
        // once per entry; only a `Departing` (made here alone) empties a slot
        // (`Clients::release`) before the registry drops, so nobody else unlinks the
        // entry while the handle lives.
        let retained = unsafe { self.0.unlock_retaining() };
        Some((Departing(retained), taken))
    }
}

impl<M> Deref for ClientLock<'_, M> {
    type Target = ClientState<M>;

    #[inline]
    fn deref(&self) -> &ClientState<M> {
        // SAFETY: this guard holds the slot's lock bit for this entry, and every
        // other access to the state takes the same bit first (or waits until the
        // entry left its slot: `departed_state`), so no `&mut` to it exists now.
        self.0.state.with(|state| unsafe { &*state })
    }
}

impl<M> DerefMut for ClientLock<'_, M> {
    #[inline]
    fn deref_mut(&mut self) -> &mut ClientState<M> {
        // SAFETY: as in `deref`; `&mut self` makes this the lock's only borrow.
        self.0.state.with_mut(|state| unsafe { &mut *state })
    }
}

/// A client whose departure flipped its `connected`, unlocked, on its way out of
/// its slot: see [`ClientLock::disconnect`].
pub(crate) struct Departing<'a, M>(Retained<'a, ClientEntry<M>>);

impl<M> Deref for Departing<'_, M> {
    type Target = EntryArc<ClientEntry<M>>;

    #[inline]
    fn deref(&self) -> &EntryArc<ClientEntry<M>> {
        &self.0
    }
}

/// A counted handle to a client's channel. The channel lives inside the client's
/// entry, so the handle keeps the entry (one allocation) alive.
pub(crate) struct ChannelRef<M>(EntryArc<ClientEntry<M>>);

impl<M> ChannelRef<M> {
    pub(crate) fn of(entry: &EntryArc<ClientEntry<M>>) -> Self {
        Self(EntryArc::clone(entry))
    }

    /// The handle that takes over `entry`'s own count: no increment.
    pub(crate) fn from_entry(entry: EntryArc<ClientEntry<M>>) -> Self {
        Self(entry)
    }
}

impl<M> Clone for ChannelRef<M> {
    fn clone(&self) -> Self {
        Self(EntryArc::clone(&self.0))
    }
}

impl<M> Deref for ChannelRef<M> {
    type Target = Channel<M>;

    #[inline]
    fn deref(&self) -> &Channel<M> {
        &self.0.chan
    }
}

impl<M> ClientEntry<M> {
    /// A connected client with an empty profile and no sessions.
    #[inline]
    pub(crate) fn new(
        id: ClientId,
        capacity: usize,
        connected_at: u64,
        fleet: Option<Box<FleetState<M>>>,
    ) -> Self {
        Self {
            id,
            chan: Channel::new(capacity),
            connected_at,
            profile: SlotCell::empty(),
            state: UnsafeCell::new(ClientState {
                connected: true,
                sessions: Memberships::default(),
                fleet,
            }),
        }
    }

    /// The state of an entry that has left its slot, where it no longer changes.
    ///
    /// # Safety
    ///
    /// The caller saw the slot the entry was stored in hold something else, with
    /// a read that acquires (every write to a slot word releases, and every write
    /// after the unlinking exchange is ordered after it: see
    /// [`Clients::lock_entry`](crate::clients::Clients::lock_entry)), and the
    /// entry was stored in that slot before the caller could name it.
    pub(crate) unsafe fn departed_state(&self) -> &ClientState<M> {
        // SAFETY: every write to the state was made under the slot's lock bit for
        // this entry, before the exchange that unlinked it (which waits for the
        // bit), and the caller's read is ordered after that exchange. No later
        // write can exist: a locker needs the slot to hold this entry, and it
        // never will again (the caller's `Arc` keeps its address from reuse).
        self.state.with(|state| unsafe { &*state })
    }

    /// The client's profile, with `connected_at` filled in.
    pub(crate) fn info(&self) -> Arc<ClientInfo> {
        self.profile.with(|info| match info {
            Some(info) => Arc::clone(info),
            None => Arc::new(ClientInfo {
                connected_at: crate::clock::millis_to_time(self.connected_at),
                ..ClientInfo::default()
            }),
        })
    }
}

impl<M> Occupant for ClientEntry<M> {
    #[inline]
    fn id(&self) -> ClientId {
        self.id
    }
}

impl<M> fmt::Debug for ClientEntry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    fn keys(m: &Memberships<u8>) -> Vec<SessionId> {
        m.keys().cloned().collect()
    }

    fn key_of(session: &Membership<u8>) -> SessionId {
        session.key().cloned().unwrap_or(SessionId::Num(u64::MAX))
    }

    fn filled(n: u64) -> Memberships<u8> {
        let mut m = Memberships::default();
        for key in 0..n {
            m.push(Arc::new(Session::named(SessionId::from(key))));
        }
        m
    }

    /// The per-client layout behind the README's `registry_bytes_per_client`
    /// budget: a field that grows the entry or the member cell fails here first.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_entry_and_a_member_cell_stay_within_their_bytes() {
        use std::mem::size_of;
        type M = Arc<[u8]>;
        // Id 8, connection time 8, profile pointer 8, and the state 32 (inline
        // first membership 8: the session's handle, whose key the session keeps;
        // spill pointer 8, fleet pointer 8, `connected` 8 with padding). The
        // state's lock is its slot's lock bit, so it has no word of its own.
        assert_eq!(size_of::<ClientEntry<M>>() - size_of::<Channel<M>>(), 56);
        assert_eq!(size_of::<Memberships<M>>(), 16);
        assert_eq!(size_of::<crate::session::Member<M>>(), 16);
    }

    #[test]
    fn removal_moves_the_last_into_the_gap_inline_or_spilled() {
        let mut m = filled(4);
        assert_eq!(m.len(), 4);
        let removed = m.swap_remove(0).map(|s| key_of(&s));
        assert_eq!(removed, Some(SessionId::from(0)));
        assert_eq!(keys(&m), [3, 1, 2].map(SessionId::from));
        let removed = m.swap_remove(1).map(|s| key_of(&s));
        assert_eq!(removed, Some(SessionId::from(1)));
        assert_eq!(keys(&m), [3, 2].map(SessionId::from));
        assert_eq!(
            m.swap_remove(1).map(|s| key_of(&s)),
            Some(SessionId::from(2))
        );
        assert_eq!(m.swap_remove(1).map(|s| key_of(&s)), None);
        assert!(
            m.rest.is_none(),
            "the spill list goes with its last membership"
        );
        assert_eq!(
            m.swap_remove(0).map(|s| key_of(&s)),
            Some(SessionId::from(3))
        );
        assert_eq!(m.len(), 0);
        m.push(Arc::new(Session::named(SessionId::from(9))));
        assert_eq!(m.position(&SessionId::from(9)), Some(0));
        let mut all = Vec::new();
        filled(3).into_each(|s| all.push(key_of(&s)));
        assert_eq!(all, [0, 1, 2].map(SessionId::from));
    }

    /// Against a `Vec` with the same swap-into-the-gap removal, at every size across
    /// the inline first, the spill's slots and its list, and every position.
    #[test]
    fn removal_matches_a_vec_model_at_every_size_and_position() {
        for n in 0..10u64 {
            for at in 0..=n {
                let mut m = filled(n);
                let mut model: Vec<SessionId> = (0..n).map(SessionId::from).collect();
                assert_eq!(m.len(), model.len());
                let removed = m.swap_remove(at as usize).map(|s| key_of(&s));
                let expected = (at < n).then(|| model.swap_remove(at as usize));
                assert_eq!(removed, expected, "{n} sessions, removing {at}");
                assert_eq!(keys(&m), model, "{n} sessions, removed {at}");
                assert_eq!(m.len(), model.len());
                assert_eq!(
                    m.rest.is_some(),
                    model.len() > 1,
                    "{n} sessions, removed {at}"
                );
                for (i, key) in model.iter().enumerate() {
                    assert_eq!(m.position(key), Some(i));
                }
                let mut all = Vec::new();
                m.into_each(|s| all.push(key_of(&s)));
                assert_eq!(all, model);
            }
        }
    }

    #[test]
    fn two_to_four_sessions_spill_into_one_allocation() {
        for n in 2..=4 {
            let m = filled(n);
            let spill = m.rest.as_ref().map(|rest| rest.more.capacity());
            assert_eq!(spill, Some(0), "{n} sessions: the spill's list allocated");
        }
        let m = filled(5);
        assert_eq!(m.rest.as_ref().map(|rest| rest.more.len()), Some(1));
    }

    #[test]
    fn position_names_what_swap_remove_takes_inline_or_spilled() {
        for key in 0..4 {
            let mut m = filled(4);
            let at = m.position(&SessionId::from(key));
            assert_eq!(at, Some(usize::try_from(key).unwrap_or(usize::MAX)));
            let removed = at.and_then(|n| m.swap_remove(n)).map(|s| key_of(&s));
            assert_eq!(removed, Some(SessionId::from(key)));
            assert_eq!(m.position(&SessionId::from(key)), None);
        }
        assert_eq!(filled(0).position(&SessionId::from(0)), None);
        assert_eq!(filled(2).position(&SessionId::from(7)), None);
    }
}
