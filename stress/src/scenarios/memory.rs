//! `memory`: live heap bytes per client at 100k clients (and 1M with `--million`).
//!
//! Method, per contender: with the receivers' `Vec` already allocated, note live heap; build
//! the registry; register N clients, each attached to one session of `--members`; note live
//! heap again: the difference over N is the **idle** total per client (registry plus channel,
//! no message ever sent). Then broadcast one message to every session and drain every
//! receiver: live heap now, over N, is the **active** total per client, what a client costs
//! once it has received a message (a design that allocates its queue on the first push pays
//! for it here). Then unregister everyone and note what the registry **retains** (switchboard keeps its
//! slot arrays at their high-water mark, 16 bytes a slot, until dropped). Then drop the
//! registry while keeping every receiver, and note what the receivers alone **hold**.
//! Finally drop the receivers: live heap must be back where it started.
//!
//! The active total is split into the **channel's** share and the **registry's own**:
//!
//! - For the tokio baselines a receiver holds its channel and nothing else, so what the
//!   receivers hold is the channels', and the registry's is the rest (what the drop freed).
//! - switchboard's channel lives inside the client's entry, so a receiver holds the whole
//!   entry, and "what the drop freed" would hand the entry's bookkeeping to the channel. Its
//!   channel share is counted directly instead
//!   ([`Subject::channel_bytes`]): the channel struct (`size_of::<Channel<M>>()`) plus its
//!   ring's outer slots if allocated. Everything else per client (the rest of the entry, its
//!   slot and its generation, session cells and maps) is the registry's, which is what
//!   `registry_bytes_per_client` reports. The direct count must not exceed what the receivers
//!   hold; a violation says if it does.
//!
//! The floor is measured the same way (its "registry" is a `Vec` of senders). No receiver
//! tasks run here: a task costs the same whichever registry feeds it.

use std::collections::BTreeMap;

use baselines::{DashMapRegistry, Floor, Inbox, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::Ctx;
use crate::heap::{self, Footprint};
use crate::invariants::heap_returned;
use crate::message::{Msg, EVERYONE};
use crate::subject::Subject;

/// Order in which contenders appear in results.
pub const CONTENDERS: [&str; 4] = ["switchboard", "dashmap", "mutex", "floor"];

/// One contender at one size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bytes {
    /// Clients.
    pub clients: usize,
    /// Registry plus channel, per active client (received one message and drained it).
    pub total_per_client: f64,
    /// Registry plus channel, per idle client (never sent anything).
    pub idle_per_client: f64,
    /// The registry alone, per (active) client: `total_per_client - channel_per_client`.
    pub registry_per_client: f64,
    /// The channel alone, per active client: for switchboard the channel struct inside the
    /// entry plus its ring if allocated, counted directly; for the others what the receivers
    /// held once the registry was dropped (see the module docs).
    pub channel_per_client: f64,
    /// What the receivers alone kept alive once the registry was dropped, per client. For
    /// switchboard this is whole client entries, more than the channel.
    pub held_by_receivers_per_client: f64,
    /// What the registry still held once every client had left, before it was dropped.
    pub retained_after_unregister: i64,
    /// RSS with every client registered (informational only).
    pub rss: Option<u64>,
}

/// What `memory` measured: contender → size → bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    /// Per contender, per size.
    pub contenders: BTreeMap<&'static str, Vec<Bytes>>,
}

impl MemoryResult {
    /// `contender` at `clients`, if measured.
    pub fn at(&self, contender: &str, clients: usize) -> Option<&Bytes> {
        self.contenders
            .get(contender)?
            .iter()
            .find(|b| b.clients == clients)
    }
}

/// Runs the memory measurements.
pub fn run(ctx: &Ctx) -> MemoryResult {
    let plan = &ctx.plan;
    let mut sizes = vec![plan.memory_clients];
    if plan.million && plan.memory_clients != 1_000_000 {
        sizes.push(1_000_000);
    }
    let mut contenders: BTreeMap<&'static str, Vec<Bytes>> = BTreeMap::new();
    for &n in &sizes {
        ctx.progress
            .phase(format!("memory: switchboard, {n} clients"));
        let b = measure::<SwitchboardRegistry<Msg>>(ctx, n);
        contenders.entry(CONTENDERS[0]).or_default().push(b);
        ctx.progress.phase(format!("memory: dashmap, {n} clients"));
        let b = measure::<DashMapRegistry<Msg>>(ctx, n);
        contenders.entry(CONTENDERS[1]).or_default().push(b);
        ctx.progress.phase(format!("memory: mutex, {n} clients"));
        let b = measure::<MutexRegistry<Msg>>(ctx, n);
        contenders.entry(CONTENDERS[2]).or_default().push(b);
        ctx.progress.phase(format!("memory: floor, {n} clients"));
        let b = floor(ctx, n);
        contenders.entry(CONTENDERS[3]).or_default().push(b);
    }
    MemoryResult { contenders }
}

