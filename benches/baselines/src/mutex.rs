//! The mutex registry: every map behind one lock.
//!
//! This is the connection-manager style common in Python servers, in Rust: one
//! `std::sync::Mutex` around a struct of plain maps.
//!
//! ```text
//! Mutex<Inner {
//!     next_id:  u64,
//!     clients:  HashMap<u64, Entry { sender, sessions: HashSet<u64> }>,
//!     sessions: HashMap<u64, HashSet<u64>>,
//! }>
//! ```
//!
//! Every operation takes the lock once, so the two maps always agree. A broadcast clones the
//! members' senders out under the lock and sends after releasing it, the way such managers
//! avoid holding the lock across delivery; every broadcast, join and leave in the process still
//! queues on that one lock.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{Contender, Fanout};

/// A client's channel and the sessions it is in.
struct Entry<M> {
    sender: mpsc::Sender<M>,
    /// Forward index, so `unregister` visits only this client's sessions.
    sessions: HashSet<u64>,
}

/// Everything the lock guards.
struct Inner<M> {
    next_id: u64,
    clients: HashMap<u64, Entry<M>>,
    sessions: HashMap<u64, HashSet<u64>>,
}

impl<M> Inner<M> {
    /// Takes `id` out of `session`'s member set, removing the set if that emptied it.
    fn leave(&mut self, id: u64, session: u64) {
        if let Some(members) = self.sessions.get_mut(&session) {
            members.remove(&id);
            if members.is_empty() {
                self.sessions.remove(&session);
            }
        }
    }
}

/// A client registry behind a single `std::sync::Mutex`.
///
/// # Examples
///
/// ```
/// use baselines::{Contender, MutexRegistry};
///
/// let registry = MutexRegistry::new(32);
/// let (id, mut inbox) = registry.register();
/// registry.attach(id, 1);
/// assert_eq!(registry.broadcast(1, "hello").delivered, 1);
/// assert_eq!(inbox.try_recv(), Ok("hello"));
/// ```
pub struct MutexRegistry<M> {
    inner: Mutex<Inner<M>>,
    capacity: usize,
}

impl<M> MutexRegistry<M> {
    /// Creates an empty registry whose client channels hold `channel_capacity` messages.
    ///
    /// # Panics
    ///
    /// Panics if `channel_capacity` is zero, which [`mpsc::channel`] rejects.
    ///
    /// # Examples
    ///
    /// ```
    /// use baselines::{Contender, MutexRegistry};
    ///
    /// let registry = MutexRegistry::<u64>::new(32);
    /// assert_eq!(registry.client_count(), 0);
    /// ```
    pub fn new(channel_capacity: usize) -> Self {
        // Fail here rather than on the first register.
        assert!(channel_capacity > 0, "channel capacity must be at least 1");
        Self {
            inner: Mutex::new(Inner {
                next_id: 0,
                clients: HashMap::new(),
                sessions: HashMap::new(),
            }),
            capacity: channel_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        // Messages are cloned only after unlocking and no critical section can stop halfway,
        // so a lock poisoned by a panic elsewhere still guards consistent maps.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M: Clone + Send + 'static> Contender<M> for MutexRegistry<M> {
    type Id = u64;
    type Rx = mpsc::Receiver<M>;

    fn name(&self) -> &'static str {
        "mutex"
    }

    fn register(&self) -> (u64, mpsc::Receiver<M>) {
        let (sender, receiver) = mpsc::channel(self.capacity);
        let entry = Entry {
            sender,
            sessions: HashSet::new(),
        };
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.clients.insert(id, entry);
        (id, receiver)
    }

    fn unregister(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.clients.remove(&id) else {
            return false;
        };
        for session in entry.sessions {
            inner.leave(id, session);
        }
        true
    }

    fn attach(&self, id: u64, session: u64) -> bool {
        let mut guard = self.lock();
        // Borrow through the guard once so both maps can be borrowed apart.
        let inner = &mut *guard;
        let Some(entry) = inner.clients.get_mut(&id) else {
            return false;
        };
        if entry.sessions.insert(session) {
            inner.sessions.entry(session).or_default().insert(id);
        }
        true
    }

    fn detach(&self, id: u64, session: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.clients.get_mut(&id) else {
            return false;
        };
        if !entry.sessions.remove(&session) {
            return false;
        }
        inner.leave(id, session);
        true
    }

    fn send(&self, id: u64, msg: M) -> Result<(), M> {
        // `try_send` never waits, so sending under the lock is cheaper than cloning the sender.
        match self.lock().clients.get(&id) {
            Some(entry) => entry.sender.try_send(msg).map_err(TrySendError::into_inner),
            None => Err(msg),
        }
    }

    fn broadcast(&self, session: u64, msg: M) -> Fanout {
        let senders: Vec<mpsc::Sender<M>> = {
            let inner = self.lock();
            let Some(members) = inner.sessions.get(&session) else {
                return Fanout::default();
            };
            // Every member is a client: both maps change under this lock, together.
            members
                .iter()
                .filter_map(|id| inner.clients.get(id))
                .map(|entry| entry.sender.clone())
                .collect()
        };
        let mut fanout = Fanout::default();
        for sender in &senders {
            fanout.record(sender.try_send(msg.clone()));
        }
        fanout
    }

    fn client_count(&self) -> usize {
        self.lock().clients.len()
    }

    fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

impl<M> fmt::Debug for MutexRegistry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MutexRegistry")
            .field("clients", &inner.clients.len())
            .field("sessions", &inner.sessions.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::MutexRegistry;
    use crate::Contender;

    crate::contender::contract::contract_tests!(MutexRegistry::new);

    #[test]
    fn name_is_mutex() {
        assert_eq!(Contender::<()>::name(&MutexRegistry::new(1)), "mutex");
    }

    #[test]
    fn ids_are_never_reused() {
        let registry = MutexRegistry::<()>::new(1);
        let (first, _inbox) = registry.register();
        assert!(registry.unregister(first));
        let (second, _inbox) = registry.register();
        assert_ne!(first, second);
    }

    #[test]
    fn lock_poisoned_elsewhere_still_serves() {
        let registry = MutexRegistry::<u8>::new(1);
        let (id, _inbox) = registry.register();
        let poisoner = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = registry.inner.lock();
                    panic!("poison the registry lock");
                })
                .join()
        });
        assert!(poisoner.is_err() && registry.inner.is_poisoned());
        assert!(registry.attach(id, 1));
        assert_eq!(registry.broadcast(1, 7).delivered, 1);
    }
}
