//! switchboard itself behind the [`Contender`] interface, so benches and the stress
//! harness drive every design through the same calls.

use switchboard::{BroadcastError, ClientId, ClientInfo, Receiver, Registry};

use crate::{Contender, Fanout, Inbox};

/// A [`Registry`] measured through [`Contender`].
#[derive(Debug, Clone)]
pub struct SwitchboardRegistry<M> {
    registry: Registry<M>,
}

impl<M> SwitchboardRegistry<M> {
    /// Wraps a registry built with [`Registry::builder`] or [`Registry::new`].
    #[must_use]
    pub fn new(registry: Registry<M>) -> Self {
        Self { registry }
    }

    /// A registry whose channels hold `channel_capacity` messages.
    ///
    /// # Panics
    ///
    /// If `channel_capacity` is 0 or above 2^20, like the other baselines.
    #[must_use]
    pub fn with_capacity(channel_capacity: usize) -> Self {
        match Registry::builder()
            .channel_capacity(channel_capacity)
            .build()
        {
            Ok(registry) => Self::new(registry),
            Err(e) => panic!("invalid channel capacity: {e}"),
        }
    }

    /// The wrapped registry.
    #[must_use]
    pub fn registry(&self) -> &Registry<M> {
        &self.registry
    }
}

impl<M: Send + 'static> Inbox<M> for Receiver<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        Receiver::try_recv(self).ok()
    }

    #[inline]
    fn recv(&mut self) -> impl std::future::Future<Output = Option<M>> + Send {
        Receiver::recv(self)
    }
}

impl<M: Clone + Send + Sync + 'static> Contender<M> for SwitchboardRegistry<M> {
    type Id = ClientId;
    type Rx = Receiver<M>;

    fn name(&self) -> &'static str {
        "switchboard"
    }

    fn register(&self) -> (ClientId, Receiver<M>) {
        match self.registry.register(ClientInfo::new()) {
            Ok(pair) => pair,
            Err(e) => panic!("registry refused a client: {e}"),
        }
    }

    fn unregister(&self, id: ClientId) -> bool {
        self.registry.unregister(id).is_ok()
    }

    fn attach(&self, id: ClientId, session: u64) -> bool {
        self.registry.attach(id, session).is_ok()
    }

    fn detach(&self, id: ClientId, session: u64) -> bool {
        self.registry.detach(id, session).is_ok()
    }

    fn send(&self, id: ClientId, msg: M) -> Result<(), M> {
        self.registry.send(id, msg).map_err(|e| e.into_inner())
    }

    #[inline]
    fn broadcast(&self, session: u64, msg: M) -> Fanout {
        match self.registry.broadcast(session, msg) {
            Ok(report) => Fanout {
                recipients: report.recipients,
                delivered: report.delivered,
                dropped: report.dropped,
                closed: report.closed + report.disconnected,
            },
            Err(BroadcastError::UnknownSession(..)) => Fanout::default(),
        }
    }

    fn client_count(&self) -> usize {
        self.registry.client_count()
    }

    fn session_count(&self) -> usize {
        self.registry.session_count()
    }
}

#[cfg(test)]
mod tests {
    use super::SwitchboardRegistry;

    use crate::Contender;

    crate::contender::contract::contract_tests!(SwitchboardRegistry::with_capacity);

    #[test]
    fn a_closed_client_is_unregistered_by_the_broadcast_that_finds_it() {
        let registry = SwitchboardRegistry::<u64>::with_capacity(4);
        let (gone, inbox) = registry.register();
        let (_live, _live_inbox) = registry.register();
        assert!(registry.attach(gone, 1));
        drop(inbox);
        assert_eq!(registry.broadcast(1, 10).closed, 1);
        assert_eq!(registry.client_count(), 1);
        assert_eq!(registry.session_count(), 0);
        assert!(!registry.unregister(gone));
    }
}
