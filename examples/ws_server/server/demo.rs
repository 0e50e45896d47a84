//! The demo room page at `/`, and the member list it shows.
//!
//! `GET /` is one self-contained HTML page (`examples/ws_server/demo.html`, embedded
//! at compile time): pick a name and a room, join, publish, and watch the close
//! code and reason when the server ends the connection. The name is the client's
//! `key`, so a second tab with the same name takes over (close 4002), and an
//! operator can kick it by name (`DELETE /clients/{name}`, close 4001).
//!
//! `GET /rooms/{room}` answers `{"room", "count", "members": [names]}`, the names of
//! at most [`MAX_LISTED`] members, sorted. The page polls it while joined (every
//! 2 s, and more slowly in big rooms: each answer lists the whole room once): the
//! protocol has no presence frames, and this keeps the example's protocol as it is.
//! Anyone who can reach the WebSocket port can read it, as they could join the room.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::Shared;

const PAGE: &str = include_str!("../demo.html");

/// Names listed per room; the count is always exact.
pub const MAX_LISTED: usize = 100;
/// The longest room name the page accepts, in bytes.
pub const MAX_ROOM: usize = 64;

/// `GET /`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

#[derive(Serialize)]
struct Room {
    room: String,
    count: usize,
    members: Vec<String>,
}

/// `GET /rooms/{room}`.
pub async fn room(
    State(shared): State<Arc<Shared>>,
    room: Result<Path<String>, PathRejection>,
) -> Response {
    // A segment that does not decode to UTF-8 is a bad name too, answered as one
    // rather than with the framework's plain-text rejection.
    let room = room.map(|Path(room)| room).unwrap_or_default();
    if room.is_empty() || room.len() > MAX_ROOM {
        let detail = format!("a room name is 1 to {MAX_ROOM} bytes");
        let body = serde_json::json!({ "error": "bad_room", "detail": detail });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    // An unknown room is an empty one: the page asks before anyone has joined.
    let ids = shared.registry.members(room.as_str()).unwrap_or_default();
    let count = ids.len();
    let mut members: Vec<String> = ids
        .into_iter()
        .filter_map(|id| shared.registry.info(id).ok()?.key.clone())
        .take(MAX_LISTED)
        .collect();
    members.sort_unstable();
    Json(Room {
        room,
        count,
        members,
    })
    .into_response()
}
