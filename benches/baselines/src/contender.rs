//! The interface every measured registry design implements, and the report a broadcast returns.

use std::future::Future;

use tokio::sync::mpsc::{self, error::TrySendError};

/// Outcome counts of one broadcast; `delivered + dropped + closed == recipients`.
///
/// A broadcast to a session that does not exist returns `Fanout::default()`.
///
/// # Examples
///
/// ```
/// use baselines::{Contender, MutexRegistry};
///
/// let registry = MutexRegistry::<u32>::new(1);
/// let (id, _rx) = registry.register();
/// registry.attach(id, 7);
///
/// let first = registry.broadcast(7, 1);
/// assert_eq!((first.recipients, first.delivered), (1, 1));
/// // The channel holds one message, so the second one is dropped.
/// let second = registry.broadcast(7, 2);
/// assert_eq!((second.recipients, second.dropped), (1, 1));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use = "a fanout reports how many recipients missed the message"]
pub struct Fanout {
    /// Members the broadcast tried to reach.
    pub recipients: usize,
    /// Members whose channel accepted the message.
    pub delivered: usize,
    /// Members whose channel was full, so the message was dropped for them.
    pub dropped: usize,
    /// Members whose receiver was gone (or who unregistered mid-broadcast).
    pub closed: usize,
}

impl Fanout {
    /// Counts one recipient and the outcome of its `try_send`.
    pub(crate) fn record<M>(&mut self, outcome: Result<(), TrySendError<M>>) {
        self.recipients += 1;
        match outcome {
            Ok(()) => self.delivered += 1,
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Closed(_)) => self.closed += 1,
        }
    }

    /// Counts a member that left between the membership read and the send.
    pub(crate) fn record_vanished(&mut self) {
        self.recipients += 1;
        self.closed += 1;
    }
}

/// A registry design measured side by side with switchboard.
///
/// A registry holds clients, each with a bounded channel, and sessions, each a set of clients.
/// The contract every implementation keeps, and the shared unit tests check:
///
/// - ids returned by [`register`](Contender::register) are unique for the registry's life;
/// - [`unregister`](Contender::unregister) is the one cleanup path: it removes the client from
///   every session it is in, removes sessions it leaves empty, and drops its sender, so its
///   [`Inbox`] ends once drained;
/// - a session exists exactly while it has members, so
///   [`session_count`](Contender::session_count) is the number of non-empty sessions;
/// - sends never wait: a full channel drops the message, a closed one reports it. Nothing is
///   removed automatically when a send finds a closed channel.
///
/// # Examples
///
/// ```
/// use baselines::{Contender, DashMapRegistry, Inbox, MutexRegistry};
///
/// fn round_trip<C: Contender<String>>(registry: C) {
///     let (id, mut inbox) = registry.register();
///     assert!(registry.attach(id, 1));
///     assert_eq!(registry.broadcast(1, "hi".to_owned()).delivered, 1);
///     assert_eq!(inbox.try_recv().as_deref(), Some("hi"));
///     assert!(registry.unregister(id));
///     assert_eq!(registry.session_count(), 0);
/// }
///
/// round_trip(DashMapRegistry::new(8));
/// round_trip(MutexRegistry::new(8));
/// ```
pub trait Contender<M: Clone + Send + 'static>: Send + Sync + 'static {
    /// The client id this design hands out.
    type Id: Copy + Send + Sync + Eq + std::hash::Hash + std::fmt::Debug + 'static;
    /// The receiving end a client gets from [`register`](Contender::register).
    type Rx: Inbox<M>;

    /// Short lowercase name used in reports: "floor", "dashmap", "mutex", "switchboard".
    fn name(&self) -> &'static str;

    /// Adds a client with a fresh bounded channel; returns its id and receiving end.
    fn register(&self) -> (Self::Id, Self::Rx);

    /// Removes the client from the registry and from every session it is in.
    ///
    /// Returns false if the id was unknown.
    fn unregister(&self, id: Self::Id) -> bool;

    /// Adds the client to `session`, creating the session if needed.
    ///
    /// Returns false if the id was unknown. Attaching a client to a session it is already in
    /// changes nothing and returns true.
    fn attach(&self, id: Self::Id, session: u64) -> bool;

    /// Removes the client from `session`, removing the session if it is left empty.
    ///
    /// Returns false if the id was unknown or the client was not in the session.
    fn detach(&self, id: Self::Id, session: u64) -> bool;

    /// Direct send; Err gives the message back.
    ///
    /// # Errors
    ///
    /// Returns `Err(msg)` if the id is unknown, the client's channel is full, or its receiver
    /// was dropped.
    fn send(&self, id: Self::Id, msg: M) -> Result<(), M>;

