//! The wire protocol: JSON text frames in and out, error codes and close codes.
//! The table a client author needs is in the example's top-level docs.

use std::borrow::Cow;

use axum::extract::ws::{CloseFrame, Utf8Bytes};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard::{CancelReason, ClientId, CloseReason, SessionId, TaskId};

/// What the registry carries: one pre-serialised text frame. A broadcast clones it
/// per recipient, which is a reference-count increment.
pub type Frame = Utf8Bytes;

/// Close codes. 1000–1011 are RFC 6455's; 4000–4003 are this server's.
pub mod close {
    /// The client closed, or was unregistered by the application.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (for example an unmasked frame).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The registry is full (`max_clients`); try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client's queue was full and it was still slow: it was disconnected by
    /// the slow-consumer policy, or a reply could not be queued within the write
    /// timeout.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// An operator kicked the client (`DELETE /clients/{key}`); the close reason is
    /// the operator's reason, cut to 123 bytes.
    pub const KICKED: u16 = 4001;
    /// A newer connection said `hello` with the same key.
    pub const TAKEN_OVER: u16 = 4002;
    /// Nothing (not even a pong) arrived within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4003;
}

/// A close frame with `code` and `reason`, the reason cut to the 123 bytes a
/// close frame can carry, at a character boundary.
pub fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
}

/// The close frame for a channel the registry closed.
pub fn close_for(reason: Option<&CloseReason>) -> CloseFrame {
    match reason {
        Some(CloseReason::SlowConsumer) => close_frame(close::SLOW_CONSUMER, "slow consumer"),
        Some(CloseReason::Kicked { reason }) => close_frame(close::KICKED, reason),
        Some(CloseReason::TakenOver { .. }) => {
            close_frame(close::TAKEN_OVER, "taken over by a newer connection")
        }
        // Only the registry's own drop closes a channel without a reason: shutdown.
        None => close_frame(close::GOING_AWAY, "server shutting down"),
        Some(_) => close_frame(close::NORMAL, "unregistered"),
    }
}

/// An inbound frame: `type` plus whichever fields that type uses. One flat struct
/// rather than a tagged enum so that `data` can stay raw JSON, copied through to
/// recipients without being parsed into a tree and printed again.
#[derive(Deserialize)]
pub struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub session: Option<SessionId>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub to: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub device: Option<Cow<'a, str>>,
    #[serde(default)]
    pub task: Option<TaskId>,
}

/// Why an inbound frame was refused, as an `error` frame says it.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

impl Refusal {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    pub fn frame(&self) -> Frame {
        encode(&ErrorFrame {
            kind: "error",
            code: self.code,
            detail: &self.detail,
        })
    }
}

/// Parses a text frame: `bad_json` if it is not JSON, `bad_frame` if it is JSON
/// but not an object with a string `type` and well-typed fields.
pub fn parse(text: &str) -> Result<Inbound<'_>, Refusal> {
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refusal::new("bad_frame", e.to_string()),
        _ => Refusal::new("bad_json", e.to_string()),
    })
}

/// A field a frame type requires.
pub fn required<T>(field: Option<T>, kind: &str, name: &str) -> Result<T, Refusal> {
    field.ok_or_else(|| Refusal::new("bad_frame", format!("{kind} needs `{name}`")))
}

/// Serialises an outbound frame. These structs hold only strings, numbers, ids
/// and raw JSON, which cannot fail to serialise.
pub fn encode(frame: &impl Serialize) -> Frame {
    // What `serde_json::to_string` starts with.
    encode_sized(frame, 128)
}

/// As [`encode`], into a buffer of `capacity` bytes to start with: a frame about
/// that long is written without growing it (from 8 bytes, a 300-byte frame grew
/// six times, a copy each, on every publication).
fn encode_sized(frame: &impl Serialize, capacity: usize) -> Frame {
    let mut out = Vec::with_capacity(capacity);
    if serde_json::to_writer(&mut out, frame).is_err() {
        out.clear();
    }
    // serde_json writes UTF-8 only; the check cannot fail, and costs little
    // beside the copy it replaces.
    Utf8Bytes::from(String::from_utf8(out).unwrap_or_default())
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    detail: &'a str,
}

pub fn welcome(id: ClientId) -> Frame {
    #[derive(Serialize)]
    struct Welcome {
        #[serde(rename = "type")]
        kind: &'static str,
        id: ClientId,
    }
    encode(&Welcome {
        kind: "welcome",
        id,
    })
}

/// `joined` or `left`.
pub fn membership(kind: &'static str, session: &SessionId) -> Frame {
    #[derive(Serialize)]
    struct Membership<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        session: &'a SessionId,
    }
    encode(&Membership { kind, session })
}

/// A `message` frame: from a session (`publish`, admin broadcast) or not
/// (`direct`), from a client or not (admin broadcast). `data_len`: about how long
/// `data` is as JSON, so that the frame is written into a buffer of its size.
pub fn message<D: Serialize + ?Sized>(
    session: Option<&SessionId>,
    from: Option<ClientId>,
    data: &D,
    data_len: usize,
) -> Frame {
    #[derive(Serialize)]
    struct Message<'a, D: ?Sized> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a SessionId>,
        from: Option<ClientId>,
        data: &'a D,
    }
    // `{"type":"message","session":"…","from":"…","data":…}`: 64 bytes for the
    // keys, the quotes and an id.
    let name = |s: &SessionId| match s {
        SessionId::Name(name) => name.len(),
        _ => 20,
    };
    let capacity = 64 + session.map_or(0, name) + data_len;
    encode_sized(
        &Message {
            kind: "message",
            session,
            from,
            data,
        },
        capacity,
    )
}

pub fn task_opened(task: TaskId, orchestrator: ClientId, device: ClientId) -> Frame {
    #[derive(Serialize)]
    struct TaskOpened {
        #[serde(rename = "type")]
        kind: &'static str,
        task: TaskId,
        orchestrator: ClientId,
        device: ClientId,
    }
    encode(&TaskOpened {
        kind: "task_opened",
        task,
        orchestrator,
        device,
    })
}

pub fn task_done(task: TaskId) -> Frame {
    #[derive(Serialize)]
    struct TaskDone {
        #[serde(rename = "type")]
        kind: &'static str,
        task: TaskId,
    }
    encode(&TaskDone {
        kind: "task_done",
        task,
    })
}

pub fn task_cancelled(task: TaskId, reason: CancelReason) -> Frame {
    #[derive(Serialize)]
    struct TaskCancelled {
        #[serde(rename = "type")]
        kind: &'static str,
        task: TaskId,
        reason: CancelReason,
    }
    encode(&TaskCancelled {
        kind: "task_cancelled",
        task,
        reason,
    })
}
