//! Registry configuration: the [`Builder`] and its policies.

use std::fmt;
use std::marker::PhantomData;

use crate::device_config::DeviceConfig;
use crate::error::{BuildError, ProfileLimit};
use crate::profile::{json_size, ClientInfo};
use crate::registry::Registry;
use crate::ClientId;

/// What a broadcast does with a member whose channel is full.
///
/// A broadcast never waits on a slow client either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Skip the message for that client and count it as dropped. The default.
    #[default]
    Drop,
    /// Unregister the client: its channel closes after the messages already queued,
    /// so its writer task sees the end and can close the connection. Its receiver's
    /// [`close_reason`](crate::Receiver::close_reason) is
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer).
    Disconnect,
}

/// Validated settings shared by every part of a registry.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) shards: usize,
    pub(crate) channel_capacity: usize,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) max_clients: Option<usize>,
    pub(crate) max_metadata_bytes: usize,
    pub(crate) profile_bounds: ProfileBounds,
    pub(crate) peer_bounds: PeerBounds,
    pub(crate) takeover_moves_sessions: bool,
    pub(crate) event_capacity: usize,
    pub(crate) device_config: DeviceConfig,
}

/// The bounds on a peer-reported profile; see [`ProfileLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProfileBounds {
    pub(crate) bytes: usize,
    pub(crate) tags: usize,
    pub(crate) capabilities: usize,
    pub(crate) installed_applications: usize,
}

impl ProfileBounds {
    /// The first bound `info` breaks, with its actual value. Counts are checked
    /// first, so an oversized list is refused without serialising it.
    pub(crate) fn check(&self, info: &ClientInfo) -> Result<(), (ProfileLimit, usize, usize)> {
        let s = &info.system_info;
        let counts = [
            (ProfileLimit::Tags, s.tags.len(), self.tags),
            (
                ProfileLimit::Capabilities,
                s.capabilities.len(),
                self.capabilities,
            ),
            (
                ProfileLimit::InstalledApplications,
                s.installed_applications.len(),
                self.installed_applications,
            ),
        ];
        for (what, actual, limit) in counts {
            if actual > limit {
                return Err((what, actual, limit));
            }
        }
        let bytes = json_size(info);
        if bytes > self.bytes {
            return Err((ProfileLimit::Bytes, bytes, self.bytes));
        }
        Ok(())
    }
}

/// The bounds on what one client may make the registry hold beyond its profile:
/// the sessions it is in and the tasks it has open. A remote peer drives both
/// (`join` and `task_open` frames), so each is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerBounds {
    /// Sessions one client may be attached to at once.
    pub(crate) sessions_per_client: usize,
    /// Bytes of a session's name, for an attach that may create the session.
    pub(crate) session_name_bytes: usize,
    /// Open tasks one client may have at once, on either side.
    pub(crate) tasks_per_client: usize,
}

/// Configures and builds a [`Registry`].
///
/// # Examples
///
/// ```
/// use switchboard::{Registry, SlowConsumerPolicy};
///
/// let registry = Registry::<String>::builder()
///     .shards(4)
///     .channel_capacity(64)
///     .slow_consumer(SlowConsumerPolicy::Disconnect)
///     .max_clients(100_000)
///     .build()
///     .expect("valid settings");
/// assert_eq!(registry.client_count(), 0);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<M> {
    shards: Option<usize>,
    channel_capacity: usize,
    slow_consumer: SlowConsumerPolicy,
    max_clients: Option<usize>,
    max_metadata_bytes: usize,
    profile_bounds: ProfileBounds,
    peer_bounds: PeerBounds,
    takeover_moves_sessions: bool,
    event_capacity: usize,
    device_config: DeviceConfig,
    /// The message type of the registry it builds; `fn() -> M` keeps the builder
    /// `Send + Sync` whatever `M` is.
    message: PhantomData<fn() -> M>,
}

