//! The admin API: an [`axum::Router`] that lets operators inspect and steer a
//! [`Registry`]. Behind the `http` cargo feature (on by default).
//!
//! The application mounts the router on a listener of its choosing, normally a
//! loopback one, beside its own client-facing server. The router bounds a request
//! body's size ([`AdminConfig::body_limit`]) and the time it takes to arrive
//! ([`AdminConfig::body_timeout`]), but not the request head, which hyper reads
//! before the router sees anything: `axum::serve` gives hyper no timer, so a peer
//! that sends its request head slowly, or not at all, holds its connection for
//! ever. The `ws_server` example serves through hyper's HTTP/1 builder with a
//! header read timeout instead.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use switchboard::http::{self, AdminConfig};
//! use switchboard::Registry;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A registry whose messages are JSON values: the broadcast body is the message.
//! let registry: Registry<serde_json::Value> = Registry::new();
//! let on_loopback = http::router(registry.clone());
//!
//! // Any other message type: say how a broadcast body becomes one.
//! let frames: Registry<std::sync::Arc<str>> = Registry::new();
//! let addr: SocketAddr = "10.0.0.5:9090".parse()?;
//! let config = AdminConfig::for_addr(addr).token(std::env::var("ADMIN_TOKEN").unwrap_or("dev".into()));
//! let on_lan = http::router_with_encoder(frames, config, |session, body| {
//!     serde_json::json!({ "type": "message", "session": session, "data": body }).to_string().into()
//! })?;
//! // axum::serve(tokio::net::TcpListener::bind(addr).await?, on_lan).await?;
//! # let _ = (on_loopback, on_lan);
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! | Method and path | Answer |
//! | --- | --- |
//! | `GET /clients` | `{"clients": [profile + "id"], "next_cursor"}`; filters below |
//! | `GET /clients/{key}` | the profile, plus `"id"`, `"sessions"` and open `"tasks"` |
//! | `DELETE /clients/{key}?reason=text` | kicks the client; `{"id", "key", "reason", "sessions", "cancelled_tasks"}` |
//! | `GET /sessions` | `{"sessions": [{"id", "members"}], "next_cursor"}` |
//! | `GET /sessions/{id}` | `{"id", "count", "members": [{"id", "key"}], "next_cursor"}` |
//! | `POST /sessions/{id}/broadcast` | the JSON body goes to every member; answers the [`BroadcastReport`](crate::BroadcastReport) (with [`router_with_cluster`], of this node's members, plus `"published": true`) |
//! | `GET /stats` | [`Stats`](crate::Stats) as JSON |
//! | `GET /metrics` | Prometheus text (below) |
//! | `GET /healthz` | `{"status": "ok"}`, without authentication, for probes |
//! | `GET /events` | Server-Sent Events: a `snapshot` each second for the dashboard (see [Dashboard](#dashboard)) |
//! | `GET /dashboard` | the operations page, without authentication (it holds no data; it asks for the token) |
//! | `GET /cluster` | with [`router_with_cluster`] (the `cluster` feature): this node, its cluster counters and subscriptions, and every live node with its client count |
//!
//! **Filters of `GET /clients`** map onto [`Filter`](crate::Filter), so they only
//! see profiled clients (those with a key, kind or platform): `kind` (`device` or
//! `orchestrator`), `platform` (any case), `capability` (repeat it; every one must
//! match), `tag`, and `connected_within`, a duration written as one or more
//! `<integer><unit>` parts with units `ms`, `s`, `m`, `h` and `d` (`500ms`, `30s`,
//! `5m`, `1h30m`, `7d`).
//!
//! **Paging.** List endpoints take `limit` (1 to 1000, default 100) and `cursor`,
//! the `next_cursor` of the previous page (`null` on the last). Items are in a
//! stable order (client ids, session ids), so a client that comes or goes between
//! pages never makes another appear twice.
//!
//! **Path segments.** `{key}` is a client key; if no client has that key, a client
//! id in its display form (`c0.12.1`) is tried. `{id}` names a session: decimal
//! digits are a numeric [`SessionId`], anything else a name, and the prefix
//! `name:` forces a name (`/sessions/name:42` is the session named `"42"`, not the
//! number 42). Listings give ids as JSON numbers or strings, as [`SessionId`]
//! serialises.
//!
//! **The broadcast body** must be sent with `Content-Type: application/json`
//! (a form post from a browser page cannot then reach a loopback API without a CORS
//! preflight, which is never granted), be at most the configured
//! [`body_limit`](AdminConfig::body_limit), and wholly arrive within the
//! [`body_timeout`](AdminConfig::body_timeout) of its head. [`router`] and
//! [`router_with`] need `M: From<serde_json::Value>` (`serde_json::Value` itself,
//! `Arc<Value>`, or an application enum with that impl); [`router_with_encoder`]
//! takes a closure from the session and the body to any message type, for
//! registries of pre-serialised frames (`Arc<str>`, `Bytes`).
//!
//! # Errors
//!
//! Every failure is a 4xx with the body `{"error": code, "detail": text}`; bad input
//! never gets a 500.
//!
//! | Status | `error` | When |
//! | --- | --- | --- |
//! | 400 | `unknown_parameter` | a query parameter the endpoint does not take |
//! | 400 | `invalid_filter` | `kind` other than device/orchestrator; malformed `connected_within` |
//! | 400 | `invalid_parameter` | `limit` out of range; a parameter repeated or empty; a reason over 256 bytes |
//! | 400 | `invalid_cursor` | a cursor this API did not hand out |
//! | 400 | `invalid_path` | a path segment that is not valid percent-encoded UTF-8 |
//! | 400 | `malformed_json` | a broadcast body that is not JSON |
//! | 400 | `invalid_body` | a body that could not be read |
//! | 401 | `unauthorized` | a token is configured and the request lacks it |
//! | 404 | `unknown_client` | no connected client has the key or id |
//! | 404 | `unknown_session` | no open session has the id |
//! | 404 | `not_found` | no such endpoint |
//! | 405 | `method_not_allowed` | the endpoint exists, the method does not |
//! | 408 | `body_timeout` | the body had not wholly arrived within the body timeout; the connection is then closed |
//! | 413 | `body_too_large` | the body is over the limit |
//! | 415 | `unsupported_media_type` | the broadcast body is not declared as JSON |
//! | 503, 413, 422 | `publish_failed` | with [`router_with_cluster`]: the broadcast was not published (see there) |
//!
//! # Authentication
//!
//! With a token configured, every endpoint but `/healthz` requires
//! `Authorization: Bearer <token>`, compared in constant time (the comparison's
//! work depends only on the configured token's length). A token is optional when
//! the router is served on loopback and required otherwise: [`router_with`]
//! refuses a config that says it is bound beyond loopback and has no token
//! ([`AdminConfigError::TokenRequired`]). The config cannot see the socket; the
//! application states the bind with [`AdminConfig::for_addr`].
//!
//! # Dashboard
//!
//! `GET /dashboard` is a self-contained page (HTML, script, style and the
//! vendored uPlot chart library, all embedded in the binary) that follows
//! `GET /events`: clients by kind and platform, sessions, tasks, deliveries, drops
//! and disconnects per second over the last five minutes, the largest sessions,
//! and a feed of presence events. Each `snapshot` event's data is one JSON object
//! (`clients`, `devices`, `orchestrators`, `other`, `by_platform`, `sessions`,
//! `tasks`, `totals`, `rates`, `top_sessions`, `events`, `skipped_events`,
//! `cluster`). `cluster` is `null` unless the router was built with
//! [`router_with_cluster`], whose snapshots carry `{"node", "subscriptions",
//! "gaps", "nodes", "more_nodes", "redis_error", "events", "skipped_events"}`:
//! every live node ([`NodeInfo`](crate::cluster::NodeInfo)) and the cluster events
//! for the page's feed. The stream is bounded: at most 16 at once (then 503
//! `too_many_subscribers`), at most 200 presence events a snapshot, and a
//! subscriber that reads slowly skips snapshots and events instead of buffering
//! them. With a token configured, `/events` needs it like every other endpoint;
//! the page asks for it and sends it as a bearer header, never in a URL.
//!
//! # Metrics
//!
//! `GET /metrics` renders, through the `metrics` crate and a recorder owned by the
//! router (no global recorder is installed):
//!
//! * `switchboard_clients{kind="device"|"orchestrator"|"other"}`,
//!   `switchboard_sessions`, `switchboard_tasks`: gauges read from
//!   [`Registry::stats`] at scrape time;
//! * `switchboard_messages_delivered_total`, `switchboard_messages_dropped_total`,
//!   `switchboard_messages_closed_total`, `switchboard_clients_disconnected_total`:
//!   the registry's running totals, as counters;
//! * `switchboard_admin_broadcast_fanout_seconds`: a histogram of the time each
//!   admin broadcast took to reach every member's queue (with a cluster, this
//!   node's members' queues and Redis).

