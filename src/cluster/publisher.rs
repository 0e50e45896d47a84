//! The publisher: one task that numbers publications and sends them to Redis in
//! batches, so that many concurrent broadcasts share each round trip.
//!
//! Callers queue a publication and await its answer. The task takes everything
//! queued (up to [`BATCH`] publications, and about
//! [`MAX_BYTES`](super::batch::MAX_BYTES) of frames), numbers each with the
//! session's epoch and next number (`streams.rs`), frames them with this node's
//! id into one buffer (`batch.rs`), a session's publications together as one
//! bundle, and sends the lot as one script call that publishes each frame. Nothing
//! waits to be bundled: a batch is what queued while the one before was being
//! sent, so at a low rate it holds one publication, sent at once, and under load
//! many, of which those to one session cost Redis one `PUBLISH` and the receiver
//! one message. One task means
//! numbers are handed out in the order publications reach Redis, so a
//! receiver that sees a number jump knows exactly how many it missed.
//!
//! Up to [`IN_FLIGHT`] batches are on the wire at once, so that Redis runs one
//! while the next is framed. They share one connection, and the task hands each
//! call to the client (its first poll) before numbering the next batch: Redis
//! receives, and runs, batches in the order they were numbered. Each batch then
//! waits for its answer in a task of its own, which tells its callers (or hands
//! the batch back, below).
//!
//! # Failures are final
//!
//! A caller told "failed" must be able to trust it: the receivers' gap count, and
//! any retry the caller makes, depend on it. The client library, though, keeps a
//! command queued while it reconnects and may write it after the caller gave up.
//! So each batch carries a deadline on Redis's clock ([`RedisClock`]), and the
//! script publishes nothing once it has passed; the caller hears "failed" only
//! after the deadline plus a margin. Only the batches in flight at the instant
//! Redis dies (at most [`IN_FLIGHT`]) are ambiguous (Redis may have published them
//! before dying); that is pub/sub's at-most-once, not a silent loss.
//!
//! # The script by its hash
//!
//! A batch names the script by its SHA1 (`EVALSHA`), so neither this node nor
//! Redis handles the script's text per batch. Redis can lose the script (a
//! restart, `SCRIPT FLUSH`); it then refuses the batch with `NOSCRIPT` and runs
//! nothing of it. The batch goes back to this task untold, which then sends
//! nothing new until every batch in flight has answered, and resends the refused
//! ones in the order they were numbered, with the script's text (`EVAL`, which
//! loads it again), before anything newer. That keeps Redis's order the
//! numbering order:
//!
//! - the batches in flight behind a refused one were sent before any resend on
//!   the same connection, so Redis ran them before it could have the script
//!   again from this node; and no other client loads it, since its text names
//!   this node (`scripts::publish`). So they were refused too, and go back in
//!   the same resend;
//! - should a later batch have reached Redis all the same (another process under
//!   this node's id loaded the script), a refused batch numbered before it is
//!   not resent but fails, counted like any failed publication: a gap, never a
//!   reordering;
//! - a resend carries the text, so it is never refused for the script again.
//!
//! A resend carries a fresh deadline, so its callers may wait up to twice as
//! long as usual before they hear; what they hear is still final.
//!
//! With sharded pub/sub a batch's channels live on different shards, so no one
//! script can publish them; those batches are pipelined `SPUBLISH`es, one batch
//! at a time, failing fast when the connection is down but without the deadline.
//! Each caller hears its own frame's answer (`Batch::items` maps frames to
//! callers), so one refused `SPUBLISH` fails only its own. But "failed" is not
//! final there: a command fred wrote before it gave up on the answer may have
//! run. A deadline checked on the shard would be the next step.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fred::bytes_utils::Str;
use fred::clients::{Client, Pipeline};
use fred::interfaces::{ClientLike, LuaInterface, PubsubInterface};
use fred::prelude::{Options, Value};
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::sync::Arc;
use crate::SessionId;

use super::batch::{frame_len, Batch, BatchBuf, TooLong, MAX_BYTES};
use super::clock::RedisClock;
use super::names::Names;
use super::stats::Counters;
use super::streams::Streams;

/// Publications sent in one batch, at most.
const BATCH: usize = 512;

/// Batches on the wire at once, at most: enough for Redis to run one while the
/// next is framed and the answer to the one before is read.
const IN_FLIGHT: usize = 4;

/// A session publication waiting for the publisher.
pub(crate) struct Outgoing {
    pub(crate) session: SessionId,
    /// The encoded message; the publisher frames and numbers it.
    pub(crate) payload: Bytes,
    pub(crate) done: oneshot::Sender<Result<(), fred::error::Error>>,
}

