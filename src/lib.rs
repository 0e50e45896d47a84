//! A lock-free, sharded registry of connected clients for high-fan-out servers.
//!
//! switchboard tracks every connected client of a WebSocket or TCP gateway, a device
//! fleet, a chat or game server: its bounded outbound channel, the sessions (rooms,
//! tasks) it belongs to, and what the application knows about it. It delivers a
//! message to one client or to every member of a session, and cleans up after every
//! disconnect, so nothing leaks.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use switchboard::{ClientInfo, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry: Registry<Arc<str>> = Registry::new();
//!
//! // On connect: register, then hand the receiver to the connection's writer task.
//! let (alice, mut alice_rx) = registry.register(ClientInfo::new().with_key("alice"))?;
//! let (bob, mut bob_rx) = registry.register(ClientInfo::new().with_key("bob"))?;
//! registry.attach(alice, "lobby")?;
//! registry.attach(bob, "lobby")?;
//!
//! // Fan out to the room, except the author.
//! let report = registry.broadcast_except("lobby", alice, Arc::from("hi from alice"))?;
//! assert_eq!(report.delivered, 1);
//! assert_eq!(bob_rx.recv().await.as_deref(), Some("hi from alice"));
//!
//! // On disconnect: one call removes the client from everything.
//! let gone = registry.unregister(bob)?;
//! assert_eq!(gone.sessions, vec!["lobby".into()]);
//! assert_eq!(bob_rx.recv().await, None);
//! # let _ = &mut alice_rx;
//! # Ok(()) }
//! ```
//!
//! # Trade-offs
//!
//! * **Broadcast is the hot path.** A session's page layout is published with
//!   [arc-swap] and its size and version with one atomic word; a broadcast reads both
//!   once and walks a contiguous array of channel handles, with no lock and no lookup
//!   per recipient.
//! * **Joins and leaves never copy a session.** Members sit in write-once cells; a
//!   join writes the next cell and the word, a leave stamps its cell with a version
//!   and writes the word, and dead cells are compacted when they outnumber live ones.
//!   Cost is O(1) amortised at any session size, with no allocation; the price is up
//!   to one dead cell per live one.
//! * **Registrations swap, not publish.** Client slots are epoch-reclaimed cells
//!   (crossbeam-epoch): a registration or departure is a pointer swap plus a deferred
//!   free, where an arc-swap store would walk every thread's debt list. The crate's
//!   `unsafe` code lives in `src/sync/` (this cell, the channel's ring and the
//!   write-once member cells), the ring's push/pop contracts in `channel.rs`, and
//!   one block in `session.rs`, where a compaction's copies borrow the old cells'
//!   counts until it settles them, two libc calls (`clock.rs`, `cpu.rs`), beside the two `NeverWeak` marker impls
//!   `unique_mut` asks for; every block has its SAFETY argument, and every one but
//!   `unique_mut`'s loads (see `sync.rs`) a loom model that runs the real algorithm.
//! * **Writers lock, readers don't.** Register, unregister, attach and detach take
//!   small locks (a shard's allocator, a client's membership list, a session's
//!   writer). Lookups, sends and broadcasts take none.
//! * **Channels are the registry's own.** The registry must close a client's channel
//!   from the sending side (unregister, disconnect) while a concurrent broadcast may
//!   still hold a handle to it; a `tokio::sync::mpsc` channel only closes when its
//!   last sender drops. The channel lives inside the client's entry (one allocation
//!   per client), and its first four slots inside the channel, so the first message
//!   to a new client allocates nothing. See [`Receiver`].
//! * **Messages are cloned per recipient.** Use an `Arc` or `bytes::Bytes` payload
//!   so that a clone is a reference-count increment.
//!
//! # Correctness
//!
//! * A [`ClientId`] packs shard, slot and a 32-bit generation. A stale id never
//!   reaches the slot's next occupant; a slot whose generation would wrap is retired.
//! * A broadcast reaches exactly the members of the snapshot it read: a client
//!   detached before it began never gets the message, and one attached before it
//!   began does unless its channel is full or closed (the report counts it).
//! * A key resolves to exactly one connection during a takeover, and each task is
//!   cancelled exactly once when either side leaves.
//! * Once [`Registry::unregister`] returns, no send or broadcast reaches the client,
//!   and no session, counter or index still names it.
//!
//! The `loom-tests` crate model-checks these interleavings with [loom]; the `stress`
//! harness checks the same invariants under load with real receivers.
//!
//! # Performance
//!
//! The `benches/` directory measures broadcast, churn, join cost, direct sends and a
//! mixed workload side by side with a bare `try_send` loop and with the
//! `DashMap`- and `Mutex`-based designs this crate replaces. The README has the
//! latest ratios and the command that reproduces them.
//!
//! # Implementation notes
//!
//! * `id`: the packed [`ClientId`]. `shard`: paged slot arrays and their free lists.
//!   `clients`: the shards, admission, and the id-to-entry lookups every path
//!   starts with.
//! * `session`: member sets (sessions and profile indexes): layouts, versions and
//!   compaction; `session/directory.rs` keeps them by key and forgets a set that
//!   retires.
//! * `registry`: register, unregister (the one departure path), attach, detach:
//!   it orchestrates the parts, each of which owns its state behind a small API.
//! * `profile`, `fleet`, `query`, `task`, `device_config`, `events`: client
//!   profiles, keys and takeover, indexed filters and device selection, tasks, the
//!   device config merge and presence events. The fleet's shared state (keys,
//!   index sets, tasks, the device config and its reload protocol) is owned by one
//!   type in `fleet/state.rs`, which the others call rather than reach into.
//! * `delivery`: send, broadcast, the [`SlowConsumerPolicy`] and reports.
//! * `channel`: the bounded channel and its [`Receiver`].
//! * `sync`: every synchronisation primitive, swapped for loom's under
//!   `--cfg switchboard_loom`.
//! * [`http`] (the `http` feature, on by default): the admin API, an axum router
//!   over a registry. `examples/ws_server` embeds the registry in a WebSocket
//!   server end to end. Build with `default-features = false` for the registry
//!   alone.
//! * [`cluster`] (the `cluster` feature, on by default): sessions, keys and presence
//!   across several nodes over Redis, with the `fred` client.
//!
//! [arc-swap]: https://docs.rs/arc-swap
//! [loom]: https://docs.rs/loom

