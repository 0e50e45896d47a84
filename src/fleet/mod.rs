//! Fleet operations: keys, kinds, live profile updates, config reloads and presence.
//!
//! The state they work on (the key map, the profile index sets, open tasks and the
//! device config with its reload protocol) is [`Fleet`], in `state.rs`, which the
//! registry owns and reaches only through its API. The methods here orchestrate it
//! under each client's lock; `index.rs` names the index sets.

use std::path::Path;

use crate::client::{ClientEntry, ClientState};
use crate::client_ref::ClientRef;
use crate::clients::Locked;
use crate::device_config::DeviceConfig;
use crate::error::{ClientError, ConfigError, UpdateError};
use crate::events::Event;
use crate::profile::{json_size, ClientInfo, ClientKind, SystemInfo};
use crate::registry::Registry;
use crate::sync::{Arc, EntryArc};
use crate::ClientId;

mod index;
mod state;

pub(crate) use index::{index_keys, IndexKey};
#[cfg(switchboard_loom)]
pub use state::loom_canary;
pub(crate) use state::Fleet;

/// What [`Registry::reload_config`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "the report says how many online clients the new config changed"]
#[non_exhaustive]
pub struct Reloaded {
    /// Keys in the new config.
    pub configured: usize,
    /// Online clients whose profile the new config changed.
    pub updated: usize,
}

