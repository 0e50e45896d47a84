//! Indexed queries over profiled clients, and device selection.
//!
//! # Design
//!
//! Every profiled client (one with a key, kind or platform) is a member of a few
//! *index sets*: all profiled clients, its kind, its platform (lowercased), each of
//! its capabilities and each of its tags. Platforms are case-folded by one rule
//! (Unicode lower-casing) wherever they are indexed or matched. An index set is the
//! same structure as a session (see [`session`](crate::session)): O(1) joins and
//! leaves, published as snapshots, read without a lock. Sets are kept up to date by the one path that
//! changes a profile: register, unregister (including takeover), and profile
//! updates, always under the client's own lock. The sets belong to the fleet state
//! (`fleet/state.rs`); queries only read them.
//!
//! A filter reads the snapshot of its smallest set and checks the other criteria on
//! each candidate's profile, so it costs in proportion to that set, not to the
//! registry. "Connected within D" walks the all-clients set from its newest member
//! backwards and stops at the first one older than D (plus a one-second allowance
//! for registrations that raced).

use std::cmp::Reverse;
use std::time::{Duration, SystemTime};

use crate::fleet::IndexKey;
use crate::profile::{fold_platform, ClientInfo, ClientKind};
use crate::registry::Registry;
use crate::session::Session;
use crate::sync::{Arc, ValueArc};
use crate::ClientId;

/// Registrations racing each other may join the all-clients set up to this much out
/// of `connected_at` order; the newest-first walk looks this far past its cutoff.
const ORDER_ALLOWANCE: Duration = Duration::from_secs(1);

/// Which clients to list; every criterion set must hold.
///
/// Filters see profiled clients only: those registered with a key, kind or
/// platform.
///
/// # Examples
///
/// ```
/// use switchboard::{ClientInfo, ClientKind, Filter, Registry, SystemInfo};
///
/// let registry = Registry::<u8>::new();
/// let mut sys = SystemInfo::default();
/// sys.capabilities = vec!["excel".into()];
/// let info = ClientInfo::new().with_key("d1").with_kind(ClientKind::Device)
///     .with_platform("Windows").with_system_info(sys);
/// let (d1, _rx) = registry.register(info)?;
///
/// let found = registry.list(&Filter::new().kind(ClientKind::Device).platform("windows").capability("excel"));
/// assert_eq!(found, vec![d1]);
/// assert!(registry.list(&Filter::new().capability("cad")).is_empty());
/// # Ok::<(), switchboard::RegisterError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a filter does nothing until passed to `Registry::list`"]
pub struct Filter {
    kind: Option<ClientKind>,
    platform: Option<String>,
    capabilities: Vec<String>,
    tag: Option<String>,
    connected_within: Option<Duration>,
}

impl Filter {
    /// Matches every profiled client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only clients of this kind.
    pub fn kind(mut self, kind: ClientKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only clients on this platform, ignoring case.
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// Only clients with this capability; repeat to require several.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Only clients with this tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Only clients that connected within the last `window`.
    pub fn connected_within(mut self, window: Duration) -> Self {
        self.connected_within = Some(window);
        self
    }

    fn index_keys(&self) -> Vec<IndexKey> {
        let mut keys = Vec::new();
        keys.extend(self.kind.map(IndexKey::Kind));
        if let Some(p) = &self.platform {
            keys.push(IndexKey::Platform(ValueArc::from(fold_platform(p))));
        }
        for c in &self.capabilities {
            keys.push(IndexKey::Capability(ValueArc::from(c.as_str())));
        }
        if let Some(t) = &self.tag {
            keys.push(IndexKey::Tag(ValueArc::from(t.as_str())));
        }
        keys
    }

    /// Whether `info` meets every criterion, given the cutoff for `connected_within`.
    fn matches(&self, info: &ClientInfo, cutoff: Option<SystemTime>) -> bool {
        self.kind.is_none_or(|k| info.kind == Some(k))
            && self.platform.as_deref().is_none_or(|p| info.platform_is(p))
            && info.system_info.has_capabilities(&self.capabilities)
            && self
                .tag
                .as_deref()
                .is_none_or(|t| info.system_info.tags.iter().any(|x| x == t))
            && cutoff.is_none_or(|c| info.connected_at >= c)
    }
}

/// How [`Registry::select_device`] orders candidates: more shared tags, then fewer
/// open tasks, then earlier connection, then lower id.
type Rank = (
    usize,
    Reverse<usize>,
    Reverse<SystemTime>,
    Reverse<ClientId>,
);

/// What [`Registry::select_device`] looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Requirements {
    /// The device's platform, ignoring case; any if `None`.
    pub platform: Option<String>,
    /// Capabilities the device must all have.
    pub capabilities: Vec<String>,
    /// Tags that make a device preferable, one point each.
    pub preferred_tags: Vec<String>,
    /// Devices not to pick.
    pub exclude: Vec<ClientId>,
}