#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms, unreachable_pub)]

#[doc(hidden)]
pub mod bench_support;
mod channel;
mod client;
mod client_ref;
mod clients;
mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
mod cpu;
mod delivery;
mod device_config;
mod error;
mod events;
mod fleet;
#[cfg(switchboard_loom)]
#[doc(hidden)]
pub use fleet::loom_canary;
#[cfg(switchboard_loom)]
#[doc(hidden)]
pub use sync::loom_entry_arc;
#[cfg(feature = "http")]
pub mod http;
mod id;
mod paging;
mod profile;
mod query;
mod registry;
mod session;
mod shard;
mod stats;
mod sync;
mod task;

pub use channel::{CloseReason, Receiver};
pub use client_ref::ClientRef;
pub use config::{Builder, SlowConsumerPolicy};
pub use delivery::{BroadcastReport, MultiBroadcastReport};
pub use device_config::DeviceConfig;
pub use error::{
    AttachError, BroadcastError, BuildError, ClientError, ConfigError, DetachError, ProfileLimit,
    RegisterError, SendError, TaskError, TryRecvError, UnknownKind, UnknownSession, UpdateError,
};
pub use events::Event;
pub use fleet::Reloaded;
pub use id::{ClientId, ParseClientIdError};
pub use profile::{ClientInfo, ClientKind, SystemInfo};
pub use query::{Filter, Requirements};
pub use registry::{Registration, Registry, Unregistered};
pub use session::SessionId;
pub use stats::Stats;
pub use task::{CancelReason, CancelledTask, Task, TaskId};
