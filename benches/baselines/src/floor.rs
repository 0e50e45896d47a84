//! The floors: the cost of delivery itself, with no registry at all.
//!
//! A [`Bare`] floor is a `Vec` of senders built once. Its broadcast is a bare loop of
//! `try_send(msg.clone())` over that `Vec`, the least any design that hands each client its own
//! bounded channel must do. A registry's broadcast minus the floor's is what its bookkeeping
//! costs. The loop is written once, generic over the channel ([`FloorChannel`]), so the two
//! floors differ in their channel and in nothing else:
//!
//! - [`Floor`] is built of tokio's channels, the channel of every baseline;
//! - [`OwnFloor`] is built of switchboard's own, each inside a client entry as a registration
//!   builds it, so the loop touches the same objects a registry broadcast does. switchboard's
//!   broadcast over this floor is the registry's overhead (snapshot, member walk, report)
//!   apart from the channel's speed; over [`Floor`] it also includes the difference between
//!   the two channels.
//!
//! A floor has one implicit session, "everyone", and no way to join or leave it. It does not
//! implement [`Contender`](crate::Contender): registering into it would need a lock around the
//! `Vec` or a membership check per recipient, and either would put back the bookkeeping the
//! floor exists to leave out. Use it for broadcast and direct-send benches, not for churn.
//! Dropping it closes every channel, so each receiver ends once it has taken what was queued.

use std::fmt;
use std::marker::PhantomData;

use switchboard::bench_support::{bare_channel, BareSender};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::Fanout;

/// A fixed set of client channels with no registry around them, over channel `C`.
///
/// Use it through [`Floor`] or [`OwnFloor`].
///
/// # Examples
///
/// ```
/// use baselines::{Floor, OwnFloor};
///
/// let (floor, mut inboxes) = Floor::new(3, 8);
/// assert_eq!(floor.broadcast("tick").delivered, 3);
/// assert!(inboxes.iter_mut().all(|inbox| inbox.try_recv() == Ok("tick")));
///
/// let (own, mut inboxes) = OwnFloor::new(3, 8);
/// assert_eq!(own.broadcast("tick").delivered, 3);
/// assert!(inboxes.iter_mut().all(|inbox| inbox.try_recv() == Ok("tick")));
/// ```
pub struct Bare<M, C: FloorChannel<M>> {
    senders: Vec<C::Tx>,
    channel: PhantomData<C>,
}

/// The floor over tokio's channels.
pub type Floor<M> = Bare<M, Tokio>;

/// The floor over switchboard's own channel.
pub type OwnFloor<M> = Bare<M, Own>;

/// Why a channel refused a message; gives the message back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused<M> {
    /// The channel was full.
    Full(M),
    /// The receiver was gone.
    Closed(M),
}

impl<M> Refused<M> {
    /// The message that was not sent.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(baselines::floor::Refused::Full(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> M {
        match self {
            Self::Full(msg) | Self::Closed(msg) => msg,
        }
    }
}

/// A bounded channel a floor can be built of.
pub trait FloorChannel<M>: Send + Sync + 'static {
    /// The sending side, one per client, kept in the floor.
    type Tx: Send + Sync;
    /// The receiving side, one per client, handed to the caller.
    type Rx;
    /// Short lowercase name used in reports.
    const NAME: &'static str;

    /// One client's channel of `capacity` messages.
    fn channel(capacity: usize) -> (Self::Tx, Self::Rx);

    /// Queues `msg` without waiting.
    ///
    /// # Errors
    ///
    /// [`Refused`] with the message if the channel is full or its receiver is gone.
    fn try_send(tx: &Self::Tx, msg: M) -> Result<(), Refused<M>>;
}

/// tokio's bounded [`mpsc`] channel.
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

impl<M: Send + 'static> FloorChannel<M> for Tokio {
    type Tx = mpsc::Sender<M>;
    type Rx = mpsc::Receiver<M>;
    const NAME: &'static str = "floor";

    /// # Panics
    ///
    /// Panics if `capacity` is zero, as [`mpsc::channel`] does.
    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        mpsc::channel(capacity)
    }

    #[inline]
    fn try_send(tx: &Self::Tx, msg: M) -> Result<(), Refused<M>> {
        tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(msg) => Refused::Full(msg),
            TrySendError::Closed(msg) => Refused::Closed(msg),
        })
    }
}

/// switchboard's own channel, built inside a client entry (see [`bare_channel`]). `capacity`
/// is clamped into the registry's bounds (`1..=2^20`), so zero gives channels of one message
/// rather than a panic.
#[derive(Debug, Clone, Copy)]
pub struct Own;

