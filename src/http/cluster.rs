//! `GET /cluster` and the cluster's lines in `/metrics`, for a node built with
//! [`Cluster`].

use std::fmt::Write as _;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::cluster_feed::Tap;
use super::error::ApiError;
use super::events::ClusterFeed;
use super::{authorized, build_with, AdminConfig, AdminConfigError};
use crate::cluster::{Cluster, ClusterStats, NodeInfo};
use crate::{BroadcastReport, SessionId};

/// The admin API of [`router_with_encoder`](super::router_with_encoder) for a
/// cluster node, plus `GET /cluster`, and the cluster's counters in `/metrics`:
/// `switchboard_cluster_published_total`, `switchboard_cluster_publish_failed_total`,
/// `switchboard_cluster_received_total`, `switchboard_cluster_gaps_total`,
/// `switchboard_cluster_reordered_total`, `switchboard_cluster_malformed_total`,
/// `switchboard_cluster_undeliverable_total`, `switchboard_cluster_lagged_total`,
/// `switchboard_cluster_redis_round_trips_total`, `switchboard_cluster_reconnects_total`
/// and the gauge `switchboard_cluster_subscriptions`. The dashboard's `/events`
/// snapshots then carry the cluster too: this node, its subscriptions and gaps,
/// every live node, and node-down events for the live feed.
///
/// `GET /cluster` answers `{"node", "stats", "subscriptions",
/// "more_subscriptions", "nodes", "more_nodes", "redis_error"}`: this node's
/// [`ClusterStats`], the sessions it is subscribed to (the first
/// [`MAX_SUBSCRIPTIONS_LISTED`] in order, with a count of the rest),
/// every live node with its client count, subscriptions, gaps, heartbeat age and
/// state ([`NodeInfo`]),
/// and, while Redis cannot be reached, `nodes: null` and the error.
///
/// `POST /sessions/{id}/broadcast` goes through [`Cluster::broadcast`]: this
/// node's members get the message and one publication carries it to every other
/// node's, so a session whose members are all elsewhere is no 404. It answers
/// this node's [`BroadcastReport`] plus `"published": true`. If the publication
/// fails, the answer is `publish_failed` with `kind` and `local` (this node's
/// report) beside `error` and `detail`: 503 for `redis`, `busy` and `closed` (this
/// node's members got it, other nodes did not; a retry reaches this node's members
/// twice), 413 for `too_large` (over the cluster's `max_payload`) and 422 for
/// `codec` (no member got either).
///
/// # Errors
///
/// As [`router_with`](super::router_with).
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use switchboard::cluster::{Cluster, Raw};
/// use switchboard::http::{router_with_cluster, AdminConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = switchboard::Registry::<Arc<str>>::new();
/// let cluster = Cluster::builder(registry, Raw).connect().await?;
/// let router = router_with_cluster(cluster, AdminConfig::new(), |_, body| {
///     Arc::from(body.to_string())
/// })?;
/// # let _ = router;
/// # Ok(()) }
/// ```
pub fn router_with_cluster<M, F>(
    cluster: Cluster<M>,
    config: AdminConfig,
    encode: F,
) -> Result<Router, AdminConfigError>
where
    M: Clone + Send + Sync + 'static,
    F: Fn(&SessionId, serde_json::Value) -> M + Send + Sync + 'static,
{
    config.validate()?;
    let token: Option<Box<[u8]>> = config
        .token
        .clone()
        .map(|t| t.into_bytes().into_boxed_slice());
    let for_metrics = cluster.clone();
    let for_events = cluster.clone();
    let for_broadcast = cluster.clone();
    let admin = build_with(
        cluster.registry().clone(),
        config,
        Box::new(encode),
        Some(Box::new(move || render(&for_metrics.stats()))),
        Some(Box::new(move || -> Box<dyn ClusterFeed> {
            Box::new(Tap::new(for_events.clone()))
        })),
        Some(Box::new(move |session, msg| {
            Box::pin(broadcast(for_broadcast.clone(), session, msg))
        })),
    );
    let guarded = Router::new()
        .route("/cluster", get(show::<M>))
        .route_layer(middleware::from_fn(move |request: Request, next: Next| {
            let token = token.clone();
            async move {
                if !authorized(&request, token.as_deref()) {
                    return ApiError::unauthorized().into_response();
                }
                next.run(request).await
            }
        }))
        .with_state(cluster);
    Ok(admin.merge(guarded))
}