    /// Sends a clone of `msg` to every member of `session` without waiting.
    fn broadcast(&self, session: u64, msg: M) -> Fanout;

    /// Number of registered clients.
    fn client_count(&self) -> usize;

    /// Number of sessions with at least one member.
    fn session_count(&self) -> usize;
}

/// The receiving end of one client's channel.
///
/// `tokio::sync::mpsc::Receiver` implements it. Its inherent `try_recv` (which returns a
/// `Result`) wins in method-call syntax on a concrete receiver, so call the trait's as
/// `Inbox::try_recv(&mut rx)` there; generic code over [`Contender::Rx`] gets the trait's.
///
/// # Examples
///
/// ```
/// use baselines::Inbox;
/// use tokio::sync::mpsc;
///
/// let (tx, mut rx) = mpsc::channel::<u8>(4);
/// tx.try_send(1).unwrap();
/// tx.try_send(2).unwrap();
/// assert_eq!(Inbox::try_recv(&mut rx), Some(1));
/// assert_eq!(rx.drain(), 1);
/// assert_eq!(Inbox::try_recv(&mut rx), None);
/// ```
pub trait Inbox<M>: Send + 'static {
    /// Takes the next queued message, if any, without waiting.
    fn try_recv(&mut self) -> Option<M>;

    /// Waits for the next message; None once the channel is closed and empty.
    fn recv(&mut self) -> impl Future<Output = Option<M>> + Send;

    /// Drains everything queued now without waiting; returns how many.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.try_recv().is_some() {
            n += 1;
        }
        n
    }
}

impl<M: Send + 'static> Inbox<M> for mpsc::Receiver<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        // Empty and disconnected both mean "nothing to take now".
        mpsc::Receiver::try_recv(self).ok()
    }

    #[inline]
    fn recv(&mut self) -> impl Future<Output = Option<M>> + Send {
        mpsc::Receiver::recv(self)
    }
}

/// Contract checks shared by every [`Contender`] in this crate.
///
/// Each baseline's test module instantiates them with [`contract_tests!`], so a failure names
/// the baseline that broke.
#[cfg(test)]
pub(crate) mod contract {
    use std::collections::HashSet;
    use std::sync::Barrier;
    use std::thread;

    use super::{Contender, Fanout, Inbox};

    /// Builds a registry whose channels hold `capacity` messages.
    pub(crate) type Make<C> = fn(usize) -> C;

