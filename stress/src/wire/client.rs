//! One WebSocket client: connect, `hello`, `join` its session and wait for `joined`, then
//! read every frame until told to stop; the session's publisher also sends numbered,
//! time-stamped messages at a steady pace.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::latency::Recorder;
use crate::wire::loss::{Member, Seen};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the run is; every client watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting and joining; nobody publishes.
    Joining,
    /// Publishers publish.
    Publishing,
    /// Close normally and report.
    Closing,
}

/// Counters every client adds to.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections whose WebSocket handshake failed.
    pub connect_failures: AtomicU64,
    /// `error` frames received.
    pub error_frames: AtomicU64,
    /// Connections that ended (close frame, EOF, I/O or protocol error) before `Closing`.
    pub unexpected_closes: AtomicU64,
    /// Frames that were not the JSON the protocol promises.
    pub bad_frames: AtomicU64,
    /// Messages out of order or repeated.
    pub out_of_order: AtomicU64,
    /// Messages received in order, all clients.
    pub delivered: AtomicU64,
    /// Clients that finished joining, or gave up.
    pub settled: AtomicU64,
    /// Clients that joined.
    pub joined: AtomicU64,
    /// Nanoseconds from the start of the connect phase to the last handshake done.
    pub last_connect_ns: AtomicU64,
    /// Messages sent by each session's publisher.
    pub sent: Box<[AtomicU64]>,
    /// Publishers that have sent all they will.
    pub publishers_done: AtomicU64,
    /// Publishers that joined.
    pub publishers: AtomicU64,
    /// Members other than the publisher that joined, per session.
    pub listeners: Box<[AtomicU64]>,
    /// Nanoseconds since the epoch of the last message received.
    pub last_delivery_ns: AtomicU64,
}

impl Counters {
    /// Counters for `sessions` sessions.
    pub fn new(sessions: usize) -> Self {
        Self {
            sent: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
            listeners: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }
}

/// What every client shares.
#[derive(Debug)]
pub struct Shared {
    /// `ws://HOST:PORT/ws`.
    pub url: String,
    /// Time zero of the stamps in `data` (same process, so one clock for both ends).
    pub epoch: Instant,
    /// Delivery latencies.
    pub latency: Recorder,
    /// The counters.
    pub counters: Counters,
    /// Connection attempts in flight.
    pub connecting: Semaphore,
    /// Messages each publisher sends.
    pub per_publisher: u64,
    /// Pause between two messages of one publisher.
    pub interval: Duration,
    /// Padding added to `data`.
    pub padding: String,
}

/// One client's part in the run.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    /// Its session (a numbered session id on the server).
    pub session: usize,
    /// Whether it publishes.
    pub publisher: bool,
}

/// The part of an inbound frame the harness reads.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    data: Option<Stamp>,
}

/// What publishers put in `data` (plus padding, ignored here).
#[derive(Deserialize)]
struct Stamp {
    /// Nanoseconds since [`Shared::epoch`] when it was sent.
    t: u64,
    /// The publisher's sequence number, from 0.
    s: u64,
}

/// Why a client stopped early.
struct Ended;

