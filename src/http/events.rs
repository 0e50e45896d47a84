//! `GET /events`: the dashboard's live feed, as Server-Sent Events.
//!
//! Every [`TICK`] the stream sends one `snapshot` event whose data is a JSON
//! [`Snapshot`]: the registry's sizes, delivery totals and per-second rates, the
//! largest sessions, and the presence events since the last tick. One message per
//! tick, whatever the traffic, so a dashboard at 1,000 messages per second renders
//! once a second, not a thousand times.
//!
//! # Bounds
//!
//! * At most [`MAX_SUBSCRIBERS`] streams at once per router; one more gets 503
//!   `too_many_subscribers`.
//! * Nothing is buffered per subscriber beyond the snapshot being written: the
//!   stream is polled only when the connection has room, and presence events wait
//!   in the registry's shared, bounded event buffer. A subscriber that falls
//!   behind skips: missed ticks are not replayed, events the buffer dropped and
//!   events beyond [`MAX_EVENTS`] per tick are counted in `skipped_events`.
//! * Lists are capped: [`TOP_SESSIONS`] sessions and [`TOP_PLATFORMS`] platforms
//!   (the rest summed), since platforms are strings clients choose.
//! * With a cluster, its part of the snapshot ([`ClusterFeed`]) follows the same
//!   rules: its events wait in the cluster's shared, bounded buffer, and its lists
//!   are capped (see `src/http/cluster.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Interval, MissedTickBehavior};

use super::error::ApiError;
use super::Shared;
use crate::{Event, Registry, SessionId, Stats};

/// How often a snapshot is sent.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// Concurrent `/events` streams per router.
pub(crate) const MAX_SUBSCRIBERS: usize = 16;
/// Presence events carried by one snapshot; the rest of a burst is skipped.
pub(crate) const MAX_EVENTS: usize = 200;
/// Sessions listed, largest first.
pub(crate) const TOP_SESSIONS: usize = 10;
/// Platforms listed, most clients first; the rest are summed into `other_platforms`.
pub(crate) const TOP_PLATFORMS: usize = 20;

/// The `cluster` part of one subscriber's snapshots: each call gives the next
/// one. Built per stream by the router's [`ClusterFeeds`], so that each subscriber
/// follows the cluster's events on its own, as it does the registry's.
pub(crate) trait ClusterFeed: Send {
    /// The `cluster` field of the next snapshot. It must answer within a tick
    /// even when the cluster's store does not.
    fn next(&mut self) -> BoxFuture<'_, serde_json::Value>;
}

/// Makes a [`ClusterFeed`] for each new stream; `None` on a single node.
pub(crate) type ClusterFeeds = Box<dyn Fn() -> Box<dyn ClusterFeed> + Send + Sync>;

/// The router's subscriber limit.
pub(crate) struct Subscribers(Arc<Semaphore>);

impl Subscribers {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Semaphore::new(MAX_SUBSCRIBERS)))
    }
}

/// One `snapshot` event's data.
#[derive(Serialize)]
struct Snapshot {
    /// Milliseconds since the Unix epoch, on the server's clock.
    t: u64,
    clients: usize,
    devices: usize,
    orchestrators: usize,
    /// Clients that are neither devices nor orchestrators.
    other: usize,
    /// `[platform, clients]`, most clients first.
    by_platform: Vec<(String, usize)>,
    /// Clients on platforms beyond the first [`TOP_PLATFORMS`].
    other_platforms: usize,
    sessions: usize,
    tasks: usize,
    totals: Totals,
    /// Per second since the previous snapshot; `None` in the first.
    rates: Option<Rates>,
    top_sessions: Vec<SessionSize>,
    events: Vec<Event>,
    skipped_events: u64,
    /// The cluster, from the router's [`ClusterFeed`]; `None` (JSON `null`) on a
    /// single node, and the dashboard then hides its cluster section.
    cluster: Option<serde_json::Value>,
}