/// The numbering task's state and the link it publishes through.
pub(crate) struct Publisher {
    pub(crate) node: String,
    pub(crate) names: Arc<Names>,
    /// Sessions numbered at once, at most (`streams.rs`).
    pub(crate) max_streams: usize,
    pub(crate) link: Arc<Link>,
}

/// What a batch needs on its way to Redis, shared by the batches in flight.
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) sharded: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: Arc<RedisClock>,
    /// The publish script's text (`scripts::publish`), for resends: shared
    /// bytes, so a command holds a clone, not a copy.
    pub(crate) script: Str,
    /// Its SHA1 as Redis reported it when this node loaded it.
    pub(crate) sha: Str,
    /// How long after sending a batch Redis still accepts it.
    pub(crate) deadline: Duration,
    /// Woken when Redis refuses a batch for a missing script, so that an idle
    /// publisher resends it.
    pub(crate) refused: Notify,
}

/// A session's publications in the batch being numbered: its channel, epoch,
/// first number and how many.
struct Group {
    channel: Str,
    epoch: u32,
    first: u64,
    count: usize,
}

/// A numbered batch and the callers waiting for it.
struct Pending {
    /// Its place in the numbering order: batches reach Redis in this order.
    index: u64,
    batch: Batch,
    done: Vec<oneshot::Sender<Result<(), fred::error::Error>>>,
    /// Sent with the script's text (a resend), not its hash.
    full: bool,
}

/// How a batch's call ended.
enum Sent {
    /// Its callers were told. With its index if Redis may have run it; without,
    /// it never left this node (the connection was down).
    Told(Option<u64>),
    /// Redis refused it for a missing script, having run none of it; its callers
    /// wait for the resend.
    NoScript(Pending),
}

/// The batches Redis refused for a missing script, and what decides whether
/// they can still be resent in order.
#[derive(Default)]
struct Refused {
    held: Vec<Pending>,
    /// The highest index of a batch that may have run: a refused batch numbered
    /// below it can no longer reach Redis in order.
    last_ran: u64,
}

impl Refused {
    fn settle(&mut self, joined: Option<Result<Sent, tokio::task::JoinError>>) {
        match joined {
            Some(Ok(Sent::Told(Some(index)))) => self.last_ran = self.last_ran.max(index),
            Some(Ok(Sent::Told(None))) => {}
            Some(Ok(Sent::NoScript(p))) => self.held.push(p),
            // A batch task that panicked told nobody; there is nothing to resend.
            Some(Err(_)) | None => {}
        }
    }
}

