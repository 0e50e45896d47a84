//! The publisher: one task that numbers publications and sends them to Redis in
//! batches, so that many concurrent broadcasts share each round trip.
//!
//! Callers queue a publication and await its answer. The task takes everything
//! queued (up to [`BATCH`]), frames each with this node's id and the session's next
//! number, and sends the lot as one script call that publishes them all. One task
//! means numbers are handed out in the order publications reach Redis, so a
//! receiver that sees a number jump knows exactly how many it missed.
//!
//! # Failures are final
//!
//! A caller told "failed" must be able to trust it: the receivers' gap count, and
//! any retry the caller makes, depend on it. The client library, though, keeps a
//! command queued while it reconnects and may write it after the caller gave up.
//! So each batch carries a deadline on Redis's clock ([`RedisClock`]), and the
//! script publishes nothing once it has passed; the caller hears "failed" only
//! after the deadline plus a margin. Only a batch in flight at the instant Redis
//! dies is ambiguous (Redis may have published it before dying); that is pub/sub's
//! at-most-once, not a silent loss.
//!
//! With sharded pub/sub a batch's channels live on different shards, so no one
//! script can publish them; those batches are pipelined `SPUBLISH`es, failing fast
//! when the connection is down but without the deadline.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pipeline};
use fred::interfaces::{ClientLike, LuaInterface, PubsubInterface};
use fred::prelude::{Options, Value};
use tokio::sync::{mpsc, oneshot};

use crate::sync::Arc;
use crate::SessionId;

use super::clock::RedisClock;
use super::envelope;
use super::names::Names;
use super::stats::Counters;

/// Publications sent in one batch, at most.
const BATCH: usize = 512;

/// A session publication waiting for the publisher.
pub(crate) struct Outgoing {
    pub(crate) session: SessionId,
    /// The encoded message; the publisher frames and numbers it.
    pub(crate) payload: Bytes,
    pub(crate) done: oneshot::Sender<Result<(), fred::error::Error>>,
}

pub(crate) struct Publisher {
    pub(crate) client: Client,
    pub(crate) node: String,
    pub(crate) names: Arc<Names>,
    pub(crate) sharded: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: Arc<RedisClock>,
    pub(crate) script: String,
    /// How long after sending a batch Redis still accepts it.
    pub(crate) deadline: Duration,
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
        // The last number per session. Grows with the sessions this node publishes
        // to: an entry is 8 bytes plus the id.
        let mut last: HashMap<SessionId, u64> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                biased;
                _ = &mut stop => break,
                n = rx.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                break;
            }
            let mut frames = Vec::with_capacity(batch.len());
            let mut done = Vec::with_capacity(batch.len());
            for out in batch.drain(..) {
                let seq = last.entry(out.session.clone()).or_insert(0);
                *seq += 1;
                let frame = envelope::broadcast(&self.node, *seq, &out.payload);
                frames.push((self.names.channel(&out.session), frame));
                done.push(out.done);
            }
            let result = if !self.client.is_connected() {
                Err(io_error("not connected to redis"))
            } else if self.sharded {
                self.spublish(frames).await
            } else {
                self.publish(frames).await
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
        // Refuse new publications, and drop the queued ones' answers unsent.
        rx.close();
        let mut unsent = 0;
        while let Ok(out) = rx.try_recv() {
            drop(out.done);
            unsent += 1;
        }
        Counters::add(&self.counters.publish_failed, unsent);
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

    async fn publish(&self, frames: Vec<(String, Bytes)>) -> Result<(), fred::error::Error> {
        let Some(now) = self.clock.now_ms() else {
            return Err(io_error("redis clock not read yet"));
        };
        let deadline = now + u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX);
        let mut args: Vec<Value> = Vec::with_capacity(3 + 2 * frames.len());
        args.push(self.names.base.clone().into());
        args.push(deadline.to_string().into());
        args.push("PUBLISH".into());
        for (channel, frame) in frames {
            args.push(channel.into());
            args.push(frame.into());
        }
        Counters::add(&self.counters.round_trips, 1);
        let client = self.client.with_options(&self.options());
        let call = client.eval::<i64, _, _, _>(&self.script, Vec::<String>::new(), args);
        // A margin past fred's own timeout, in case it does not fire.
        match tokio::time::timeout(self.deadline * 2 + Duration::from_millis(100), call).await {
            Ok(Ok(n)) if n >= 0 => Ok(()),
            Ok(Ok(_)) => Err(io_error("publication reached redis after its deadline")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io_error("publication timed out")),
        }
    }

    async fn spublish(&self, frames: Vec<(String, Bytes)>) -> Result<(), fred::error::Error> {
        let pipe = Pipeline::from(self.client.with_options(&self.options()));
        for (channel, frame) in frames {
            // Queuing in a pipeline only buffers; the answer comes from `all`.
            let _: Result<Value, _> = pipe.spublish(channel, frame).await;
        }
        Counters::add(&self.counters.round_trips, 1);
        let results: Vec<Result<Value, _>> = pipe.try_all().await;
        results.into_iter().try_for_each(|r| r.map(drop))
    }
}
