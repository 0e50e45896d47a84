//! One connection: the greeting, the reader (this task) and the writer (a task of
//! its own that drains the client's `Receiver` into the socket).
//!
//! ```text
//!            hello ──► register ──► welcome
//!                          │
//!      ┌───── reader ──────┴────── writer ─────┐
//!      │ frames ─► registry calls │ Receiver ─► socket (batched, one flush)
//!      │ replies ─► own queue ────┼─► (same queue, so replies keep their order)
//!      │ idle timer, close codes ─┼─► oneshot: "close with this frame"
//!      └──────────────────────────┴─ pings every ping_interval; 1001 on shutdown
//! ```
//!
//! Replies to the client's own frames (`joined`, `error`, ...) travel through its
//! registry queue like everything else, so they keep their order relative to the
//! messages it receives, and the writer stays the socket's only writer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use switchboard::{
    ClientError, ClientId, ClientInfo, DetachError, Receiver, RegisterError, SendError, TaskError,
    TaskId,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite;

use super::cluster::{Awaiting, Refused};
use super::protocol::{self, close, close_frame, Frame, Inbound, Refusal};
use super::{stopped, Shared};

/// Frames the writer feeds before it flushes.
const MAX_BATCH: usize = 64;

/// Why handling a frame stopped short.
enum Stop {
    /// Tell the client with an `error` frame; the connection stays open.
    Refuse(Refusal),
    /// End the connection.
    End(End),
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Self {
        Self::Refuse(refusal)
    }
}

/// How the reader's loop ended.
enum End {
    /// The reader decided: the writer sends this close frame.
    Close(u16, &'static str),
    /// The client sent a close frame; the WebSocket layer answers it.
    PeerClosed,
    /// The TCP connection is gone; nothing can be sent.
    Gone,
    /// The server is shutting down; the writer sends 1001.
    Shutdown,
    /// The writer ended on its own: the registry closed the channel (kick, takeover,
    /// slow consumer), or a write failed or timed out.
    WriterDone,
}

/// Serves one upgraded socket until it closes, and unregisters its client.
///
/// `hello_by` is when the client must have said `hello`: the TCP accept (on a
/// kept-alive connection, the upgrade request's arrival) plus the idle timeout.
pub(super) async fn serve(shared: Arc<Shared>, mut socket: WebSocket, hello_by: Instant) {
    let mut shutdown = shared.shutdown.clone();
    let Some((id, rx)) = greet(&shared, &mut socket, &mut shutdown, hello_by).await else {
        return;
    };
    let (sink, mut stream) = socket.split();
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write(
        sink,
        rx,
        close_rx,
        shutdown.clone(),
        shared.config.ping_interval,
        shared.config.write_timeout,
    ));
    let end = read(&shared, id, &mut stream, &mut shutdown, &mut writer).await;
    let linger = shared.config.close_linger;
    match end {
        End::Close(code, reason) => {
            let _ = close_tx.send(close_frame(code, reason));
            super::cluster::unregister(&shared, id).await;
            finish(writer, shared.config.write_timeout).await;
            // Wait for the peer's close reply, as RFC 6455 asks, so the peer reads our
            // close frame before the TCP connection goes. Not after an oversized
            // frame: reading on would buffer the rest of it.
            if code != close::TOO_BIG {
                drain(&mut stream, linger).await;
            }
        }
        End::PeerClosed => {
            drop(close_tx);
            super::cluster::unregister(&shared, id).await;
            finish(writer, shared.config.write_timeout).await;
            drain(&mut stream, linger).await;
        }
        End::Gone => {
            drop(close_tx);
            super::cluster::unregister(&shared, id).await;
            writer.abort();
        }
        End::Shutdown => {
            let _ = close_tx.send(close_frame(close::GOING_AWAY, "server shutting down"));
            finish(writer, shared.config.write_timeout).await;
            drain(&mut stream, linger).await;
            super::cluster::unregister(&shared, id).await;
        }
        End::WriterDone => {
            drain(&mut stream, linger).await;
            super::cluster::unregister(&shared, id).await;
        }
    }
}

