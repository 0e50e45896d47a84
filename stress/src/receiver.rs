//! The receiver task of a client: what a connection's writer task does with its channel,
//! and what it does with each message it takes ([`Receipts`]).
//!
//! Every receiver in a ratio does the same work per message, whichever design delivered it:
//! the worlds' clients and the fanout floors' clients alike take their messages through
//! [`prompt`] and [`Receipts::accept`]. A receiver runs on the other worker while a broadcast
//! is timed, so a side whose receivers did less would measure its broadcast under lighter
//! load, and the ratio would compare receivers rather than registries.

use std::sync::Arc;

use baselines::Inbox;

use crate::busy;
use crate::client::{Client, Kind};
use crate::invariants::Violations;
use crate::latency::Recorder;
use crate::message::Msg;
use crate::subject::Subject;
use crate::tally::Tally;
use crate::tasks::TaskGuard;
use crate::world::World;

/// What a receiver does with each message it takes: check it against its client's ledger,
/// check its payload, record its latency, count it.
#[derive(Debug)]
pub struct Receipts {
    /// `scenario/contender`, the scope of the violations found here.
    scope: String,
    /// Payload bytes every message must carry.
    message_size: usize,
    /// Latencies of prompt receipts.
    latency: Arc<Recorder>,
    violations: Arc<Violations>,
}

impl Receipts {
    /// Receipts reported under `scope`, of messages of `message_size` bytes.
    pub fn new(
        scope: String,
        message_size: usize,
        latency: Arc<Recorder>,
        violations: Arc<Violations>,
    ) -> Self {
        Self {
            scope,
            message_size,
            latency,
            violations,
        }
    }

    /// A receiver took `msg`: check it against the client's ledger, record its latency if
    /// `prompt`, count it in `tally`.
    pub fn accept<Id>(&self, tally: &Tally, client: &Client<Id>, msg: Msg, prompt: bool) {
        let p = msg.payload();
        if prompt {
            let ns = p.sent.elapsed().as_nanos();
            self.latency.record(u64::try_from(ns).unwrap_or(u64::MAX));
        }
        let verdict = client.ledger().check(p.session, p.seq, p.target);
        if let Err(breach) = verdict {
            self.violations.push(
                format!("{}/receipt", self.scope),
                format!("client #{} ({:?}) {breach}", client.serial, client.kind),
            );
        }
        if p.body.len() != self.message_size {
            self.violations.push(
                self.scope.clone(),
                format!(
                    "client #{} got a payload of {} bytes, {} were sent",
                    client.serial,
                    p.body.len(),
                    self.message_size
                ),
            );
        }
        tally.received.add(1);
        msg.received();
    }
}

/// A prompt receiver: takes every message as soon as it arrives, until the channel ends.
pub async fn prompt<Id, R: Inbox<Msg>>(
    receipts: &Receipts,
    tally: &Tally,
    client: &Client<Id>,
    rx: &mut R,
) {
    while let Some(msg) = rx.recv().await {
        receipts.accept(tally, client, msg, true);
    }
}

/// Drains `rx` the way `client.kind` says, until the channel ends (or, for an abrupt client,
/// until it drops the receiver).
///
/// `_task` comes first because parameters drop in reverse order: the task must count as
/// ended only once its hold on the world is gone, or teardown could see the world still
/// referenced after every task "ended".
pub async fn run<S: Subject>(
    _task: TaskGuard,
    world: Arc<World<S>>,
    client: Arc<Client<S::Id>>,
    rx: S::Rx,
) {
    // The polls' time is the receivers' share of the CPU (see `busy`); the closure
    // borrows the world, so the task still lets go of it before `_task` ends.
    if world.setup.clock_polls {
        busy::clocked(polled(&world.tally), take(&world, &client, rx)).await;
    } else {
        take(&world, &client, rx).await;
    }
}

/// What a receiver task hands [`busy::clocked`]: each poll's time and count go to `tally`.
/// Every receiver in a ratio is clocked alike, the fanout floors' too.
pub fn polled(tally: &Tally) -> impl Fn(u64) + '_ {
    |ns| {
        tally.receive_busy_ns.add(ns);
        tally.receive_polls.add(1);
    }
}

/// What [`run`] does with the channel, by the client's kind.
async fn take<S: Subject>(world: &Arc<World<S>>, client: &Client<S::Id>, mut rx: S::Rx) {
    match client.kind {
        Kind::Prompt => prompt(world.receipts(), &world.tally, client, &mut rx).await,
        Kind::Late => {
            while let Some(msg) = rx.recv().await {
                world.accept(client, msg, false);
                if !world.draining() {
                    tokio::time::sleep(world.setup.late_pause).await;
                }
            }
        }
        Kind::Never => {
            client.gone.notified().await;
            while let Some(msg) = rx.recv().await {
                world.accept(client, msg, false);
            }
        }
        Kind::Abrupt { after } => {
            let deadline = tokio::time::sleep(after);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    msg = rx.recv() => match msg {
                        Some(msg) => world.accept(client, msg, true),
                        None => return,
                    },
                    () = &mut deadline => break,
                }
            }
            world.abrupt(client, rx).await;
        }
    }
}
