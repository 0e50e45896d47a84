//! Profile holders for the soak: keyed, tagged devices that register (taking their key
//! over when it is held), update their tags, and leave by id or by key, in the world's
//! registry beside its plain clients. A model records what each key holds, so that a
//! checkpoint can compare the registry's index sets and key map with it.
//!
//! Each key has its own lock, held across the registry call and the model update; two
//! tasks step different keys at once. A check takes every key's lock (in key order), so
//! no profile operation is half done while it compares.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use switchboard::{ClientId, ClientInfo, ClientKind, Filter, Receiver, Registry, SystemInfo};

use crate::message::Msg;
use crate::rng::Rng;

/// The tags profiles draw from: few, so that index sets are shared and churn.
const TAGS: [&str; 6] = ["gpu", "office", "fast", "lab", "eu", "us"];

/// The client holding one key, as the model sees it.
struct Holder {
    id: ClientId,
    tags: Vec<String>,
    /// Kept so the channel stays open; holders are never sent anything.
    _rx: Receiver<Msg>,
}

/// The soak's profile holders and their model.
pub struct Profiles {
    registry: Registry<Msg>,
    keys: Box<[Mutex<Option<Holder>>]>,
    /// Keys held now: clients the world's own model does not count. Shared with the
    /// world (its `outside`), which counts them in at a checkpoint.
    ///
    /// Ordering: `Relaxed`; read at a checkpoint, when no step is running (the world's
    /// gate orders it).
    held: Arc<AtomicUsize>,
    /// Operations that reached the registry, for the report.
    ///
    /// Ordering: `Relaxed`; a count.
    ops: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A key's model is replaced whole; a panicking holder leaves it consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key(i: usize) -> String {
    format!("profile-{i}")
}

fn draw_tags(rng: &mut Rng) -> Vec<String> {
    TAGS.iter()
        .filter(|_| rng.unit() < 0.4)
        .map(|t| (*t).to_owned())
        .collect()
}

impl Profiles {
    /// `keys` keys, none held yet, in `registry`; `held` counts the keys held.
    pub fn new(registry: Registry<Msg>, keys: usize, held: Arc<AtomicUsize>) -> Self {
        Self {
            registry,
            keys: (0..keys).map(|_| Mutex::new(None)).collect(),
            held,
            ops: AtomicUsize::new(0),
        }
    }

    /// Operations made so far.
    pub fn ops(&self) -> usize {
        // Relaxed: see `ops`.
        self.ops.load(Ordering::Relaxed)
    }

