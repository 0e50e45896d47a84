//! The cluster layer against a real `redis-server`: two or three nodes (each a
//! `Registry` with its `Cluster`) in one process.
//!
//! Each test starts its own `redis-server` on a free loopback port (never 6379, no
//! system service) with persistence off, in a temporary directory. Without
//! `redis-server` on the PATH each test prints one line saying how to install it
//! and passes; with `SWITCHBOARD_REQUIRE_EXTERNAL=1` it fails instead.

#[path = "common/redis.rs"]
mod redis;
#[allow(
    dead_code,
    reason = "the example's module is shared with its main; not every item is used here"
)]
#[path = "../examples/ws_server/server/mod.rs"]
mod server;
#[path = "common/wait.rs"]
mod wait;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Redis;
use switchboard::cluster::{Cluster, ClusterError, ClusterEvent, Delivered, PublishError, Raw};
use switchboard::{ClientError, ClientInfo, CloseReason, Registry, SessionId};
use wait::{eventually, recv};

type Msg = Arc<str>;

/// This test's own `redis-server`; without one, the test returns after the one
/// line [`Redis::start`] prints (or fails, under `SWITCHBOARD_REQUIRE_EXTERNAL=1`).
macro_rules! redis_or_skip {
    ($test:expr) => {
        match Redis::start($test) {
            Some(redis) => redis,
            None => return,
        }
    };
}

async fn node(redis: &Redis, prefix: &str, id: &str, ttl: Duration) -> Cluster<Msg> {
    node_with(redis, prefix, id, |b| b.ttl(ttl)).await
}

const TTL: Duration = Duration::from_secs(3);

/// `nodes()` as (id, clients), once it equals `want` (client counts are as of each
/// node's last heartbeat, at most a third of the TTL old), or as last seen.
/// The first node-down event within `limit` (of `node`, if given, skipping others):
/// the node, the keys it lists and how many it left out.
async fn node_down(
    events: &mut tokio::sync::broadcast::Receiver<ClusterEvent>,
    node: Option<&str>,
    limit: Duration,
) -> Option<(String, Vec<String>, u64)> {
    tokio::time::timeout(limit, async {
        loop {
            if let Ok(ClusterEvent::NodeDown {
                node: down,
                keys,
                omitted,
            }) = events.recv().await
            {
                if node.is_none_or(|n| n == down) {
                    return (down, keys, omitted);
                }
            }
        }
    })
    .await
    .ok()
}

