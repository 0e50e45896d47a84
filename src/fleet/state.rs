//! [`Fleet`]: the registry's fleet state (keys, profile index sets, tasks and the
//! device config), owned in one place behind a small API.
//!
//! The registry's register, unregister and update paths orchestrate these calls
//! under a client's lock; this type keeps the maps private, so how a key is held is
//! decided here and nowhere else. The index sets live in a session
//! [`Directory`], which decides how a set retires, for sessions and index sets alike.

use crate::client::ClientEntry;
use crate::device_config::DeviceConfig;
use crate::profile::ClientKind;
use crate::session::{Directory, Session};
use crate::sync::{
    lock, Arc, AtomicU64, ConcurrentMap, EntryArc, LockFreeMap, Mutex, Ordering, SnapshotCell,
    ValueArc,
};
use crate::task::{Task, TaskId};
use crate::ClientId;

use super::index::IndexKey;

/// Keys, the profile index sets, open tasks and the device config.
pub(crate) struct Fleet<M> {
    /// The current connection of every key. A [`LockFreeMap`], so that the loom
    /// models check `config_epoch` against papaya's orderings, not a mutex's.
    keys: LockFreeMap<ValueArc<str>, ClientId>,
    /// Profile index sets; see [`query`](crate::query).
    indexes: Directory<IndexKey, M>,
    /// Open tasks. Whoever removes a task ends it, so it ends exactly once.
    tasks: ConcurrentMap<TaskId, Task>,
    /// The next task id.
    ///
    /// Ordering: `Relaxed`; only uniqueness matters, which one RMW location gives.
    next_task: AtomicU64,
    /// The config registrations merge, replaced whole by a reload.
    device_config: SnapshotCell<DeviceConfig>,
    /// Serialises reloads with each other, walk included, so that an older
    /// config's walk never lands after a newer one's.
    reload: Mutex<()>,
    /// Orders a reload against a registration of a key (issue 10, race 2).
    ///
    /// A reload stores its config and then walks the keys
    /// ([`reload`](Self::reload)); a registration claims its key and then reads the
    /// config ([`config_replaced`](Self::config_replaced)). Both do an `AcqRel`
    /// read-modify-write on this word between their two steps. Read-modify-writes
    /// of one word are totally ordered and each reads the one before, so whichever
    /// comes second synchronises with the first, whose first step then
    /// happens-before the second's read: either the registration sees the
    /// reload's config, or the reload's walk sees the key. Plain loads and stores
    /// would allow both to miss, and nothing else orders the two: papaya's insert
    /// publishes `Release` and its iteration loads `Acquire`, per entry, and an
    /// arc-swap read releases nothing to a later store. The loom models check
    /// this against stand-ins with exactly those orderings (`LockFreeMap`; model
    /// R2 and `loom-tests/tests/epoch_canary.rs`). The value means nothing.
    config_epoch: AtomicU64,
}

impl<M> Fleet<M> {
    pub(crate) fn new(device_config: DeviceConfig) -> Self {
        Self {
            keys: LockFreeMap::new(),
            indexes: Directory::new(),
            tasks: ConcurrentMap::new(),
            next_task: AtomicU64::new(1),
            device_config: SnapshotCell::new(Arc::new(device_config)),
            reload: Mutex::new(()),
            config_epoch: AtomicU64::new(0),
        }
    }

    /// Makes `id` the current connection of `key`, returning the one it replaced.
    #[inline]
    pub(crate) fn claim_key(&self, key: &str, id: ClientId) -> Option<ClientId> {
        self.keys.insert(ValueArc::from(key), id)
    }

    /// Stops `key` resolving to `id`; a successor's claim (takeover) is left alone.
    #[inline]
    pub(crate) fn release_key(&self, key: &str, id: ClientId) {
        self.keys
            .remove_if(&ValueArc::from(key), |current| *current == id);
    }

    /// The connection `key` resolves to. Takes no lock.
    #[inline]
    pub(crate) fn key_holder(&self, key: &str) -> Option<ClientId> {
        self.keys.get(key)
    }

    /// Adds `id` to an index set. Called under the client's lock.
    pub(crate) fn join_index(
        &self,
        key: &IndexKey,
        id: ClientId,
        entry: &EntryArc<ClientEntry<M>>,
    ) {
        // An index set that cannot grow leaves the client out of that one filter;
        // 2^32 members of one platform or tag is not a real fleet.
        let _ = self.indexes.join(key, id, entry);
    }