impl Default for Config {
    /// The defaults [`Builder::new`] documents; valid by construction.
    fn default() -> Self {
        Self {
            shards: std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(ClientId::MAX_SHARDS)),
            channel_capacity: 32,
            slow_consumer: SlowConsumerPolicy::Drop,
            max_clients: None,
            max_metadata_bytes: 16 * 1024,
            profile_bounds: ProfileBounds {
                bytes: 64 * 1024,
                tags: 64,
                capabilities: 256,
                installed_applications: 1024,
            },
            peer_bounds: PeerBounds {
                sessions_per_client: 1024,
                session_name_bytes: 256,
                tasks_per_client: 1024,
            },
            takeover_moves_sessions: false,
            event_capacity: 1024,
            device_config: DeviceConfig::default(),
        }
    }
}

impl<M> Default for Builder<M> {
    fn default() -> Self {
        let defaults = Config::default();
        Self {
            shards: None,
            channel_capacity: defaults.channel_capacity,
            slow_consumer: defaults.slow_consumer,
            max_clients: defaults.max_clients,
            max_metadata_bytes: defaults.max_metadata_bytes,
            profile_bounds: defaults.profile_bounds,
            peer_bounds: defaults.peer_bounds,
            takeover_moves_sessions: defaults.takeover_moves_sessions,
            event_capacity: defaults.event_capacity,
            device_config: defaults.device_config,
            message: PhantomData,
        }
    }
}

impl<M> Clone for Builder<M> {
    fn clone(&self) -> Self {
        Self {
            device_config: self.device_config.clone(),
            ..*self
        }
    }
}

impl<M> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("shards", &self.shards)
            .field("channel_capacity", &self.channel_capacity)
            .field("slow_consumer", &self.slow_consumer)
            .field("max_clients", &self.max_clients)
            .field("max_metadata_bytes", &self.max_metadata_bytes)
            .field("profile_bounds", &self.profile_bounds)
            .field("peer_bounds", &self.peer_bounds)
            .field("takeover_moves_sessions", &self.takeover_moves_sessions)
            .field("event_capacity", &self.event_capacity)
            .field("device_config", &self.device_config.len())
            .finish()
    }
}