#[derive(Serialize, Clone, Copy)]
struct Totals {
    delivered: u64,
    dropped: u64,
    closed: u64,
    disconnected: u64,
}

#[derive(Serialize)]
struct Rates {
    delivered: f64,
    dropped: f64,
    disconnected: f64,
}

#[derive(Serialize, PartialEq, Eq)]
struct SessionSize {
    members: usize,
    id: SessionId,
}

/// Bigger is larger: more members, then, among equals, the smaller id, so that
/// ties list in id order (`room-1` before `room-2`).
impl Ord for SessionSize {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.members
            .cmp(&other.members)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for SessionSize {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What one stream carries from tick to tick.
struct Feed<M> {
    registry: Registry<M>,
    events: broadcast::Receiver<Event>,
    tick: Interval,
    last: Option<(Instant, Totals)>,
    cluster: Option<Box<dyn ClusterFeed>>,
    /// Held for the stream's life: one of [`MAX_SUBSCRIBERS`].
    _permit: OwnedSemaphorePermit,
}

/// `GET /events`.
pub(crate) async fn stream<M>(State(admin): State<Shared<M>>) -> Response
where
    M: Clone + Send + Sync + 'static,
{
    let Ok(permit) = Arc::clone(&admin.subscribers.0).try_acquire_owned() else {
        return ApiError::too_many_subscribers(MAX_SUBSCRIBERS).into_response();
    };
    let mut tick = tokio::time::interval(TICK);
    // A stream the client reads slowly skips ticks rather than bunching them.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let feed = Feed {
        registry: admin.registry.clone(),
        events: admin.registry.subscribe(),
        tick,
        last: None,
        cluster: admin.cluster_feeds.as_ref().map(|make| make()),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.tick.tick().await;
        let cluster = match &mut feed.cluster {
            Some(cluster) => Some(cluster.next().await),
            None => None,
        };
        let snapshot = feed.snapshot(cluster);
        // Serialising plain data cannot fail; an empty event would be harmless.
        let event = SseEvent::default()
            .event("snapshot")
            .json_data(&snapshot)
            .unwrap_or_default();
        Some((Ok::<_, Infallible>(event), feed))
    });
    (
        // A proxy must not hold the stream back.
        [("x-accel-buffering", "no"), ("cache-control", "no-store")],
        Sse::new(stream),
    )
        .into_response()
}

impl<M> Feed<M> {
    /// The next snapshot, with `cluster` as its cluster field.
    fn snapshot(&mut self, cluster: Option<serde_json::Value>) -> Snapshot {
        let (events, skipped_events) = self.drain();
        let stats = self.registry.stats();
        let now = Instant::now();
        let totals = Totals {
            delivered: stats.delivered,
            dropped: stats.dropped,
            closed: stats.closed,
            disconnected: stats.disconnected,
        };
        let rates = self.last.map(|(then, before)| {
            let secs = now.duration_since(then).as_secs_f64().max(1e-3);
            let per_second = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            Rates {
                delivered: per_second(totals.delivered, before.delivered),
                dropped: per_second(totals.dropped, before.dropped),
                disconnected: per_second(totals.disconnected, before.disconnected),
            }
        });
        self.last = Some((now, totals));
        let (by_platform, other_platforms) = top_platforms(&stats);
        Snapshot {
            t: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            clients: stats.clients,
            devices: stats.devices,
            orchestrators: stats.orchestrators,
            other: stats
                .clients
                .saturating_sub(stats.devices + stats.orchestrators),
            by_platform,
            other_platforms,
            sessions: stats.sessions,
            tasks: stats.tasks,
            totals,
            rates,
            top_sessions: self.top_sessions(),
            events,
            skipped_events,
            cluster,
        }
    }