mod body;
mod clients;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
mod cluster_feed;
mod config;
mod dashboard;
mod error;
mod events;
mod metrics;
mod params;
mod sessions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

#[cfg(feature = "cluster")]
pub use cluster::{router_with_cluster, MAX_SUBSCRIPTIONS_LISTED};
pub use config::{AdminConfig, AdminConfigError};

use self::error::ApiError;
use self::metrics::Metrics;
use crate::{Registry, SessionId};

/// Turns a broadcast body into the registry's message type.
type Encoder<M> = Box<dyn Fn(&SessionId, serde_json::Value) -> M + Send + Sync>;

/// More Prometheus text appended to `/metrics` (the cluster's counters).
type ExtraMetrics = Box<dyn Fn() -> String + Send + Sync>;

/// A broadcast of the encoded message to the session through the cluster instead
/// of the registry; the future is the whole answer.
type ClusterBroadcast<M> = Box<
    dyn Fn(SessionId, M) -> Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>
        + Send
        + Sync,
>;

/// What every handler shares.
struct Admin<M> {
    registry: Registry<M>,
    encode: Encoder<M>,
    token: Option<Box<[u8]>>,
    body_limit: usize,
    body_timeout: Duration,
    metrics: Metrics,
    subscribers: events::Subscribers,
    extra_metrics: Option<ExtraMetrics>,
    cluster_feeds: Option<events::ClusterFeeds>,
    /// With [`router_with_cluster`]: `POST /sessions/{id}/broadcast` goes to
    /// every node, not only this registry's members.
    cluster_broadcast: Option<ClusterBroadcast<M>>,
}

