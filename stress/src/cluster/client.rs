//! One WebSocket client of `stress cluster`: says hello with a key, joins its
//! session, and either publishes stamped, numbered messages or reads them,
//! checking each publisher's numbers arrive in order and recording latency as
//! same-node or cross-node. Load clients carry the rest of the wire phase's
//! publication rate in a session of its own, read by one sink per node that only
//! counts frames, so that the WebSocket fan-out stays within the machine.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::paired::Receipt;
use crate::latency::Recorder;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What every client shares.
pub struct Shared {
    pub epoch: Instant,
    pub same_node: Recorder,
    pub cross_node: Recorder,
    pub padding: String,
    /// Messages each publisher sends.
    pub per_publisher: u64,
    pub interval: Duration,
    /// Messages each load client sends, and how far apart.
    pub per_load: u64,
    pub load_interval: Duration,
    /// Load messages sent, per node.
    pub load_sent: Box<[AtomicU64]>,
    /// `publish_failed` errors the load clients got, per node: the publishing node's
    /// sink got those locally, the other nodes' sinks never see them.
    pub load_failed: Box<[AtomicU64]>,
    /// Load messages each node's sink received.
    pub sunk: Box<[AtomicU64]>,
    pub nodes: usize,
    /// Messages sent, per publishing node.
    pub sent: Box<[AtomicU64]>,
    /// `publish_failed` errors each publisher got.
    pub failed: Box<[AtomicU64]>,
    pub delivered: AtomicU64,
    pub out_of_order: AtomicU64,
    pub other_errors: AtomicU64,
}

/// Where a client runs and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub node: usize,
    pub index: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stamped, numbered messages to the measured session.
    Publisher,
    /// Reads the measured session.
    Listener,
    /// Publishes to the load session without joining it.
    Load,
    /// The load session's one member on its node; counts frames.
    Sink,
}

/// Bytes a client reads at most per system call. tungstenite zeroes this much of
/// its read buffer before every read (128 KiB by default), which was the harness's
/// largest cost outside the kernel; a node writer's flush is at most 64 frames
/// (about 19 KB at the default size), so one read still takes a whole flush.
const READ_BUFFER: usize = 32 * 1024;

/// The session the stamped messages go to.
pub const MEASURED: &str = "stress";
/// The session the load goes to.
pub const LOAD: &str = "load";

/// What one listener saw, per publishing node: the numbers it received.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub role: Option<Role>,
    /// Per publishing node: messages received.
    pub received: Vec<u64>,
    /// Per publishing node: the highest number seen, plus one (0 if none).
    pub high: Vec<u64>,
    /// Whether the connection ended before the run did (its node was killed).
    pub cut: bool,
    /// The close frame, if the server sent one, as `code reason`.
    pub close: Option<String>,
    /// Every stamped message received, for the paired figure (`paired.rs`):
    /// bounded by what the publishers send.
    pub receipts: Vec<Receipt>,
}

#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    data: Option<Stamp>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
    s: u64,
    n: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ready,
    Publishing,
    Closing,
}

pub async fn connect(url: &str, role: Role) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let key = format!("n{}-{:?}{}", role.node, role.kind, role.index);
    let session = match role.kind {
        Kind::Publisher | Kind::Listener => Some(MEASURED),
        Kind::Sink => Some(LOAD),
        Kind::Load => None,
    };
    let hello = format!(r#"{{"type":"hello","key":"{key}"}}"#);
    let join = session.map(|s| format!(r#"{{"type":"join","session":"{s}"}}"#));
    for (frame, answer) in std::iter::once((hello, "welcome")).chain(join.map(|j| (j, "joined"))) {
        ws.send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Inbound<'_>>(&t) {
                    Ok(f) if f.kind == answer => break,
                    Ok(f) if f.kind == "error" => return Err(format!("{key}: {t}")),
                    _ => {}
                },
                Some(Ok(_)) => {}
                _ => return Err(format!("{key}: closed while joining")),
            }
        }
    }
    Ok(ws)
}

