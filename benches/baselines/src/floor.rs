//! The floor: the cost of delivery itself, with no registry at all.
//!
//! [`Floor`] is a `Vec` of senders built once. Its broadcast is a bare loop of
//! `try_send(msg.clone())` over that `Vec`, the least any design that hands each client its own
//! bounded channel must do. A registry's broadcast minus the floor's is what its bookkeeping
//! costs.
//!
//! The floor has one implicit session, "everyone", and no way to join or leave it. It does not
//! implement [`Contender`](crate::Contender): registering into it would need a lock around the
//! `Vec` or a membership check per recipient, and either would put back the bookkeeping the floor
//! exists to leave out. Use it for broadcast and direct-send benches, not for churn.

use std::fmt;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::Fanout;

/// A fixed set of client channels with no registry around them.
///
/// # Examples
///
/// ```
/// use baselines::Floor;
///
/// let (floor, mut inboxes) = Floor::new(3, 8);
/// let fanout = floor.broadcast("tick");
/// assert_eq!(fanout.delivered, 3);
/// assert!(inboxes.iter_mut().all(|inbox| inbox.try_recv() == Ok("tick")));
/// ```
pub struct Floor<M> {
    senders: Vec<mpsc::Sender<M>>,
}

impl<M> Floor<M> {
    /// Builds `n_clients` channels of `capacity` messages each; returns the floor and the
    /// receivers, where receiver `i` belongs to client `i`.
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is zero, as [`mpsc::channel`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::Floor;
    ///
    /// let (floor, inboxes) = Floor::<u64>::new(1000, 16);
    /// assert_eq!((floor.len(), inboxes.len()), (1000, 1000));
    /// ```
    pub fn new(n_clients: usize, capacity: usize) -> (Self, Vec<mpsc::Receiver<M>>) {
        let (senders, receivers) = (0..n_clients).map(|_| mpsc::channel(capacity)).unzip();
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
            Some(tx) => tx.try_send(msg).map_err(TrySendError::into_inner),
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
    /// ```
    pub fn name(&self) -> &'static str {
        "floor"
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

impl<M: Clone> Floor<M> {
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
            fanout.record(tx.try_send(msg.clone()));
        }
        fanout
    }
}

impl<M> fmt::Debug for Floor<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Floor")
            .field("clients", &self.senders.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Floor;
    use crate::Fanout;

    #[test]
    fn broadcast_reaches_every_client_once() {
        let (floor, mut inboxes) = Floor::new(5, 4);
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
        let (floor, mut inboxes) = Floor::new(2, 1);
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
        let (floor, mut inboxes) = Floor::new(3, 1);
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
        let (floor, mut inboxes) = Floor::new(3, 1);
        assert_eq!(floor.send(2, 'x'), Ok(()));
        let got: Vec<_> = inboxes
            .iter_mut()
            .map(|inbox| inbox.try_recv().ok())
            .collect();
        assert_eq!(got, [None, None, Some('x')]);
        assert_eq!(floor.send(3, 'y'), Err('y'));
    }

    #[test]
    fn empty_floor_broadcasts_to_nobody() {
        let (floor, inboxes) = Floor::<u8>::new(0, 1);
        assert!(floor.is_empty() && inboxes.is_empty());
        assert_eq!(floor.broadcast(1), Fanout::default());
    }
}