type Shared<M> = Arc<Admin<M>>;

/// The admin API for a registry served on loopback, without a token, with the
/// default body limit. A broadcast body becomes a message through `M::from`.
///
/// # Examples
///
/// ```
/// let registry = switchboard::Registry::<serde_json::Value>::new();
/// let router: axum::Router = switchboard::http::router(registry);
/// # let _ = router;
/// ```
pub fn router<M>(registry: Registry<M>) -> Router
where
    M: From<serde_json::Value> + Clone + Send + Sync + 'static,
{
    build(
        registry,
        AdminConfig::new(),
        Box::new(|_, body| M::from(body)),
    )
}

/// The admin API with the given settings. A broadcast body becomes a message
/// through `M::from`.
///
/// # Errors
///
/// [`AdminConfigError`] if the config is bound beyond loopback without a token, has
/// an empty token, or a body limit or body timeout of zero.
///
/// # Examples
///
/// ```
/// use switchboard::http::{router_with, AdminConfig};
///
/// let registry = switchboard::Registry::<serde_json::Value>::new();
/// let router = router_with(registry, AdminConfig::new().token("s3cret"))?;
/// # let _ = router;
/// # Ok::<(), switchboard::http::AdminConfigError>(())
/// ```
pub fn router_with<M>(
    registry: Registry<M>,
    config: AdminConfig,
) -> Result<Router, AdminConfigError>
where
    M: From<serde_json::Value> + Clone + Send + Sync + 'static,
{
    router_with_encoder(registry, config, |_, body| M::from(body))
}