    /// One random operation on one random key. Returns what went wrong, if the registry
    /// refused something the model says it must accept.
    pub fn step(&self, rng: &mut Rng) -> Result<(), String> {
        let k = rng.below(self.keys.len());
        let mut slot = lock(&self.keys[k]);
        // Relaxed: see `ops`.
        self.ops.fetch_add(1, Ordering::Relaxed);
        if rng.below(8) == 0 {
            return self.register_against_a_sweep(k, &mut slot, rng);
        }
        match (rng.below(4), slot.as_ref()) {
            (0, _) | (_, None) => {
                let tags = draw_tags(rng);
                let mut sys = SystemInfo::default();
                sys.tags = tags.clone();
                let info = ClientInfo::new()
                    .with_key(key(k))
                    .with_kind(ClientKind::Device)
                    .with_system_info(sys);
                let (id, rx) = self
                    .registry
                    .register(info)
                    .map_err(|e| format!("registering key {k}: {e}"))?;
                if slot.is_none() {
                    // Relaxed: see `held`.
                    self.held.fetch_add(1, Ordering::Relaxed);
                }
                *slot = Some(Holder { id, tags, _rx: rx });
            }
            (1, Some(holder)) => {
                let id = holder.id;
                let tags = draw_tags(rng);
                let new = tags.clone();
                self.registry
                    .update_system_info(id, move |s| s.tags = new)
                    .map_err(|e| format!("updating key {k} ({id}): {e}"))?;
                if let Some(holder) = slot.as_mut() {
                    holder.tags = tags;
                }
            }
            (how, Some(holder)) => {
                let id = holder.id;
                let gone = if how == 2 {
                    self.registry.unregister(id).map(|r| r.id)
                } else {
                    self.registry.kick(key(k).as_str(), "soak").map(|r| r.id)
                };
                match gone {
                    Ok(gone) if gone == id => {}
                    other => return Err(format!("removing key {k} ({id}): {other:?}")),
                }
                *slot = None;
                // Relaxed: see `held`.
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Registers a new holder of key `k` while another thread sweeps the registry as an
    /// admin kick or a server shutdown does: it lists the profiled clients over and over
    /// until the registration returns, and kicks any whose profile names the key, other
    /// than the holder the model knows. The sweep can
    /// find the new id while its registration is still in flight; whatever it removed,
    /// the registry must end with nothing of it (issue 10, race 1). The model follows
    /// what the two calls returned.
    fn register_against_a_sweep(
        &self,
        k: usize,
        slot: &mut Option<Holder>,
        rng: &mut Rng,
    ) -> Result<(), String> {
        let tags = draw_tags(rng);
        let mut sys = SystemInfo::default();
        sys.tags = tags.clone();
        let info = ClientInfo::new()
            .with_key(key(k))
            .with_kind(ClientKind::Device)
            .with_system_info(sys);
        let old = slot.as_ref().map(|h| h.id);
        let name = key(k);
        let done = AtomicBool::new(false);
        let sweeping = AtomicBool::new(false);
        let (registered, swept) = std::thread::scope(|scope| {
            let sweeper = scope.spawn(|| {
                let mut kicked = Vec::new();
                loop {
                    // Relaxed: a start signal; it orders nothing else.
                    sweeping.store(true, Ordering::Relaxed);
                    // Relaxed: a stop flag; the pass after it is set still runs.
                    let last = done.load(Ordering::Relaxed);
                    for id in self.registry.list(&Filter::new()) {
                        let mine = self
                            .registry
                            .info(id)
                            .is_ok_and(|i| i.key.as_deref() == Some(name.as_str()));
                        if mine && Some(id) != old && self.registry.kick(id, "sweep").is_ok() {
                            kicked.push(id);
                        }
                    }
                    if last {
                        return kicked;
                    }
                }
            });
            // The sweep is already listing when the registration starts, or it would
            // rarely meet it: a thread takes longer to start than a registration takes.
            // Relaxed: see the sweeper.
            while !sweeping.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            let registered = self.registry.register(info);
            // Relaxed: see the sweeper.
            done.store(true, Ordering::Relaxed);
            (registered, sweeper.join().unwrap_or_default())
        });
        let (id, rx) = registered.map_err(|e| format!("registering key {k}: {e}"))?;
        let held_before = slot.is_some();
        *slot = (!swept.contains(&id)).then(|| Holder { id, tags, _rx: rx });
        // Relaxed: see `held`.
        match (held_before, slot.is_some()) {
            (false, true) => {
                self.held.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }

    /// Compares the registry with the model: every key maps to its holder (or to nobody),
    /// each holder's tags are those of its last update, each tag's index set and the
    /// all-profiles set name exactly the holders (no dead id), and the device count agrees.
    /// Returns each disagreement.
    pub fn check(&self) -> Vec<String> {
        let slots: Vec<_> = self.keys.iter().map(lock).collect();
        let mut problems = Vec::new();
        let mut holders = BTreeSet::new();
        for (k, slot) in slots.iter().enumerate() {
            let want = slot.as_ref().map(|h| h.id);
            let got = self.registry.id_of(&key(k));
            if got != want {
                problems.push(format!("key {k} maps to {got:?}, the model says {want:?}"));
            }
            if let Some(holder) = slot.as_ref() {
                holders.insert(holder.id);
                match self.registry.info(holder.id) {
                    Ok(info) if info.system_info.tags == holder.tags => {}
                    Ok(info) => problems.push(format!(
                        "{} has tags {:?}, its last update set {:?}",
                        holder.id, info.system_info.tags, holder.tags
                    )),
                    Err(e) => problems.push(format!("holder of key {k}: {e}")),
                }
            }
        }
        for tag in TAGS {
            let want: BTreeSet<_> = slots
                .iter()
                .filter_map(|slot| slot.as_ref())
                .filter(|h| h.tags.iter().any(|t| t == tag))
                .map(|h| h.id)
                .collect();
            let got: BTreeSet<_> = self
                .registry
                .list(&Filter::new().tag(tag))
                .into_iter()
                .collect();
            if got != want {
                problems.push(format!(
                    "tag {tag:?} lists {} unknown or dead ids {:?} and misses {:?}",
                    got.difference(&want).count(),
                    got.difference(&want).take(5).collect::<Vec<_>>(),
                    want.difference(&got).take(5).collect::<Vec<_>>()
                ));
            }
        }
        let profiled: BTreeSet<_> = self.registry.list(&Filter::new()).into_iter().collect();
        if profiled != holders {
            problems.push(format!(
                "the all-profiles set names {:?} beyond the holders and misses {:?}",
                profiled.difference(&holders).take(5).collect::<Vec<_>>(),
                holders.difference(&profiled).take(5).collect::<Vec<_>>()
            ));
        }
        let devices = self.registry.stats().devices;
        if devices != holders.len() {
            problems.push(format!(
                "stats().devices is {devices}, the model holds {}",
                holders.len()
            ));
        }
        problems
    }

    /// Unregisters every holder.
    pub fn clear(&self) {
        for slot in self.keys.iter() {
            if let Some(holder) = lock(slot).take() {
                let _ = self.registry.unregister(holder.id);
                // Relaxed: see `held`.
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