impl<M> Registry<M> {
    /// The current connection of `key`. Takes no lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::ClientInfo;
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("k"))?;
    /// assert_eq!(registry.id_of("k"), Some(id));
    /// assert_eq!(registry.id_of("nobody"), None);
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    #[must_use]
    pub fn id_of(&self, key: &str) -> Option<ClientId> {
        self.lookup(ClientRef::Key(key)).ok().map(|entry| entry.id)
    }

    /// The kind of an online client, if it registered with one.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, ClientKind};
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("o").with_kind(ClientKind::Orchestrator))?;
    /// assert_eq!(registry.kind_of("o"), Some(ClientKind::Orchestrator));
    /// assert!(!registry.is_device_connected("o"));
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    #[must_use]
    pub fn kind_of<'k>(&self, who: impl Into<ClientRef<'k>>) -> Option<ClientKind> {
        self.info(who).ok()?.kind
    }

    /// Whether `key` names an online client of kind [`ClientKind::Device`].
    #[must_use]
    pub fn is_device_connected(&self, key: &str) -> bool {
        self.kind_of(key) == Some(ClientKind::Device)
    }

    /// Updates what a client reports about its system (for example
    /// `memory_available`), re-applies its device-config entry, and re-indexes it.
    ///
    /// Returns the new profile. Readers see the old or the new profile, never a mix.
    ///
    /// # Errors
    ///
    /// [`UpdateError::Client`] if `who` names no connected client, and
    /// [`UpdateError::MetadataTooLarge`] if `custom_metadata` grows past the limit
    /// (the profile is then unchanged).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, ClientKind};
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let (_id, _rx) = registry.register(ClientInfo::new().with_key("d").with_kind(ClientKind::Device))?;
    /// let info = registry.update_system_info("d", |s| s.memory_available = Some(1 << 30))?;
    /// assert_eq!(info.system_info.memory_available, Some(1 << 30));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_system_info<'k>(
        &self,
        who: impl Into<ClientRef<'k>>,
        update: impl FnOnce(&mut SystemInfo),
    ) -> Result<Arc<ClientInfo>, UpdateError> {
        let entry = self.lookup(who.into())?;
        let id = entry.id;
        let Locked::Held(mut state) = self.clients().lock_entry(&entry) else {
            return Err(ClientError::Gone(id).into());
        };
        if !state.connected {
            return Err(ClientError::Gone(id).into());
        }
        // Loaded under the client's lock: a reload that stored its config before
        // this load sees its store here; one that stores later locks this client
        // after us and merges its config in again (issue 10, race 2).
        let config = self.fleet().config();
        let current = entry.info();
        let mut reported = state.reported(&current);
        update(&mut reported);
        let limit = self.config().max_metadata_bytes;
        let size = json_size(&reported.custom_metadata);
        if size > limit {
            return Err(UpdateError::MetadataTooLarge { size, limit });
        }
        let mut candidate = (*current).clone();
        candidate.system_info = reported;
        if let Err((what, actual, limit)) = self.config().profile_bounds.check(&candidate) {
            return Err(UpdateError::ProfileTooLarge {
                what,
                actual,
                limit,
            });
        }
        let next = self.apply_profile(&entry, &current, candidate.system_info, &config);
        state.fleet().reported = next.1;
        Ok(next.0)
    }

    /// Reads a device-config file and applies it to every online keyed client.
    ///
    /// The file is parsed completely first: a malformed file changes nothing. Then
    /// the new config replaces the old in one step (registrations from then on merge
    /// it), and each online client's profile is re-merged from what it reported and
    /// swapped in one step.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the file cannot be read or parsed; the registry is then
    /// unchanged.
    pub fn reload_config(&self, path: impl AsRef<Path>) -> Result<Reloaded, ConfigError> {
        let config = DeviceConfig::load(path)?;
        Ok(self.apply_config(config))
    }

    /// Applies an already parsed device config, as [`reload_config`](Self::reload_config).
    pub fn apply_config(&self, config: DeviceConfig) -> Reloaded {
        let mut updated = 0;
        // The walk comes after the new config is published; see `Fleet::reload`.
        let config = self.fleet().reload(config, |config, id| {
            let Ok(mut state) = self.clients().lock_connected(id) else {
                return;
            };
            let current = state.entry().info();
            let reported = state.reported(&current);
            let (next, reported) = self.apply_profile(state.entry(), &current, reported, config);
            if *next != *current {
                updated += 1;
            }
            state.fleet().reported = reported;
        });
        Reloaded {
            configured: config.len(),
            updated,
        }
    }

    /// Merges `reported` with the client's config entry, swaps the profile in and
    /// moves the client between index sets. Called under the client's lock.
    ///
    /// Returns the new profile and what to remember as reported (`None` when the
    /// config changed nothing).
    fn apply_profile(
        &self,
        entry: &EntryArc<ClientEntry<M>>,
        current: &ClientInfo,
        reported: SystemInfo,
        config: &DeviceConfig,
    ) -> (Arc<ClientInfo>, Option<SystemInfo>) {
        let (next, remembered) = merged(current, reported, config);
        let before = index_keys(current);
        let after = index_keys(&next);
        for key in before.iter().filter(|k| !after.contains(k)) {
            self.fleet().leave_index(key, entry.id);
        }
        for key in after.iter().filter(|k| !before.contains(k)) {
            self.fleet().join_index(key, entry.id, entry);
        }
        let next = Arc::new(next);
        entry.profile.store(Some(Arc::clone(&next)));
        (next, remembered)
    }

    /// Merges the config again into a client whose registration merged `used`, if
    /// a reload replaced it since. Called by the registration under the client's
    /// lock, after its key is claimed and before it joins its index sets: either
    /// this sees the reload's config, or the reload's walk sees this key and then
    /// waits for this client's lock (see [`Fleet::config_replaced`], issue 10,
    /// race 2). Returns whether it merged again.
    pub(crate) fn merge_latest_config(
        &self,
        entry: &EntryArc<ClientEntry<M>>,
        state: &mut ClientState<M>,
        used: &Arc<DeviceConfig>,
    ) -> bool {
        let Some(latest) = self.fleet().config_replaced(used) else {
            return false;
        };
        let current = entry.info();
        let reported = state.reported(&current);
        let (next, remembered) = merged(&current, reported, &latest);
        entry.profile.store(Some(Arc::new(next)));
        if remembered.is_some() || state.fleet.is_some() {
            state.fleet().reported = remembered;
        }
        true
    }

    /// Follows presence events: joins, leaves, takeovers and task cancellations of
    /// profiled clients.
    ///
    /// Lossy for laggards: a subscriber more than
    /// [`Builder::event_capacity`](crate::Builder::event_capacity) events behind
    /// gets `RecvError::Lagged(n)` and continues from the oldest kept event.
    /// Publishing never waits for a subscriber.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, Event};
    ///
    /// let registry = switchboard::Registry::<u8>::new();
    /// let mut events = registry.subscribe();
    /// let (id, _rx) = registry.register(ClientInfo::new().with_key("k"))?;
    /// assert_eq!(events.try_recv().ok(), Some(Event::Joined { id, key: Some("k".into()) }));
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events().subscribe()
    }
}

/// `current` with `reported` merged with its config entry, and what to remember as
/// reported (`None` when the config changed nothing).
fn merged(
    current: &ClientInfo,
    reported: SystemInfo,
    config: &DeviceConfig,
) -> (ClientInfo, Option<SystemInfo>) {
    let mut next = current.clone();
    let remembered = match config.merge(current.key.as_deref(), &reported) {
        Some(merged) => {
            next.system_info = merged;
            Some(reported)
        }
        None => {
            next.system_info = reported;
            None
        }
    };
    (next, remembered)
}