/// The admin API for a registry of any message type: `encode` turns the session
/// and the JSON body of `POST /sessions/{id}/broadcast` into the message, once per
/// broadcast (a broadcast then clones it per member).
///
/// # Errors
///
/// As [`router_with`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use switchboard::http::{router_with_encoder, AdminConfig};
///
/// // A registry of pre-serialised text frames.
/// let registry = switchboard::Registry::<Arc<str>>::new();
/// let router = router_with_encoder(registry, AdminConfig::new(), |session, body| {
///     Arc::from(serde_json::json!({ "session": session, "data": body }).to_string())
/// })?;
/// # let _ = router;
/// # Ok::<(), switchboard::http::AdminConfigError>(())
/// ```
pub fn router_with_encoder<M, F>(
    registry: Registry<M>,
    config: AdminConfig,
    encode: F,
) -> Result<Router, AdminConfigError>
where
    M: Clone + Send + Sync + 'static,
    F: Fn(&SessionId, serde_json::Value) -> M + Send + Sync + 'static,
{
    config.validate()?;
    Ok(build(registry, config, Box::new(encode)))
}

/// Assembles the router; `config` is already valid.
fn build<M>(registry: Registry<M>, config: AdminConfig, encode: Encoder<M>) -> Router
where
    M: Clone + Send + Sync + 'static,
{
    build_with(registry, config, encode, None, None, None)
}

/// As [`build`], with more text for `/metrics`, a cluster for `/events`, and
/// broadcasts through the cluster.
fn build_with<M>(
    registry: Registry<M>,
    config: AdminConfig,
    encode: Encoder<M>,
    extra_metrics: Option<ExtraMetrics>,
    cluster_feeds: Option<events::ClusterFeeds>,
    cluster_broadcast: Option<ClusterBroadcast<M>>,
) -> Router
where
    M: Clone + Send + Sync + 'static,
{
    let admin = Arc::new(Admin {
        registry,
        encode,
        token: config.token.map(|t| t.into_bytes().into_boxed_slice()),
        body_limit: config.body_limit,
        body_timeout: config.body_timeout,
        metrics: Metrics::new(),
        subscribers: events::Subscribers::new(),
        extra_metrics,
        cluster_feeds,
        cluster_broadcast,
    });
    let guarded = Router::new()
        .route("/clients", get(clients::list::<M>))
        .route(
            "/clients/{key}",
            get(clients::show::<M>).delete(clients::kick::<M>),
        )
        .route("/sessions", get(sessions::list::<M>))
        .route("/sessions/{id}", get(sessions::show::<M>))
        .route("/sessions/{id}/broadcast", post(sessions::broadcast::<M>))
        .route("/stats", get(stats::<M>))
        .route("/metrics", get(scrape::<M>))
        .route("/events", get(events::stream::<M>))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&admin),
            authenticate::<M>,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(dashboard::routes())
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(middleware::from_fn_with_state(
            config.body_timeout,
            body::deadline,
        ))
        .with_state(admin)
}

/// Lets a request through if no token is configured or it bears the token.
async fn authenticate<M>(State(admin): State<Shared<M>>, request: Request, next: Next) -> Response {
    if !authorized(&request, admin.token.as_deref()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

/// Whether `request` may pass: no token is configured, or it bears the token.
pub(crate) fn authorized(request: &Request, expected: Option<&[u8]>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|given| token_matches(given.as_bytes(), expected))
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Compares in time that depends only on `expected`'s length: `given` is first cut
/// or zero-padded to that length, and the lengths are compared in constant time too.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut padded = vec![0u8; expected.len()];
    let n = given.len().min(expected.len());
    padded[..n].copy_from_slice(&given[..n]);
    let same_bytes = padded.as_slice().ct_eq(expected);
    let same_len = (given.len() as u64).ct_eq(&(expected.len() as u64));
    (same_bytes & same_len).into()
}

/// `GET /stats`.
async fn stats<M>(State(admin): State<Shared<M>>) -> Response {
    Json(admin.registry.stats()).into_response()
}

/// `GET /metrics`.
async fn scrape<M>(State(admin): State<Shared<M>>) -> Response {
    let mut text = admin.metrics.render(&admin.registry.stats());
    if let Some(extra) = &admin.extra_metrics {
        text.push_str(&extra());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`.
async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"s3cret\0"] {
            assert!(!token_matches(wrong, b"s3cret"), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