async fn nodes_settle(n: &Cluster<Msg>, want: &[(&str, u64)]) -> Vec<(String, u64)> {
    let deadline = Instant::now() + TTL;
    loop {
        let got: Vec<(String, u64)> = n
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.id, n.clients))
            .collect();
        let same =
            got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.0 == w.0 && g.1 == w.1);
        if same || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_crosses_nodes_once_and_subscriptions_follow_members() {
    let redis = redis_or_skip!("broadcast_crosses_nodes");
    let (a, b, c) = (
        node(&redis, "t1", "a", TTL).await,
        node(&redis, "t1", "b", TTL).await,
        node(&redis, "t1", "c", TTL).await,
    );
    let channel = "t1:s:s:room";
    assert_eq!(redis.numsub(channel), 0);

    let (a1, mut a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    let (b2, mut b2_rx) = b.register(ClientInfo::new()).await.unwrap();
    a.attach(a1, "room").await.unwrap();
    assert_eq!(redis.numsub(channel), 1, "first local member subscribes");
    b.attach(b1, "room").await.unwrap();
    b.attach(b2, "room").await.unwrap();
    assert_eq!(
        redis.numsub(channel),
        2,
        "one subscription per node, not per member"
    );
    assert_eq!(a.member_count("room").await.unwrap(), 3);

    // A publishes: its own member gets it from the local delivery only (skip-self),
    // B's members get it once through Redis, C (no members) is never involved.
    assert_eq!(a.broadcast("room", Msg::from("one")).await.unwrap(), 1);
    assert_eq!(&*recv(&mut a1_rx).await, "one");
    assert_eq!(&*recv(&mut b1_rx).await, "one");
    assert_eq!(&*recv(&mut b2_rx).await, "one");
    b.broadcast_except("room", b1, Msg::from("two"))
        .await
        .unwrap();
    assert_eq!(&*recv(&mut a1_rx).await, "two");
    assert_eq!(&*recv(&mut b2_rx).await, "two");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a1_rx.try_recv().is_err(),
        "a node must not deliver its own publication twice"
    );
    assert!(b1_rx.try_recv().is_err(), "the author was excluded");
    assert!(b2_rx.try_recv().is_err());
    assert_eq!(c.stats().received, 0);
    assert_eq!(b.stats().received, 1);
    assert_eq!(a.stats().received, 1);

    // Leaving: B stays subscribed while it has a member, and unsubscribes after its last.
    b.detach(b1, "room").await.unwrap();
    assert_eq!(redis.numsub(channel), 2);
    let _ = b.unregister(b2).await.unwrap();
    assert_eq!(redis.numsub(channel), 1, "last local member left");
    assert_eq!(b.subscriptions().await, vec![]);
    assert_eq!(a.member_count("room").await.unwrap(), 1);
    a.detach(a1, "room").await.unwrap();
    assert_eq!(redis.numsub(channel), 0);
    for n in [&a, &b, &c] {
        assert_eq!(n.stats().gaps, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_crosses_nodes() {
    let redis = redis_or_skip!("sharded_pubsub_crosses_nodes");
    let mk = |id: &'static str| {
        Cluster::builder(Registry::<Msg>::new(), Raw)
            .url(redis.url())
            .prefix("t6")
            .node_id(id)
            .sharded(true)
            .connect()
    };
    let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, 7u64).await.unwrap();
    let shard = redis.cli(&["PUBSUB", "SHARDNUMSUB", "t6:s:n:7"]).unwrap();
    assert_eq!(shard.lines().nth(1).map(str::trim), Some("1"), "{shard}");
    a.broadcast(7u64, Msg::from("sharded")).await.unwrap();
    assert_eq!(&*recv(&mut b1_rx).await, "sharded");
    b.detach(b1, 7u64).await.unwrap();
    let shard = redis.cli(&["PUBSUB", "SHARDNUMSUB", "t6:s:n:7"]).unwrap();
    assert_eq!(shard.lines().nth(1).map(str::trim), Some("0"), "{shard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_key_reaches_the_client_on_any_node() {
    let redis = redis_or_skip!("send_to_key");
    let (a, b) = (
        node(&redis, "t2", "a", TTL).await,
        node(&redis, "t2", "b", TTL).await,
    );
    let (_dev, mut dev_rx) = b
        .register(ClientInfo::new().with_key("dev-1"))
        .await
        .unwrap();
    assert_eq!(a.locate("dev-1").await.unwrap().as_deref(), Some("b"));
    assert_eq!(
        a.send_to_key("dev-1", Msg::from("reboot")).await.unwrap(),
        Delivered::Remote("b".into())
    );
    assert_eq!(&*recv(&mut dev_rx).await, "reboot");
    assert_eq!(
        b.send_to_key("dev-1", Msg::from("local")).await.unwrap(),
        Delivered::Local
    );
    assert_eq!(&*recv(&mut dev_rx).await, "local");
    let missing = a
        .send_to_key("nobody", Msg::from("lost?"))
        .await
        .unwrap_err();
    assert_eq!(&*missing.into_inner(), "lost?", "the message comes back");

    let nodes = nodes_settle(&a, &[("a", 0), ("b", 1)]).await;
    assert_eq!(nodes, vec![("a".to_owned(), 0), ("b".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_race_leaves_one_holder_cluster_wide() {
    let redis = redis_or_skip!("takeover_race");
    let nodes = [
        node(&redis, "t3", "a", TTL).await,
        node(&redis, "t3", "b", TTL).await,
        node(&redis, "t3", "c", TTL).await,
    ];
    let mut events = nodes[0].events();
    let (_first, mut first_rx) = nodes[0]
        .register(ClientInfo::new().with_key("dev"))
        .await
        .unwrap();
    for round in 0..20 {
        // B and C register the same key at once; A (or the last winner) loses it.
        let (b, c) = tokio::join!(
            nodes[1].register(ClientInfo::new().with_key("dev")),
            nodes[2].register(ClientInfo::new().with_key("dev")),
        );
        let (b_id, mut b_rx) = b.unwrap();
        let (c_id, mut c_rx) = c.unwrap();
        let holder = nodes[0]
            .locate("dev")
            .await
            .unwrap()
            .expect("someone holds it");
        let online = |n: &Cluster<Msg>| n.registry().is_online("dev");
        let (loser, loser_rx) = if holder == "b" {
            (c_id, &mut c_rx)
        } else {
            (b_id, &mut b_rx)
        };
        // The loser's node closes it when the notice arrives: its key stops
        // resolving first, its close reason is set after, its slot freed last.
        let settled = eventually(Duration::from_secs(10), || {
            nodes.iter().filter(|n| online(n)).count() == 1 && loser_rx.close_reason().is_some()
        })
        .await;
        assert!(
            settled,
            "round {round}: more than one connection holds the key, or the loser was not closed"
        );
        let winner = nodes.iter().find(|n| online(n)).unwrap();
        assert_eq!(
            winner.node_id(),
            holder,
            "round {round}: Redis and the nodes agree"
        );
        assert!(matches!(
            loser_rx.close_reason(),
            Some(CloseReason::TakenOver { .. })
        ));
        // B and C drop their connections for the next round. The loser may still
        // be listed while its node finishes closing it: then it is already gone,
        // and only it may be.
        for n in &nodes[1..] {
            let ids = n.registry().client_ids();
            for id in ids {
                match n.unregister(id).await {
                    Ok(_) => {}
                    Err(ClusterError::Client(ClientError::Gone(gone))) if gone == loser => {}
                    Err(e) => panic!("round {round}: unregistering {id:?}: {e:?}"),
                }
            }
        }
        assert_eq!(
            nodes.iter().filter(|n| online(n)).count(),
            0,
            "round {round}: the key outlived its connections"
        );
    }
    assert!(matches!(
        first_rx.close_reason(),
        Some(CloseReason::TakenOver { .. })
    ));
    assert!(first_rx.recv().await.is_none());
    let ev = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    assert!(
        matches!(ev, Ok(Ok(ClusterEvent::TakenOver { ref key, .. })) if key == "dev"),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropped_without_cleanup_is_released_within_its_ttl() {
    let redis = redis_or_skip!("dropped_node_expires");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t4", "a", ttl).await;
    let b = node(&redis, "t4", "b", ttl).await;
    let (d, _d_rx) = b
        .register(ClientInfo::new().with_key("dev-9"))
        .await
        .unwrap();
    b.attach(d, "room").await.unwrap();
    assert_eq!(a.member_count("room").await.unwrap(), 1);
    assert_eq!(a.locate("dev-9").await.unwrap().as_deref(), Some("b"));
    let mut events = a.events();

    let dropped = Instant::now();
    drop(b); // no shutdown: a crash, as far as Redis can tell
    let down = node_down(&mut events, None, ttl + Duration::from_secs(1))
        .await
        .expect("node-down within TTL + 1 s");
    let took = dropped.elapsed();
    assert_eq!(down, ("b".to_owned(), vec!["dev-9".to_owned()], 0));
    assert!(took <= ttl + Duration::from_secs(1), "{took:?}");
    assert_eq!(a.locate("dev-9").await.unwrap(), None);
    assert_eq!(a.member_count("room").await.unwrap(), 0);
    let ids: Vec<_> = a.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, vec!["a".to_owned()]);
    // Its connections went with it: nothing is left subscribed.
    let gone = eventually(Duration::from_secs(10), || redis.numsub("t4:s:s:room") == 0).await;
    assert!(
        gone,
        "the dropped node's subscriber connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fails_publishes_resumes_and_counts_the_gap_exactly() {
    let mut redis = redis_or_skip!("redis_restart");
    let a = node(&redis, "t5", "a", TTL).await;
    let b = node(&redis, "t5", "b", TTL).await;
    let (a1, _a1_rx) = a.register(ClientInfo::new().with_key("pub")).await.unwrap();
    let (b1, mut b1_rx) = b.register(ClientInfo::new().with_key("sub")).await.unwrap();
    a.attach(a1, "room").await.unwrap();
    b.attach(b1, "room").await.unwrap();
    for i in 0..10 {
        a.broadcast("room", Msg::from(format!("before {i}")))
            .await
            .unwrap();
    }
    for i in 0..10 {
        assert_eq!(*recv(&mut b1_rx).await, *format!("before {i}"));
    }

    redis.kill();
    // Every publish while Redis is down fails and gives the message back.
    let down = 5;
    for i in 0..down {
        let msg = Msg::from(format!("during {i}"));
        match a.broadcast("room", msg.clone()).await {
            Err(e @ PublishError::Redis(..)) => assert_eq!(e.into_inner(), msg),
            other => panic!("publish {i} while Redis is down: {other:?}"),
        }
    }

    redis.spawn().expect("redis-server restarts on its port");
    let restarted = Instant::now();
    // Resubscribed by itself: no call into the cluster is needed for that.
    let resubscribed =
        eventually(Duration::from_secs(1), || redis.numsub("t5:s:s:room") == 2).await;
    assert!(
        resubscribed,
        "both nodes subscribe again within 1 s of the restart"
    );
    // Their own channels too: direct sends, takeover notices, node-down notices.
    let own = eventually(Duration::from_secs(1), || {
        redis.numsub("t5:node:a") == 1
            && redis.numsub("t5:node:b") == 1
            && redis.numsub("t5:ctl") == 2
    })
    .await;
    assert!(own, "node and ctl channels are subscribed again");
    // Delivery resumes: publish until one gets through; each failure is one more gap.
    let mut n = 0;
    loop {
        let sent = a.broadcast("room", Msg::from(format!("after {n}"))).await;
        n += 1;
        if sent.is_ok() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(1),
            "publishing still fails"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = recv(&mut b1_rx).await;
    assert_eq!(*first, *format!("after {}", n - 1));
    assert!(
        restarted.elapsed() < Duration::from_secs(1),
        "{:?}",
        restarted.elapsed()
    );

    let failed = a.stats().publish_failed;
    assert!(failed >= down);
    assert_eq!(
        b.stats().gaps,
        failed,
        "the gap is exactly what failed to cross"
    );
    assert!(a.stats().reconnects >= 1 && b.stats().reconnects >= 1);

    // Presence was re-announced into the empty Redis: keys and counts are back.
    let back = eventually(Duration::from_secs(10), || {
        redis
            .cli(&["HGET", "{t5}:keys", "sub"])
            .is_some_and(|v| v.ends_with("|b"))
    })
    .await;
    assert!(back, "node b re-announced its key");
    assert_eq!(a.locate("sub").await.unwrap().as_deref(), Some("b"));
    assert_eq!(a.member_count("room").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_the_cluster_and_its_gaps() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let redis = redis_or_skip!("admin_api_cluster");
    let a = node(&redis, "t7", "a", TTL).await;
    let b = node(&redis, "t7", "b", TTL).await;
    let (b1, _b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    let config = switchboard::http::AdminConfig::new().token("t0ken");
    let router = switchboard::http::router_with_cluster(b.clone(), config, |_, body| {
        Msg::from(body.to_string())
    })
    .unwrap();
    let get = |path: &str, token: bool| {
        let mut req = axum::http::Request::get(path);
        if token {
            req = req.header("authorization", "Bearer t0ken");
        }
        router
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
    };
    nodes_settle(&b, &[("a", 0), ("b", 1)]).await;
    assert_eq!(get("/cluster", false).await.unwrap().status(), 401);
    let res = get("/cluster", true).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(view["node"], "b");
    assert_eq!(view["subscriptions"], serde_json::json!(["room"]));
    let nodes: Vec<_> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].clone(), n["clients"].clone()))
        .collect();
    assert_eq!(nodes, vec![("a".into(), 0.into()), ("b".into(), 1.into())]);

    a.broadcast("room", Msg::from("1")).await.unwrap();
    // A gap: a publication numbered past the last one b saw from a node, as
    // after a loss. The node is made up: a's epoch is its own.
    let frame = |seq: u64| broadcast_frame("z", 1, seq, b"x");
    publish_raw(&redis, "t7:s:s:room", &frame(1));
    publish_raw(&redis, "t7:s:s:room", &frame(5)); // 2, 3 and 4 never came
    let gapped = eventually(Duration::from_secs(10), || b.stats().gaps == 3).await;
    assert!(gapped, "{:?}", b.stats());
    let res = get("/metrics", true).await.unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("switchboard_cluster_gaps_total{node=\"b\"} 3"),
        "{text}"
    );

    // What a peer sent that this node dropped is in /metrics too.
    publish_raw(&redis, "t7:s:s:room", b"\x02\x00\x04bad!");
    let dropped = eventually(Duration::from_secs(10), || b.stats().malformed == 1).await;
    assert!(dropped, "{:?}", b.stats());
    let res = get("/metrics", true).await.unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for line in [
        "switchboard_cluster_malformed_total{node=\"b\"} 1",
        "switchboard_cluster_reordered_total{node=\"b\"} 0",
        "switchboard_cluster_undeliverable_total{node=\"b\"} 0",
        "switchboard_cluster_lagged_total{node=\"b\"} 0",
    ] {
        assert!(text.contains(line), "no {line:?} in {text}");
    }
    assert!(
        text.contains("switchboard_clients{"),
        "the registry's own lines stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_broadcast_on_a_cluster_node_reaches_every_node() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut redis = redis_or_skip!("admin_broadcast_cluster");
    let a = node(&redis, "t32", "a", TTL).await;
    let b = node(&redis, "t32", "b", TTL).await;
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "lobby").await.unwrap();
    let router = switchboard::http::router_with_cluster(
        a.clone(),
        switchboard::http::AdminConfig::new(),
        |_, body| Msg::from(body.to_string()),
    )
    .unwrap();
    let post = |text: &'static str| {
        let req = axum::http::Request::post("/sessions/lobby/broadcast")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(text))
            .unwrap();
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, json)
        }
    };

    // Every member is on b: a's admin API still broadcasts, through Redis.
    let (status, report) = post(r#"{"n":1}"#).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(&*recv(&mut b1_rx).await, r#"{"n":1}"#);
    assert_eq!(report["published"], true, "{report}");
    assert_eq!(report["delivered"], 0, "{report}");

    // With a member on a too: delivered here once, counted, and published once.
    let (a1, mut a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    a.attach(a1, "lobby").await.unwrap();
    let (status, report) = post(r#"{"n":2}"#).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["recipients"].clone(), report["delivered"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(&*recv(&mut a1_rx).await, r#"{"n":2}"#);
    assert_eq!(&*recv(&mut b1_rx).await, r#"{"n":2}"#);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a1_rx.try_recv().is_err(),
        "a delivers its own publication once"
    );
    assert!(b1_rx.try_recv().is_err(), "b gets one copy");

    // Redis gone: a clear error naming the failure, and what this node delivered.
    redis.kill();
    let (status, error) = post(r#"{"n":3}"#).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"], "publish_failed", "{error}");
    assert_eq!(error["kind"], "redis", "{error}");
    assert_eq!(error["local"]["delivered"], 1, "{error}");
    assert_eq!(&*recv(&mut a1_rx).await, r#"{"n":3}"#);
}

/// The next `snapshot` event's data from a `/events` body.
async fn next_snapshot(body: &mut axum::body::Body) -> serde_json::Value {
    use http_body_util::BodyExt;
    let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("a snapshot within 3 s")
        .expect("the stream goes on")
        .expect("a frame")
        .into_data()
        .expect("data");
    let text = std::str::from_utf8(&frame).unwrap();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {text:?}"));
    serde_json::from_str(data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_events_carry_the_nodes_and_node_down() {
    use tower::ServiceExt;

    let mut redis = redis_or_skip!("dashboard_cluster");
    let a = node(&redis, "t8", "a", TTL).await;
    let b = node(&redis, "t8", "b", TTL).await;
    let (b1, _b1_rx) = b
        .register(ClientInfo::new().with_key("dev-1"))
        .await
        .unwrap();
    let (b2, _b2_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    b.attach(b2, "hall").await.unwrap();
    let (_a1, _a1_rx) = a
        .register(ClientInfo::new().with_key("dev-2"))
        .await
        .unwrap();
    nodes_settle(&b, &[("a", 1), ("b", 2)]).await;
    let router = switchboard::http::router_with_cluster(
        b.clone(),
        switchboard::http::AdminConfig::new(),
        |_, body| Msg::from(body.to_string()),
    )
    .unwrap();
    let res = router
        .oneshot(
            axum::http::Request::get("/events")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();

    let snap = next_snapshot(&mut body).await;
    let cluster = &snap["cluster"];
    assert_eq!(cluster["node"], "b", "{snap}");
    let nodes: Vec<_> = cluster["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {cluster}"))
        .iter()
        .map(|n| (n["id"].clone(), n["clients"].clone(), n["state"].clone()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("a".into(), 1.into(), "up".into()),
            ("b".into(), 2.into(), "up".into())
        ]
    );
    for n in cluster["nodes"].as_array().unwrap() {
        let age = n["heartbeat_age_ms"].as_u64().expect("a heartbeat age");
        assert!(age <= TTL.as_millis() as u64, "{n}");
    }
    assert_eq!(cluster["subscriptions"], 2);
    assert_eq!(cluster["gaps"], 0);

    // Node a leaves: its departure, with the key it held, reaches the feed.
    a.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let down = loop {
        assert!(Instant::now() < deadline, "no node_down in the feed");
        let snap = next_snapshot(&mut body).await;
        let found = snap["cluster"]["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["event"] == "node_down").cloned());
        if let Some(event) = found {
            break (event, snap);
        }
    };
    let (event, snap) = down;
    assert_eq!(event["node"], "a", "{event}");
    assert_eq!(event["keys"], serde_json::json!(["dev-2"]), "{event}");
    let ids: Vec<_> = snap["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::Value::from("b")]);

    // Redis stuck (nothing answers, nothing closes): snapshots keep coming, and
    // say why the nodes are unknown. The snapshot waits for Redis less than the
    // node's own command timeout (2 s), so a tick is late by that wait at most.
    redis.freeze();
    let deadline = Instant::now() + Duration::from_secs(3);
    let unanswered = loop {
        assert!(Instant::now() < deadline, "no redis_error in the snapshots");
        let snap = next_snapshot(&mut body).await;
        if snap["cluster"]["redis_error"].is_string() {
            break snap;
        }
    };
    let cluster = &unanswered["cluster"];
    assert_eq!(cluster["nodes"], serde_json::Value::Null, "{cluster}");
    assert!(
        cluster["redis_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer within")),
        "the snapshot's own wait ran out first: {cluster}"
    );
    assert_eq!(cluster["node"], "b", "{cluster}");
    assert_eq!(
        unanswered["clients"], 2,
        "the registry's part is unaffected"
    );
    redis.kill();

    // Redis gone: the same, from a failed call rather than a wait.
    let snap = next_snapshot(&mut body).await;
    assert!(snap["cluster"]["redis_error"].is_string(), "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_nodes_share_rooms_keys_and_takeover() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    let redis = redis_or_skip!("ws_server_nodes");
    let start = |id: &str| {
        server::Server::start(server::Config {
            ws_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: None,
            close_linger: Duration::from_millis(200),
            redis: Some(redis.url()),
            node_id: Some(id.to_owned()),
            ..server::Config::default()
        })
    };
    let (a, b) = (start("gw-a").await.unwrap(), start("gw-b").await.unwrap());
    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
    async fn open(addr: std::net::SocketAddr, hello: Value) -> Ws {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        ws.send(Message::text(hello.to_string())).await.unwrap();
        assert_eq!(next(&mut ws).await["type"], "welcome");
        ws
    }
    async fn next(ws: &mut Ws) -> Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return json!({"close": f.map(|f| u16::from(f.code))})
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no frame: {other:?}"),
            }
        }
    }
    let mut dev = open(a.ws_addr(), json!({"type": "hello", "key": "dev"})).await;
    dev.send(Message::text(
        json!({"type": "join", "session": "room"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut dev).await["type"], "joined");
    let mut ops = open(b.ws_addr(), json!({"type": "hello", "key": "ops"})).await;

    // A publish on node b reaches the room's member on node a, its frame crossing
    // Redis as the bytes node b's members get; a direct to a key too.
    let data = json!({"n": 1, "s": "é ✓", "list": [null, true, 2.5]});
    ops.send(Message::text(
        json!({"type": "publish", "session": "room", "data": data}).to_string(),
    ))
    .await
    .unwrap();
    let got = next(&mut dev).await;
    assert_eq!(
        (
            got["type"].clone(),
            got["session"].clone(),
            got["data"].clone()
        ),
        (json!("message"), json!("room"), data),
        "{got}"
    );
    ops.send(Message::text(
        json!({"type": "direct", "to": "dev", "data": 2}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut dev).await["data"], 2);

    // The same key on node b takes over: node a closes its connection with 4002.
    let _dev2 = open(b.ws_addr(), json!({"type": "hello", "key": "dev"})).await;
    assert_eq!(next(&mut dev).await, json!({"close": 4002}));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_id_that_cannot_travel_is_refused() {
    for bad in ["", "has space", "x".repeat(65).as_str(), "ünï"] {
        let r = Cluster::builder(Registry::<Msg>::new(), Raw)
            .url("redis://127.0.0.1:1")
            .node_id(bad)
            .connect()
            .await;
        assert!(
            matches!(r, Err(switchboard::cluster::ClusterError::Config(_))),
            "{bad:?}: {r:?}"
        );
    }
}

/// An empty prefix is refused before anything connects: on Redis Cluster the
/// presence keys share the hash tag `{prefix}`, and `{}` is no hash tag.
#[tokio::test]
async fn an_empty_prefix_is_refused() {
    for sharded in [false, true] {
        let r = Cluster::builder(Registry::<Msg>::new(), Raw)
            .url("redis://127.0.0.1:1")
            .prefix("")
            .sharded(sharded)
            .connect()
            .await;
        assert!(
            matches!(r, Err(switchboard::cluster::ClusterError::EmptyPrefix)),
            "sharded {sharded}: {r:?}"
        );
    }
}

/// Publishes raw bytes to `channel`, as any client of the Redis server can.
fn publish_raw(redis: &Redis, channel: &str, bytes: &[u8]) {
    publish_raw_with(redis, "PUBLISH", channel, bytes);
}

/// [`publish_raw`] with `command`: `PUBLISH` or `SPUBLISH`.
fn publish_raw_with(redis: &Redis, command: &str, channel: &str, bytes: &[u8]) {
    let status = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args(["-x", command, channel])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait()
        });
    assert!(status.is_ok_and(|s| s.success()));
}

/// A broadcast frame (format version 2) as node `node` writes it.
fn broadcast_frame(node: &str, epoch: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2u8, 0, u8::try_from(node.len()).unwrap()];
    f.extend_from_slice(node.as_bytes());
    f.extend_from_slice(&epoch.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A bundle frame (kind 4) as node `node` writes it: broadcasts numbered from
/// `first`, one per payload; `count` is written as given.
fn bundle_frame(node: &str, epoch: u32, first: u64, count: u16, payloads: &[&[u8]]) -> Vec<u8> {
    let mut f = vec![2u8, 4, u8::try_from(node.len()).unwrap()];
    f.extend_from_slice(node.as_bytes());
    f.extend_from_slice(&epoch.to_be_bytes());
    f.extend_from_slice(&first.to_be_bytes());
    f.extend_from_slice(&count.to_be_bytes());
    for p in payloads {
        f.extend_from_slice(&u32::try_from(p.len()).unwrap().to_be_bytes());
        f.extend_from_slice(p);
    }
    f
}

/// Bundles and single broadcast frames (what a node from before bundles sends)
/// from one node, interleaved: every payload arrives once, in order; a lost
/// bundle is as many gaps as it had numbers; a malformed bundle is refused whole,
/// counted, and delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_and_single_frames_cross_and_a_lost_bundle_counts_every_number() {
    let redis = redis_or_skip!("bundles_and_single_frames_cross");
    let b = node(&redis, "t12", "b", TTL).await;
    let (m, mut rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(m, "room").await.unwrap();
    let room = "t12:s:s:room";
    publish_raw(
        &redis,
        room,
        &bundle_frame("z", 1, 1, 3, &[b"1", b"2", b"3"]),
    );
    publish_raw(&redis, room, &broadcast_frame("z", 1, 4, b"4"));
    // Numbers 5, 6 and 7 went in a bundle that never came.
    publish_raw(&redis, room, &bundle_frame("z", 1, 8, 2, &[b"8", b"9"]));
    // Malformed: more payloads than bytes, bytes after the last one, none at all,
    // and a length past the end. Each numbered 10 onward: were any taken, the
    // number 10 below would be stale.
    publish_raw(&redis, room, &bundle_frame("z", 1, 10, 500, &[b"x", b"y"]));
    let mut trailing = bundle_frame("z", 1, 10, 1, &[b"x"]);
    trailing.push(0);
    publish_raw(&redis, room, &trailing);
    publish_raw(&redis, room, &bundle_frame("z", 1, 10, 0, &[]));
    let mut past = bundle_frame("z", 1, 10, 1, &[b"x"]);
    past.truncate(past.len() - 1);
    publish_raw(&redis, room, &past);
    publish_raw(&redis, room, &broadcast_frame("z", 1, 10, b"10"));
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(recv(&mut rx).await.to_string());
    }
    assert_eq!(got, ["1", "2", "3", "4", "8", "9", "10"]);
    let s = b.stats();
    assert_eq!((s.gaps, s.malformed, s.reordered), (3, 4, 0), "{s:?}");
    assert!(rx.try_recv().is_err(), "nothing more was delivered");
}

/// A forged frame carrying a real node's id and epoch, numbered far ahead but
/// within what a long outage could skip: nothing follows it, the node's next
/// number does. It counts no gap and the stream goes on (it used to count 2^32 - 2
/// gaps and make every later frame of that node stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_jump_neither_counts_gaps_nor_stalls_the_stream() {
    let redis = redis_or_skip!("forged_jump");
    let b = node(&redis, "t32", "b", TTL).await;
    let (m, mut rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(m, "room").await.unwrap();
    let room = "t32:s:s:room";
    publish_raw(&redis, room, &broadcast_frame("z", 1, 1, b"1"));
    publish_raw(&redis, room, &broadcast_frame("z", 1, 1 << 32, b"forged"));
    publish_raw(&redis, room, &broadcast_frame("z", 1, 2, b"2"));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.last().is_none_or(|m| m != "2") && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            got.push(m.to_string());
        }
    }
    // Frames are not authenticated: the forged payload is delivered like any.
    assert_eq!(got, ["1", "forged", "2"], "{:?}", b.stats());
    // The forged number is counted once the real one refutes it.
    let s = b.stats();
    assert_eq!((s.gaps, s.reordered, s.malformed), (0, 0, 1), "{s:?}");
}

/// A codec that holds the receiving task inside `decode` of the payload "hold"
/// until the test opens it: a slow codec, which leaves the frames behind that one
/// queued in the subscriber's buffer.
#[derive(Clone, Default)]
struct Gate(Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>);

impl Gate {
    /// Whether `decode` is holding (or has held) a frame.
    fn entered(&self) -> bool {
        self.0 .0.lock().unwrap().0
    }

    fn open(&self) {
        self.0 .0.lock().unwrap().1 = true;
        self.0 .1.notify_all();
    }
}

impl switchboard::cluster::Codec<Msg> for Gate {
    fn encode(&self, msg: &Msg) -> Result<bytes::Bytes, switchboard::cluster::CodecError> {
        switchboard::cluster::Codec::<Msg>::encode(&Raw, msg)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Msg, switchboard::cluster::CodecError> {
        if bytes == b"hold" {
            // Off the worker thread: the runtime's other tasks go on meanwhile.
            tokio::task::block_in_place(|| {
                let (state, cv) = &*self.0;
                let mut state = state.lock().unwrap();
                state.0 = true;
                while !state.1 {
                    state = cv.wait(state).unwrap();
                }
            });
        }
        switchboard::cluster::Codec::<Msg>::decode(&Raw, bytes)
    }
}

/// Frames a node heard before it unsubscribed, still queued when its last member
/// left, belong to the stream it forgot: when it joins again, the numbers
/// published while it was away are not gaps. (They were: the queued frames,
/// handled after the forget, set the stream up again at their old number, and
/// the first frame after the rejoin counted every number since.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_queued_when_the_last_member_leaves_count_no_gaps_after_a_rejoin() {
    let redis = redis_or_skip!("queued_frames_after_leave");
    for sharded in [false, true] {
        let (prefix, publish, numsub) = if sharded {
            ("t51", "SPUBLISH", "SHARDNUMSUB")
        } else {
            ("t50", "PUBLISH", "NUMSUB")
        };
        let gate = Gate::default();
        let b = Cluster::builder(Registry::<Msg>::new(), gate.clone())
            .url(redis.url())
            .prefix(prefix)
            .node_id("b")
            .ttl(TTL)
            .sharded(sharded)
            .connect()
            .await
            .unwrap();
        let room = format!("{prefix}:s:s:room");
        let subscribers = || {
            let out = redis.cli(&["PUBSUB", numsub, &room]).unwrap_or_default();
            out.lines().nth(1).map(|n| n.trim().to_owned())
        };
        let (m, mut rx) = b.register(ClientInfo::new()).await.unwrap();
        b.attach(m, "room").await.unwrap();
        let send = |seq: u64, payload: &[u8]| {
            publish_raw_with(
                &redis,
                publish,
                &room,
                &broadcast_frame("z", 1, seq, payload),
            );
        };
        send(1, b"hold");
        assert!(
            eventually(Duration::from_secs(10), || gate.entered()).await,
            "sharded {sharded}: the receiving task holds frame 1"
        );
        // Heard by b's connection before it unsubscribes; queued behind frame 1.
        send(2, b"2");
        send(3, b"3");
        let leave = tokio::spawn({
            let b = b.clone();
            async move { b.detach(m, "room").await }
        });
        let unsubscribed = eventually(Duration::from_secs(10), || {
            subscribers().as_deref() == Some("0")
        })
        .await;
        assert!(unsubscribed, "sharded {sharded}: b unsubscribes");
        // The leave may wait for the queued frames; give it the time to finish if
        // it does not, so that they are handled after it where they can be.
        let mut leave = leave;
        let done = tokio::time::timeout(Duration::from_secs(1), &mut leave).await;
        gate.open();
        match done {
            Ok(r) => r.unwrap().unwrap(),
            Err(_) => leave.await.unwrap().unwrap(),
        }
        assert!(
            eventually(Duration::from_secs(10), || b.stats().received == 3).await,
            "sharded {sharded}: {:?}",
            b.stats()
        );
        // Numbers 4 to 10 went out while b was away: no gaps, nothing to hear.
        b.attach(m, "room").await.unwrap();
        send(11, b"11");
        send(12, b"12");
        let mut got = Vec::new();
        while got.last().is_none_or(|m| m != "12") {
            got.push(recv(&mut rx).await.to_string());
        }
        assert!(got.ends_with(&["11".into(), "12".into()]), "{got:?}");
        let s = b.stats();
        assert_eq!(
            (s.received, s.gaps, s.reordered, s.malformed),
            (5, 0, 0, 0),
            "sharded {sharded}: {s:?}"
        );
    }
}

/// `locate(key)` once it equals `want`, or as last seen after `limit`.
async fn locate_settles(
    n: &Cluster<Msg>,
    key: &str,
    want: Option<&str>,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let got = n.locate(key).await.unwrap();
        if got.as_deref() == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_client_the_registry_closed_is_released() {
    let redis = redis_or_skip!("registry_closed_key");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t9", "a", ttl).await;
    let b = node(&redis, "t9", "b", ttl).await;
    let (_k, _k_rx) = b.register(ClientInfo::new().with_key("kk")).await.unwrap();
    assert_eq!(a.locate("kk").await.unwrap().as_deref(), Some("b"));
    // Closed by the registry itself (an admin kick, a slow consumer), not by the cluster.
    let _ = b.registry().kick("kk", "bye").unwrap();
    assert_eq!(
        locate_settles(&a, "kk", None, ttl).await,
        None,
        "a key with no connection left must not resolve to node b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_id_releases_what_its_last_run_held() {
    let redis = redis_or_skip!("restarted_node_id");
    let a = node(&redis, "t10", "a", TTL).await;
    let b = node(&redis, "t10", "b", TTL).await;
    let (a1, mut a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    a.attach(a1, "room").await.unwrap();
    let (d, _d_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    b.attach(d, "room").await.unwrap();
    for i in 0..5 {
        b.broadcast("room", Msg::from(format!("old {i}")))
            .await
            .unwrap();
        assert_eq!(*recv(&mut a1_rx).await, *format!("old {i}"));
    }
    assert_eq!(a.member_count("room").await.unwrap(), 2);
    let mut events = a.events();

    // A crash, and the process comes back under the same --node-id within its TTL.
    drop(b);
    let b = node(&redis, "t10", "b", TTL).await;
    let down = node_down(&mut events, None, TTL + Duration::from_secs(1)).await;
    assert_eq!(
        down,
        Some(("b".to_owned(), vec!["dev".to_owned()], 0)),
        "the last run's keys are released and announced"
    );
    assert_eq!(a.locate("dev").await.unwrap(), None);
    assert_eq!(a.member_count("room").await.unwrap(), 1);

    // The new run numbers from 1 again, in an epoch of its own: a follows it,
    // neither stale nor a gap.
    let (b1, _b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    for i in 1..=3 {
        b.broadcast("room", Msg::from(format!("new {i}")))
            .await
            .unwrap();
        assert_eq!(*recv(&mut a1_rx).await, *format!("new {i}"));
    }
    let s = a.stats();
    assert_eq!((s.gaps, s.reordered), (0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reannouncement_that_failed_is_retried() {
    let redis = redis_or_skip!("reannounce_retry");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t11", "a", ttl).await;
    let b = node(&redis, "t11", "b", ttl).await;
    let (_k, _k_rx) = b.register(ClientInfo::new().with_key("k1")).await.unwrap();
    // Redis forgets node b and its key (as after a restart), and its next claim
    // fails (the generation counter is not a number).
    let forgot = redis.cli(&[
        "EVAL",
        "redis.call('ZREM', '{t11}:nodes', 'b') \
         redis.call('HDEL', '{t11}:keys', 'k1') \
         redis.call('SET', '{t11}:gen', 'x') return 1",
        "0",
    ]);
    assert_eq!(forgot.as_deref(), Some("1"));
    // b's next heartbeat finds itself unknown and re-announces; the claim fails.
    tokio::time::sleep(ttl / 2).await;
    assert_eq!(a.locate("k1").await.unwrap(), None);
    assert!(redis.cli(&["DEL", "{t11}:gen"]).is_some());
    assert_eq!(
        locate_settles(&a, "k1", Some("b"), ttl * 2)
            .await
            .as_deref(),
        Some("b"),
        "the key comes back once Redis takes claims again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_last_member_to_a_takeover_unsubscribes() {
    let redis = redis_or_skip!("takeover_unsubscribes");
    // A long TTL: the heartbeat's reconcile does not run during the test.
    let ttl = Duration::from_secs(30);
    let a = node(&redis, "t12", "a", ttl).await;
    let b = node(&redis, "t12", "b", ttl).await;
    let (d, mut d_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    a.attach(d, "room").await.unwrap();
    assert_eq!(redis.numsub("t12:s:s:room"), 1);
    let (_d2, _d2_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), d_rx.recv())
        .await
        .is_ok_and(|m| m.is_none()));
    let left = eventually(Duration::from_secs(10), || {
        redis.numsub("t12:s:s:room") == 0
    })
    .await;
    assert!(left, "node a kept its subscription with no member left");
    assert_eq!(a.subscriptions().await, vec![]);
    assert_eq!(b.member_count("room").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_notice_lost_while_disconnected_still_closes_the_old_connection() {
    let redis = redis_or_skip!("lost_takeover_notice");
    let ttl = Duration::from_secs(30);
    let a = Cluster::builder(Registry::<Msg>::new(), Raw)
        .url(redis.url())
        .prefix("t13")
        .node_id("a")
        .ttl(ttl)
        .reconnect_delay(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let b = node(&redis, "t13", "b", ttl).await;
    let (_d, mut d_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    // Redis drops every subscriber connection (as it does past the pub/sub output
    // buffer limit); node b takes the key before node a's subscriber is back, so
    // the notice on a's node channel reaches no one.
    assert!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).is_some());
    let (_d2, _d2_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    assert_eq!(a.locate("dev").await.unwrap().as_deref(), Some("b"));
    let closed = tokio::time::timeout(Duration::from_secs(10), d_rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "node a still delivers to the connection it lost the key from"
    );
    assert!(matches!(
        d_rx.close_reason(),
        Some(CloseReason::TakenOver { .. })
    ));
    assert!(!a.registry().is_online("dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_send_reported_failed_is_not_delivered_later() {
    let redis = redis_or_skip!("direct_failure_is_final");
    let a = node(&redis, "t14", "a", TTL).await;
    let b = node(&redis, "t14", "b", TTL).await;
    let (_d, mut d_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    // Redis stops answering (stuck, or a dead network path): the send fails...
    redis.freeze();
    let sent = a.send_to_key("dev", Msg::from("late")).await;
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(&*sent.unwrap_err().into_inner(), "late");
    // ...and once Redis runs the command it was sent, it must not deliver it.
    redis.thaw();
    let late = tokio::time::timeout(Duration::from_millis(1500), d_rx.recv()).await;
    assert!(late.is_err(), "reported failed, delivered anyway: {late:?}");
    // Redis is back: sends go through again.
    let mut ok = false;
    for _ in 0..50 {
        if a.send_to_key("dev", Msg::from("now")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    assert_eq!(&*recv(&mut d_rx).await, "now");
}

/// The publish script's deadline: a batch of broadcasts, to two sessions, that
/// Redis runs only after the publisher gave up on it publishes nothing, and
/// its numbers come back as exactly that many gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_batch_reported_failed_is_not_delivered_later() {
    let Some(redis) = Redis::start("broadcast_failure_is_final") else {
        return;
    };
    let a = node(&redis, "t14b", "a", TTL).await;
    let b = node(&redis, "t14b", "b", TTL).await;
    let mut rxs = Vec::new();
    for room in ["x", "y"] {
        let (id, rx) = b.register(ClientInfo::new()).await.unwrap();
        b.attach(id, room).await.unwrap();
        rxs.push(rx);
    }
    for (room, rx) in ["x", "y"].into_iter().zip(&mut rxs) {
        a.broadcast(room, Msg::from("before")).await.unwrap();
        assert_eq!(&*recv(rx).await, "before");
    }
    // Redis stops answering while broadcasts to both sessions are queued: they
    // go out in one batch, and fail.
    redis.freeze();
    let late = ["x", "y", "x"].map(|room| {
        let a = a.clone();
        tokio::spawn(async move { a.broadcast(room, Msg::from("late")).await })
    });
    for t in late {
        let sent = t.await.unwrap();
        assert!(sent.is_err(), "{sent:?}");
    }
    // Redis runs the batch now, past its deadline: nothing may reach b.
    redis.thaw();
    for rx in &mut rxs {
        let late = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(late.is_err(), "reported failed, delivered anyway: {late:?}");
    }
    for (room, rx) in ["x", "y"].into_iter().zip(&mut rxs) {
        let mut ok = false;
        for _ in 0..50 {
            if a.broadcast(room, Msg::from("after")).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok);
        assert_eq!(&*recv(rx).await, "after");
    }
    assert_eq!(b.stats().gaps, 3, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_a_join_refused_for_redis_leaves_no_membership() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    let mut redis = redis_or_skip!("ws_server_join_refused");
    let server = server::Server::start(server::Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: None,
        close_linger: Duration::from_millis(200),
        redis: Some(redis.url()),
        node_id: Some("gw-a".to_owned()),
        ..server::Config::default()
    })
    .await
    .unwrap();
    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
    async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("no frame: {other:?}"),
                Err(_) => return None,
            }
        }
    }
    async fn open(addr: std::net::SocketAddr) -> Ws {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        ws.send(Message::text(json!({"type": "hello"}).to_string()))
            .await
            .unwrap();
        let hello = next(&mut ws, Duration::from_secs(3)).await.unwrap();
        assert_eq!(hello["type"], "welcome");
        ws
    }
    let join = json!({"type": "join", "session": "room"}).to_string();
    let (mut x, mut y) = (open(server.ws_addr()).await, open(server.ws_addr()).await);
    y.send(Message::text(join.clone())).await.unwrap();
    assert_eq!(
        next(&mut y, Duration::from_secs(3)).await.unwrap()["type"],
        "joined"
    );

    redis.kill();
    x.send(Message::text(join)).await.unwrap();
    let refused = next(&mut x, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["code"], "cluster_unavailable", "{refused}");
    // Told it is not in the room, x must not get the room's messages.
    y.send(Message::text(
        json!({"type": "publish", "session": "room", "data": 1}).to_string(),
    ))
    .await
    .unwrap();
    let answer = next(&mut y, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["code"], "publish_failed", "{answer}");
    let leaked = next(&mut x, Duration::from_millis(500)).await;
    assert_eq!(leaked, None, "a client refused the room got its message");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_other_nodes_comes_back() {
    let redis = redis_or_skip!("payload_too_large");
    let mk = |id: &'static str| {
        Cluster::builder(Registry::<Msg>::new(), Raw)
            .url(redis.url())
            .prefix("t16")
            .node_id(id)
            .max_payload(16)
            .connect()
    };
    let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
    let (b1, mut b1_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    let big = Msg::from("x".repeat(17));
    // Every node drops a payload over max_payload: the sender must hear it.
    let sent = a.broadcast("room", big.clone()).await;
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(sent.unwrap_err().into_inner(), big);
    let direct = a.send_to_key("dev", big.clone()).await;
    assert!(direct.is_err(), "{direct:?}");
    assert_eq!(direct.unwrap_err().into_inner(), big);
    // At the limit it crosses.
    let fits = Msg::from("y".repeat(16));
    a.broadcast("room", fits.clone()).await.unwrap();
    assert_eq!(recv(&mut b1_rx).await, fits);
    assert_eq!(b.stats().malformed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_claimed_before_a_redis_restart_can_be_taken_over_and_released_after() {
    let mut redis = redis_or_skip!("gens_across_restart");
    let a = node(&redis, "t17", "a", TTL).await;
    let b = node(&redis, "t17", "b", TTL).await;
    // Claims before the restart, so that their generations are not small.
    for i in 0..10 {
        let key = format!("warm-{i}");
        let (id, _rx) = a.register(ClientInfo::new().with_key(key)).await.unwrap();
        let _ = a.unregister(id).await.unwrap();
    }
    let (_d, mut d_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let (k, _k_rx) = a.register(ClientInfo::new().with_key("k2")).await.unwrap();

    // Redis restarts empty; node a re-announces its keys.
    redis.kill();
    redis.spawn().expect("redis-server restarts on its port");
    let back = eventually(Duration::from_secs(3), || {
        redis
            .cli(&["HGET", "{t17}:keys", "k2"])
            .is_some_and(|v| v.ends_with("|a"))
            && redis
                .cli(&["HGET", "{t17}:keys", "dev"])
                .is_some_and(|v| v.ends_with("|a"))
    })
    .await;
    assert!(back, "node a re-announced its keys");

    // A key released after the restart is released in Redis too.
    let _ = a.unregister(k).await.unwrap();
    assert_eq!(
        a.locate("k2").await.unwrap(),
        None,
        "k2 still resolves to a"
    );

    // A key taken over after the restart closes the old connection.
    let (_d2, _d2_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), d_rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "node a kept its connection for a key node b took"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscriptions_come_back_after_a_redis_restart() {
    let mut redis = redis_or_skip!("sharded_restart");
    let mk = |id: &'static str| {
        Cluster::builder(Registry::<Msg>::new(), Raw)
            .url(redis.url())
            .prefix("t18")
            .node_id(id)
            .sharded(true)
            .connect()
    };
    let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    let shardnumsub = |redis: &Redis| {
        redis
            .cli(&["PUBSUB", "SHARDNUMSUB", "t18:s:s:room"])
            .and_then(|out| out.lines().nth(1).map(|n| n.trim() == "1"))
            .unwrap_or(false)
    };
    assert!(shardnumsub(&redis));
    redis.kill();
    redis.spawn().expect("redis-server restarts on its port");
    let back = eventually(Duration::from_secs(1), || shardnumsub(&redis)).await;
    assert!(back, "the sharded subscription is back within 1 s");
    let mut sent = false;
    for _ in 0..50 {
        if a.broadcast("room", Msg::from("after")).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent, "publishing still fails");
    assert_eq!(&*recv(&mut b1_rx).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_processes_under_one_id_are_told() {
    let redis = redis_or_skip!("duplicate_node_id");
    let ttl = Duration::from_secs(1);
    let first = node(&redis, "t19", "gw-1", ttl).await;
    let events = first.events();
    // A second process started by mistake with the same --node-id.
    let second = node(&redis, "t19", "gw-1", ttl).await;
    let second_events = second.events();
    let told = |mut rx: tokio::sync::broadcast::Receiver<ClusterEvent>| async move {
        tokio::time::timeout(ttl * 2, async move {
            loop {
                if let Ok(ClusterEvent::IdConflict { node }) = rx.recv().await {
                    return node;
                }
            }
        })
        .await
    };
    let (a, b) = tokio::join!(told(events), told(second_events));
    assert_eq!(
        a.ok().as_deref(),
        Some("gw-1"),
        "the first process was not told"
    );
    assert_eq!(
        b.ok().as_deref(),
        Some("gw-1"),
        "the second process was not told"
    );
    drop((first, second));
}

/// `attach` promises that every publication made after it returns reaches the
/// member. fred answers a `SUBSCRIBE` as soon as it queues it, before Redis has
/// read it, so the node must make sure Redis has. Each round joins a new room
/// while the subscriber connection is busy delivering, and publishes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_right_after_attach_reaches_the_new_member() {
    let redis = redis_or_skip!("publish_after_attach");
    for sharded in [false, true] {
        let prefix = if sharded { "t24s" } else { "t24" };
        let mk = |id: &'static str| {
            Cluster::builder(Registry::<Msg>::new(), Raw)
                .url(redis.url())
                .prefix(prefix)
                .node_id(id)
                .sharded(sharded)
                .connect()
        };
        let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
        // Keeps b's subscriber connection busy reading.
        let (f, _f_rx) = b.register(ClientInfo::new()).await.unwrap();
        b.attach(f, "flood").await.unwrap();
        let flood = {
            let a = a.clone();
            tokio::spawn(async move {
                loop {
                    let _ = a.broadcast("flood", Msg::from("f")).await;
                }
            })
        };
        for round in 0..100 {
            let room = format!("r{round}");
            let (id, mut rx) = b.register(ClientInfo::new()).await.unwrap();
            b.attach(id, room.as_str()).await.unwrap();
            a.broadcast(room.as_str(), Msg::from(room.as_str()))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            assert!(
                matches!(&got, Ok(Some(m)) if **m == *room),
                "round {round} (sharded {sharded}): {got:?}"
            );
            let _ = b.unregister(id).await.unwrap();
        }
        flood.abort();
    }
}

/// Many concurrent broadcasts: the publisher numbers them into batches and keeps
/// several batches in flight on one connection. Every publication must cross, in
/// the order its author made it, with no number seen twice or skipped, plain and
/// sharded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_cross_in_order_with_batches_in_flight() {
    let redis = redis_or_skip!("concurrent_broadcasts_cross_in_order");
    const AUTHORS: usize = 64;
    const EACH: usize = 200;
    for sharded in [false, true] {
        let prefix = if sharded { "t9s" } else { "t9" };
        let mk = |id: &'static str| {
            // Room for every message: the members read only after publishing ends.
            let registry = Registry::<Msg>::builder()
                .channel_capacity(1 << 14)
                .build()
                .unwrap();
            Cluster::builder(registry, Raw)
                .url(redis.url())
                .prefix(prefix)
                .node_id(id)
                .sharded(sharded)
                .connect()
        };
        let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
        let mut rxs = Vec::new();
        for room in ["x", "y"] {
            let (id, rx) = b.register(ClientInfo::new()).await.unwrap();
            b.attach(id, room).await.unwrap();
            rxs.push(rx);
        }
        let authors: Vec<_> = (0..AUTHORS)
            .map(|author| {
                let a = a.clone();
                tokio::spawn(async move {
                    let room = if author % 2 == 0 { "x" } else { "y" };
                    for i in 0..EACH {
                        a.broadcast(room, Msg::from(format!("{author}:{i}")))
                            .await
                            .expect("published");
                    }
                })
            })
            .collect();
        for t in authors {
            t.await.unwrap();
        }
        // Each author's messages, in the order the member got them.
        let mut next = vec![0usize; AUTHORS];
        for rx in &mut rxs {
            for _ in 0..AUTHORS / 2 * EACH {
                let msg = recv(rx).await;
                let (author, i) = msg.split_once(':').unwrap();
                let (author, i): (usize, usize) = (author.parse().unwrap(), i.parse().unwrap());
                // A loss (i ahead) or a duplicate (i behind); the stats say which
                // counter saw it (gaps, lagged, reconnects).
                assert_eq!(
                    i,
                    next[author],
                    "author {author} out of order (sharded {sharded}): {:?}",
                    b.stats()
                );
                next[author] += 1;
            }
        }
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.published, (AUTHORS * EACH) as u64);
        assert!(
            sa.round_trips < sa.published / 4,
            "batched: {} round trips for {} publications",
            sa.round_trips,
            sa.published
        );
        assert_eq!((sb.gaps, sb.reordered), (0, 0), "sharded {sharded}");
        assert_eq!(sb.received, (AUTHORS * EACH) as u64);
    }
}

/// How many commands Redis refused with `NOSCRIPT` (`INFO errorstats`).
fn noscript_refusals(redis: &Redis) -> u64 {
    let info = redis.cli(&["INFO", "errorstats"]).unwrap_or_default();
    info.lines()
        .find_map(|l| l.trim().strip_prefix("errorstat_NOSCRIPT:count="))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_flush_between_publications_loses_nothing() {
    let redis = redis_or_skip!("a_script_flush_between_publications_loses_nothing");
    let (a, b, c) = (
        node(&redis, "t30", "a", TTL).await,
        node(&redis, "t30", "b", TTL).await,
        node(&redis, "t30", "c", TTL).await,
    );
    let (id, mut rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(id, "x").await.unwrap();
    const ROUNDS: u64 = 10;
    for i in 0..ROUNDS {
        // Redis forgets every script; each node's next batch names its script by
        // a hash Redis no longer knows.
        assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
        for n in [&a, &c] {
            let msg = Msg::from(format!("{}:{i}", n.node_id()));
            // Bounded: a refused batch nobody resends leaves its caller waiting.
            let sent = tokio::time::timeout(Duration::from_secs(10), n.broadcast("x", msg.clone()));
            sent.await
                .expect("answered within 10 s")
                .expect("published");
            assert_eq!(recv(&mut rx).await, msg);
        }
    }
    // Each node's script is its own: a's resend, which loads a's, does not
    // spare c its refusal.
    assert_eq!(
        noscript_refusals(&redis),
        2 * ROUNDS,
        "every batch was refused once"
    );
    for n in [&a, &c] {
        let s = n.stats();
        assert_eq!((s.published, s.publish_failed), (ROUNDS, 0), "{s:?}");
    }
    let s = b.stats();
    assert_eq!(
        (s.received, s.gaps, s.reordered),
        (2 * ROUNDS, 0, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_across_a_script_flush_arrive_in_order() {
    let redis = redis_or_skip!("batches_in_flight_across_a_script_flush_arrive_in_order");
    // Room for the pause below within one deadline.
    let a = node_with(&redis, "t31", "a", |b| {
        b.publish_deadline(Duration::from_secs(5))
    })
    .await;
    let b = node(&redis, "t31", "b", TTL).await;
    let mut rxs = Vec::new();
    for room in ["x", "y"] {
        let (id, rx) = b.register(ClientInfo::new()).await.unwrap();
        b.attach(id, room).await.unwrap();
        rxs.push(rx);
    }
    a.broadcast("x", Msg::from("before")).await.unwrap();
    assert_eq!(&*recv(&mut rxs[0]).await, "before");
    // Redis holds back every script call (a write) but runs `SCRIPT FLUSH`: the
    // batches sent meanwhile run after the flush, whatever order they reach it
    // in. Spaced out, each broadcast is a batch of its own, up to the four in
    // flight; the rest queue behind them.
    assert_eq!(
        redis.cli(&["CLIENT", "PAUSE", "10000", "WRITE"]).as_deref(),
        Some("OK")
    );
    const N: usize = 12;
    let mut sent = Vec::new();
    for i in 0..N {
        let a = a.clone();
        let room = ["x", "y"][i % 2];
        sent.push(tokio::spawn(async move {
            a.broadcast(room, Msg::from(i.to_string())).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]).as_deref(), Some("OK"));
    for t in sent {
        let sent = tokio::time::timeout(Duration::from_secs(10), t).await;
        sent.expect("answered within 10 s")
            .unwrap()
            .expect("published");
    }
    for (r, rx) in rxs.iter_mut().enumerate() {
        for i in (r..N).step_by(2) {
            assert_eq!(&*recv(rx).await, i.to_string(), "{:?}", b.stats());
        }
    }
    let refused = noscript_refusals(&redis);
    assert!(
        refused >= 2,
        "{refused} batches were in flight across the flush"
    );
    let s = a.stats();
    assert_eq!((s.published, s.publish_failed), (N as u64 + 1, 0), "{s:?}");
    let s = b.stats();
    assert_eq!((s.gaps, s.reordered), (0, 0), "{s:?}");
    assert_eq!(s.received, N as u64 + 1);
}

/// A node with `builder`'s options on top of the usual ones.
async fn node_with(
    redis: &Redis,
    prefix: &str,
    id: &str,
    f: impl FnOnce(
        switchboard::cluster::ClusterBuilder<Msg>,
    ) -> switchboard::cluster::ClusterBuilder<Msg>,
) -> Cluster<Msg> {
    f(Cluster::builder(Registry::new(), Raw)
        .url(redis.url())
        .prefix(prefix)
        .node_id(id)
        .ttl(TTL))
    .connect()
    .await
    .expect("node connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_at_most_its_bound_and_counts_the_rest() {
    let redis = redis_or_skip!("nodes_bounded");
    let a = node_with(&redis, "t20", "a", |b| b.max_nodes_listed(5)).await;
    // Any writer to Redis can make nodes up: twenty that never expire.
    fake_nodes(&redis, "t20", 20);
    let listed = a.nodes().await.unwrap();
    assert_eq!(
        (listed.nodes.len(), listed.omitted),
        (5, 16),
        "21 live nodes, 5 listed"
    );
}

/// A child's output, line by line, read on a thread of its own.
fn cli_lines(out: std::process::ChildStdout) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { return };
            if tx
                .send(String::from_utf8_lossy(&line).trim().to_owned())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The next line from [`cli_lines`], within a bound generous for a loaded machine.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
        .unwrap_or_else(|| panic!("redis-cli ended before {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_lists_at_most_its_bound_and_counts_the_rest() {
    let redis = redis_or_skip!("node_down_bounded");
    let a = node_with(&redis, "t21", "a", |b| b.max_keys_listed(10)).await;
    let b = node_with(&redis, "t21", "b", |b| b.max_keys_listed(5)).await;
    let (mut a_events, mut b_events) = (a.events(), b.events());
    // What the reaping node publishes, as any subscriber sees it.
    let mut ctl = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args(["SUBSCRIBE", "t21:ctl"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli runs");
    let mut lines = cli_lines(ctl.stdout.take().expect("piped"));
    // Subscribed once the confirmation (`subscribe`, the channel, the count) is out.
    let mut confirmation = Vec::new();
    while confirmation.len() < 3 {
        confirmation.push(next_line(&mut lines, "the subscribe confirmation").await);
    }
    assert_eq!(confirmation, ["subscribe", "t21:ctl", "1"]);
    // A dead node that held fifty keys; its deadline goes in last, so the reaper
    // sees it whole.
    for i in 0..50 {
        let key = format!("k{i}");
        redis.cli(&["HSET", "{t21}:keys", &key, "1|ghost"]).unwrap();
        redis.cli(&["SADD", "{t21}:nkeys:ghost", &key]).unwrap();
    }
    redis.cli(&["ZADD", "{t21}:nodes", "1", "ghost"]).unwrap();
    let (_, a_keys, a_omitted) = node_down(&mut a_events, Some("ghost"), TTL)
        .await
        .expect("the ghost is reaped");
    let (_, b_keys, b_omitted) = node_down(&mut b_events, Some("ghost"), TTL)
        .await
        .expect("the ghost is reaped");
    // Printed as `message`, the channel, the payload.
    let mut frame = String::new();
    while !frame.contains("ghost") {
        frame = next_line(&mut lines, "the reaper's notice").await;
    }
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    let listed = (0..50)
        .filter(|i| frame.contains(&format!("\"k{i}\"")))
        .count();
    assert!(
        (1..=10).contains(&listed),
        "the reaper's notice lists {listed} keys: {frame}"
    );
    // Whichever node reaped listed at most its own bound; each reports at most its.
    assert!(a_keys.len() <= 10, "a lists {} keys", a_keys.len());
    assert_eq!(a_keys.len() as u64 + a_omitted, 50);
    assert_eq!((b_keys.len(), b_omitted), (5, 45));
    // Every key is released, listed or not.
    assert_eq!(redis.cli(&["HLEN", "{t21}:keys"]).as_deref(), Some("0"));
}

/// A node-down notice longer than `max_payload` (at least 64 KiB), published to
/// the ctl channel every node reads, is refused before it is read and counted as
/// malformed; one within it is read as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_notice_over_its_bound_is_refused_and_counted() {
    let redis = redis_or_skip!("control_notice_bounded");
    let b = node_with(&redis, "t33", "b", |b| b.max_payload(1024)).await;
    let mut events = b.events();
    let notice = |node: &str, keys: usize| {
        let keys = vec!["\"k\""; keys].join(",");
        let mut f = vec![2u8, 3];
        f.extend_from_slice(format!(r#"{{"node":"{node}","keys":[{keys}]}}"#).as_bytes());
        f
    };
    let big = notice("big", 20_000);
    assert!(big.len() > 64 * 1024);
    publish_raw(&redis, "t33:ctl", &big);
    publish_raw(&redis, "t33:ctl", &notice("small", 3));
    let (down, keys, _) = node_down(&mut events, None, Duration::from_secs(10))
        .await
        .expect("a node-down event");
    assert_eq!((down.as_str(), keys.len()), ("small", 3), "{:?}", b.stats());
    assert_eq!(b.stats().malformed, 1, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_each_publisher_the_true_outcome() {
    let redis = redis_or_skip!("shutdown_true_outcome");
    let a = node(&redis, "t22", "a", TTL).await;
    let b = node(&redis, "t22", "b", TTL).await;
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    // Redis stalls (well within the publish deadline) with as many batches in
    // flight as the publisher allows and more publications queued behind them.
    // Each is sent alone, so each sent one is a batch of its own.
    redis.freeze();
    let send = |text: String| {
        let a = a.clone();
        tokio::spawn(async move { (text.clone(), a.broadcast("room", Msg::from(text)).await) })
    };
    let mut sent = Vec::new();
    for n in 0..8 {
        sent.push(send(format!("m{n}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(a.clone().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.thaw();
    // Every caller hears the truth: Ok for a publication Redis published, and
    // Closed, with the message back, for one never sent.
    let (mut published, mut closed) = (Vec::new(), 0);
    for t in sent {
        match t.await.unwrap() {
            (text, Ok(_)) => published.push(text),
            (text, Err(PublishError::Closed(m))) => {
                assert_eq!(*m, *text, "the message comes back");
                closed += 1;
            }
            (text, other) => panic!("{text} at shutdown: {other:?}"),
        }
    }
    assert!(
        !published.is_empty(),
        "the batches in flight were published"
    );
    assert!(closed > 0, "publications queued behind them were refused");
    for text in &published {
        assert_eq!(&*recv(&mut b1_rx).await, text.as_str(), "reported Ok");
    }
    assert!(stopping.await.unwrap().is_ok());
    let late = tokio::time::timeout(Duration::from_millis(700), b1_rx.recv()).await;
    assert!(late.is_err(), "reported closed, delivered anyway: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_syncs_leave_the_latest_member_count_in_redis() {
    let redis = redis_or_skip!("racing_member_counts");
    // A long TTL: no heartbeat corrects a stale count during the test.
    let a = node_with(&redis, "t23", "a", |b| b.ttl(Duration::from_secs(600))).await;
    let (c1, _c1_rx) = a.register(ClientInfo::new()).await.unwrap();
    let (c2, _c2_rx) = a.register(ClientInfo::new()).await.unwrap();
    for round in 0..1000 {
        let (x, y) = (a.clone(), a.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { x.attach(c1, "room").await }),
            tokio::spawn(async move { y.attach(c2, "room").await }),
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();
        assert_eq!(a.member_count("room").await.unwrap(), 2, "round {round}");
        let (x, y) = (a.clone(), a.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { x.detach(c1, "room").await }),
            tokio::spawn(async move { y.detach(c2, "room").await }),
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();
        assert_eq!(a.member_count("room").await.unwrap(), 0, "round {round}");
    }
}

/// Runs `command key words...` through `redis-cli`, as any client of the server can.
fn write_many(redis: &Redis, command: &str, key: &str, words: impl IntoIterator<Item = String>) {
    let words: Vec<String> = words.into_iter().collect();
    let mut args = vec![command, key];
    args.extend(words.iter().map(String::as_str));
    assert!(redis.cli(&args).is_some(), "{command} {key}");
}

/// Writes `pairs` into the hash `key` with one `HSET`.
fn hset_many(redis: &Redis, key: &str, pairs: impl IntoIterator<Item = (String, String)>) {
    write_many(
        redis,
        "HSET",
        key,
        pairs.into_iter().flat_map(|(f, v)| [f, v]),
    );
}

/// Adds `n` live nodes, `fake-0` and on, that never expire, to the nodes of `prefix`.
fn fake_nodes(redis: &Redis, prefix: &str, n: usize) {
    let entries = (0..n).flat_map(|i| ["99999999999999".to_owned(), format!("fake-{i}")]);
    write_many(redis, "ZADD", &format!("{{{prefix}}}:nodes"), entries);
    let live = redis.cli(&["ZCOUNT", &format!("{{{prefix}}}:nodes"), "(0", "+inf"]);
    assert!(
        live.is_some_and(|l| l.parse::<usize>().is_ok_and(|l| l >= n)),
        "{n} fake nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_count_reads_at_most_its_bound_of_nodes() {
    let redis = redis_or_skip!("member_count_bounded");
    let a = node_with(&redis, "t24", "a", |b| b.max_nodes_listed(5)).await;
    let (a1, _a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    a.attach(a1, "room").await.unwrap();
    // Fields of no live node, written by anyone, do not count.
    let junk = (0..1000).map(|i| (format!("junk-{i}"), "1000".to_owned()));
    hset_many(&redis, "{t24}:members:s:room", junk);
    assert_eq!(a.member_count("room").await.unwrap(), 1);
    // Twenty live nodes made up with a member each: more than the five it may read,
    // so the count is refused rather than short.
    fake_nodes(&redis, "t24", 20);
    let fakes = (0..20).map(|i| (format!("fake-{i}"), "1".to_owned()));
    hset_many(&redis, "{t24}:members:s:room", fakes);
    let r = a.member_count("room").await;
    assert!(
        matches!(r, Err(ClusterError::TooManyNodes { omitted: 16 })),
        "21 live nodes, 5 read: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbering_the_publisher_forgot_starts_over_at_its_receivers() {
    let redis = redis_or_skip!("forgotten_stream");
    let a = node_with(&redis, "t25", "a", |b| b.max_publish_streams(4)).await;
    let b = node(&redis, "t25", "b", TTL).await;
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(b1, "room").await.unwrap();
    for i in 0..3 {
        a.broadcast("room", Msg::from(format!("first {i}")))
            .await
            .unwrap();
        assert_eq!(*recv(&mut b1_rx).await, *format!("first {i}"));
    }
    // Sixteen other sessions push "room" out of a's table of four numberings.
    for i in 0..16 {
        a.broadcast(format!("other-{i}"), Msg::from("x"))
            .await
            .unwrap();
    }
    // Numbered from 1 again: b must deliver it, not drop it as stale.
    for i in 0..3 {
        a.broadcast("room", Msg::from(format!("again {i}")))
            .await
            .unwrap();
        assert_eq!(*recv(&mut b1_rx).await, *format!("again {i}"));
    }
    let s = b.stats();
    assert_eq!((s.gaps, s.reordered, s.malformed), (0, 0, 0), "{s:?}");
}

/// Adds `members` to the set `key` with one `SADD`.
fn sadd_many(redis: &Redis, key: &str, members: impl IntoIterator<Item = String>) {
    write_many(redis, "SADD", key, members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_holding_thousands_of_keys_is_released_in_chunks_within_its_ttl() {
    let redis = redis_or_skip!("reap_in_chunks");
    let ttl = Duration::from_secs(1);
    let a = node_with(&redis, "t26", "a", |b| b.ttl(ttl).max_keys_listed(10)).await;
    let b = node_with(&redis, "t26", "b", |b| b.ttl(ttl)).await;
    let (d, _d_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    b.attach(d, "room").await.unwrap();
    let mut events = a.events();
    // A dead node that held 5,000 keys and counted members in 3,000 sessions:
    // many chunks' worth. Its deadline goes in last, so the reaper sees it whole.
    const KEYS: usize = 5_000;
    let keys = (0..KEYS).map(|i| (format!("k{i}"), "1|ghost".to_owned()));
    hset_many(&redis, "{t26}:keys", keys);
    sadd_many(
        &redis,
        "{t26}:nkeys:ghost",
        (0..KEYS).map(|i| format!("k{i}")),
    );
    sadd_many(
        &redis,
        "{t26}:nsess:ghost",
        (0..3000).map(|i| format!("s:r{i}")),
    );
    hset_many(&redis, "{t26}:members:s:r7", [("ghost".into(), "4".into())]);
    let reaped = Instant::now();
    redis.cli(&["ZADD", "{t26}:nodes", "1", "ghost"]).unwrap();
    let (_, keys, omitted) = node_down(&mut events, Some("ghost"), ttl + Duration::from_secs(1))
        .await
        .expect("the ghost's node-down within TTL + 1 s");
    let down = (keys.len(), omitted);
    assert_eq!(down, (10, KEYS as u64 - 10), "{:?}", reaped.elapsed());
    // Every key and count is released; the live node's stay.
    assert_eq!(redis.cli(&["HLEN", "{t26}:keys"]).as_deref(), Some("1"));
    assert_eq!(
        redis.cli(&["EXISTS", "{t26}:members:s:r7"]).as_deref(),
        Some("0")
    );
    for gone in ["{t26}:nkeys:ghost", "{t26}:nsess:ghost", "{t26}:reaping"] {
        assert_eq!(redis.cli(&["EXISTS", gone]).as_deref(), Some("0"), "{gone}");
    }
    assert_eq!(a.locate("dev").await.unwrap().as_deref(), Some("b"));

    // A live node taken for dead (a long pause, here its deadline rewritten) is
    // released too, and announces itself again at its next heartbeat.
    redis.cli(&["ZADD", "{t26}:nodes", "1", "b"]).unwrap();
    assert_eq!(
        locate_settles(&a, "dev", None, ttl * 2).await,
        None,
        "b's key is released"
    );
    assert_eq!(
        locate_settles(&a, "dev", Some("b"), ttl * 3)
            .await
            .as_deref(),
        Some("b"),
        "b claims its key again"
    );
    // Its member counts follow its claims in the same re-announcement.
    let deadline = Instant::now() + ttl * 3;
    while a.member_count("room").await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "b's member count is not back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// At most `PUBLISHES_AWAITED` (8) of a connection's publications await Redis's
/// answer; the next frame waits for one of them. With Redis frozen, nine
/// publications and a bad frame: the first eight reach the local member at once,
/// the ninth only after the first outcome is known, and the bad frame's refusal
/// after that. Unbounded, a connection's backlog would move into the node's
/// publish queue, where it delays only the other nodes' members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_a_connection_has_at_most_eight_publishes_awaiting_redis() {
    let redis = redis_or_skip!("ws_server_publishes_awaited_bound");
    let (server, mut author, mut member) = ws_author_and_member(&redis, "gw-b").await;

    redis.freeze();
    ws_publish_then_nonsense(&mut author, 1..=9).await;
    for data in 1..=9 {
        assert_eq!(ws_next(&mut member).await["data"], data);
    }
    // The ninth waited for an outcome, and the bad frame for the ninth.
    let first = ws_next(&mut author).await;
    assert_eq!(first["code"], "publish_failed", "{first}");
    let mut refused_after = None;
    for seen in 1..=9 {
        let frame = ws_next(&mut author).await;
        match frame["code"].as_str() {
            Some("publish_failed") => {}
            Some("unknown_type") => refused_after = Some(seen),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(refused_after.is_some(), "the bad frame was never refused");
    redis.thaw();
    server.shutdown().await;
}

/// A publish on a `--redis` server waits for Redis only to report its outcome:
/// the connection's next frames are read at once, local members get them at once,
/// and the outcome (here `publish_failed`, Redis frozen) follows when Redis has
/// answered or the deadline passed. A connection that waited out each publication's
/// round trip before reading the next frame could carry only one publication per
/// round trip: under load its frames queued in the socket, for both the same-node
/// and the cross-node members (`stress cluster`'s wire phase). Eight publications,
/// `PUBLISHES_AWAITED`, may await their answers together: a smaller bound would
/// answer the bad frame only after the first outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_a_publish_waiting_on_redis_holds_up_no_later_frame() {
    let redis = redis_or_skip!("ws_server_publish_pipelined");
    let (server, mut author, mut member) = ws_author_and_member(&redis, "gw-p").await;

    redis.freeze();
    ws_publish_then_nonsense(&mut author, 1..=8).await;
    // Local members are not held up by the first publication's round trip.
    for data in 1..=8 {
        assert_eq!(ws_next(&mut member).await["data"], data);
    }
    // The frame after the publications is answered before their outcomes are known.
    let first = ws_next(&mut author).await;
    assert_eq!(first["code"], "unknown_type", "{first}");
    // Each publication's outcome still comes, once: Redis never answered.
    for _ in 1..=8 {
        let outcome = ws_next(&mut author).await;
        assert_eq!(outcome["code"], "publish_failed", "{outcome}");
    }
    redis.thaw();
    server.shutdown().await;
}

/// The idle window starts once the server has finished with a frame, not when the
/// frame arrived: a request the server took longer than `idle_timeout` to answer
/// (Redis frozen, so a join waits out the command timeout) is answered, and the
/// client's next frame finds the connection open, not closed as idle the moment
/// the answer went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_a_slow_answer_is_not_the_clients_silence() {
    use futures_util::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;

    let redis = redis_or_skip!("ws_server_slow_answer_not_idle");
    let idle = Duration::from_secs(1);
    let server = server::Server::start(server::Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: None,
        close_linger: Duration::from_millis(200),
        idle_timeout: idle,
        ping_interval: Duration::from_secs(60),
        redis: Some(redis.url()),
        node_id: Some("gw-i".to_owned()),
        ..server::Config::default()
    })
    .await
    .unwrap();
    let mut client = ws_open(server.ws_addr(), "patient").await;

    redis.freeze();
    let asked = Instant::now();
    client
        .send(Message::text(
            json!({"type": "join", "session": "room"}).to_string(),
        ))
        .await
        .unwrap();
    let answer = ws_next(&mut client).await;
    assert!(
        asked.elapsed() > idle,
        "the answer must take longer than the idle timeout for this test to mean anything: {answer}"
    );
    client
        .send(Message::text(json!({"type": "nonsense"}).to_string()))
        .await
        .unwrap();
    let refusal = ws_next(&mut client).await;
    assert_eq!(refusal["code"], "unknown_type", "{refusal}");
    redis.thaw();
    server.shutdown().await;
}

/// A `ws_server` connection, as the `ws_server_*` tests open it.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The connection's next text frame as JSON, skipping pings; panics on a close,
/// an error or 10 s of silence.
async fn ws_next(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("no frame: {other:?}"),
        }
    }
}

/// A connection to `addr` that said hello as `key` and was welcomed.
async fn ws_open(addr: std::net::SocketAddr, key: &str) -> Ws {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        serde_json::json!({"type": "hello", "key": key}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "welcome");
    ws
}

/// A `ws_server` node on `redis` named `node_id`, an `author` connection to it, and
/// a `member` connection that joined `room`.
async fn ws_author_and_member(redis: &Redis, node_id: &str) -> (server::Server, Ws, Ws) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = server::Server::start(server::Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: None,
        close_linger: Duration::from_millis(200),
        redis: Some(redis.url()),
        node_id: Some(node_id.to_owned()),
        ..server::Config::default()
    })
    .await
    .unwrap();
    let (author, mut member) = (
        ws_open(server.ws_addr(), "author").await,
        ws_open(server.ws_addr(), "member").await,
    );
    member
        .send(Message::text(
            serde_json::json!({"type": "join", "session": "room"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut member).await["type"], "joined");
    (server, author, member)
}

/// Publishes each of `data` to `room`, then sends a frame of no known type, all in
/// one flush.
async fn ws_publish_then_nonsense(author: &mut Ws, data: impl IntoIterator<Item = u32>) {
    use futures_util::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;
    for data in data {
        let publish = json!({"type": "publish", "session": "room", "data": data});
        author
            .feed(Message::text(publish.to_string()))
            .await
            .unwrap();
    }
    author
        .send(Message::text(json!({"type": "nonsense"}).to_string()))
        .await
        .unwrap();
}

/// A takeover whose follow-up Redis work fails (recording the rooms the old
/// connection leaves) still hands the caller its connection: by then the client is
/// registered here and its key claimed in Redis, so an error would leave a
/// connection nobody drains holding the key cluster-wide. The counts it could not
/// record are recorded by a later heartbeat, not left stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_follow_up_fails_still_registers() {
    let redis = redis_or_skip!("takeover_follow_up_fails");
    // Beats every second, so the reconcile runs within the test.
    let ttl = Duration::from_secs(3);
    let a = node(&redis, "t40", "a", ttl).await;
    let (old, mut old_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    for room in ["r-a", "r-b", "r-c"] {
        a.attach(old, room).await.unwrap();
    }
    let poisoned = "{t40}:members:s:r-a";
    assert_eq!(redis.cli(&["TYPE", poisoned]).as_deref(), Some("hash"));
    // The counts script now fails on this key (WRONGTYPE) before it records the
    // rooms after it; the claim touches none of them.
    redis.cli(&["DEL", poisoned]).expect("DEL");
    redis.cli(&["SET", poisoned, "x"]).expect("SET");
    let taken = a.register(ClientInfo::new().with_key("dev")).await;
    let (new, _new_rx) = taken.unwrap_or_else(|e| panic!("the takeover failed: {e}"));
    assert!(tokio::time::timeout(Duration::from_secs(10), old_rx.recv())
        .await
        .is_ok_and(|m| m.is_none()));
    assert_eq!(a.registry().id_of("dev"), Some(new));
    redis.cli(&["DEL", poisoned]).expect("DEL");
    let mut counts = Vec::new();
    for _ in 0..50 {
        counts.clear();
        for room in ["r-a", "r-b", "r-c"] {
            counts.push(a.member_count(room).await.unwrap());
        }
        if counts == [0, 0, 0] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("member counts still {counts:?} five seconds after the takeover");
}

/// Member counts of `rooms` and their subscribers in Redis once they are all 0,
/// or as last seen after five seconds (five heartbeats at a three-second TTL).
async fn rooms_settle_empty(a: &Cluster<Msg>, redis: &Redis, prefix: &str, rooms: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.clear();
        for room in rooms {
            let count = a.member_count(*room).await.unwrap();
            let subscribers = redis.numsub(&format!("{prefix}:s:s:{room}"));
            seen.push((*room, count, subscribers));
        }
        if seen
            .iter()
            .all(|(_, count, subs)| (*count, *subs) == (0, 0))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("(room, member count, subscribers) still {seen:?} five seconds after the leave");
}

/// A detach whose caller gives up while Redis is slow (a timeout, a `select!`,
/// a connection task aborted) still finishes: the node's member count in Redis
/// and its subscription follow the member leaving. (Dropped while it waited for
/// the PING after the UNSUBSCRIBE, it had removed the room from the node's
/// subscriptions and never recorded the count, and no heartbeat looked at the
/// room again: Redis kept the member for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_dropped_midway_still_records_the_leave() {
    let redis = redis_or_skip!("detach_dropped_midway");
    // Beats every second, so the reconcile runs within the test.
    let a = node(&redis, "t60", "a", Duration::from_secs(3)).await;
    let (m, _rx) = a.register(ClientInfo::new()).await.unwrap();
    a.attach(m, "r").await.unwrap();
    assert_eq!(a.member_count("r").await.unwrap(), 1);
    redis.freeze();
    let given_up = tokio::time::timeout(Duration::from_millis(200), a.detach(m, "r")).await;
    redis.thaw();
    assert!(
        given_up.is_err(),
        "the detach waited on Redis: {given_up:?}"
    );
    rooms_settle_empty(&a, &redis, "t60", &["r"]).await;
}

/// An attach whose caller gives up after the SUBSCRIBE went out still records the
/// subscription, so the node leaves the channel when the member does, even by the
/// registry's hand. (Dropped while it waited for the PING after the SUBSCRIBE,
/// it left Redis with a subscription the node did not know of, and never
/// unsubscribed: every publication to the room still reached it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_dropped_midway_leaves_no_subscription_behind() {
    let redis = redis_or_skip!("attach_dropped_midway");
    let a = node(&redis, "t61", "a", Duration::from_secs(3)).await;
    let (m, _rx) = a.register(ClientInfo::new()).await.unwrap();
    redis.freeze();
    let given_up = tokio::time::timeout(Duration::from_millis(200), a.attach(m, "r")).await;
    // Before the next heartbeat: only the attach itself knows of the subscription.
    a.registry().detach(m, "r").unwrap();
    redis.thaw();
    assert!(
        given_up.is_err(),
        "the attach waited on Redis: {given_up:?}"
    );
    rooms_settle_empty(&a, &redis, "t61", &["r"]).await;
}

/// A registration whose caller gives up while the key's claim is in flight leaves
/// nothing behind: nobody holds its receiver, so the client is unregistered and
/// its key released once the claim is answered. (It stayed registered with a
/// channel nobody drained, holding the key cluster-wide.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_dropped_midway_leaves_no_client_or_key_behind() {
    let redis = redis_or_skip!("register_dropped_midway");
    let a = node(&redis, "t62", "a", Duration::from_secs(3)).await;
    redis.freeze();
    let info = ClientInfo::new().with_key("dev");
    let given_up = tokio::time::timeout(Duration::from_millis(200), a.register(info)).await;
    redis.thaw();
    assert!(given_up.is_err(), "the register waited on Redis");
    let gone = eventually(Duration::from_secs(5), || a.registry().client_count() == 0).await;
    assert!(
        gone,
        "{} clients still registered",
        a.registry().client_count()
    );
    let holder = locate_settles(&a, "dev", None, Duration::from_secs(5)).await;
    assert_eq!(holder, None, "the key is still held");
    // The key is free to claim again, and a later release frees it.
    let (id, _rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    assert_eq!(a.locate("dev").await.unwrap().as_deref(), Some("a"));
    let gone = a.unregister(id).await.unwrap();
    assert_eq!(gone.id, id);
    assert_eq!(a.locate("dev").await.unwrap(), None);
}

/// A `connect` given up on after it started its tasks stops them and closes its
/// connections to Redis. (They lived on, the subscriber's task and the
/// publisher holding the node, and the clients reconnecting for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_given_up_midway_closes_its_connections() {
    let redis = redis_or_skip!("connect_given_up");
    // Lines of CLIENT LIST: redis-cli's own connection included.
    let clients = || {
        let list = redis.cli(&["CLIENT", "LIST"]).unwrap_or_default();
        list.lines().count()
    };
    let before = clients();
    // Writes wait, the handshake and SCRIPT LOAD do not: `connect` gets as far as
    // releasing what its id's last run held (a script that writes), and waits.
    redis
        .cli(&["CLIENT", "PAUSE", "3000", "WRITE"])
        .expect("CLIENT PAUSE");
    let connect = Cluster::builder(Registry::<Msg>::new(), Raw)
        .url(redis.url())
        .prefix("t63")
        .node_id("a")
        .connect();
    let given_up = tokio::time::timeout(Duration::from_millis(500), connect).await;
    assert!(given_up.is_err(), "connect waited on Redis");
    redis.cli(&["CLIENT", "UNPAUSE"]).expect("CLIENT UNPAUSE");
    let closed = eventually(Duration::from_secs(5), || clients() == before).await;
    assert!(closed, "{} connections open, {before} before", clients());
}

/// `register_with_report` tells of the connection taken over on this node: with
/// `takeover_moves_sessions` its rooms moved to the new one, which the node's
/// subscription and the cluster-wide count follow. A connection taken over on
/// another node is closed there, and in no report here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_report_tells_of_a_local_takeover() {
    let redis = redis_or_skip!("register_with_report");
    let registry = Registry::<Msg>::builder()
        .takeover_moves_sessions(true)
        .build()
        .unwrap();
    let a = Cluster::builder(registry, Raw)
        .url(redis.url())
        .prefix("t64")
        .node_id("a")
        .ttl(TTL)
        .connect()
        .await
        .unwrap();
    let b = node(&redis, "t64", "b", TTL).await;
    let (old, _old_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    a.attach(old, "r").await.unwrap();
    let reg = a
        .register_with_report(ClientInfo::new().with_key("dev"))
        .await
        .unwrap();
    let took = reg.took_over.as_ref().map(|o| (o.id, o.sessions.clone()));
    assert_eq!(took, Some((old, vec![SessionId::from("r")])));
    assert!(reg.not_moved.is_empty(), "{:?}", reg.not_moved);
    assert_eq!(a.registry().members("r"), Ok(vec![reg.id]));
    assert_eq!(a.member_count("r").await.unwrap(), 1);
    assert_eq!(a.subscriptions().await, vec![SessionId::from("r")]);
    let remote = b
        .register_with_report(ClientInfo::new().with_key("dev"))
        .await
        .unwrap();
    assert!(remote.took_over.is_none(), "{:?}", remote.took_over);
    let closed = eventually(Duration::from_secs(5), || a.registry().client_count() == 0).await;
    assert!(closed, "the connection on a outlived the takeover from b");
    rooms_settle_empty(&a, &redis, "t64", &["r"]).await;
}

/// A shutdown whose caller gives up while Redis is slow still leaves at once:
/// the other nodes hear the node down when Redis answers again, not when its
/// TTL runs out. (Dropped while it waited for a publication in flight, it had
/// stopped the publisher and nothing else, and told Redis nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_given_up_on_still_releases_the_node() {
    let redis = redis_or_skip!("shutdown_given_up");
    let a = node(&redis, "t65", "a", TTL).await;
    let b = node(&redis, "t65", "b", TTL).await;
    let mut events = b.events();
    redis.freeze();
    let publishing = tokio::spawn({
        let a = a.clone();
        async move {
            a.broadcast("r", Msg::from("x"))
                .await
                .map_err(|e| e.to_string())
        }
    });
    // The batch is sent, and waits on Redis: the shutdown waits for it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let given_up = tokio::time::timeout(Duration::from_millis(200), a.shutdown()).await;
    redis.thaw();
    assert!(given_up.is_err(), "the shutdown waited on Redis");
    // Well before a's TTL (three seconds from its last beat, at most one ago).
    let down = node_down(&mut events, Some("a"), Duration::from_millis(1500)).await;
    assert!(down.is_some(), "a was not released when Redis came back");
    let _ = publishing.await.unwrap();
}

/// Syncs given up on while Redis is unreachable are coalesced: however many
/// callers stopped waiting, the node runs one pass for all of them, and a pass
/// stops at its first failed command. So a call made during the outage answers
/// within two of fred's command timeouts (2 s each: the pass under way, then
/// its own), and one made after it at Redis's speed. (Each given-up call left a
/// task that took the subscription lock in turn and waited out a command timeout
/// under it, one per session: 300 calls held up every later attach, takeover and
/// reconcile for ten minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_given_up_during_an_outage_do_not_queue_behind_each_other() {
    let redis = redis_or_skip!("syncs_given_up");
    // Beats every 5 s: the node outlives the freeze, and a reconcile follows it.
    let a = node(&redis, "t66", "a", Duration::from_secs(15)).await;
    let (m, _m_rx) = a.register(ClientInfo::new()).await.unwrap();
    let (late, _late_rx) = a.register(ClientInfo::new()).await.unwrap();
    let joining: Vec<String> = (0..200).map(|i| format!("j{i}")).collect();
    let leaving: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
    for room in &leaving {
        a.attach(m, room.as_str()).await.unwrap();
    }
    redis.freeze();
    let mut given_up = tokio::task::JoinSet::new();
    for (room, join) in joining
        .iter()
        .map(|r| (r.clone(), true))
        .chain(leaving.iter().map(|r| (r.clone(), false)))
    {
        let a = a.clone();
        given_up.spawn(async move {
            let limit = Duration::from_millis(100);
            if join {
                tokio::time::timeout(limit, a.attach(m, room))
                    .await
                    .is_err()
            } else {
                tokio::time::timeout(limit, a.detach(m, room))
                    .await
                    .is_err()
            }
        });
    }
    while let Some(gave_up) = given_up.join_next().await {
        assert!(gave_up.unwrap(), "a call finished while Redis was frozen");
    }
    let started = Instant::now();
    let during = tokio::time::timeout(Duration::from_secs(5), a.attach(late, "f")).await;
    let waited = started.elapsed();
    redis.thaw();
    assert!(
        during.is_ok(),
        "an attach made while Redis was frozen had no answer after {waited:?}: it waited \
         behind the 300 calls given up on before it"
    );
    // The pass that synced it failed, whichever caller ran it: the error reaches it.
    assert!(
        matches!(during, Ok(Err(ClusterError::Redis(_)))),
        "an attach while Redis was frozen: {during:?}"
    );
    let started = Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(2), a.attach(late, "g")).await;
    assert!(
        matches!(after, Ok(Ok(true))),
        "an attach after Redis came back: {after:?} after {:?}",
        started.elapsed()
    );
    assert!(a.subscriptions().await.contains(&SessionId::from("g")));
    // The reconcile redoes what failed during the outage.
    let mut want: Vec<String> = joining.clone();
    want.extend(["f".to_owned(), "g".to_owned()]);
    want.sort();
    let mut seen = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..120 {
        let mut wrong = Vec::new();
        for room in joining
            .iter()
            .chain(&leaving)
            .map(String::as_str)
            .chain(["f", "g"])
        {
            let count = a.member_count(room).await.unwrap();
            if count != usize::from(!room.starts_with('d')) {
                wrong.push((room.to_owned(), count));
            }
        }
        let mut subscribed: Vec<String> = a
            .subscriptions()
            .await
            .iter()
            .map(|s| s.to_string())
            .collect();
        subscribed.sort();
        let channels = redis
            .cli(&["PUBSUB", "CHANNELS", "t66:s:s:*"])
            .unwrap_or_default();
        let mut listening: Vec<String> = channels
            .lines()
            .filter_map(|c| c.trim().strip_prefix("t66:s:s:").map(str::to_owned))
            .collect();
        listening.sort();
        seen = (wrong, subscribed, listening);
        if seen.0.is_empty() && seen.1 == want && seen.2 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "12 s after the outage: wrong member counts {:?}; {} sessions subscribed and {} \
         channels in Redis, of {}",
        seen.0,
        seen.1.len(),
        seen.2.len(),
        want.len()
    );
}

/// A key whose connection was taken over on its own node, while the node's
/// record of the key still names the old connection, stays with the live
/// holder: the heartbeat neither releases it nor leaves it unknown to Redis.
/// That record is what two registrations of one key leave when their claims
/// reach Redis in the other order than the registry took the key (each claim
/// runs on a task of its own); a takeover made on the registry, which claims
/// nothing, leaves it deterministically. (The heartbeat released the key as an
/// orphan: Redis had no holder, sends from other nodes failed, and a claim
/// elsewhere closed nobody here, so two live connections held the key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_over_on_its_node_stays_with_the_live_holder() {
    let redis = redis_or_skip!("taken_over_on_its_node");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t66", "a", ttl).await;
    let b = node(&redis, "t66", "b", ttl).await;
    let (old, mut old_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let (new, mut new_rx) = a
        .registry()
        .register(ClientInfo::new().with_key("dev"))
        .unwrap();
    assert_ne!(old, new);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), old_rx.recv())
            .await
            .expect("the old connection closes")
            .is_none(),
        "the old connection got a message"
    );
    // Two heartbeats at least (one every third of the TTL).
    tokio::time::sleep(ttl).await;
    assert_eq!(
        b.locate("dev").await.unwrap().as_deref(),
        Some("a"),
        "the key of a live connection on a was released"
    );
    let sent = b.send_to_key("dev", Msg::from("hi")).await;
    assert!(
        matches!(&sent, Ok(Delivered::Remote(n)) if n == "a"),
        "{sent:?}"
    );
    assert_eq!(&*recv(&mut new_rx).await, "hi");
    // A claim on b takes the key from the live holder on a.
    let (_c, _c_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let closed = eventually(Duration::from_secs(5), || a.registry().client_count() == 0).await;
    assert!(closed, "the holder on a outlived b's claim");
    assert_eq!(a.locate("dev").await.unwrap().as_deref(), Some("b"));
}

/// A claim whose answer never came (fred gave up on it while Redis was frozen)
/// may still run in Redis afterwards. The key must not go on naming this node
/// with no connection holding it: the next heartbeats release it. A key claimed
/// again here since is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_failed_but_ran_does_not_leave_the_key_to_nobody() {
    let redis = redis_or_skip!("failed_claim_ran");
    // Longer than the freeze, so that the node is not reaped meanwhile (a reap
    // would release the key for other reasons).
    let ttl = Duration::from_secs(6);
    let a = node(&redis, "t77", "a", ttl).await;
    let b = node(&redis, "t77", "b", ttl).await;
    redis.freeze();
    let failed = a.register(ClientInfo::new().with_key("dev")).await;
    redis.thaw();
    assert!(
        failed.is_err(),
        "the claim was answered while Redis was frozen"
    );
    assert_eq!(a.registry().client_count(), 0);
    // Redis ran the claim once it woke: the key names a.
    assert_eq!(
        locate_settles(&b, "dev", Some("a"), Duration::from_secs(1))
            .await
            .as_deref(),
        Some("a")
    );
    assert_eq!(
        locate_settles(&b, "dev", None, ttl).await,
        None,
        "the key still names a, where no connection holds it"
    );
    // A claim made here later is this node's again, and stays.
    let (_dev, _dev_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    tokio::time::sleep(ttl / 2).await;
    assert_eq!(b.locate("dev").await.unwrap().as_deref(), Some("a"));
}

/// An attach that failed because Redis did not answer in time may have
/// subscribed all the same: Redis runs the SUBSCRIBE it was sent once it
/// answers again. The member's leave must still take the node off the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_that_timed_out_leaves_no_subscription_behind() {
    let redis = redis_or_skip!("attach_timed_out");
    // Longer than the freeze: the node is not reaped meanwhile.
    let a = node(&redis, "t80", "a", Duration::from_secs(6)).await;
    let (m, _rx) = a.register(ClientInfo::new()).await.unwrap();
    redis.freeze();
    // Fails after the node's command timeout (2 s).
    let attached = a.attach(m, "r").await;
    redis.thaw();
    assert!(
        matches!(attached, Err(ClusterError::Redis(_))),
        "an attach while Redis was frozen: {attached:?}"
    );
    a.detach(m, "r").await.unwrap();
    rooms_settle_empty(&a, &redis, "t80", &["r"]).await;
}

/// Members that leave while Redis restarts take the node off their channels:
/// the resubscription after the reconnect does not bring back a channel the
/// node left while it reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_during_a_redis_restart_leaves_no_subscription_behind() {
    let mut redis = redis_or_skip!("leave_during_restart");
    let a = node(&redis, "t81", "a", TTL).await;
    let (m, _rx) = a.register(ClientInfo::new()).await.unwrap();
    let rooms: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for room in &rooms {
        a.attach(m, room.as_str()).await.unwrap();
    }
    redis.kill();
    // Once the node reconnects (it notices at once), its commands wait for the
    // reconnect rather than fail on the dead connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaving = {
        let a = a.clone();
        tokio::spawn(async move { a.unregister(m).await })
    };
    // The UNSUBSCRIBE waits for the reconnect (within the command timeout).
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.spawn().expect("redis-server restarts on its port");
    let left = leaving.await.unwrap();
    assert!(left.is_ok(), "the leave across the restart: {left:?}");
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    rooms_settle_empty(&a, &redis, "t81", &rooms).await;
}

/// A resubscription Redis refuses after a restart is tried again until it holds:
/// nothing else subscribes a node to its sessions and its own channels before
/// the next reconnect, so one refusal (Redis still loading, an ACL being
/// changed, a command timeout) would otherwise leave its members deaf for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_refused_after_a_restart_is_tried_again() {
    let mut redis = redis_or_skip!("resubscribe_retry");
    let a = node(&redis, "t82", "a", TTL).await;
    let b = node(&redis, "t82", "b", TTL).await;
    let (m, mut rx) = a.register(ClientInfo::new()).await.unwrap();
    a.attach(m, "r").await.unwrap();
    let reconnects = a.stats().reconnects;
    redis.kill();
    // Back, but refusing every SUBSCRIBE for now.
    redis
        .spawn_with(&[
            "--user",
            "default",
            "on",
            "nopass",
            "~*",
            "&*",
            "+@all",
            "-subscribe",
        ])
        .expect("redis-server restarts on its port");
    let refused = eventually(Duration::from_secs(5), || a.stats().reconnects > reconnects).await;
    assert!(refused, "a reconnected");
    // Its resubscription has had time to be refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redis.numsub("t82:s:s:r"), 0, "SUBSCRIBE is refused");
    redis
        .cli(&["ACL", "SETUSER", "default", "+subscribe"])
        .expect("the ACL changes");
    let back = eventually(Duration::from_secs(5), || {
        redis.numsub("t82:s:s:r") == 1 && redis.numsub("t82:node:a") == 1
    })
    .await;
    assert!(
        back,
        "a never subscribed again once Redis allowed it: session {}, node channel {}",
        redis.numsub("t82:s:s:r"),
        redis.numsub("t82:node:a")
    );
    b.broadcast("r", Msg::from("after")).await.unwrap();
    assert_eq!(*recv(&mut rx).await, *"after");
}

/// A release Redis refused never ran (here Redis denied scripts for a moment;
/// a server busy with a slow script, or a connection refused, does the same):
/// the key goes on naming this node, where no connection holds it, so sends
/// from other nodes go there and are lost. `unregister` fails, and promises
/// that the heartbeat retries what failed: the next heartbeats release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_failed_is_retried() {
    let redis = redis_or_skip!("release_retry");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t78", "a", ttl).await;
    let b = node(&redis, "t78", "b", ttl).await;
    let (dev, _dev_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let scripts = |rule: char| {
        let (eval, evalsha) = (format!("{rule}eval"), format!("{rule}evalsha"));
        let set = redis.cli(&["ACL", "SETUSER", "default", &eval, &evalsha]);
        assert_eq!(set.as_deref(), Some("OK"), "ACL SETUSER {eval} {evalsha}");
    };
    scripts('-');
    let gone = a.unregister(dev).await;
    scripts('+');
    assert!(matches!(gone, Err(ClusterError::Redis(_))), "{gone:?}");
    assert_eq!(b.locate("dev").await.unwrap().as_deref(), Some("a"));
    assert_eq!(
        locate_settles(&b, "dev", None, ttl * 2).await,
        None,
        "the key still names a, where no connection holds it"
    );
}

/// Redis forgot every node and key (restarted empty, or flushed), and a client
/// registered its key on node b before b's next heartbeat told Redis of b
/// again. Node a, where the same key's older connection is, then re-announces
/// it: b took it meanwhile and is live, so a must give it up. (Redis did not
/// count b as live, having no heartbeat of it: a took the key back and closed
/// the newer connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reannouncement_leaves_a_key_claimed_since_by_a_node_redis_forgot() {
    let redis = redis_or_skip!("reannounce_vs_forgotten");
    let a = node(&redis, "t79", "a", TTL).await;
    // Heartbeats far apart: none runs during the test.
    let b = node(&redis, "t79", "b", Duration::from_secs(60)).await;
    let (_old, mut old_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    let (_new, new_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    // a's next heartbeats find it unknown, and re-announce.
    let closed = tokio::time::timeout(Duration::from_secs(5), old_rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the older connection on a outlived the newer one's claim ({closed:?}); \
         the newer one on b: {:?}",
        new_rx.close_reason()
    );
    assert_eq!(
        new_rx.close_reason(),
        None,
        "the newer connection on b was closed"
    );
    let holder = redis
        .cli(&["HGET", "{t79}:keys", "dev"])
        .unwrap_or_default();
    assert!(holder.ends_with("|b"), "dev is held as {holder:?}");
}

/// A re-announcement claims the node's keys one at a time: with many keys it
/// takes longer than the TTL. The node must beat meanwhile, or the other nodes
/// release it halfway, live as it is: they hear it is down, its keys are
/// released, its claims are refused, and each later re-announcement starts
/// over, to be cut short the same way while it takes longer than the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reannouncement_longer_than_the_ttl_keeps_the_node_alive() {
    const KEYS: usize = 15_000;
    let redis = redis_or_skip!("long_reannouncement");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t80", "a", ttl).await;
    let b = node(&redis, "t80", "b", ttl).await;
    let mut held = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let key = format!("k{i}");
        held.push(a.register(ClientInfo::new().with_key(key)).await.unwrap());
    }
    let mut events = b.events();
    // Redis forgets every node and key, as after a restart.
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    let all = KEYS.to_string();
    let back = eventually(Duration::from_secs(20), || {
        redis.cli(&["HLEN", "{t80}:keys"]).as_deref() == Some(all.as_str())
    })
    .await;
    let mut downs = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, ClusterEvent::NodeDown { ref node, .. } if node == "a") {
            downs += 1;
        }
    }
    assert!(
        back,
        "{:?} of {KEYS} keys came back; node a was released {downs} times meanwhile",
        redis.cli(&["HLEN", "{t80}:keys"])
    );
    assert_eq!(downs, 0, "node a was released while it re-announced");
    assert_eq!(b.locate("k0").await.unwrap().as_deref(), Some("a"));
}

/// The heartbeat first releases the keys of connections the registry closed
/// behind the cluster's back, one round trip each. With many (an admin
/// closing thousands) that takes longer than the TTL: the node must beat
/// meanwhile, or the other nodes release it, live as it is, and tell every
/// node it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_many_orphans_keeps_the_node_alive() {
    const KEYS: usize = 15_000;
    let redis = redis_or_skip!("many_orphans");
    let ttl = Duration::from_secs(1);
    let a = node(&redis, "t81", "a", ttl).await;
    let b = node(&redis, "t81", "b", ttl).await;
    let mut held = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let key = format!("k{i}");
        held.push(a.register(ClientInfo::new().with_key(key)).await.unwrap());
    }
    let mut events = b.events();
    for i in 0..KEYS {
        let _gone = a.registry().kick(format!("k{i}").as_str(), "bye").unwrap();
    }
    let released = eventually(Duration::from_secs(20), || {
        redis.cli(&["HLEN", "{t81}:keys"]).as_deref() == Some("0")
    })
    .await;
    assert!(released, "the orphans' keys were not released");
    let mut downs = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, ClusterEvent::NodeDown { ref node, .. } if node == "a") {
            downs += 1;
        }
    }
    assert_eq!(downs, 0, "node a was released while it released orphans");
}

/// With sharded pub/sub a batch is pipelined `SPUBLISH`es; each caller hears
/// how its own publication went, not the batch's worst. Here an ACL lets node
/// a publish to one room and not to another, and the two rooms' broadcasts
/// share batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_batch_tells_each_caller_its_own_outcome() {
    let redis = redis_or_skip!("sharded_outcomes");
    redis
        .cli(&[
            "ACL",
            "SETUSER",
            "pub",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
            "&t83:ctl",
            "&t83:node:*",
            "&t83:s:s:ok",
        ])
        .expect("the user is made");
    let url = format!("redis://pub:pw@127.0.0.1:{}", redis.port);
    let a = node_with(&redis, "t83", "a", |b| b.url(url).sharded(true)).await;
    let b = node_with(&redis, "t83", "b", |b| b.sharded(true)).await;
    let (m, mut rx) = b.register(ClientInfo::new()).await.unwrap();
    b.attach(m, "ok").await.unwrap();
    // Half of them to the member's room: within its queue of 32.
    let n = 60;
    let calls = (0..n).map(|i| {
        let a = a.clone();
        async move {
            let room = if i % 2 == 0 { "ok" } else { "denied" };
            (
                room,
                a.broadcast(room, Msg::from(format!("{i}"))).await.is_ok(),
            )
        }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let wrong: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, (room, ok))| *ok != (*room == "ok"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {n} callers heard another publication's outcome: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    for i in (0..n).step_by(2) {
        assert_eq!(*recv(&mut rx).await, *format!("{i}"));
    }
}

/// `GET /cluster` lists at most `MAX_SUBSCRIPTIONS_LISTED` subscriptions, in
/// order, and counts the rest: a node is subscribed to one channel per session
/// its clients joined, which its peers choose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_a_bounded_number_of_subscriptions() {
    use http_body_util::BodyExt;
    use switchboard::http::MAX_SUBSCRIPTIONS_LISTED;
    use tower::ServiceExt;

    let redis = redis_or_skip!("admin_api_subscriptions");
    let a = node(&redis, "t84", "a", TTL).await;
    let (m, _rx) = a.register(ClientInfo::new()).await.unwrap();
    let over = 5;
    let sessions = MAX_SUBSCRIPTIONS_LISTED as u64 + over;
    for s in 0..sessions {
        a.attach(m, s).await.unwrap();
    }
    let router = switchboard::http::router_with_cluster(
        a.clone(),
        switchboard::http::AdminConfig::new(),
        |_, body| Msg::from(body.to_string()),
    )
    .unwrap();
    let req = axum::http::Request::get("/cluster")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let listed: Vec<u64> = view["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(
        listed,
        (0..MAX_SUBSCRIPTIONS_LISTED as u64).collect::<Vec<_>>(),
        "the first ones, in order"
    );
    assert_eq!(view["more_subscriptions"], over);
}