/// Reads frames until a valid `hello` registers the client; answers anything else
/// with an error frame, and closes with 4003 at `hello_by`. Owns the whole socket,
/// since no writer exists yet.
async fn greet(
    shared: &Shared,
    socket: &mut WebSocket,
    shutdown: &mut watch::Receiver<bool>,
    hello_by: Instant,
) -> Option<(ClientId, Receiver<Frame>)> {
    let config = &shared.config;
    // One deadline for the whole greeting: a timeout per read let any frame (a
    // ping, a bad frame) restart the clock, and kept an unregistered socket,
    // which `max_clients` does not count, open for ever.
    let no_hello = tokio::time::sleep_until(hello_by);
    tokio::pin!(no_hello);
    loop {
        let next = tokio::select! {
            biased;
            _ = stopped(shutdown) => {
                say_close(socket, close::GOING_AWAY, "server shutting down", config.write_timeout).await;
                drain(socket, config.close_linger).await;
                return None;
            }
            // Before the socket, so that a peer whose frames are always ready
            // still meets the deadline.
            () = &mut no_hello => {
                say_close(
                    socket,
                    close::IDLE_TIMEOUT,
                    "no hello in time",
                    config.write_timeout,
                )
                .await;
                drain(socket, config.close_linger).await;
                return None;
            }
            next = socket.recv() => next,
        };
        let text = match next {
            None => return None,
            Some(Err(e)) => {
                if let Some((code, reason)) = read_error(e) {
                    say_close(socket, code, reason, config.write_timeout).await;
                }
                return None;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let refusal = Refusal::new("binary_unsupported", "frames are JSON text");
                say(socket, refusal.frame(), config.write_timeout).await?;
                continue;
            }
            Some(Ok(Message::Close(_))) => return None,
            // Pings are answered by the WebSocket layer; they do not move the deadline.
            Some(Ok(_)) => continue,
        };
        let refusal = match protocol::parse(&text) {
            Err(refusal) => refusal,
            Ok(inbound) if inbound.kind == "hello" => {
                match serde_json::from_str::<ClientInfo>(&text) {
                    Err(e) => Refusal::new("bad_frame", e.to_string()),
                    Ok(info) => match super::cluster::register(shared, info).await {
                        Ok((id, rx)) => {
                            if say(socket, protocol::welcome(id), config.write_timeout)
                                .await
                                .is_none()
                            {
                                super::cluster::unregister(shared, id).await;
                                return None;
                            }
                            return Some((id, rx));
                        }
                        Err(Refused::Register(e @ RegisterError::MetadataTooLarge { .. })) => {
                            Refusal::new("metadata_too_large", e.to_string())
                        }
                        Err(Refused::Register(e @ RegisterError::ProfileTooLarge { .. })) => {
                            Refusal::new("profile_too_large", e.to_string())
                        }
                        Err(Refused::Cluster(e)) => Refusal::new("cluster_unavailable", e),
                        Err(Refused::Register(e)) => {
                            let refusal = Refusal::new("server_full", e.to_string());
                            let _ = say(socket, refusal.frame(), config.write_timeout).await;
                            say_close(
                                socket,
                                close::TRY_AGAIN_LATER,
                                "server full",
                                config.write_timeout,
                            )
                            .await;
                            drain(socket, config.close_linger).await;
                            return None;
                        }
                    },
                }
            }
            Ok(inbound) => Refusal::new(
                "hello_required",
                format!("say hello before {:?}", inbound.kind),
            ),
        };
        say(socket, refusal.frame(), config.write_timeout).await?;
    }
}

/// Sends one frame on the unsplit socket; `None` if the peer is gone or too slow.
async fn say(socket: &mut WebSocket, frame: Frame, limit: Duration) -> Option<()> {
    match timeout(limit, socket.send(Message::Text(frame))).await {
        Ok(Ok(())) => Some(()),
        _ => None,
    }
}

async fn say_close(socket: &mut WebSocket, code: u16, reason: &str, limit: Duration) {
    let frame = Message::Close(Some(close_frame(code, reason)));
    let _ = timeout(limit, socket.send(frame)).await;
}

/// The reader: every inbound frame, in order, until the connection should end.
async fn read(
    shared: &Shared,
    id: ClientId,
    stream: &mut SplitStream<WebSocket>,
    shutdown: &mut watch::Receiver<bool>,
    writer: &mut JoinHandle<()>,
) -> End {
    let idle = shared.config.idle_timeout;
    // Publications of this connection awaiting Redis's answer (`cluster::publish`).
    let mut awaiting = Awaiting::new();
    // The idle timer is armed once and moved only when it fires early: a timer
    // set per frame was a timer-wheel insertion and removal per frame. Only a
    // frame counts as activity, not an answer from Redis.
    let mut last_frame = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // One wait for shutdown, polled on every turn, as the timer is: a new one per
    // turn put a waiter into the shutdown signal's list and took it out again for
    // every frame, two locks of a mutex every connection's reader and writer share.
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stop => return End::Shutdown,
            _ = &mut *writer => return End::WriterDone,
            Some(()) = awaiting.next(), if !awaiting.is_empty() => continue,
            // Before the timer, so that a frame ready at the deadline still counts.
            next = stream.next() => next,
            () = &mut idle_timer => {
                let due = last_frame + idle;
                if due > Instant::now() {
                    idle_timer.as_mut().reset(due);
                    continue;
                }
                return End::Close(close::IDLE_TIMEOUT, "idle timeout");
            }
        };
        let outcome = match next {
            None => return End::Gone,
            Some(Err(e)) => {
                return match read_error(e) {
                    Some((code, reason)) => End::Close(code, reason),
                    None => End::Gone,
                }
            }
            Some(Ok(Message::Text(text))) => handle(shared, id, text.as_str(), &mut awaiting).await,
            Some(Ok(Message::Binary(_))) => Err(Stop::Refuse(Refusal::new(
                "binary_unsupported",
                "frames are JSON text",
            ))),
            Some(Ok(Message::Close(_))) => return End::PeerClosed,
            // Pings are answered by the WebSocket layer; any frame resets the idle timer.
            Some(Ok(_)) => Ok(()),
        };
        match outcome {
            Ok(()) => {}
            Err(Stop::End(end)) => return end,
            Err(Stop::Refuse(refusal)) => {
                if let Err(end) = reply(shared, id, refusal.frame()).await {
                    return end;
                }
            }
        }
        // The client's silence starts once its frame is dealt with: handling may
        // wait on Redis or on the writer for longer than `idle`.
        last_frame = Instant::now();
    }
}

