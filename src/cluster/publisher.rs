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
//! waits for its answer in a task of its own, which tells its callers.
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
//! With sharded pub/sub a batch's channels live on different shards, so no one
//! script can publish them; those batches are pipelined `SPUBLISH`es, one batch
//! at a time, failing fast when the connection is down but without the deadline.

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
use tokio::sync::{mpsc, oneshot};
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
    pub(crate) base: Value,
    pub(crate) sharded: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: Arc<RedisClock>,
    /// Shared bytes: each batch's command holds a clone, not a copy of the text.
    pub(crate) script: Str,
    /// How long after sending a batch Redis still accepts it.
    pub(crate) deadline: Duration,
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
    batch: Batch,
    done: Vec<oneshot::Sender<Result<(), fred::error::Error>>>,
}

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
        let mut in_flight = JoinSet::new();
        let mut batches = 0u64;
        let mut groups: Vec<Group> = Vec::new();
        // A pipeline of `SPUBLISH`es is not handed to the client on its first poll
        // (the order test caught batches overtaking each other), so those wait
        // for each other.
        let limit = if self.link.sharded { 1 } else { IN_FLIGHT };
        loop {
            while in_flight.try_join_next().is_some() {}
            while in_flight.len() >= limit {
                in_flight.join_next().await;
            }
            // What a full batch left over goes first.
            if queued.is_empty() {
                let n = tokio::select! {
                    biased;
                    _ = &mut stop => break,
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
                batch: buf.finish(),
                done,
            };
            let mut call: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(Arc::clone(&self.link).send(pending));
            // The first poll hands the command to the client, in numbering order:
            // in fred 10.1 `eval` builds the command and `try_send`s it into the
            // router's queue before its first await (the blocking-policy check
            // before it awaits only under `Blocking::Interrupt`, which the builder
            // rules out; `timeout` polls the call before its timer). The router
            // writes that queue in order on this one connection. The answer is
            // awaited beside the next batches.
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            if first.is_pending() {
                in_flight.spawn(call);
            }
        }
        // The batches sent get their true outcome before the rest is refused.
        while in_flight.join_next().await.is_some() {}
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
}

impl Link {
    /// Publishes one batch and tells its callers how it went.
    async fn send(self: Arc<Self>, Pending { batch, done }: Pending) {
        let result = if !self.client.is_connected() {
            Err(io_error("not connected to redis"))
        } else if self.sharded {
            self.spublish(&batch).await
        } else {
            self.publish(batch).await
        };
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

    fn options(&self) -> Options {
        Options {
            // Refuse at once while disconnected rather than queue for a reconnect.
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.deadline * 2),
            ..Options::default()
        }
    }

    async fn publish(&self, batch: Batch) -> Result<(), fred::error::Error> {
        let Some(now) = self.clock.now_ms() else {
            return Err(io_error("redis clock not read yet"));
        };
        let deadline = now + u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX);
        let mut args: Vec<Value> =
            Vec::with_capacity(5 + batch.channels.len() + batch.frames.len());
        args.push(self.base.clone());
        args.push(deadline.to_string().into());
        args.push(Value::String(Str::from_static("PUBLISH")));
        args.push(Value::Bytes(batch.runs));
        args.push(batch.channels.len().to_string().into());
        args.extend(batch.channels.into_iter().map(Value::String));
        args.extend(batch.frames.into_iter().map(Value::Bytes));
        Counters::add(&self.counters.round_trips, 1);
        let client = self.client.with_options(&self.options());
        let call = client.eval::<i64, _, _, _>(self.script.clone(), Vec::<String>::new(), args);
        // A margin past fred's own timeout, in case it does not fire.
        match tokio::time::timeout(self.deadline * 2 + Duration::from_millis(100), call).await {
            Ok(Ok(n)) if n >= 0 => Ok(()),
            Ok(Ok(_)) => Err(io_error("publication reached redis after its deadline")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io_error("publication timed out")),
        }
    }

    async fn spublish(&self, batch: &Batch) -> Result<(), fred::error::Error> {
        let pipe = Pipeline::from(self.client.with_options(&self.options()));
        for (channel, frame) in batch.frames() {
            // Queuing in a pipeline only buffers; the answer comes from `all`.
            let _: Result<Value, _> = pipe.spublish(channel, frame).await;
        }
        Counters::add(&self.counters.round_trips, 1);
        let results: Vec<Result<Value, _>> = pipe.try_all().await;
        results.into_iter().try_for_each(|r| r.map(drop))
    }
}