/// Redis refused the call because it does not have the script.
fn no_script(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

/// The publish script reads no key, only its arguments.
const NO_KEYS: Vec<String> = Vec::new();

fn io_error(text: &'static str) -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::IO, text)
}

impl Publisher {
    /// Publishes until every sender is gone or `stop` fires. `stop` is only
    /// looked at between batches, so a batch sent is always answered with its
    /// outcome; what is still queued then goes back unsent (its callers get
    /// [`PublishError::Closed`](super::PublishError::Closed)).
    pub(crate) async fn run(
        self,
        mut rx: mpsc::Receiver<Outgoing>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut streams = Streams::new(self.max_streams);
        let mut queued: Vec<Outgoing> = Vec::with_capacity(BATCH);
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        let mut refused = Refused::default();
        let mut batches = 0u64;
        let mut groups: Vec<Group> = Vec::new();
        // A pipeline of `SPUBLISH`es is not handed to the client on its first poll
        // (the order test caught batches overtaking each other), so those wait
        // for each other.
        let limit = if self.link.sharded { 1 } else { IN_FLIGHT };
        loop {
            while let Some(joined) = in_flight.try_join_next() {
                refused.settle(Some(joined));
            }
            if !refused.held.is_empty() {
                self.resend(&mut in_flight, &mut refused, limit).await;
                continue;
            }
            if in_flight.len() >= limit {
                refused.settle(in_flight.join_next().await);
                continue;
            }
            // What a full batch left over goes first.
            if queued.is_empty() {
                let n = tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    // A refused batch's callers wait for its resend, whether or
                    // not anything new comes. (The batch's task may not have
                    // ended yet; `resend` awaits every one.)
                    () = self.link.refused.notified() => {
                        self.resend(&mut in_flight, &mut refused, limit).await;
                        continue;
                    }
                    n = rx.recv_many(&mut queued, BATCH) => n,
                };
                if n == 0 {
                    break;
                }
            } else if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                // Stopped (or the handle that could stop it is gone).
                break;
            }
            batches += 1;
            // Number what the batch takes, grouping it by session: each group
            // goes as one bundle (`batch.rs`), its numbers consecutive.
            groups.clear();
            let mut taken: Vec<(u16, Outgoing)> = Vec::with_capacity(queued.len());
            let mut bytes = 0;
            let mut items = std::mem::take(&mut queued).into_iter();
            for out in items.by_ref() {
                let len = match frame_len(&self.node, &out.payload) {
                    Ok(len) => len,
                    // Not numbered, so no receiver counts it as a gap.
                    Err(TooLong) => {
                        Counters::add(&self.link.counters.publish_failed, 1);
                        let _ = out.done.send(Err(fred::error::Error::new(
                            fred::error::ErrorKind::InvalidArgument,
                            "publication longer than 4 GiB",
                        )));
                        continue;
                    }
                };
                let stream = match streams.get_mut(&out.session) {
                    Some(s) => s,
                    None => {
                        streams.admit(&out.session, || Str::from(self.names.channel(&out.session)))
                    }
                };
                let group = match stream.slot {
                    Some((b, g)) if b == batches => g,
                    _ => {
                        // At most BATCH groups, far below u16::MAX.
                        let g = groups.len() as u16;
                        groups.push(Group {
                            channel: stream.channel.clone(),
                            epoch: stream.epoch,
                            first: stream.seq + 1,
                            count: 0,
                        });
                        stream.slot = Some((batches, g));
                        g
                    }
                };
                stream.seq += 1;
                groups[usize::from(group)].count += 1;
                taken.push((group, out));
                // What the frames would take one by one: a bundle takes less.
                bytes += len;
                if bytes >= MAX_BYTES {
                    break;
                }
            }
            queued.extend(items);
            if taken.is_empty() {
                continue;
            }
            // Each group's publications together, in the order they were numbered
            // (a stable sort); not needed when each group has one.
            if groups.len() > 1 && groups.len() < taken.len() {
                taken.sort_by_key(|(g, _)| *g);
            }
            // `bytes` is the frames' size one by one, which bundles never exceed.
            let mut buf = BatchBuf::with_capacity(bytes);
            let mut start = 0;
            for g in &groups {
                let end = start + g.count;
                let channel = buf.add_channel(&g.channel);
                buf.put_broadcasts(
                    channel,
                    &self.node,
                    g.epoch,
                    g.first,
                    &taken[start..end],
                    |(_, out)| &out.payload[..],
                );
                start = end;
            }
            let done = taken.into_iter().map(|(_, out)| out.done).collect();
            let pending = Pending {
                index: batches,
                batch: buf.finish(),
                done,
                full: false,
            };
            self.dispatch(pending, &mut in_flight, &mut refused).await;
        }
        // The batches sent get their true outcome before the rest is refused;
        // those Redis refused for the script are resent first.
        loop {
            while let Some(joined) = in_flight.join_next().await {
                refused.settle(Some(joined));
            }
            if refused.held.is_empty() {
                break;
            }
            self.resend(&mut in_flight, &mut refused, limit).await;
        }
        // Refuse new publications, and drop the queued ones' answers unsent.
        rx.close();
        let mut unsent = queued.len() as u64;
        drop(queued);
        while let Ok(out) = rx.try_recv() {
            drop(out.done);
            unsent += 1;
        }
        Counters::add(&self.link.counters.publish_failed, unsent);
    }

    /// Hands `pending` to the client before anything numbered after it, and
    /// leaves its answer to a task of its own.
    async fn dispatch(
        &self,
        pending: Pending,
        in_flight: &mut JoinSet<Sent>,
        refused: &mut Refused,
    ) {
        let mut call: Pin<Box<dyn Future<Output = Sent> + Send>> =
            Box::pin(Arc::clone(&self.link).send(pending));
        // The first poll hands the command to the client, in numbering order:
        // in fred 10.1 `eval` and `evalsha` build the command and `try_send` it
        // into the router's queue before their first await (the blocking-policy
        // check before it awaits only under `Blocking::Interrupt`, which the
        // builder rules out; `timeout` polls the call before its timer). The
        // router writes that queue in order on this one connection. The answer
        // is awaited beside the next batches.
        match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(sent) => refused.settle(Some(Ok(sent))),
            Poll::Pending => {
                in_flight.spawn(call);
            }
        }
    }

    /// Resends, in numbering order and with the script's text, the batches Redis
    /// refused for a missing script, once every batch in flight has answered
    /// (module docs, "The script by its hash"). One that a later batch may have
    /// overtaken fails instead.
    async fn resend(&self, in_flight: &mut JoinSet<Sent>, refused: &mut Refused, limit: usize) {
        while let Some(joined) = in_flight.join_next().await {
            refused.settle(Some(joined));
        }
        let mut held = std::mem::take(&mut refused.held);
        held.sort_unstable_by_key(|p| p.index);
        for mut p in held {
            if p.index < refused.last_ran {
                self.link.tell(
                    p.done,
                    &Err(fred::error::Error::new(
                        fred::error::ErrorKind::Unknown,
                        "NOSCRIPT redis lost the publish script, and a later batch reached it first",
                    )),
                );
                continue;
            }
            while in_flight.len() >= limit {
                refused.settle(in_flight.join_next().await);
            }
            p.full = true;
            self.dispatch(p, in_flight, refused).await;
        }
    }
}

