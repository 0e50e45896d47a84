//! The registry designs switchboard replaces, for measuring side by side with it.
//!
//! Each baseline keeps connected clients, each with its own bounded
//! [`tokio::sync::mpsc`] channel (switchboard's own for [`OwnFloor`]), and sessions, each a set of clients that a broadcast reaches.
//! The criterion benches and the stress harness both drive them, so they live here once and are
//! written the way their users write them: no tuning that a typical server would not have, and
//! no handicap either.
//!
//! | baseline | what it is | broadcast walks |
//! | --- | --- | --- |
//! | [`Floor`] | a `Vec` of senders and nothing else | the `Vec` |
//! | [`OwnFloor`] | the same loop over switchboard's own channel | the `Vec` |
//! | [`DashMapRegistry`] | `DashMap` of clients plus `DashMap` of `DashSet` sessions | the session's ids, one map lookup each |
//! | [`MutexRegistry`] | one `std::sync::Mutex` around two `HashMap`s | senders cloned out under the lock |
//!
//! The two registries and switchboard implement [`Contender`], so a bench or a stress scenario
//! is written once, generically. Their receiving ends implement [`Inbox`].
//!
//! # Examples
//!
//! ```
//! use baselines::{Contender, DashMapRegistry, Floor, Inbox, MutexRegistry};
//!
//! /// Three clients, two of them in session 7, and one broadcast.
//! fn scenario<C: Contender<u32>>(registry: &C) -> Vec<usize> {
//!     let mut clients: Vec<_> = (0..3).map(|_| registry.register()).collect();
//!     registry.attach(clients[0].0, 7);
//!     registry.attach(clients[2].0, 7);
//!     let fanout = registry.broadcast(7, 42);
//!     assert_eq!((fanout.recipients, fanout.delivered), (2, 2));
//!     clients.iter_mut().map(|(_, inbox)| inbox.drain()).collect()
//! }
//!
//! assert_eq!(scenario(&DashMapRegistry::new(16)), [1, 0, 1]);
//! assert_eq!(scenario(&MutexRegistry::new(16)), [1, 0, 1]);
//!
//! // The floor has no registry: it is built with its clients and has one implicit session.
//! let (floor, _inboxes) = Floor::new(3, 16);
//! assert_eq!(floor.broadcast(42u32).delivered, 3);
//! ```
//!
//! # Trade-offs
//!
//! - [`Floor`] is the cost of delivery alone: `try_send(msg.clone())` per client. Nothing can
//!   join or leave it, so it has no [`Contender`] impl and is no baseline for churn.
//! - [`OwnFloor`] is the same loop over switchboard's own channel, each built inside a client
//!   entry as a registration builds it. switchboard's broadcast over it is the registry's
//!   overhead alone; over [`Floor`] it also carries the two channels' difference. Both are
//!   one generic type, [`floor::Bare`], so their loop is the same code.
//! - [`DashMapRegistry`] is the design of the reference plan. Its locks are sharded, but a
//!   broadcast pays a hash lookup and a shard read lock per recipient, and clones the member ids
//!   into a fresh `Vec` first.
//! - [`MutexRegistry`] is the simplest correct design. Each operation is cheap, but all of them,
//!   on every thread, take turns on one lock.
//!
//! # Correctness
//!
//! Every [`Contender`] here passes the same contract tests (`contender::contract`, run from each
//! baseline's test module), which include a multi-threaded churn test racing attach, detach and
//! broadcast against unregister of the same clients and checking that nothing is left behind.
//! The lock order that keeps [`DashMapRegistry`] consistent and deadlock-free is documented in
//! [its module](crate::dashmap).
//!
//! # Performance
//!
//! These types are what switchboard's numbers are measured against; the benches live in the
//! `switchboard` package (`cargo bench`) and the long-running comparison in `stress/`.
//!
//! # Implementation notes
//!
//! Client ids are plain `u64`s from a counter and are never reused. Every send is a `try_send`:
//! a full channel drops the message and a closed one reports it, both counted in the returned
//! [`Fanout`]. A closed channel is never cleaned up behind the caller's back; unregister is the
//! only path that removes a client.

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod contender;
pub mod dashmap;
pub mod floor;
pub mod mutex;
pub mod switchboard;

pub use crate::contender::{Contender, Fanout, Inbox};
pub use crate::dashmap::DashMapRegistry;
pub use crate::floor::{Floor, OwnFloor};
pub use crate::mutex::MutexRegistry;
pub use crate::switchboard::SwitchboardRegistry;