impl<M: Send + 'static> FloorChannel<M> for Own {
    type Tx = BareSender<M>;
    type Rx = switchboard::Receiver<M>;
    const NAME: &'static str = "own_floor";

    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        bare_channel(capacity)
    }

    #[inline]
    fn try_send(tx: &Self::Tx, msg: M) -> Result<(), Refused<M>> {
        // The channel gives the message back without a reason; a refusal is for closing if
        // the receiver is gone, else for being full.
        tx.try_send(msg).map_err(|msg| {
            if tx.is_closed() {
                Refused::Closed(msg)
            } else {
                Refused::Full(msg)
            }
        })
    }
}

impl<M, C: FloorChannel<M>> Bare<M, C> {
    /// Builds `n_clients` channels of `capacity` messages each; returns the floor and the
    /// receivers, where receiver `i` belongs to client `i`.
    ///
    /// # Panics
    ///
    /// [`Floor`] panics if `capacity` is zero, as [`mpsc::channel`] does; [`OwnFloor`]
    /// clamps it to one.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::{Floor, OwnFloor};
    ///
    /// let (floor, inboxes) = Floor::<u64>::new(1000, 16);
    /// assert_eq!((floor.len(), inboxes.len()), (1000, 1000));
    /// let (_, inboxes) = OwnFloor::<u64>::new(1, 0);
    /// assert_eq!(inboxes[0].capacity(), 1);
    /// ```
    pub fn new(n_clients: usize, capacity: usize) -> (Self, Vec<C::Rx>) {
        let (senders, receivers) = (0..n_clients).map(|_| C::channel(capacity)).unzip();
        let floor = Self {
            senders,
            channel: PhantomData,
        };
        (floor, receivers)
    }

    /// A floor over senders the caller built with [`FloorChannel::channel`], one per client
    /// in order, so that it can allocate each client's other state beside its channel, as a
    /// server registering connections one by one does ([`new`](Self::new) builds every
    /// channel back to back).
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::floor::{Bare, FloorChannel, Own};
    ///
    /// let (txs, mut inboxes): (Vec<_>, Vec<_>) =
    ///     (0..2).map(|_| <Own as FloorChannel<u8>>::channel(4)).unzip();
    /// let floor = Bare::<u8, Own>::from_senders(txs);
    /// assert_eq!(floor.broadcast(7).delivered, 2);
    /// assert_eq!(inboxes[1].try_recv(), Ok(7));
    /// ```
    pub fn from_senders(senders: Vec<C::Tx>) -> Self {
        Self {
            senders,
            channel: PhantomData,
        }
    }

    /// Sends `msg` to client `index` without waiting.
    ///
    /// # Errors
    ///
    /// Returns `Err(msg)` if `index` is out of range, the channel is full, or its receiver was
    /// dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::Floor;
    ///
    /// let (floor, mut inboxes) = Floor::new(2, 1);
    /// assert_eq!(floor.send(1, 'a'), Ok(()));
    /// assert_eq!(floor.send(1, 'b'), Err('b'));
    /// assert_eq!(floor.send(2, 'c'), Err('c'));
    /// assert_eq!(inboxes[1].try_recv(), Ok('a'));
    /// ```
    pub fn send(&self, index: usize, msg: M) -> Result<(), M> {
        match self.senders.get(index) {
            Some(tx) => C::try_send(tx, msg).map_err(Refused::into_inner),
            None => Err(msg),
        }
    }

    /// Short lowercase name used in reports, matching [`Contender::name`](crate::Contender::name).
    ///
    /// # Examples
    ///
    /// ```
    /// let (floor, _inboxes) = baselines::Floor::<()>::new(0, 1);
    /// assert_eq!(floor.name(), "floor");
    /// let (floor, _inboxes) = baselines::OwnFloor::<()>::new(0, 1);
    /// assert_eq!(floor.name(), "own_floor");
    /// ```
    pub fn name(&self) -> &'static str {
        C::NAME
    }

    /// Number of clients.
    ///
    /// # Examples
    ///
    /// ```
    /// let (floor, _inboxes) = baselines::Floor::<()>::new(4, 1);
    /// assert_eq!(floor.len(), 4);
    /// ```
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// True if the floor has no clients.
    ///
    /// # Examples
    ///
    /// ```
    /// let (floor, _inboxes) = baselines::Floor::<()>::new(0, 1);
    /// assert!(floor.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

impl<M: Clone, C: FloorChannel<M>> Bare<M, C> {
    /// Sends a clone of `msg` to every client without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::Floor;
    ///
    /// let (floor, mut inboxes) = Floor::new(2, 1);
    /// drop(inboxes.pop());
    /// let fanout = floor.broadcast(1u8);
    /// assert_eq!((fanout.delivered, fanout.closed), (1, 1));
    /// ```
    pub fn broadcast(&self, msg: M) -> Fanout {
        let mut fanout = Fanout::default();
        for tx in &self.senders {
            fanout.recipients += 1;
            match C::try_send(tx, msg.clone()) {
                Ok(()) => fanout.delivered += 1,
                Err(Refused::Full(_)) => fanout.dropped += 1,
                Err(Refused::Closed(_)) => fanout.closed += 1,
            }
        }
        fanout
    }
}