pub async fn run(
    shared: Arc<Shared>,
    role: Role,
    mut ws: Ws,
    mut phase: watch::Receiver<Phase>,
) -> Seen {
    let n = shared.nodes;
    let mut seen = Seen {
        role: Some(role),
        received: vec![0; n],
        high: vec![0; n],
        cut: false,
        close: None,
        receipts: Vec::new(),
    };
    let mut next = tokio::time::Instant::now();
    let mut published = 0u64;
    loop {
        let now = *phase.borrow();
        if now == Phase::Closing {
            break;
        }
        let (quota, interval) = match role.kind {
            Kind::Publisher => (shared.per_publisher, shared.interval),
            Kind::Load => (shared.per_load, shared.load_interval),
            Kind::Listener | Kind::Sink => (0, Duration::MAX),
        };
        let due = now == Phase::Publishing && published < quota;
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match role.kind {
                    Kind::Sink => {
                        shared.sunk[role.node].fetch_add(1, Relaxed);
                    }
                    Kind::Load => {
                        if text.contains("publish_failed") {
                            shared.load_failed[role.node].fetch_add(1, Relaxed);
                        } else {
                            shared.other_errors.fetch_add(1, Relaxed);
                        }
                    }
                    Kind::Publisher | Kind::Listener => on_text(&shared, role, &mut seen, &text),
                },
                Some(Ok(Message::Close(frame))) => {
                    seen.cut = true;
                    seen.close = Some(frame.map_or_else(
                        || "no close frame".to_owned(),
                        |f| format!("{} {}", u16::from(f.code), f.reason),
                    ));
                    return seen;
                }
                Some(Err(_)) | None => {
                    seen.cut = true;
                    return seen;
                }
                Some(Ok(_)) => {}
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                next = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(next), if due => {
                // A publisher sends one frame per wake. A load client sends every
                // frame its schedule has made due by now, in one write: woken late
                // on a busy machine, it catches up without a system call (and a
                // loopback TCP segment, the harness's largest cost) per frame.
                let batch = match role.kind {
                    Kind::Load => due_now(next, tokio::time::Instant::now(), interval, quota - published),
                    _ => 1,
                };
                let session = if role.kind == Kind::Load { LOAD } else { MEASURED };
                let mut written = Ok(());
                for _ in 0..batch {
                    let t = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let frame = format!(
                        r#"{{"type":"publish","session":"{session}","data":{{"t":{t},"s":{published},"n":{},"p":"{}"}}}}"#,
                        role.node, shared.padding
                    );
                    written = ws.feed(Message::text(frame)).await;
                    if written.is_err() {
                        break;
                    }
                    published += 1;
                    next += interval;
                }
                if written.is_ok() {
                    written = ws.flush().await;
                }
                if written.is_err() {
                    seen.cut = true;
                    return seen;
                }
                if role.kind == Kind::Load {
                    shared.load_sent[role.node].fetch_add(batch, Relaxed);
                } else {
                    shared.sent[role.node].store(published, Relaxed);
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    seen
}

/// Frames a load client writes at once, at most: a burst this size is what one
/// node writer flush holds (64 frames), so a late client catches up within a few wakes
/// rather than in one write that would hold its node's reader.
const MAX_BURST: u64 = 64;

/// How many frames are due at `now` for a client whose next frame was due at
/// `next`, one every `interval`, with `left` still to send: at least one (it was
/// woken because `next` passed), at most [`MAX_BURST`] and `left`.
fn due_now(
    next: tokio::time::Instant,
    now: tokio::time::Instant,
    interval: Duration,
    left: u64,
) -> u64 {
    let late = now.saturating_duration_since(next).as_nanos();
    let behind = late / interval.as_nanos().max(1);
    u64::try_from(behind)
        .unwrap_or(u64::MAX)
        .saturating_add(1)
        .min(MAX_BURST)
        .min(left)
}

fn on_text(shared: &Shared, role: Role, seen: &mut Seen, text: &str) {
    let Ok(f) = serde_json::from_str::<Inbound<'_>>(text) else {
        shared.other_errors.fetch_add(1, Relaxed);
        return;
    };
    if f.kind == "error" {
        if f.code.as_deref() == Some("publish_failed") {
            shared.failed[role.node].fetch_add(1, Relaxed);
        } else {
            shared.other_errors.fetch_add(1, Relaxed);
        }
        return;
    }
    let Some(stamp) = f.data else { return };
    if stamp.n >= seen.high.len() {
        shared.other_errors.fetch_add(1, Relaxed);
        return;
    }
    let at = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let latency = at.saturating_sub(stamp.t);
    if stamp.n == role.node {
        shared.same_node.record(latency);
    } else {
        shared.cross_node.record(latency);
    }
    // In order: each number above every one seen before. A jump is a loss, counted later.
    if stamp.s < seen.high[stamp.n] {
        shared.out_of_order.fetch_add(1, Relaxed);
    } else {
        seen.high[stamp.n] = stamp.s + 1;
    }
    seen.receipts.push(Receipt {
        from: stamp.n,
        seq: stamp.s,
        at,
    });
    seen.received[stamp.n] += 1;
    shared.delivered.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::{due_now, MAX_BURST};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_late_load_client_sends_what_its_schedule_made_due_and_no_more() {
        let ms = Duration::from_millis(1);
        let next = Instant::now();
        // On time, or early by less than a frame: one.
        assert_eq!(due_now(next, next, ms, 100), 1);
        assert_eq!(due_now(next, next + ms / 2, ms, 100), 1);
        // Woken 3.5 ms late: frames due at +0, +1, +2 and +3 ms.
        assert_eq!(due_now(next, next + ms * 3 + ms / 2, ms, 100), 4);
        // Never past its quota, never more than a burst.
        assert_eq!(due_now(next, next + ms * 3, ms, 2), 2);
        assert_eq!(due_now(next, next + ms * 1000, ms, 10_000), MAX_BURST);
        // A wake before `next` (the runtime may not be late) still sends the one frame it was woken for.
        assert_eq!(due_now(next + ms, next, ms, 100), 1);
    }
}