/// What a read error means: a close code to send, or `None` if the peer is gone.
fn read_error(e: axum::Error) -> Option<(u16, &'static str)> {
    use tungstenite::error::{Error, ProtocolError};
    match e.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(_)) => Some((close::TOO_BIG, "frame too big")),
        Ok(Error::Utf8(_)) => Some((close::INVALID_DATA, "text is not UTF-8")),
        Ok(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => None,
        Ok(Error::Protocol(_)) => Some((close::PROTOCOL, "protocol error")),
        _ => None,
    }
}

/// Queues a reply for this client, waiting at most the write timeout: a client
/// whose queue stays full that long is slow, and is closed as one.
async fn reply(shared: &Shared, id: ClientId, frame: Frame) -> Result<(), End> {
    match shared
        .registry
        .send_timeout(id, frame, shared.config.write_timeout)
        .await
    {
        Ok(()) => Ok(()),
        Err(SendError::Timeout(_) | SendError::Full(_)) => {
            Err(End::Close(close::SLOW_CONSUMER, "slow consumer"))
        }
        // Unregistered meanwhile (kick, takeover, slow consumer): the writer is
        // closing the connection with the right code.
        Err(_) => Ok(()),
    }
}

/// Carries out one text frame.
async fn handle(
    shared: &Shared,
    me: ClientId,
    text: &str,
    awaiting: &mut Awaiting,
) -> Result<(), Stop> {
    let registry = &shared.registry;
    let inbound: Inbound<'_> = protocol::parse(text)?;
    let kind = &*inbound.kind;
    match kind {
        "join" => {
            let session = protocol::required(inbound.session, kind, "session")?;
            // False means this client was just unregistered; the writer closes.
            if super::cluster::join(shared, me, &session).await? {
                send_own(shared, me, protocol::membership("joined", &session)).await?;
            }
        }
        "leave" => {
            let session = protocol::required(inbound.session, kind, "session")?;
            match super::cluster::leave(shared, me, &session).await {
                Ok(()) => send_own(shared, me, protocol::membership("left", &session)).await?,
                Err(e @ DetachError::NotAttached { .. }) => {
                    return Err(Refusal::new("not_attached", e.to_string()).into())
                }
                Err(_) => {}
            }
        }
        "publish" => {
            let session = protocol::required(inbound.session, kind, "session")?;
            // Serialised once; every member gets a clone of the same bytes.
            let frame = match inbound.data {
                Some(data) => protocol::message(Some(&session), Some(me), data, data.get().len()),
                None => protocol::message(Some(&session), Some(me), &serde_json::Value::Null, 4),
            };
            super::cluster::publish(shared, me, &session, frame, awaiting).await?;
        }
        "direct" => {
            let to = protocol::required(inbound.to, kind, "to")?;
            let frame = match inbound.data {
                Some(data) => protocol::message(None, Some(me), data, data.get().len()),
                None => protocol::message(None, Some(me), &serde_json::Value::Null, 4),
            };
            // With a cluster, a key goes wherever Redis says it is held.
            if let Some(sent) = super::cluster::direct_by_key(shared, &to, frame.clone()).await {
                return sent.map_err(Stop::from);
            }
            let target = resolve(shared, &to)?;
            match registry.send(target, frame) {
                Ok(()) => {}
                Err(SendError::Full(_)) => {
                    return Err(Refusal::new(
                        "queue_full",
                        format!("{to}'s queue is full; the message was not queued"),
                    )
                    .into())
                }
                Err(_) => return Err(unknown_client(&to).into()),
            }
        }
        "task_open" => {
            let device = protocol::required(inbound.device, kind, "device")?;
            let device_id = resolve(shared, &device)?;
            let task = registry.open_task(me, device_id).map_err(|e| match e {
                TaskError::Offline(_) => unknown_client(&device),
                e @ TaskError::TooManyTasks { .. } => Refusal::new("too_many_tasks", e.to_string()),
                e => Refusal::new("task_refused", e.to_string()),
            })?;
            let frame = protocol::task_opened(task, me, device_id);
            // The device may have just left; its task is then cancelled, and this
            // client hears of it as `task_cancelled`.
            let _ = registry
                .send_timeout(device_id, frame.clone(), shared.config.write_timeout)
                .await;
            send_own(shared, me, frame).await?;
        }
        "task_done" => {
            let task = protocol::required(inbound.task, kind, "task")?;
            let other = party_of(shared, me, task)?;
            registry
                .complete_task(task)
                .map_err(|e| Refusal::new("unknown_task", e.to_string()))?;
            let frame = protocol::task_done(task);
            let _ = registry
                .send_timeout(other, frame.clone(), shared.config.write_timeout)
                .await;
            send_own(shared, me, frame).await?;
        }
        "hello" => {
            return Err(
                Refusal::new("already_registered", "this connection already said hello").into(),
            )
        }
        other => {
            return Err(
                Refusal::new("unknown_type", format!("unknown frame type {other:?}")).into(),
            )
        }
    }
    Ok(())
}