/// Runs one client to the end and says what it saw.
pub async fn run(shared: Arc<Shared>, role: Role, mut phase: watch::Receiver<Phase>) -> Member {
    let mut member = Member {
        session: role.session,
        publisher: role.publisher,
        joined: false,
        received: 0,
    };
    let c = &shared.counters;
    let ws = connect(&shared).await;
    let Some(mut ws) = ws else {
        c.connect_failures.fetch_add(1, Relaxed);
        c.settled.fetch_add(1, Relaxed);
        return member;
    };
    let mut seen = Seen::default();
    let joined = join(&mut ws, &shared, role.session).await;
    c.settled.fetch_add(1, Relaxed);
    if joined.is_err() {
        return member;
    }
    member.joined = true;
    c.joined.fetch_add(1, Relaxed);
    if role.publisher {
        c.publishers.fetch_add(1, Relaxed);
    } else {
        c.listeners[role.session].fetch_add(1, Relaxed);
    }

    let mut next_publish = tokio::time::Instant::now();
    let mut published = 0u64;
    loop {
        let now = *phase.borrow();
        if now == Phase::Closing {
            break;
        }
        let publishing = role.publisher && now == Phase::Publishing;
        let publish_due = publishing && published < shared.per_publisher;
        tokio::select! {
            frame = ws.next() => {
                if on_frame(frame, &shared, &mut seen).is_err() {
                    c.unexpected_closes.fetch_add(1, Relaxed);
                    member.received = seen.received;
                    if role.publisher && published < shared.per_publisher {
                        c.publishers_done.fetch_add(1, Relaxed);
                    }
                    return member;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                next_publish = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(next_publish), if publish_due => {
                let frame = publish(&shared, role.session, published);
                if ws.send(Message::text(frame)).await.is_err() {
                    c.unexpected_closes.fetch_add(1, Relaxed);
                    c.publishers_done.fetch_add(1, Relaxed);
                    member.received = seen.received;
                    return member;
                }
                published += 1;
                c.sent[role.session].store(published, Relaxed);
                if published == shared.per_publisher {
                    c.publishers_done.fetch_add(1, Relaxed);
                }
                next_publish += shared.interval;
            }
        }
    }
    member.received = seen.received;
    close(ws).await;
    member
}

/// Opens the connection, holding one of the in-flight permits while it does.
async fn connect(shared: &Shared) -> Option<Ws> {
    let _permit = shared.connecting.acquire().await.ok()?;
    // Nagle off, as the server has it: a publish is one small frame that should leave now.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(shared.url.as_str(), None, true)
        .await
        .ok()?;
    let ns = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared.counters.last_connect_ns.fetch_max(ns, Relaxed);
    Some(ws)
}

/// `hello`, then `join`, each answered before the next.
async fn join(ws: &mut Ws, shared: &Shared, session: usize) -> Result<(), Ended> {
    let c = &shared.counters;
    let steps = [
        (r#"{"type":"hello"}"#.to_owned(), "welcome"),
        (
            format!(r#"{{"type":"join","session":{session}}}"#),
            "joined",
        ),
    ];
    for (frame, answer) in steps {
        if ws.send(Message::text(frame)).await.is_err() {
            c.unexpected_closes.fetch_add(1, Relaxed);
            return Err(Ended);
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Inbound<'_>>(&text) {
                    Ok(f) if f.kind == answer => break,
                    Ok(f) if f.kind == "error" => {
                        c.error_frames.fetch_add(1, Relaxed);
                        return Err(Ended);
                    }
                    _ => {
                        c.bad_frames.fetch_add(1, Relaxed);
                    }
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    c.unexpected_closes.fetch_add(1, Relaxed);
                    return Err(Ended);
                }
                Some(Ok(_)) => {}
            }
        }
    }
    Ok(())
}

/// The `publish` frame for message `seq` of `session`, stamped now.
fn publish(shared: &Shared, session: usize, seq: u64) -> String {
    let t = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    format!(
        r#"{{"type":"publish","session":{session},"data":{{"t":{t},"s":{seq},"p":"{}"}}}}"#,
        shared.padding
    )
}

/// Handles one inbound frame; `Err` when the connection is over.
fn on_frame(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    shared: &Shared,
    seen: &mut Seen,
) -> Result<(), Ended> {
    let c = &shared.counters;
    match frame {
        Some(Ok(Message::Text(text))) => {
            let at = shared.epoch.elapsed().as_nanos();
            match serde_json::from_str::<Inbound<'_>>(&text) {
                Ok(Inbound {
                    data: Some(stamp), ..
                }) => {
                    let before = seen.received;
                    seen.record(stamp.s);
                    if seen.received > before {
                        c.delivered.fetch_add(1, Relaxed);
                        let at = u64::try_from(at).unwrap_or(u64::MAX);
                        c.last_delivery_ns.fetch_max(at, Relaxed);
                    } else {
                        c.out_of_order.fetch_add(1, Relaxed);
                    }
                    let ns =
                        u64::try_from(at.saturating_sub(u128::from(stamp.t))).unwrap_or(u64::MAX);
                    shared.latency.record(ns);
                }
                Ok(f) if f.kind == "error" => {
                    c.error_frames.fetch_add(1, Relaxed);
                }
                _ => {
                    c.bad_frames.fetch_add(1, Relaxed);
                }
            }
            Ok(())
        }
        Some(Ok(Message::Close(_)) | Err(_)) | None => Err(Ended),
        // Pings are answered by tungstenite itself when it next flushes.
        Some(Ok(_)) => Ok(()),
    }
}

/// Closes with 1000 and reads until the server's answer (bounded). Anything still
/// arriving now is past the drain deadline and no longer counted.
async fn close(mut ws: Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
