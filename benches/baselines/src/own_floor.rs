//! The own-channel floor: delivery over switchboard's own channel, with no registry.
//!
//! [`OwnFloor`] is [`Floor`](crate::Floor) with switchboard's channel in place of tokio's: a
//! `Vec` of senders built once and a bare `try_send(msg.clone())` loop. Each channel is built
//! inside a client entry as a registration builds it, so the loop touches the same objects a
//! registry broadcast does. switchboard's broadcast over this floor is the registry's overhead
//! (snapshot, member walk, report) apart from the channel's speed; over [`Floor`](crate::Floor)
//! it also includes the difference between the two channels.
//!
//! Like [`Floor`](crate::Floor), it has one implicit session and no [`Contender`](crate::Contender)
//! impl: nothing joins or leaves it. Dropping it closes every channel, so each receiver ends
//! once it has taken what was queued.

use std::fmt;

use switchboard::bench_support::{bare_channel, BareSender};
use switchboard::Receiver;

use crate::Fanout;

/// A fixed set of switchboard channels with no registry around them.
///
/// # Examples
///
/// ```
/// use baselines::OwnFloor;
///
/// let (floor, mut inboxes) = OwnFloor::new(3, 8);
/// let fanout = floor.broadcast("tick");
/// assert_eq!(fanout.delivered, 3);
/// assert!(inboxes.iter_mut().all(|inbox| inbox.try_recv() == Ok("tick")));
/// ```
pub struct OwnFloor<M> {
    senders: Vec<BareSender<M>>,
}

impl<M> OwnFloor<M> {
    /// Builds `n_clients` channels of `capacity` messages each; returns the floor and the
    /// receivers, where receiver `i` belongs to client `i`.
    ///
    /// `capacity` is clamped into the registry's bounds (`1..=2^20`), so zero gives channels
    /// of one message rather than a panic; [`Receiver::capacity`] reports what was used.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::OwnFloor;
    ///
    /// let (floor, inboxes) = OwnFloor::<u64>::new(1000, 16);
    /// assert_eq!((floor.len(), inboxes.len()), (1000, 1000));
    /// let (_, inboxes) = OwnFloor::<u64>::new(1, 0);
    /// assert_eq!(inboxes[0].capacity(), 1);
    /// ```
    pub fn new(n_clients: usize, capacity: usize) -> (Self, Vec<Receiver<M>>) {
        let (senders, receivers) = (0..n_clients).map(|_| bare_channel(capacity)).unzip();
        (Self { senders }, receivers)
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
    /// use baselines::OwnFloor;
    ///
    /// let (floor, mut inboxes) = OwnFloor::new(2, 1);
    /// assert_eq!(floor.send(1, 'a'), Ok(()));
    /// assert_eq!(floor.send(1, 'b'), Err('b'));
    /// assert_eq!(floor.send(2, 'c'), Err('c'));
    /// assert_eq!(inboxes[1].try_recv(), Ok('a'));
    /// ```
    pub fn send(&self, index: usize, msg: M) -> Result<(), M> {
        match self.senders.get(index) {
            Some(tx) => tx.try_send(msg),
            None => Err(msg),
        }
    }

    /// Short lowercase name used in reports.
    ///
    /// # Examples
    ///
    /// ```
    /// let (floor, _inboxes) = baselines::OwnFloor::<()>::new(0, 1);
    /// assert_eq!(floor.name(), "own_floor");
    /// ```
    pub fn name(&self) -> &'static str {
        "own_floor"
    }

    /// Number of clients.
    ///
    /// # Examples
    ///
    /// ```
    /// let (floor, _inboxes) = baselines::OwnFloor::<()>::new(4, 1);
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
    /// let (floor, _inboxes) = baselines::OwnFloor::<()>::new(0, 1);
    /// assert!(floor.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

impl<M: Clone> OwnFloor<M> {
    /// Sends a clone of `msg` to every client without waiting. A refusal is counted as closed
    /// if the receiver is gone, else as dropped (full).
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::OwnFloor;
    ///
    /// let (floor, mut inboxes) = OwnFloor::new(2, 1);
    /// drop(inboxes.pop());
    /// let fanout = floor.broadcast(1u8);
    /// assert_eq!((fanout.delivered, fanout.closed), (1, 1));
    /// ```
    pub fn broadcast(&self, msg: M) -> Fanout {
        let mut fanout = Fanout::default();
        for tx in &self.senders {
            fanout.recipients += 1;
            match tx.try_send(msg.clone()) {
                Ok(()) => fanout.delivered += 1,
                Err(_) if tx.is_closed() => fanout.closed += 1,
                Err(_) => fanout.dropped += 1,
            }
        }
        fanout
    }
}

impl<M> fmt::Debug for OwnFloor<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnFloor")
            .field("clients", &self.senders.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::OwnFloor;
    use crate::Fanout;

    #[test]
    fn broadcast_reaches_every_client_once() {
        let (floor, mut inboxes) = OwnFloor::new(5, 4);
        let fanout = floor.broadcast(9);
        let expected = Fanout {
            recipients: 5,
            delivered: 5,
            ..Fanout::default()
        };
        assert_eq!(fanout, expected);
        for inbox in &mut inboxes {
            assert_eq!(inbox.try_recv(), Ok(9));
            assert!(inbox.try_recv().is_err());
        }
    }

    #[test]
    fn full_channel_counts_as_dropped() {
        let (floor, mut inboxes) = OwnFloor::new(2, 1);
        assert_eq!(floor.send(0, 1), Ok(()));
        let fanout = floor.broadcast(2);
        assert_eq!(
            (fanout.recipients, fanout.delivered, fanout.dropped),
            (2, 1, 1)
        );
        assert_eq!(inboxes[0].try_recv(), Ok(1));
        assert_eq!(inboxes[1].try_recv(), Ok(2));
    }

    #[test]
    fn dropped_receiver_counts_as_closed() {
        let (floor, mut inboxes) = OwnFloor::new(3, 1);
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

    #[test]
    fn send_reaches_only_its_index() {
        let (floor, mut inboxes) = OwnFloor::new(3, 1);
        assert_eq!(floor.send(2, 'x'), Ok(()));
        let got: Vec<_> = inboxes
            .iter_mut()
            .map(|inbox| inbox.try_recv().ok())
            .collect();
        assert_eq!(got, [None, None, Some('x')]);
        assert_eq!(floor.send(3, 'y'), Err('y'));
    }

    #[test]
    fn zero_capacity_is_one_message_not_a_panic() {
        let (floor, inboxes) = OwnFloor::<u8>::new(2, 0);
        assert!(inboxes.iter().all(|rx| rx.capacity() == 1));
        assert_eq!(floor.broadcast(1).delivered, 2);
        assert_eq!(floor.broadcast(2).dropped, 2);
    }

    #[test]
    fn dropping_the_floor_ends_every_receiver_after_what_was_queued() {
        let (floor, mut inboxes) = OwnFloor::new(2, 4);
        assert_eq!(floor.broadcast(5).delivered, 2);
        drop(floor);
        for inbox in &mut inboxes {
            assert_eq!(inbox.try_recv(), Ok(5));
            assert_eq!(inbox.try_recv(), Err(switchboard::TryRecvError::Closed));
        }
    }

    #[test]
    fn empty_floor_broadcasts_to_nobody() {
        let (floor, inboxes) = OwnFloor::<u8>::new(0, 1);
        assert!(floor.is_empty() && inboxes.is_empty());
        assert_eq!(floor.broadcast(1), Fanout::default());
    }
}