    /// The events waiting for this subscriber, at most [`MAX_EVENTS`], and how
    /// many it skipped (lost to the shared buffer, or beyond the cap).
    fn drain(&mut self) -> (Vec<Event>, u64) {
        let mut events = Vec::new();
        let mut skipped = 0u64;
        loop {
            match self.events.try_recv() {
                Ok(event) if events.len() < MAX_EVENTS => events.push(event),
                Ok(_) => skipped += 1,
                Err(TryRecvError::Lagged(n)) => skipped += n,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        (events, skipped)
    }

    /// The [`TOP_SESSIONS`] largest sessions, largest first: one pass over the
    /// session table with a heap of that size.
    fn top_sessions(&self) -> Vec<SessionSize> {
        let mut heap = BinaryHeap::with_capacity(TOP_SESSIONS + 1);
        for id in self.registry.session_ids() {
            // A session that closed since the listing is left out.
            let Ok(members) = self.registry.member_count(&id) else {
                continue;
            };
            heap.push(Reverse(SessionSize { members, id }));
            if heap.len() > TOP_SESSIONS {
                heap.pop();
            }
        }
        // Ascending `Reverse` order is largest first.
        heap.into_sorted_vec().into_iter().map(|r| r.0).collect()
    }
}

/// The [`TOP_PLATFORMS`] most common platforms and the clients on all the others.
fn top_platforms(stats: &Stats) -> (Vec<(String, usize)>, usize) {
    let mut platforms = stats.by_platform.clone();
    platforms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = platforms
        .split_off(TOP_PLATFORMS.min(platforms.len()))
        .iter()
        .map(|(_, n)| n)
        .sum();
    (platforms, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientInfo, ClientKind};

    fn feed(registry: &Registry<u8>) -> Feed<u8> {
        Feed {
            registry: registry.clone(),
            events: registry.subscribe(),
            tick: tokio::time::interval(TICK),
            last: None,
            cluster: None,
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        }
    }

    fn device(key: &str, platform: &str) -> ClientInfo {
        ClientInfo {
            key: Some(key.into()),
            kind: Some(ClientKind::Device),
            platform: Some(platform.into()),
            ..ClientInfo::default()
        }
    }

    #[tokio::test]
    async fn a_snapshot_counts_clients_and_carries_their_events() {
        let registry = Registry::<u8>::new();
        let mut feed = feed(&registry);
        let (_a, _rx_a) = registry.register(device("a", "linux")).unwrap();
        let (b, _rx_b) = registry.register(device("b", "android")).unwrap();
        let _ = registry.unregister(b).unwrap();
        let snap = feed.snapshot(None);
        assert_eq!((snap.clients, snap.devices, snap.other), (1, 1, 0));
        assert_eq!(snap.by_platform, vec![("linux".to_owned(), 1)]);
        let kinds: Vec<_> = snap
            .events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap()["event"].clone())
            .collect();
        assert_eq!(kinds, ["joined", "joined", "left"]);
        assert!(snap.rates.is_none());
        assert!(feed.snapshot(None).rates.is_some());
    }

    #[tokio::test]
    async fn a_burst_beyond_the_cap_is_counted_not_kept() {
        let registry = Registry::<u8>::new();
        let mut feed = feed(&registry);
        let n = MAX_EVENTS + 50;
        let mut held = Vec::new();
        for i in 0..n {
            held.push(registry.register(device(&format!("d{i}"), "x")).unwrap());
        }
        let snap = feed.snapshot(None);
        assert_eq!(snap.events.len(), MAX_EVENTS);
        assert_eq!(snap.skipped_events, 50);
        assert!(feed.snapshot(None).events.is_empty());
    }

    #[tokio::test]
    async fn largest_sessions_come_first_and_are_capped() {
        let registry = Registry::<u8>::new();
        let feed = feed(&registry);
        let mut held = Vec::new();
        for size in 1..=TOP_SESSIONS + 5 {
            for _ in 0..size {
                let (id, rx) = registry.register(ClientInfo::default()).unwrap();
                registry.attach(id, size as u64).unwrap();
                held.push(rx);
            }
        }
        let top = feed.top_sessions();
        let sizes: Vec<_> = top.iter().map(|s| s.members).collect();
        let expected: Vec<_> = (6..=TOP_SESSIONS + 5).rev().collect();
        assert_eq!(sizes, expected);
    }

    #[tokio::test]
    async fn equal_sessions_list_in_id_order() {
        let registry = Registry::<u8>::new();
        let feed = feed(&registry);
        let mut held = Vec::new();
        for session in (0..TOP_SESSIONS as u64 + 5).rev() {
            let (id, rx) = registry.register(ClientInfo::default()).unwrap();
            registry.attach(id, session).unwrap();
            held.push(rx);
        }
        let ids: Vec<_> = feed.top_sessions().into_iter().map(|s| s.id).collect();
        let expected: Vec<SessionId> = (0..TOP_SESSIONS as u64).map(SessionId::from).collect();
        assert_eq!(ids, expected);
    }

    mod over_http {
        use axum::body::Body;
        use axum::http::{header, Request, StatusCode};
        use axum::response::Response;
        use axum::Router;
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        use super::super::MAX_SUBSCRIBERS;
        use crate::http::{router_with, AdminConfig};
        use crate::Registry;

        fn app() -> Router {
            let registry = Registry::<serde_json::Value>::new();
            router_with(registry, AdminConfig::new().token("s3cret")).unwrap()
        }

        async fn get(app: &Router, path: &str, token: Option<&str>) -> Response {
            let mut request = Request::get(path);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request.body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap()
        }

        #[tokio::test]
        async fn the_stream_needs_the_token_and_sends_snapshots() {
            let app = app();
            assert_eq!(
                get(&app, "/events", None).await.status(),
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                get(&app, "/events", Some("wrong")).await.status(),
                StatusCode::UNAUTHORIZED
            );
            let response = get(&app, "/events", Some("s3cret")).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let mut body = response.into_body();
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let text = std::str::from_utf8(&frame).unwrap();
            assert!(text.starts_with("event: snapshot\ndata: {"), "{text}");
            let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            let snapshot: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(snapshot["clients"], 0);
            assert_eq!(snapshot["cluster"], serde_json::Value::Null);
        }

        #[tokio::test]
        async fn one_subscriber_too_many_is_refused_until_one_leaves() {
            let app = app();
            let mut open = Vec::new();
            for _ in 0..MAX_SUBSCRIBERS {
                let response = get(&app, "/events", Some("s3cret")).await;
                assert_eq!(response.status(), StatusCode::OK);
                open.push(response);
            }
            let refused = get(&app, "/events", Some("s3cret")).await;
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = refused.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "too_many_subscribers");
            drop(open.pop());
            assert_eq!(
                get(&app, "/events", Some("s3cret")).await.status(),
                StatusCode::OK
            );
        }

        #[tokio::test]
        async fn the_page_needs_no_token_and_forbids_other_origins() {
            let app = app();
            let page = get(&app, "/dashboard", None).await;
            assert_eq!(page.status(), StatusCode::OK);
            let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(policy.contains("connect-src 'self'"), "{policy}");
            assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
            for asset in [
                "app.js",
                "style.css",
                "uplot.min.js",
                "uplot.min.css",
                "uplot-license.txt",
            ] {
                let path = format!("/dashboard/{asset}");
                assert_eq!(
                    get(&app, &path, None).await.status(),
                    StatusCode::OK,
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn platforms_beyond_the_cap_are_summed() {
        let stats = Stats {
            by_platform: (0..TOP_PLATFORMS + 3)
                .map(|i| (format!("p{i:02}"), i + 1))
                .collect(),
            ..Stats::default()
        };
        let (top, rest) = top_platforms(&stats);
        assert_eq!(top.len(), TOP_PLATFORMS);
        assert_eq!(
            top[0],
            (format!("p{:02}", TOP_PLATFORMS + 2), TOP_PLATFORMS + 3)
        );
        assert_eq!(rest, 1 + 2 + 3);
    }
}