    pub(crate) fn ids_are_unique_and_counted<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let ids: Vec<_> = (0..100).map(|_| registry.register().0).collect();
        let distinct: HashSet<_> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 100);
        assert_eq!(registry.client_count(), 100);
        assert_eq!(registry.session_count(), 0);
    }

    pub(crate) fn broadcast_reaches_exactly_the_attached<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let mut clients: Vec<_> = (0..5).map(|_| registry.register()).collect();
        for (id, _) in clients.iter().step_by(2) {
            assert!(registry.attach(*id, 1));
        }
        assert!(registry.attach(clients[1].0, 2));
        assert_eq!(registry.session_count(), 2);

        let fanout = registry.broadcast(1, 10);
        assert_eq!(
            fanout,
            Fanout {
                recipients: 3,
                delivered: 3,
                ..Fanout::default()
            }
        );
        for (i, (_, inbox)) in clients.iter_mut().enumerate() {
            let expected = if i % 2 == 0 { Some(10) } else { None };
            assert_eq!(inbox.try_recv(), expected, "client {i}");
            assert_eq!(inbox.try_recv(), None, "client {i} got a second message");
        }
    }

    pub(crate) fn broadcast_to_unknown_session_reaches_nobody<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (id, mut inbox) = registry.register();
        assert!(registry.attach(id, 1));
        assert_eq!(registry.broadcast(2, 10), Fanout::default());
        assert_eq!(inbox.try_recv(), None);
    }

    pub(crate) fn attach_twice_delivers_once<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (id, mut inbox) = registry.register();
        assert!(registry.attach(id, 1));
        assert!(registry.attach(id, 1));
        assert_eq!(registry.broadcast(1, 10).recipients, 1);
        assert_eq!(inbox.drain(), 1);
        assert!(registry.detach(id, 1));
        assert_eq!(registry.session_count(), 0);
    }

    pub(crate) fn unknown_ids_are_rejected<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (id, _inbox) = registry.register();
        assert!(registry.unregister(id));
        assert!(!registry.unregister(id));
        assert!(!registry.attach(id, 1));
        assert!(!registry.detach(id, 1));
        assert_eq!(registry.send(id, 10), Err(10));
        assert_eq!(registry.session_count(), 0);
    }

    pub(crate) fn detach_leaves_other_sessions_and_drops_empty_ones<C: Contender<u64>>(
        make: Make<C>,
    ) {
        let registry = make(4);
        let (a, mut inbox_a) = registry.register();
        let (b, mut inbox_b) = registry.register();
        for session in [1, 2] {
            assert!(registry.attach(a, session));
        }
        assert!(registry.attach(b, 2));

        assert!(registry.detach(a, 1));
        assert!(!registry.detach(a, 1));
        assert!(!registry.detach(b, 1));
        assert_eq!(registry.session_count(), 1);
        assert_eq!(registry.broadcast(1, 10), Fanout::default());

        assert!(registry.detach(a, 2));
        assert_eq!(registry.broadcast(2, 20).recipients, 1);
        assert_eq!((inbox_a.drain(), inbox_b.try_recv()), (0, Some(20)));
    }

    pub(crate) fn unregister_removes_from_every_session<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (a, _inbox_a) = registry.register();
        let (b, mut inbox_b) = registry.register();
        for session in [1, 2, 3] {
            assert!(registry.attach(a, session));
        }
        assert!(registry.attach(b, 2));

        assert!(registry.unregister(a));
        assert_eq!(registry.client_count(), 1);
        // Sessions 1 and 3 only had `a`, so they are gone.
        assert_eq!(registry.session_count(), 1);
        assert_eq!(registry.broadcast(1, 10), Fanout::default());
        assert_eq!(registry.broadcast(3, 30), Fanout::default());
        let fanout = registry.broadcast(2, 20);
        assert_eq!((fanout.recipients, fanout.delivered), (1, 1));
        assert_eq!(inbox_b.try_recv(), Some(20));
    }

    pub(crate) fn send_reaches_only_its_client<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (a, mut inbox_a) = registry.register();
        let (_b, mut inbox_b) = registry.register();
        assert_eq!(registry.send(a, 10), Ok(()));
        assert_eq!(inbox_a.try_recv(), Some(10));
        assert_eq!(inbox_b.try_recv(), None);
    }

    pub(crate) fn full_channel_counts_as_dropped<C: Contender<u64>>(make: Make<C>) {
        let registry = make(2);
        let (full, mut full_inbox) = registry.register();
        let (roomy, mut roomy_inbox) = registry.register();
        for id in [full, roomy] {
            assert!(registry.attach(id, 1));
        }
        assert_eq!(registry.send(full, 1), Ok(()));
        assert_eq!(registry.send(full, 2), Ok(()));
        assert_eq!(registry.send(full, 3), Err(3));

        let fanout = registry.broadcast(1, 10);
        assert_eq!(
            fanout,
            Fanout {
                recipients: 2,
                delivered: 1,
                dropped: 1,
                closed: 0
            }
        );
        assert_eq!(full_inbox.drain(), 2);
        assert_eq!(roomy_inbox.try_recv(), Some(10));
    }

    pub(crate) fn dropped_receiver_counts_as_closed<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (gone, gone_inbox) = registry.register();
        let (live, mut live_inbox) = registry.register();
        for id in [gone, live] {
            assert!(registry.attach(id, 1));
        }
        drop(gone_inbox);

        let fanout = registry.broadcast(1, 10);
        assert_eq!(
            fanout,
            Fanout {
                recipients: 2,
                delivered: 1,
                dropped: 0,
                closed: 1
            }
        );
        assert_eq!(live_inbox.try_recv(), Some(10));
        assert_eq!(registry.send(gone, 1), Err(1));
        // Whether the closed client is then cleaned up differs by design: the baselines
        // leave it to `unregister`, switchboard unregisters it itself. Each design's own
        // tests check which.
    }

    pub(crate) async fn inbox_ends_after_unregister<C: Contender<u64>>(make: Make<C>) {
        let registry = make(4);
        let (id, mut inbox) = registry.register();
        assert!(registry.attach(id, 1));
        assert_eq!(registry.broadcast(1, 10).delivered, 1);
        assert!(registry.unregister(id));
        assert_eq!(inbox.recv().await, Some(10));
        assert_eq!(inbox.recv().await, None);
    }

    /// Races attach, detach and broadcast against unregister of the same clients; whatever the
    /// interleaving, no session may outlive its members.
    pub(crate) fn churn_leaves_nothing_behind<C: Contender<u64>>(make: Make<C>) {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 300;
        const SESSIONS: u64 = 3;

        let registry = make(8);
        let barrier = Barrier::new(THREADS * 2);
        // Inboxes stay alive until every thread is done: a registry may treat a dropped
        // inbox as a disconnect and unregister the client itself, racing the leaver.
        let _inboxes: Vec<C::Rx> = thread::scope(|scope| {
            let mut joiners = Vec::new();
            for _ in 0..THREADS {
                let (registry, barrier) = (&registry, &barrier);
                let (tx, rx) = std::sync::mpsc::channel();
                // Joiner: registers clients and attaches them while the leaver unregisters.
                joiners.push(scope.spawn(move || {
                    barrier.wait();
                    let mut kept = Vec::new();
                    for round in 0..ROUNDS {
                        let (id, mut inbox) = registry.register();
                        tx.send(id).expect("leaver outlives joiner");
                        for session in 0..SESSIONS {
                            registry.attach(id, (round + session) % SESSIONS);
                        }
                        let fanout = registry.broadcast(round % SESSIONS, round);
                        assert_eq!(
                            fanout.delivered + fanout.dropped + fanout.closed,
                            fanout.recipients
                        );
                        registry.detach(id, round % SESSIONS);
                        inbox.drain();
                        kept.push(inbox);
                    }
                    kept
                }));
                scope.spawn(move || {
                    barrier.wait();
                    for id in rx {
                        assert!(registry.unregister(id), "{id:?} unregistered twice");
                    }
                });
            }
            joiners
                .into_iter()
                .flat_map(|joiner| joiner.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(registry.client_count(), 0);
        assert_eq!(registry.session_count(), 0);
    }

    /// Expands to one `#[test]` per contract check for the registry built by `$make`.
    macro_rules! contract_tests {
        ($make:expr) => {
            use $crate::contender::contract;

            #[test]
            fn ids_are_unique_and_counted() {
                contract::ids_are_unique_and_counted($make);
            }
            #[test]
            fn broadcast_reaches_exactly_the_attached() {
                contract::broadcast_reaches_exactly_the_attached($make);
            }
            #[test]
            fn broadcast_to_unknown_session_reaches_nobody() {
                contract::broadcast_to_unknown_session_reaches_nobody($make);
            }
            #[test]
            fn attach_twice_delivers_once() {
                contract::attach_twice_delivers_once($make);
            }
            #[test]
            fn unknown_ids_are_rejected() {
                contract::unknown_ids_are_rejected($make);
            }
            #[test]
            fn detach_leaves_other_sessions_and_drops_empty_ones() {
                contract::detach_leaves_other_sessions_and_drops_empty_ones($make);
            }
            #[test]
            fn unregister_removes_from_every_session() {
                contract::unregister_removes_from_every_session($make);
            }
            #[test]
            fn send_reaches_only_its_client() {
                contract::send_reaches_only_its_client($make);
            }
            #[test]
            fn full_channel_counts_as_dropped() {
                contract::full_channel_counts_as_dropped($make);
            }
            #[test]
            fn dropped_receiver_counts_as_closed() {
                contract::dropped_receiver_counts_as_closed($make);
            }
            #[tokio::test]
            async fn inbox_ends_after_unregister() {
                contract::inbox_ends_after_unregister($make).await;
            }
            #[test]
            fn churn_leaves_nothing_behind() {
                contract::churn_leaves_nothing_behind($make);
            }
        };
    }
    pub(crate) use contract_tests;
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::{Fanout, Inbox};

    #[test]
    fn record_counts_each_outcome() {
        let (tx, rx) = mpsc::channel(1);
        let mut fanout = Fanout::default();
        fanout.record(tx.try_send(1));
        fanout.record(tx.try_send(2));
        drop(rx);
        fanout.record(tx.try_send(3));
        fanout.record_vanished();
        let expected = Fanout {
            recipients: 4,
            delivered: 1,
            dropped: 1,
            closed: 2,
        };
        assert_eq!(fanout, expected);
    }

    #[test]
    fn receiver_drain_empties_the_queue() {
        let (tx, mut rx) = mpsc::channel(8);
        for i in 0..5 {
            tx.try_send(i).expect("capacity is 8");
        }
        assert_eq!(rx.drain(), 5);
        assert_eq!(Inbox::try_recv(&mut rx), None);
    }

    #[tokio::test]
    async fn receiver_recv_ends_when_senders_drop() {
        let (tx, mut rx) = mpsc::channel(2);
        tx.try_send(7).expect("capacity is 2");
        drop(tx);
        assert_eq!(Inbox::recv(&mut rx).await, Some(7));
        assert_eq!(Inbox::recv(&mut rx).await, None);
    }
}