impl Link {
    /// Publishes one batch and tells its callers how it went, unless Redis
    /// refused it for a missing script: that batch goes back to the publisher.
    async fn send(self: Arc<Self>, p: Pending) -> Sent {
        if !self.client.is_connected() {
            self.tell(p.done, &Err(io_error("not connected to redis")));
            return Sent::Told(None);
        }
        if self.sharded {
            let results = self.spublish(&p.batch).await;
            self.tell_each(p.done, &p.batch.items, results);
            return Sent::Told(Some(p.index));
        }
        let result = self.publish(&p.batch, p.full).await;
        if let Err(e) = &result {
            if !p.full && no_script(e) {
                self.refused.notify_one();
                return Sent::NoScript(p);
            }
        }
        self.tell(p.done, &result);
        Sent::Told(Some(p.index))
    }

    /// Counts a batch's publications and gives each caller `result`.
    fn tell(
        &self,
        done: Vec<oneshot::Sender<Result<(), fred::error::Error>>>,
        result: &Result<(), fred::error::Error>,
    ) {
        let counter = if result.is_ok() {
            &self.counters.published
        } else {
            &self.counters.publish_failed
        };
        Counters::add(counter, done.len() as u64);
        for tx in done {
            // The caller may have stopped waiting; the count above stands.
            let _ = tx.send(result.clone());
        }
    }

    /// Gives each frame's callers that frame's outcome, counted one by one.
    fn tell_each(
        &self,
        done: Vec<oneshot::Sender<Result<(), fred::error::Error>>>,
        items: &[usize],
        results: Vec<Result<(), fred::error::Error>>,
    ) {
        let mut done = done.into_iter();
        for (&n, result) in items.iter().zip(&results) {
            self.tell(done.by_ref().take(n).collect(), result);
        }
        // Frames the pipeline gave no answer for (it ended early) failed.
        let rest: Vec<_> = done.collect();
        if !rest.is_empty() {
            self.tell(rest, &Err(io_error("no answer for the publication")));
        }
    }

    fn options(&self) -> Options {
        Options {
            // Refuse at once while disconnected rather than queue for a reconnect.
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.deadline * 2),
            ..Options::default()
        }
    }

    /// Runs the publish script on `batch`: by its hash, or with its text (`full`).
    async fn publish(&self, batch: &Batch, full: bool) -> Result<(), fred::error::Error> {
        let Some(now) = self.clock.now_ms() else {
            return Err(io_error("redis clock not read yet"));
        };
        let deadline = now + u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX);
        // The arguments share the batch's bytes (a resend needs them again).
        let mut args: Vec<Value> =
            Vec::with_capacity(3 + batch.channels.len() + batch.frames.len());
        args.push(deadline.to_string().into());
        args.push(Value::Bytes(batch.runs.clone()));
        args.push(batch.channels.len().to_string().into());
        args.extend(batch.channels.iter().cloned().map(Value::String));
        args.extend(batch.frames.iter().cloned().map(Value::Bytes));
        Counters::add(&self.counters.round_trips, 1);
        let client = self.client.with_options(&self.options());
        // A margin past fred's own timeout, in case it does not fire.
        let limit = self.deadline * 2 + Duration::from_millis(100);
        let answer = if full {
            let call = client.eval::<i64, _, _, _>(self.script.clone(), NO_KEYS, args);
            tokio::time::timeout(limit, call).await
        } else {
            let call = client.evalsha::<i64, _, _, _>(self.sha.clone(), NO_KEYS, args);
            tokio::time::timeout(limit, call).await
        };
        match answer {
            Ok(Ok(n)) if n >= 0 => Ok(()),
            Ok(Ok(_)) => Err(io_error("publication reached redis after its deadline")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io_error("publication timed out")),
        }
    }

    /// Publishes `batch` as pipelined `SPUBLISH`es: each frame's outcome, in
    /// frame order.
    async fn spublish(&self, batch: &Batch) -> Vec<Result<(), fred::error::Error>> {
        let pipe = Pipeline::from(self.client.with_options(&self.options()));
        for (channel, frame) in batch.frames() {
            // Queuing in a pipeline only buffers; the answer comes from `all`.
            let _: Result<Value, _> = pipe.spublish(channel, frame).await;
        }
        Counters::add(&self.counters.round_trips, 1);
        let results: Vec<Result<Value, _>> = pipe.try_all().await;
        results.into_iter().map(|r| r.map(drop)).collect()
    }
}