impl<M> Builder<M> {
    /// Default settings: one shard per CPU, channels of 32, [`SlowConsumerPolicy::Drop`],
    /// no client limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of shards, 1 to 256. Default: `std::thread::available_parallelism()`.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Capacity of each client's outbound channel. Default: 32.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity;
        self
    }

    /// What a broadcast does with a member whose channel is full.
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// Refuse registrations beyond this many connected clients.
    pub fn max_clients(mut self, limit: usize) -> Self {
        self.max_clients = Some(limit);
        self
    }

    /// Largest `metadata` (and `system_info.custom_metadata`) a profile may carry,
    /// measured as compact JSON. Default: 16 KiB.
    pub fn max_metadata_bytes(mut self, limit: usize) -> Self {
        self.max_metadata_bytes = limit;
        self
    }

    /// Largest whole profile ([`ClientInfo`] as compact JSON, everything the peer
    /// reports) a registration or update may carry. Default: 64 KiB.
    ///
    /// A larger one is refused with [`ProfileLimit::Bytes`]. Fields a device-config
    /// entry merges in do not count: the bound is on what the peer sends.
    pub fn max_profile_bytes(mut self, limit: usize) -> Self {
        self.profile_bounds.bytes = limit;
        self
    }

    /// Most tags a profile may carry; each is an index set. Default: 64.
    ///
    /// More are refused with [`ProfileLimit::Tags`].
    pub fn max_tags(mut self, limit: usize) -> Self {
        self.profile_bounds.tags = limit;
        self
    }

    /// Most capabilities a profile may carry; each is an index set. Default: 256.
    ///
    /// More are refused with [`ProfileLimit::Capabilities`].
    pub fn max_capabilities(mut self, limit: usize) -> Self {
        self.profile_bounds.capabilities = limit;
        self
    }

    /// Most installed applications a profile may list. Default: 1024.
    ///
    /// More are refused with [`ProfileLimit::InstalledApplications`].
    pub fn max_installed_applications(mut self, limit: usize) -> Self {
        self.profile_bounds.installed_applications = limit;
        self
    }

    /// Most sessions one client may be attached to at once. Default: 1024.
    ///
    /// An attach beyond it is refused with [`AttachError::TooManySessions`]: the
    /// client is not added and no session is created. Detaching one makes room
    /// again. A client's memberships come from its peer (a gateway's `join`), and
    /// each attach scans the client's own list, so without a bound one connection
    /// could create sessions without end at a cost that grows with their square.
    /// 1024 is far beyond a client of a chat or device gateway (most join one or
    /// two) and caps that scan at 1024 entries. `usize::MAX` turns the bound off.
    ///
    /// [`AttachError::TooManySessions`]: crate::AttachError::TooManySessions
    pub fn max_sessions_per_client(mut self, limit: usize) -> Self {
        self.peer_bounds.sessions_per_client = limit;
        self
    }

    /// Longest session name, in bytes of UTF-8, that an attach accepts. Default:
    /// 256. Numbered sessions have no name and are not affected.
    ///
    /// A longer one is refused with [`AttachError::SessionNameTooLong`] and no
    /// session is created. The name is the peer's, and the registry keeps it for
    /// as long as the session lives (and a cluster sends it with every
    /// publication); 256 bytes is ample for a room name and keeps a client at the
    /// default [`max_sessions_per_client`](Self::max_sessions_per_client) under
    /// 256 KiB of names. [`Registry::open_session`] is the application's, not a
    /// peer's, and is not bounded.
    ///
    /// [`AttachError::SessionNameTooLong`]: crate::AttachError::SessionNameTooLong
    pub fn max_session_name_bytes(mut self, limit: usize) -> Self {
        self.peer_bounds.session_name_bytes = limit;
        self
    }

    /// Most open tasks one client may have at once: tasks an orchestrator opened,
    /// or tasks running on a device. Default: 1024.
    ///
    /// [`open_task`](Registry::open_task) beyond it, on either side, is refused
    /// with [`TaskError::TooManyTasks`] and opens nothing; completing or
    /// cancelling one makes room again. It applies on top of a device's own
    /// `max_concurrent_tasks`, which is unset by default. An orchestrator's peer
    /// opens tasks at will, and when a client leaves, each of its tasks costs a scan
    /// of the other side's list and one presence event; 1024 keeps that scan short
    /// and lets one disconnect's cancellations fit the default
    /// [`event_capacity`](Self::event_capacity). `usize::MAX` turns the bound off.
    ///
    /// [`TaskError::TooManyTasks`]: crate::TaskError::TooManyTasks
    pub fn max_tasks_per_client(mut self, limit: usize) -> Self {
        self.peer_bounds.tasks_per_client = limit;
        self
    }

    /// When a client registers with a key that is already online, move the old
    /// connection's session memberships to the new one, so that a reconnecting
    /// client resumes its rooms. Default: false (the new connection starts empty).
    ///
    /// A room is moved as an [`attach`](Registry::attach) of the new connection
    /// would be, so a room that attach would refuse is not moved: a session that
    /// is full, or one past the new connection's
    /// [`max_sessions_per_client`](Self::max_sessions_per_client).
    /// [`register_with_report`](Registry::register_with_report) lists each of
    /// those, with its [`AttachError`](crate::AttachError), in
    /// [`Registration::not_moved`](crate::Registration::not_moved);
    /// [`register`](Registry::register) drops that report with the rest.
    pub fn takeover_moves_sessions(mut self, moves: bool) -> Self {
        self.takeover_moves_sessions = moves;
        self
    }

    /// Presence events buffered per subscriber before a laggard starts losing the
    /// oldest. Default: 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Administrative fields merged into matching profiles at registration; see
    /// [`DeviceConfig`] and [`Registry::reload_config`].
    pub fn device_config(mut self, config: DeviceConfig) -> Self {
        self.device_config = config;
        self
    }

    /// Checks the settings and builds the registry.
    ///
    /// # Errors
    ///
    /// [`BuildError`] if the shard count is 0 or above 256, the channel capacity is 0
    /// or above 2^20, or the client limit or a per-client bound is 0.
    pub fn build(self) -> Result<Registry<M>, BuildError> {
        Ok(Registry::from_config(self.validate()?))
    }

    pub(crate) fn validate(self) -> Result<Config, BuildError> {
        let shards = self.shards.unwrap_or_else(|| Config::default().shards);
        if shards == 0 || shards > ClientId::MAX_SHARDS {
            return Err(BuildError::Shards(shards));
        }
        if self.channel_capacity == 0 || self.channel_capacity > MAX_CHANNEL_CAPACITY {
            return Err(BuildError::ChannelCapacity(self.channel_capacity));
        }
        if self.max_clients == Some(0) {
            return Err(BuildError::MaxClients);
        }
        if self.event_capacity == 0 || self.event_capacity > MAX_EVENT_CAPACITY {
            return Err(BuildError::EventCapacity(self.event_capacity));
        }
        let bounds = &self.peer_bounds;
        for (limit, name) in [
            (bounds.sessions_per_client, "max_sessions_per_client"),
            (bounds.session_name_bytes, "max_session_name_bytes"),
            (bounds.tasks_per_client, "max_tasks_per_client"),
        ] {
            if limit == 0 {
                return Err(BuildError::ZeroBound(name));
            }
        }
        Ok(Config {
            shards,
            channel_capacity: self.channel_capacity,
            slow_consumer: self.slow_consumer,
            max_clients: self.max_clients,
            max_metadata_bytes: self.max_metadata_bytes,
            profile_bounds: self.profile_bounds,
            peer_bounds: self.peer_bounds,
            takeover_moves_sessions: self.takeover_moves_sessions,
            event_capacity: self.event_capacity,
            device_config: self.device_config,
        })
    }
}