fn per(bytes: i64, n: usize) -> f64 {
    bytes as f64 / n.max(1) as f64
}

fn measure<S: Subject>(ctx: &Ctx, n: usize) -> Bytes {
    let plan = &ctx.plan;
    let members = (plan.mixed.layout.members).max(1);
    let mut inboxes = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let start = heap::live_bytes();
    let registry = S::build(plan.capacity, plan.policy);
    for i in 0..n {
        let (id, rx) = registry.register();
        registry.attach(id, (i / members) as u64);
        ids.push(id);
        inboxes.push(rx);
    }
    let idle = heap::live_bytes();
    let scope = format!("memory/{}", registry.name());
    let sessions = n.div_ceil(members);
    let mut delivered = 0;
    for s in 0..sessions {
        let msg = Msg::new(s as u64, 0, EVERYONE, plan.message_size);
        delivered += registry.broadcast(s as u64, msg).delivered;
    }
    let mut received = 0;
    for rx in &mut inboxes {
        while let Some(msg) = rx.try_recv() {
            received += 1;
            msg.received();
        }
    }
    ctx.violations.expect(
        delivered == n && received == n,
        &scope,
        || format!("{delivered} delivered and {received} received of one message to each of {n} clients"),
    );
    let full = Footprint::now();
    let own_channels = inboxes
        .iter()
        .map(S::channel_bytes)
        .sum::<Option<usize>>()
        .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    for &id in &ids {
        registry.unregister(id);
    }
    let retained = heap::live_bytes();
    ctx.violations.expect(
        registry.client_count() == 0 && registry.session_count() == 0,
        &scope,
        || "clients or sessions left after unregistering everyone".into(),
    );
    drop(registry);
    let channels_only = heap::live_bytes();
    let held = channels_only - start;
    if let Some(own) = own_channels {
        ctx.violations.expect(own <= held, &scope, || {
            format!("channels counted at {own} B, more than the {held} B their receivers hold")
        });
    }
    let channels = own_channels.unwrap_or(held);
    // Drop the receivers but keep the `Vec`, which was allocated before `start`.
    inboxes.clear();
    let end = heap::live_bytes();
    let verdict = heap_returned(start, end);
    ctx.violations.expect(verdict.is_ok(), &scope, || {
        verdict.err().unwrap_or_default()
    });
    Bytes {
        clients: n,
        total_per_client: per(full.heap - start, n),
        idle_per_client: per(idle - start, n),
        registry_per_client: per(full.heap - start - channels, n),
        channel_per_client: per(channels, n),
        held_by_receivers_per_client: per(held, n),
        retained_after_unregister: retained - channels_only,
        rss: full.rss,
    }
}

fn floor(ctx: &Ctx, n: usize) -> Bytes {
    let start = heap::live_bytes();
    let (floor, mut inboxes) = Floor::<Msg>::new(n, ctx.plan.capacity);
    // The floor hands back its receivers in a `Vec` it allocated; the others' is allocated
    // before `start`, so leave it out here too.
    let vec_bytes =
        (inboxes.capacity() * std::mem::size_of::<tokio::sync::mpsc::Receiver<Msg>>()) as i64;
    let idle = heap::live_bytes() - vec_bytes;
    let delivered = floor
        .broadcast(Msg::new(0, 0, EVERYONE, ctx.plan.message_size))
        .delivered;
    let mut received = 0;
    for rx in &mut inboxes {
        while let Ok(msg) = rx.try_recv() {
            received += 1;
            msg.received();
        }
    }
    ctx.violations.expect(
        delivered == n && received == n,
        "memory/floor",
        || format!("{delivered} delivered and {received} received of one message to each of {n} clients"),
    );
    let full = Footprint::now();
    drop(floor);
    let channels_only = heap::live_bytes() - vec_bytes;
    drop(inboxes);
    let end = heap::live_bytes();
    let verdict = heap_returned(start, end);
    ctx.violations.expect(verdict.is_ok(), "memory/floor", || {
        verdict.err().unwrap_or_default()
    });
    Bytes {
        clients: n,
        total_per_client: per(full.heap - vec_bytes - start, n),
        idle_per_client: per(idle - start, n),
        registry_per_client: per(full.heap - vec_bytes - channels_only, n),
        channel_per_client: per(channels_only - start, n),
        held_by_receivers_per_client: per(channels_only - start, n),
        retained_after_unregister: 0,
        rss: full.rss,
    }
}
