//! Not part of the API: the hooks behind the floor over switchboard's own channel in
//! `benches/baselines` and the memory split in `stress`. Hidden from the docs, and may
//! change or vanish in any release.
//!
//! # The own-channel floor
//!
//! [`bare_channel`] builds one client's channel exactly as a registration does, inside
//! a client entry with a placeholder id, so a loop of [`BareSender::try_send`] touches
//! the same objects, laid out the same way, as a registry broadcast walking its
//! members. A registry broadcast over such a loop is then the registry's own overhead,
//! apart from the channel's speed.
//!
//! # The channel's share of a client's memory
//!
//! A [`Receiver`] keeps its client's whole entry alive (the channel lives inside it),
//! so "what the receivers keep after the registry is dropped" overstates the channel.
//! [`channel_bytes`] counts the channel alone: the channel struct itself
//! ([`channel_size`]) plus the ring's outer slots if they have been allocated. Everything
//! else a client costs (the rest of its entry, its slot and generation, session cells and
//! maps) is the registry's.
//!
//! # Leak checks
//!
//! An unregistered client's entry is freed through the epoch, and a thread hands its
//! unlinked entries over 64 at a time; up to 63 wait on each thread for its next
//! unregistrations, and handed-over ones for the epoch to advance. A check that live
//! heap came back after a teardown calls [`release_thread_garbage`] on every thread
//! that used a registry first, so that it judges leaks, not frees still pending.

use crate::channel::{Channel, Rejected};
use crate::client::{ChannelRef, ClientEntry};
use crate::config::MAX_CHANNEL_CAPACITY;
use crate::sync::EntryArc;
use crate::{ClientId, Receiver};

/// The sending side of a [`bare_channel`]: the channel's own `try_send`, no registry.
/// Dropping it closes the channel.
pub struct BareSender<M> {
    chan: ChannelRef<M>,
}

impl<M> BareSender<M> {
    /// Queues `msg` without waiting; gives it back if the channel is full or closed
    /// (its receiver dropped).
    ///
    /// # Errors
    ///
    /// `Err(msg)` if the channel is full or closed.
    #[inline]
    pub fn try_send(&self, msg: M) -> Result<(), M> {
        match self.chan.try_send(msg) {
            Ok(()) => Ok(()),
            Err(Rejected::Full(msg) | Rejected::Closed(msg) | Rejected::Timeout(msg)) => Err(msg),
        }
    }

    /// Whether the channel is closed (its receiver dropped), to tell a refusal for
    /// closing from one for being full.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.chan.is_closed()
    }
}

/// The channel has one sender and no registry to close it: dropping the sender does,
/// so the receiver ends once it has taken what was queued, as a tokio receiver would.
impl<M> Drop for BareSender<M> {
    fn drop(&mut self) {
        self.chan.close();
    }
}

impl<M> std::fmt::Debug for BareSender<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareSender")
            .field("len", &self.chan.len())
            .field("closed", &self.chan.is_closed())
            .finish_non_exhaustive()
    }
}

/// One client's channel outside any registry, built inside a client entry as a
/// registration builds it.
///
/// `capacity` is clamped into `1..=2^20`, the bounds
/// [`Builder::channel_capacity`](crate::Builder::channel_capacity) accepts, so zero
/// never panics; [`Receiver::capacity`] reports the capacity used.
///
/// # Examples
///
/// ```
/// let (tx, mut rx) = switchboard::bench_support::bare_channel::<u8>(0);
/// assert_eq!(rx.capacity(), 1);
/// assert_eq!(tx.try_send(1), Ok(()));
/// assert_eq!(tx.try_send(2), Err(2));
/// assert_eq!(rx.try_recv(), Ok(1));
/// ```
#[must_use]
pub fn bare_channel<M>(capacity: usize) -> (BareSender<M>, Receiver<M>) {
    let capacity = capacity.clamp(1, MAX_CHANNEL_CAPACITY);
    let entry = EntryArc::new(ClientEntry::new(ClientId::pack(0, 0, 0), capacity, 0, None));
    let chan = ChannelRef::of(&entry);
    (BareSender { chan: chan.clone() }, Receiver::new(chan))
}

/// Bytes of one channel struct, held inside each client's entry.
pub const fn channel_size<M>() -> usize {
    std::mem::size_of::<Channel<M>>()
}

/// Bytes of the channel `rx` drains: the channel struct plus its ring's outer slots
/// if they have been allocated. See the module docs.
#[must_use]
pub fn channel_bytes<M>(rx: &Receiver<M>) -> usize {
    channel_size::<M>() + rx.channel().heap_bytes()
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_clamped_into_the_builders_bounds() {
        let (_, rx) = bare_channel::<u8>(0);
        assert_eq!(rx.capacity(), 1);
        let (_, rx) = bare_channel::<u8>(usize::MAX);
        assert_eq!(rx.capacity(), MAX_CHANNEL_CAPACITY);
        let (_, rx) = bare_channel::<u8>(7);
        assert_eq!(rx.capacity(), 7);
    }

    #[test]
    fn a_bare_channel_is_bounded_and_closes_with_its_receiver() {
        let (tx, mut rx) = bare_channel(2);
        assert_eq!(
            (tx.try_send(1), tx.try_send(2), tx.try_send(3)),
            (Ok(()), Ok(()), Err(3))
        );
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(4), Err(4));
    }

    #[test]
    fn dropping_the_sender_ends_the_receiver_after_what_was_queued() {
        let (tx, mut rx) = bare_channel(4);
        assert_eq!(tx.try_send(1), Ok(()));
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(crate::TryRecvError::Closed));
    }

    #[test]
    fn channel_bytes_count_the_ring_once_it_is_allocated() {
        // Far more than the queue's few inline slots.
        let capacity = 64;
        let (tx, mut rx) = bare_channel::<u64>(capacity);
        let bare = channel_bytes(&rx);
        assert_eq!(bare, channel_size::<u64>());
        // The receiver allocates the outer slots after taking its second message.
        for i in 0..2 {
            assert_eq!(tx.try_send(i), Ok(()));
            assert_eq!(rx.try_recv(), Ok(i));
        }
        let grown = channel_bytes(&rx);
        assert!(grown > bare, "{grown} <= {bare}");
        assert!(grown - bare >= capacity / 2 * std::mem::size_of::<u64>());
    }
}

/// Hands this thread's unlinked client entries to the epoch and collects what the
/// epoch lets go (see "Leak checks" in this module's docs). Repeated calls, on every
/// thread that used a registry, free every entry no reader still holds.
pub fn release_thread_garbage() {
    #[cfg(not(switchboard_loom))]
    {
        crate::sync::flush_pending();
        crossbeam_epoch::pin().flush();
    }
}