/// Each channel's buffer is allocated up front, so its size is capped.
pub(crate) const MAX_CHANNEL_CAPACITY: usize = 1 << 20;
/// tokio's broadcast channel caps its buffer; stay well inside it.
pub(crate) const MAX_EVENT_CAPACITY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builders_defaults_validate_to_the_default_config() {
        let built = Builder::<()>::new()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::default();
        assert_eq!(
            (
                built.shards,
                built.channel_capacity,
                built.event_capacity,
                built.max_metadata_bytes
            ),
            (
                defaults.shards,
                defaults.channel_capacity,
                defaults.event_capacity,
                defaults.max_metadata_bytes
            )
        );
    }

    #[test]
    fn defaults_are_valid() {
        let config = Builder::<()>::new()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.shards >= 1);
        assert_eq!(config.channel_capacity, 32);
        assert_eq!(config.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(
            config.peer_bounds,
            PeerBounds {
                sessions_per_client: 1024,
                session_name_bytes: 256,
                tasks_per_client: 1024,
            }
        );
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        assert_eq!(
            Builder::<()>::new().shards(0).validate().err(),
            Some(BuildError::Shards(0))
        );
        assert_eq!(
            Builder::<()>::new().shards(257).validate().err(),
            Some(BuildError::Shards(257))
        );
        assert_eq!(
            Builder::<()>::new().channel_capacity(0).validate().err(),
            Some(BuildError::ChannelCapacity(0))
        );
        assert_eq!(
            Builder::<()>::new().max_clients(0).validate().err(),
            Some(BuildError::MaxClients)
        );
        assert!(Builder::<()>::new().shards(256).validate().is_ok());
        for (builder, name) in [
            (
                Builder::<()>::new().max_sessions_per_client(0),
                "max_sessions_per_client",
            ),
            (
                Builder::<()>::new().max_session_name_bytes(0),
                "max_session_name_bytes",
            ),
            (
                Builder::<()>::new().max_tasks_per_client(0),
                "max_tasks_per_client",
            ),
        ] {
            assert_eq!(builder.validate().err(), Some(BuildError::ZeroBound(name)));
        }
    }
}