/// Queues an acknowledgement for this client, as [`reply`] does.
async fn send_own(shared: &Shared, me: ClientId, frame: Frame) -> Result<(), Stop> {
    reply(shared, me, frame).await.map_err(Stop::End)
}

/// A client named by key, or else by id.
fn resolve(shared: &Shared, who: &str) -> Result<ClientId, Refusal> {
    if let Some(id) = shared.registry.id_of(who) {
        return Ok(id);
    }
    match who.parse::<ClientId>() {
        Ok(id) if shared.registry.is_online(id) => Ok(id),
        _ => Err(unknown_client(who)),
    }
}

pub(super) fn unknown_client(who: &str) -> Refusal {
    Refusal::new("unknown_client", format!("no connected client {who:?}"))
}

/// The other side of `task`, if `me` is one of its sides.
fn party_of(shared: &Shared, me: ClientId, task: TaskId) -> Result<ClientId, Refusal> {
    let registry = &shared.registry;
    let mine =
        |r: Result<Vec<switchboard::Task>, ClientError>| r.ok()?.into_iter().find(|t| t.id == task);
    let found =
        mine(registry.tasks_of_orchestrator(me)).or_else(|| mine(registry.tasks_of_device(me)));
    match found {
        Some(t) if t.orchestrator == me => Ok(t.device),
        Some(t) => Ok(t.orchestrator),
        None => Err(Refusal::new(
            "unknown_task",
            format!("no open task {task} of this client"),
        )),
    }
}

/// The writer: the client's queue into the socket, plus pings and the close frame.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: Receiver<Frame>,
    mut close_rx: oneshot::Receiver<axum::extract::ws::CloseFrame>,
    mut shutdown: watch::Receiver<bool>,
    ping_interval: Duration,
    write_timeout: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One wait for shutdown across turns, as the reader has.
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            biased;
            request = &mut close_rx => {
                // A dropped sender means no close frame is wanted (the peer closed).
                if let Ok(frame) = request {
                    let _ = timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
                }
                return;
            }
            () = &mut stop => {
                let frame = close_frame(close::GOING_AWAY, "server shutting down");
                let _ = timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
                return;
            }
            next = rx.recv() => match next {
                // A kicked, taken-over or slow client is closed at once; what is
                // still queued for it is dropped.
                Some(frame) if rx.close_reason().is_none() => Message::Text(frame),
                _ => {
                    let frame = protocol::close_for(rx.close_reason());
                    let _ = timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
                    return;
                }
            },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let written = timeout(write_timeout, async {
            sink.feed(first).await?;
            for _ in 0..MAX_BATCH {
                match rx.try_recv() {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // A dead or stalled peer: no close frame can get through.
            return;
        }
    }
}

/// Waits for the writer to end (its close frame is then out), or stops it.
async fn finish(writer: JoinHandle<()>, limit: Duration) {
    let abort = writer.abort_handle();
    if timeout(limit, writer).await.is_err() {
        abort.abort();
    }
}

/// Reads until the peer's close (or the end), so that our own close reply is
/// flushed and the peer's close handshake completes; gives up after `limit`.
async fn drain<S>(stream: &mut S, limit: Duration)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let _ = timeout(limit, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}
