//! The cluster layer against a real Redis Cluster (three masters, no replicas),
//! with sharded pub/sub: two nodes (each a `Registry` with its `Cluster`) in one
//! process, connected through a `redis-cluster://` URL.
//!
//! Each test starts its own cluster on free loopback ports (never 6379, no
//! system service) with persistence off, in a temporary directory. Without
//! `redis-server` or `redis-cli` on the PATH each test prints one line saying how
//! to install it and passes; with `SWITCHBOARD_REQUIRE_EXTERNAL=1` it fails
//! instead.

#[allow(
    dead_code,
    reason = "shared with tests/cluster.rs; only its port and skip helpers are needed here"
)]
#[path = "common/redis.rs"]
mod redis;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/wait.rs"]
mod wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_cluster::RedisCluster;
use switchboard::cluster::{Cluster, Delivered, Raw};
use switchboard::{ClientInfo, CloseReason, Registry, SessionId};
use wait::{eventually, recv};

type Msg = Arc<str>;

const TTL: Duration = Duration::from_secs(3);

/// This test's own Redis Cluster; without `redis-server`, the test returns after
/// the one line [`RedisCluster::start`] prints.
macro_rules! cluster_or_skip {
    ($test:expr) => {
        match RedisCluster::start($test) {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

async fn node(redis: &RedisCluster, prefix: &str, id: &str) -> Cluster<Msg> {
    Cluster::builder(Registry::new(), Raw)
        .url(redis.url())
        .prefix(prefix)
        .node_id(id)
        .ttl(TTL)
        .sharded(true)
        .connect()
        .await
        .expect("node connects to the Redis Cluster")
}

/// The session channel of `name` under `prefix` (as `src/cluster/names.rs`
/// spells it).
fn channel(prefix: &str, name: &str) -> String {
    format!("{prefix}:s:s:{name}")
}

/// One named session per master: their channels hash to three different shards.
fn one_session_per_shard(redis: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut owners = Vec::new();
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("room-{i}");
        let owner = redis.owner(&channel(prefix, &name));
        if !owners.contains(&owner) {
            owners.push(owner);
            names.push(name);
        }
        if owners.len() == 3 {
            return names;
        }
        assert!(i < 1000, "no three rooms on three shards");
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connects_through_a_cluster_url() {
    let redis = cluster_or_skip!("rc_connect");
    let a = node(&redis, "c0", "a").await;
    let b = node(&redis, "c0", "b").await;
    let nodes = a.nodes().await.expect("nodes");
    let ids: Vec<&str> = nodes.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    // Every presence key shares the hash tag {c0}: one master holds them all.
    let owner = redis.owner("{c0}");
    assert_eq!(
        redis.cli(owner, &["ZCARD", "{c0}:nodes"]).as_deref(),
        Some("2")
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_crosses_nodes_in_sessions_on_every_shard() {
    let redis = cluster_or_skip!("rc_broadcast");
    let rooms = one_session_per_shard(&redis, "c1");
    let (a, b) = (node(&redis, "c1", "a").await, node(&redis, "c1", "b").await);
    let (a1, mut a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    for room in &rooms {
        a.attach(a1, room.as_str()).await.unwrap();
        b.attach(b1, room.as_str()).await.unwrap();
    }
    for room in &rooms {
        a.broadcast(room.as_str(), Msg::from(format!("a:{room}")))
            .await
            .unwrap_or_else(|e| panic!("broadcast on {room}: {e}"));
        assert_eq!(&*recv(&mut a1_rx).await, format!("a:{room}"), "local");
        assert_eq!(&*recv(&mut b1_rx).await, format!("a:{room}"), "{room}");
        b.broadcast(room.as_str(), Msg::from(format!("b:{room}")))
            .await
            .unwrap_or_else(|e| panic!("broadcast on {room}: {e}"));
        assert_eq!(&*recv(&mut b1_rx).await, format!("b:{room}"), "local");
        assert_eq!(&*recv(&mut a1_rx).await, format!("b:{room}"), "{room}");
    }
    assert_eq!(a.stats().gaps + b.stats().gaps, 0);
}

/// Many sessions joined at once (the sync coalesces them into one pass), each
/// published to by the other node as soon as its attach returns: the
/// subscription must be in place by then on whichever shard owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_right_after_attach_arrives_on_every_shard() {
    let redis = cluster_or_skip!("rc_attach_then_publish");
    let (a, b) = (node(&redis, "c2", "a").await, node(&redis, "c2", "b").await);
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    let rooms: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    let attaches = rooms.iter().map(|r| {
        let b = b.clone();
        let r = r.clone();
        tokio::spawn(async move { b.attach(b1, r.as_str()).await })
    });
    for attach in attaches.collect::<Vec<_>>() {
        attach.await.unwrap().expect("attach");
    }
    for room in &rooms {
        assert_eq!(redis.shardnumsub(&channel("c2", room)), 1, "{room}");
    }
    for room in &rooms {
        a.broadcast(room.as_str(), Msg::from(room.as_str()))
            .await
            .unwrap_or_else(|e| panic!("broadcast on {room}: {e}"));
    }
    let mut got: Vec<String> = Vec::new();
    for _ in &rooms {
        got.push(recv(&mut b1_rx).await.to_string());
    }
    got.sort();
    let mut want = rooms.clone();
    want.sort();
    assert_eq!(got, want);
    // One session at a time, each published to at once.
    for i in 0..30 {
        let room = format!("q{i}");
        b.attach(b1, room.as_str()).await.unwrap();
        a.broadcast(room.as_str(), Msg::from(room.as_str()))
            .await
            .unwrap();
        assert_eq!(&*recv(&mut b1_rx).await, room);
    }
}

/// An attach returns once the subscription runs on the master that owns the
/// session's channel, not once some other master answers: with that master
/// stopped, the attach waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_waits_for_the_master_that_owns_the_channel() {
    let redis = cluster_or_skip!("rc_attach_waits");
    let rooms = one_session_per_shard(&redis, "c8");
    let (a, b) = (node(&redis, "c8", "a").await, node(&redis, "c8", "b").await);
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    let mut early = Vec::new();
    for room in &rooms {
        let owner = redis.owner(&channel("c8", room));
        redis.freeze(owner);
        let attach = {
            let (b, room) = (b.clone(), room.clone());
            tokio::spawn(async move { b.attach(b1, room.as_str()).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        if attach.is_finished() {
            early.push(room.clone());
        }
        redis.thaw(owner);
        attach.await.unwrap().expect("attach");
        assert_eq!(redis.shardnumsub(&channel("c8", room)), 1, "{room}");
        a.broadcast(room.as_str(), Msg::from(room.as_str()))
            .await
            .unwrap();
        assert_eq!(&*recv(&mut b1_rx).await, room);
    }
    assert!(
        early.is_empty(),
        "attach returned while the channel's master was stopped: {early:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_members_on_the_owning_master() {
    let redis = cluster_or_skip!("rc_lifecycle");
    let rooms = one_session_per_shard(&redis, "c3");
    let b = node(&redis, "c3", "b").await;
    let (b1, _b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    let (b2, _b2_rx) = b.register(ClientInfo::new()).await.unwrap();
    for room in &rooms {
        b.attach(b1, room.as_str()).await.unwrap();
        b.attach(b2, room.as_str()).await.unwrap();
        assert_eq!(redis.shardnumsub(&channel("c3", room)), 1, "{room}");
    }
    let mut want: Vec<SessionId> = rooms.iter().map(|r| SessionId::from(r.as_str())).collect();
    want.sort();
    assert_eq!(b.subscriptions().await, want);
    for room in &rooms {
        b.detach(b1, room.as_str()).await.unwrap();
        assert_eq!(
            redis.shardnumsub(&channel("c3", room)),
            1,
            "{room}: one left"
        );
        b.detach(b2, room.as_str()).await.unwrap();
        assert_eq!(
            redis.shardnumsub(&channel("c3", room)),
            0,
            "{room}: none left"
        );
    }
    assert!(b.subscriptions().await.is_empty());
    // Several left in one pass: the unregister detaches from all three rooms.
    for room in &rooms {
        b.attach(b1, room.as_str()).await.unwrap();
    }
    let _left = b.unregister(b1).await.unwrap();
    for room in &rooms {
        assert_eq!(redis.shardnumsub(&channel("c3", room)), 0, "{room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_key_reaches_the_client_on_the_other_node() {
    let redis = cluster_or_skip!("rc_send_to_key");
    let (a, b) = (node(&redis, "c4", "a").await, node(&redis, "c4", "b").await);
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
    assert!(a.send_to_key("nobody", Msg::from("lost?")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_crosses_nodes() {
    let redis = cluster_or_skip!("rc_takeover");
    let (a, b) = (node(&redis, "c5", "a").await, node(&redis, "c5", "b").await);
    let (_old, mut old_rx) = a.register(ClientInfo::new().with_key("dev")).await.unwrap();
    let (_new, _new_rx) = b.register(ClientInfo::new().with_key("dev")).await.unwrap();
    assert_eq!(b.locate("dev").await.unwrap().as_deref(), Some("b"));
    let closed = tokio::time::timeout(Duration::from_secs(5), old_rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the old connection closes: {closed:?}"
    );
    assert!(matches!(
        old_rx.close_reason(),
        Some(CloseReason::TakenOver { .. })
    ));
    // The channel closes before its slot is freed.
    let gone = eventually(Duration::from_secs(2), || a.registry().client_count() == 0).await;
    assert!(gone, "the old connection is still registered on a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_count_adds_up_both_nodes() {
    let redis = cluster_or_skip!("rc_member_count");
    let rooms = one_session_per_shard(&redis, "c6");
    let (a, b) = (node(&redis, "c6", "a").await, node(&redis, "c6", "b").await);
    let (a1, _a1_rx) = a.register(ClientInfo::new()).await.unwrap();
    let (b1, _b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    let (b2, _b2_rx) = b.register(ClientInfo::new()).await.unwrap();
    for room in &rooms {
        a.attach(a1, room.as_str()).await.unwrap();
        b.attach(b1, room.as_str()).await.unwrap();
        b.attach(b2, room.as_str()).await.unwrap();
        assert_eq!(a.member_count(room.as_str()).await.unwrap(), 3, "{room}");
        b.detach(b2, room.as_str()).await.unwrap();
        assert_eq!(a.member_count(room.as_str()).await.unwrap(), 2, "{room}");
    }
}

/// Every subscriber connection killed on every master: each node reconnects and
/// subscribes again to each session it has members in (on its shard) and to
/// its node channel; from then on nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_subscriber_connections_are_killed() {
    let redis = cluster_or_skip!("rc_resubscribe");
    let rooms = one_session_per_shard(&redis, "c7");
    let (a, b) = (node(&redis, "c7", "a").await, node(&redis, "c7", "b").await);
    let (b1, mut b1_rx) = b
        .register(ClientInfo::new().with_key("dev-b"))
        .await
        .unwrap();
    for room in &rooms {
        b.attach(b1, room.as_str()).await.unwrap();
    }
    assert!(
        redis.kill_subscribers() >= 2,
        "subscriber connections killed"
    );
    let back = eventually(Duration::from_secs(5), || {
        rooms
            .iter()
            .all(|r| redis.shardnumsub(&channel("c7", r)) == 1)
    })
    .await;
    let counts: Vec<usize> = rooms
        .iter()
        .map(|r| redis.shardnumsub(&channel("c7", r)))
        .collect();
    assert!(
        back,
        "every room's subscription is back within 5 s: {counts:?}"
    );
    // Publications made while the subscriptions were being restored may be lost
    // (and counted); once they are back, none is.
    for round in 0..20 {
        for room in &rooms {
            let msg = format!("{round}:{room}");
            a.broadcast(room.as_str(), Msg::from(msg.as_str()))
                .await
                .unwrap_or_else(|e| panic!("broadcast {msg}: {e}"));
            assert_eq!(&*recv(&mut b1_rx).await, msg);
        }
    }
    // The node channel came back too.
    let sent = eventually_async(Duration::from_secs(5), || async {
        a.send_to_key("dev-b", Msg::from("direct")).await.is_ok()
    })
    .await;
    assert!(sent, "send_to_key still fails");
    assert_eq!(&*recv(&mut b1_rx).await, "direct");
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publications to sessions on different shards, made at once, share the
/// publisher's batches: each `SPUBLISH` of a batch must reach its own shard,
/// and every one arrives, in order per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_to_every_shard_all_arrive_in_order() {
    let redis = cluster_or_skip!("rc_concurrent");
    let rooms = one_session_per_shard(&redis, "c9");
    let (a, b) = (node(&redis, "c9", "a").await, node(&redis, "c9", "b").await);
    let mut receivers = Vec::new();
    for room in &rooms {
        let (id, rx) = b.register(ClientInfo::new()).await.unwrap();
        b.attach(id, room.as_str()).await.unwrap();
        receivers.push(rx);
    }
    const N: usize = 200;
    // Read while they are sent: a client's queue is bounded.
    let readers: Vec<_> = rooms
        .iter()
        .cloned()
        .zip(receivers)
        .map(|(room, mut rx)| {
            tokio::spawn(async move {
                for i in 0..N {
                    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
                    let got = got.unwrap_or_else(|_| panic!("{room}: message {i} of {N} missing"));
                    assert_eq!(got.as_deref(), Some(i.to_string().as_str()), "{room}");
                }
            })
        })
        .collect();
    let senders: Vec<_> = rooms
        .iter()
        .map(|room| {
            let (a, room) = (a.clone(), room.clone());
            tokio::spawn(async move {
                for i in 0..N {
                    a.broadcast(room.as_str(), Msg::from(i.to_string()))
                        .await
                        .unwrap_or_else(|e| panic!("broadcast {i} on {room}: {e}"));
                }
            })
        })
        .collect();
    for task in senders.into_iter().chain(readers) {
        task.await.unwrap();
    }
    assert_eq!(b.stats().gaps, 0);
}

/// Plain pub/sub (`sharded(false)`) on Redis Cluster: `PUBLISH` reaches every
/// master's subscribers, so broadcasts cross nodes all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharded_broadcast_crosses_nodes_on_redis_cluster() {
    let redis = cluster_or_skip!("rc_unsharded");
    let rooms = one_session_per_shard(&redis, "c10");
    let mk = |id: &'static str| {
        Cluster::builder(Registry::<Msg>::new(), Raw)
            .url(redis.url())
            .prefix("c10")
            .node_id(id)
            .ttl(TTL)
            .connect()
    };
    let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
    let (b1, mut b1_rx) = b.register(ClientInfo::new()).await.unwrap();
    for room in &rooms {
        b.attach(b1, room.as_str()).await.unwrap();
    }
    for room in &rooms {
        for i in 0..5 {
            let msg = format!("{i}:{room}");
            a.broadcast(room.as_str(), Msg::from(msg.as_str()))
                .await
                .unwrap_or_else(|e| panic!("broadcast {msg}: {e}"));
            assert_eq!(&*recv(&mut b1_rx).await, msg);
        }
    }
}

/// Many authors broadcasting at once to sessions on every shard, so that the
/// publisher keeps several batches in flight: every publication crosses, in
/// its author's order, with nothing lost or doubled, plain and sharded (after
/// the test of the same name in `tests/cluster.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_cross_in_order_with_batches_in_flight() {
    let redis = cluster_or_skip!("rc_in_flight");
    const AUTHORS: usize = 48;
    const EACH: usize = 100;
    for sharded in [false, true] {
        let prefix = if sharded { "c11s" } else { "c11" };
        let rooms = one_session_per_shard(&redis, prefix);
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
                .ttl(TTL)
                .sharded(sharded)
                .connect()
        };
        let (a, b) = (mk("a").await.unwrap(), mk("b").await.unwrap());
        let mut rxs = Vec::new();
        for room in &rooms {
            let (id, rx) = b.register(ClientInfo::new()).await.unwrap();
            b.attach(id, room.as_str()).await.unwrap();
            rxs.push(rx);
        }
        let authors: Vec<_> = (0..AUTHORS)
            .map(|author| {
                let a = a.clone();
                let room = rooms[author % rooms.len()].clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        a.broadcast(room.as_str(), Msg::from(format!("{author}:{i}")))
                            .await
                            .expect("published");
                    }
                })
            })
            .collect();
        for t in authors {
            t.await.unwrap();
        }
        let mut next = vec![0usize; AUTHORS];
        for rx in &mut rxs {
            for _ in 0..AUTHORS / rooms.len() * EACH {
                let msg = recv(rx).await;
                let (author, i) = msg.split_once(':').unwrap();
                let (author, i): (usize, usize) = (author.parse().unwrap(), i.parse().unwrap());
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
        assert_eq!((sb.gaps, sb.reordered), (0, 0), "sharded {sharded}: {sb:?}");
        assert_eq!(sb.received, (AUTHORS * EACH) as u64);
    }
}

/// A claim that failed but ran (its master frozen past fred's timeout) is
/// released at a later heartbeat: the release goes to the master that owns the
/// presence keys, as every presence script does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_failed_but_ran_is_released_on_redis_cluster() {
    let redis = cluster_or_skip!("rc_failed_claim");
    let ttl = Duration::from_secs(6);
    let node = |id: &'static str| {
        Cluster::builder(Registry::<Msg>::new(), Raw)
            .url(redis.url())
            .prefix("c9")
            .node_id(id)
            .ttl(ttl)
            .sharded(true)
            .connect()
    };
    let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
    let presence = redis.owner("{c9}");
    redis.freeze(presence);
    let failed = a.register(ClientInfo::new().with_key("dev")).await;
    redis.thaw(presence);
    assert!(
        failed.is_err(),
        "answered while the presence master was frozen"
    );
    let named = |want: Option<&'static str>| {
        let b = &b;
        async move {
            let deadline = Instant::now() + ttl;
            loop {
                let got = b.locate("dev").await.unwrap();
                if got.as_deref() == want || Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        named(Some("a")).await.as_deref(),
        Some("a"),
        "the claim ran"
    );
    assert_eq!(
        named(None).await,
        None,
        "the key still names a, where no connection holds it"
    );
}