impl Requirements {
    /// No requirement: any online device.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires this platform.
    #[must_use]
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// Requires this capability.
    #[must_use]
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Prefers devices with this tag.
    #[must_use]
    pub fn prefer_tag(mut self, tag: impl Into<String>) -> Self {
        self.preferred_tags.push(tag.into());
        self
    }

    /// Never picks this device.
    #[must_use]
    pub fn exclude(mut self, device: ClientId) -> Self {
        self.exclude.push(device);
        self
    }
}

impl<M> Registry<M> {
    /// Clients matching every criterion of `filter`, in the order they joined the
    /// index the query walked (newest first for a pure `connected_within` query).
    ///
    /// Costs in proportion to the smallest matching index set, not to the registry.
    /// Sees profiled clients only (see [`Filter`]).
    pub fn list(&self, filter: &Filter) -> Vec<ClientId> {
        // The registry's clock, which stamped `connected_at` (see `clock`).
        let cutoff = filter.connected_within.map(|w| {
            crate::clock::now()
                .checked_sub(w)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let keys = filter.index_keys();
        let mut out = Vec::new();
        if keys.is_empty() {
            let Some(all) = self.fleet().index(&IndexKey::Profiled) else {
                return out;
            };
            let snapshot = all.snapshot();
            match cutoff {
                Some(cutoff) => {
                    let stop = cutoff.checked_sub(ORDER_ALLOWANCE).unwrap_or(cutoff);
                    snapshot.for_each_rev_while(|member| {
                        let Ok(info) = self.info(member.id) else {
                            return true;
                        };
                        if info.connected_at >= cutoff {
                            out.push(member.id);
                        }
                        info.connected_at >= stop
                    });
                }
                None => snapshot.for_each(|member| out.push(member.id)),
            }
            return out;
        }
        let mut smallest: Option<(usize, Arc<Session<M>>)> = None;
        for key in &keys {
            // A criterion nobody meets: the answer is empty.
            let Some(set) = self.fleet().index(key) else {
                return out;
            };
            let size = set.live();
            if smallest.as_ref().is_none_or(|(least, _)| size < *least) {
                smallest = Some((size, set));
            }
        }
        let smallest = smallest.map(|(_, set)| set);
        // One criterion and no time window: the set is the answer.
        if keys.len() == 1 && cutoff.is_none() {
            if let Some(set) = smallest {
                set.snapshot().for_each(|member| out.push(member.id));
            }
            return out;
        }
        if let Some(set) = smallest {
            set.snapshot().for_each(|member| {
                if self
                    .info(member.id)
                    .is_ok_and(|info| filter.matches(&info, cutoff))
                {
                    out.push(member.id);
                }
            });
        }
        out
    }

    /// Picks the best online device for a task, or `None` if none fits.
    ///
    /// A candidate is an online [`ClientKind::Device`] on the required platform
    /// with every required capability, not excluded. The winner shares the most
    /// preferred tags; ties go to the device with the fewest open tasks, then the
    /// earliest connected, then the lowest id, so the answer is deterministic.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{ClientInfo, ClientKind, Registry, Requirements, SystemInfo};
    ///
    /// let registry = Registry::<u8>::new();
    /// let device = |key: &str, tags: &[&str]| {
    ///     let mut sys = SystemInfo::default();
    ///     sys.capabilities = vec!["excel".into()];
    ///     sys.tags = tags.iter().map(|t| t.to_string()).collect();
    ///     ClientInfo::new().with_key(key).with_kind(ClientKind::Device)
    ///         .with_platform("windows").with_system_info(sys)
    /// };
    /// let (_plain, _r1) = registry.register(device("plain", &[]))?;
    /// let (fast, _r2) = registry.register(device("fast", &["fast"]))?;
    /// let wanted = Requirements::new().platform("Windows").capability("excel").prefer_tag("fast");
    /// assert_eq!(registry.select_device(&wanted), Some(fast));
    /// assert_eq!(registry.select_device(&wanted.clone().exclude(fast)).is_some(), true);
    /// assert_eq!(registry.select_device(&Requirements::new().capability("cad")), None);
    /// # Ok::<(), switchboard::RegisterError>(())
    /// ```
    pub fn select_device(&self, wanted: &Requirements) -> Option<ClientId> {
        let mut filter = Filter::new().kind(ClientKind::Device);
        if let Some(p) = &wanted.platform {
            filter = filter.platform(p.clone());
        }
        for c in &wanted.capabilities {
            filter = filter.capability(c.clone());
        }
        let mut best: Option<(Rank, ClientId)> = None;
        for id in self.list(&filter) {
            if wanted.exclude.contains(&id) {
                continue;
            }
            // One lookup for both: the lock keeps the entry in its slot.
            let Ok(client) = self.clients().lock(id) else {
                continue;
            };
            let info = client.entry().info();
            let open = client.tasks().len();
            drop(client);
            let score = wanted
                .preferred_tags
                .iter()
                .filter(|t| info.system_info.tags.contains(t))
                .count();
            let rank = (
                score,
                Reverse(open),
                Reverse(info.connected_at),
                Reverse(id),
            );
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, id));
            }
        }
        best.map(|(_, id)| id)
    }
}