impl<M, C: FloorChannel<M>> fmt::Debug for Bare<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bare")
            .field("channel", &C::NAME)
            .field("clients", &self.senders.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{FloorChannel, Own, Tokio};
    use crate::{Fanout, Inbox};

    type Floor<M, C> = super::Bare<M, C>;

    /// Expands to the floor tests for channel `$c`, so both floors keep one contract.
    macro_rules! floor_tests {
        ($module:ident, $c:ty) => {
            mod $module {
                use super::*;

                #[test]
                fn broadcast_reaches_every_client_once() {
                    super::broadcast_reaches_every_client_once::<$c>();
                }
                #[test]
                fn full_channel_counts_as_dropped() {
                    super::full_channel_counts_as_dropped::<$c>();
                }
                #[test]
                fn dropped_receiver_counts_as_closed() {
                    super::dropped_receiver_counts_as_closed::<$c>();
                }
                #[test]
                fn send_reaches_only_its_index() {
                    super::send_reaches_only_its_index::<$c>();
                }
                #[test]
                fn dropping_the_floor_ends_every_receiver_after_what_was_queued() {
                    super::dropping_the_floor_ends_every_receiver_after_what_was_queued::<$c>();
                }
                #[test]
                fn empty_floor_broadcasts_to_nobody() {
                    super::empty_floor_broadcasts_to_nobody::<$c>();
                }
            }
        };
    }

    floor_tests!(tokio_channel, Tokio);
    floor_tests!(own_channel, Own);

    fn broadcast_reaches_every_client_once<C: FloorChannel<i32, Rx: Inbox<i32>>>() {
        let (floor, mut inboxes) = Floor::<i32, C>::new(5, 4);
        let fanout = floor.broadcast(9);
        let expected = Fanout {
            recipients: 5,
            delivered: 5,
            ..Fanout::default()
        };
        assert_eq!(fanout, expected);
        for inbox in &mut inboxes {
            assert_eq!(Inbox::try_recv(inbox), Some(9));
            assert_eq!(Inbox::try_recv(inbox), None);
        }
    }

    fn full_channel_counts_as_dropped<C: FloorChannel<i32, Rx: Inbox<i32>>>() {
        let (floor, mut inboxes) = Floor::<i32, C>::new(2, 1);
        assert_eq!(floor.send(0, 1), Ok(()));
        let fanout = floor.broadcast(2);
        assert_eq!(
            (fanout.recipients, fanout.delivered, fanout.dropped),
            (2, 1, 1)
        );
        assert_eq!(Inbox::try_recv(&mut inboxes[0]), Some(1));
        assert_eq!(Inbox::try_recv(&mut inboxes[1]), Some(2));
    }

    fn dropped_receiver_counts_as_closed<C: FloorChannel<(), Rx: Inbox<()>>>() {
        let (floor, mut inboxes) = Floor::<(), C>::new(3, 1);
        drop(inboxes.remove(1));
        let fanout = floor.broadcast(());
        let expected = Fanout {
            recipients: 3,
            delivered: 2,
            dropped: 0,
            closed: 1,
        };
        assert_eq!(fanout, expected);
        assert_eq!(floor.send(1, ()), Err(()));
    }

    fn send_reaches_only_its_index<C: FloorChannel<char, Rx: Inbox<char>>>() {
        let (floor, mut inboxes) = Floor::<char, C>::new(3, 1);
        assert_eq!(floor.send(2, 'x'), Ok(()));
        let got: Vec<_> = inboxes.iter_mut().map(Inbox::try_recv).collect();
        assert_eq!(got, [None, None, Some('x')]);
        assert_eq!(floor.send(3, 'y'), Err('y'));
    }

    fn dropping_the_floor_ends_every_receiver_after_what_was_queued<
        C: FloorChannel<u8, Rx: Inbox<u8>>,
    >() {
        let (floor, mut inboxes) = Floor::<u8, C>::new(2, 4);
        assert_eq!(floor.broadcast(5).delivered, 2);
        drop(floor);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        for inbox in &mut inboxes {
            assert_eq!(rt.block_on(Inbox::recv(inbox)), Some(5));
            assert_eq!(rt.block_on(Inbox::recv(inbox)), None, "the channel ended");
        }
    }

    fn empty_floor_broadcasts_to_nobody<C: FloorChannel<u8>>() {
        let (floor, inboxes) = Floor::<u8, C>::new(0, 1);
        assert!(floor.is_empty() && inboxes.is_empty());
        assert_eq!(floor.broadcast(1), Fanout::default());
    }

    #[test]
    fn own_floor_clamps_a_zero_capacity_to_one_message() {
        let (floor, inboxes) = super::OwnFloor::<u8>::new(2, 0);
        assert!(inboxes.iter().all(|rx| rx.capacity() == 1));
        assert_eq!(floor.broadcast(1).delivered, 2);
        assert_eq!(floor.broadcast(2).dropped, 2);
    }
}