    /// Removes `id` from an index set. Called under the client's lock, or after its
    /// unregister made it unreachable.
    pub(crate) fn leave_index(&self, key: &IndexKey, id: ClientId) {
        self.indexes.leave(key, id);
    }

    /// The index set `key` names, if any client is (or was just) in it.
    #[inline]
    pub(crate) fn index(&self, key: &IndexKey) -> Option<Arc<Session<M>>> {
        self.indexes.get(key)
    }

    /// Connected clients of `kind`.
    pub(crate) fn kind_count(&self, kind: ClientKind) -> usize {
        let set = self.indexes.get(&IndexKey::Kind(kind));
        set.map_or(0, |set| set.live())
    }

    /// Members per platform index set, sorted by platform, empty sets left out.
    pub(crate) fn platform_counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = self
            .indexes
            .entries()
            .into_iter()
            .filter_map(|(key, set)| match key {
                IndexKey::Platform(p) => Some((p.to_string(), set.live())),
                _ => None,
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort();
        counts
    }

    /// Records a new task from `orchestrator` to `device` under a fresh id.
    pub(crate) fn insert_task(&self, orchestrator: ClientId, device: ClientId) -> TaskId {
        // Relaxed: see `next_task`.
        let id = TaskId::from_u64(self.next_task.fetch_add(1, Ordering::Relaxed));
        self.tasks.insert(
            id,
            Task {
                id,
                orchestrator,
                device,
            },
        );
        id
    }

    /// Ends `task`, completed or cancelled; only one of several racing calls gets it.
    #[inline]
    pub(crate) fn remove_task(&self, task: TaskId) -> Option<Task> {
        self.tasks.remove(&task)
    }

    /// The open task `task` names.
    pub(crate) fn task(&self, task: TaskId) -> Option<Task> {
        self.tasks.get(&task)
    }

    /// Open tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The device config in force now.
    #[inline]
    pub(crate) fn config(&self) -> Arc<DeviceConfig> {
        self.device_config.load_full()
    }

    /// The config in force, if a reload replaced `used` since it was read. A
    /// registration calls this after [`claim_key`](Self::claim_key): see
    /// `config_epoch`.
    #[inline]
    pub(crate) fn config_replaced(&self, used: &Arc<DeviceConfig>) -> Option<Arc<DeviceConfig>> {
        #[cfg(switchboard_loom)]
        if loom_canary::weakened() {
            // The canary's broken protocol: a load releases nothing to the reload.
            let _ = self.config_epoch.load(Ordering::Acquire);
            let latest = self.device_config.load_full();
            return (!Arc::ptr_eq(&latest, used)).then_some(latest);
        }
        // AcqRel RMW after the key's claim and before the load: see `config_epoch`.
        self.config_epoch.fetch_add(0, Ordering::AcqRel);
        let latest = self.device_config.load_full();
        (!Arc::ptr_eq(&latest, used)).then_some(latest)
    }

    /// Puts `config` in force, then calls `apply` with it for every key's current
    /// connection, which the caller re-merges under that client's lock. Returns
    /// the config. One reload at a time, walk included.
    pub(crate) fn reload(
        &self,
        config: DeviceConfig,
        mut apply: impl FnMut(&DeviceConfig, ClientId),
    ) -> Arc<DeviceConfig> {
        let _reload = lock(&self.reload);
        let config = Arc::new(config);
        self.device_config.store(Arc::clone(&config));
        // AcqRel RMW after the store and before the walk over the keys: see
        // `config_epoch`.
        self.config_epoch.fetch_add(1, Ordering::AcqRel);
        for (_, id) in self.keys.entries() {
            apply(&config, id);
        }
        config
    }
}

/// The loom canary's switch (`loom-tests/tests/epoch_canary.rs`): weakens the
/// registration's side of the `config_epoch` protocol to a plain load, on the
/// calling thread only (loom runs a model's threads on the thread that calls it),
/// so that a model can show it catches the weakening.
#[cfg(switchboard_loom)]
#[doc(hidden)]
pub mod loom_canary {
    use std::cell::Cell;

    thread_local! {
        static WEAKENED: Cell<bool> = const { Cell::new(false) };
    }

    /// Weakens (`true`) or restores (`false`) the registration's epoch RMW on this
    /// thread.
    pub fn weaken_registration_epoch(on: bool) {
        WEAKENED.with(|w| w.set(on));
    }

    pub(super) fn weakened() -> bool {
        WEAKENED.with(Cell::get)
    }
}