/// What a cluster node's `POST /sessions/{id}/broadcast` did: this node's
/// delivery, and that the message was published for the other nodes.
#[derive(Serialize)]
struct Published {
    #[serde(flatten)]
    local: BroadcastReport,
    published: bool,
}

/// `POST /sessions/{id}/broadcast` on a cluster node: this node's members get the
/// message, and one publication carries it to every other node's. A session with
/// no member here is no error: its members may all be elsewhere.
async fn broadcast<M: Clone + Send + Sync + 'static>(
    cluster: Cluster<M>,
    session: SessionId,
    msg: M,
) -> Result<Response, ApiError> {
    let (local, published) = cluster.publish_session(session, None, msg).await;
    match published {
        Ok(()) => Ok(Json(Published {
            local,
            published: true,
        })
        .into_response()),
        Err(e) => Err(ApiError::publish_failed(&e, local)),
    }
}

/// Sessions `GET /cluster` lists, at most: a node may be subscribed to any
/// number, one per session its clients joined.
pub const MAX_SUBSCRIPTIONS_LISTED: usize = 1_000;

#[derive(Serialize)]
struct ClusterView {
    node: String,
    stats: ClusterStats,
    subscriptions: Vec<SessionId>,
    /// Subscriptions `subscriptions` leaves out, for [`MAX_SUBSCRIPTIONS_LISTED`].
    more_subscriptions: usize,
    nodes: Option<Vec<NodeInfo>>,
    /// Live nodes `nodes` leaves out, for the node's bound.
    more_nodes: u64,
    redis_error: Option<String>,
}

/// `GET /cluster`.
async fn show<M: Clone + Send + Sync + 'static>(State(cluster): State<Cluster<M>>) -> Response {
    let (nodes, more_nodes, redis_error) = match cluster.nodes().await {
        Ok(nodes) => (Some(nodes.nodes), nodes.omitted, None),
        Err(e) => (None, 0, Some(e.to_string())),
    };
    let mut subscriptions = cluster.subscriptions().await;
    let more_subscriptions = subscriptions.len().saturating_sub(MAX_SUBSCRIPTIONS_LISTED);
    subscriptions.sort_unstable();
    subscriptions.truncate(MAX_SUBSCRIPTIONS_LISTED);
    Json(ClusterView {
        node: cluster.node_id().to_owned(),
        stats: cluster.stats(),
        subscriptions,
        more_subscriptions,
        nodes,
        more_nodes,
        redis_error,
    })
    .into_response()
}

/// The cluster's counters in Prometheus text.
fn render(s: &ClusterStats) -> String {
    let mut out = String::new();
    let node = s.node.replace(['\\', '"', '\n'], "_");
    for (name, kind, help, value) in [
        (
            "switchboard_cluster_published_total",
            "counter",
            "Publications Redis accepted.",
            s.published,
        ),
        (
            "switchboard_cluster_publish_failed_total",
            "counter",
            "Publications that failed and came back to their caller.",
            s.publish_failed,
        ),
        (
            "switchboard_cluster_received_total",
            "counter",
            "Publications received from other nodes.",
            s.received,
        ),
        (
            "switchboard_cluster_gaps_total",
            "counter",
            "Publications from other nodes that never arrived, from gaps in their numbering.",
            s.gaps,
        ),
        (
            "switchboard_cluster_reordered_total",
            "counter",
            "Publications from other nodes that arrived behind a later one.",
            s.reordered,
        ),
        (
            "switchboard_cluster_malformed_total",
            "counter",
            "Publications dropped as invalid: bad frames, payloads or numbering.",
            s.malformed,
        ),
        (
            "switchboard_cluster_undeliverable_total",
            "counter",
            "Direct sends for a key no longer held here, or refused by its client.",
            s.undeliverable,
        ),
        (
            "switchboard_cluster_lagged_total",
            "counter",
            "Publications the Redis client dropped before this node read them.",
            s.lagged,
        ),
        (
            "switchboard_cluster_redis_round_trips_total",
            "counter",
            "Batches sent to Redis to carry publications.",
            s.round_trips,
        ),
        (
            "switchboard_cluster_reconnects_total",
            "counter",
            "Reconnections to Redis.",
            s.reconnects,
        ),
        (
            "switchboard_cluster_subscriptions",
            "gauge",
            "Session channels this node is subscribed to.",
            s.subscriptions,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
        );
    }
    out
}
