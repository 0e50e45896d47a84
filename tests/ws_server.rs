//! The `ws_server` example, run for real: a server on ephemeral loopback ports and
//! real WebSocket clients (tokio-tungstenite) talking to it over TCP.
#![cfg(feature = "http")]

#[allow(
    dead_code,
    reason = "the example's module is shared with its main; not every item is used here"
)]
#[path = "../examples/ws_server/server/mod.rs"]
mod server;

#[path = "common/alone.rs"]
mod alone;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use server::{Config, Server, StartError};
use switchboard::{ClientId, SlowConsumerPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one thing before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config {
        ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        close_linger: Duration::from_millis(500),
        ..Config::default()
    }
}

async fn start(config: Config) -> Server {
    Server::start(config).await.expect("the server starts")
}

async fn connect(server: &Server) -> Ws {
    let url = format!("ws://{}/ws", server.ws_addr());
    let (ws, _) = timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("the upgrade succeeds");
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("the socket is open");
}

/// The next JSON frame, skipping pings and pongs.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let next = timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a readable frame");
        match next {
            Message::Text(text) => {
                return serde_json::from_str(&text).expect("JSON from the server")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; its code and reason. Text frames queued
/// before it are skipped.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let next = timeout(PATIENCE, ws.next())
            .await
            .expect("a close frame in time");
        match next {
            Some(Ok(Message::Close(frame))) => {
                // Sends the close reply the WebSocket layer queued, completing the
                // handshake so the server need not wait out its linger.
                let _ = ws.flush().await;
                return frame.map_or((0, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Says hello and returns the id from `welcome`.
async fn hello(ws: &mut Ws, profile: Value) -> ClientId {
    let mut frame = profile;
    frame["type"] = json!("hello");
    send(ws, frame).await;
    let welcome = recv(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    welcome["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id")
}

async fn join(ws: &mut Ws, session: Value) {
    send(ws, json!({"type": "join", "session": session.clone()})).await;
    assert_eq!(
        recv(ws).await,
        json!({"type": "joined", "session": session})
    );
}

async fn expect_error(ws: &mut Ws, frame: Value, code: &str) {
    send(ws, frame.clone()).await;
    let reply = recv(ws).await;
    assert_eq!(reply["type"], "error", "{frame} -> {reply}");
    assert_eq!(reply["code"], code, "{frame} -> {reply}");
    assert!(reply["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// Nothing arrives for a while.
async fn quiet(ws: &mut Ws) {
    match timeout(Duration::from_millis(150), ws.next()).await {
        Err(_) => {}
        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
        Ok(other) => panic!("expected nothing, got {other:?}"),
    }
}

/// Waits until `done` holds, polling.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP/1.1 request to `addr` over a plain socket: the whole response.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("the server listens");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("writable");
    let mut response = String::new();
    timeout(PATIENCE, tcp.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .expect("a readable answer");
    response
}

/// One HTTP/1.1 request to the admin API over a plain socket: status and body.
async fn admin(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let addr = server.admin_addr().expect("the admin API is on");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = http(addr, method, path, &body).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn rooms_direct_messages_and_admin_broadcasts_reach_the_right_clients() {
    let server = start(config()).await;
    let mut alice = connect(&server).await;
    let mut bob = connect(&server).await;
    let mut carol = connect(&server).await;
    let a = hello(&mut alice, json!({"key": "alice"})).await;
    let b = hello(&mut bob, json!({"key": "bob"})).await;
    let _c = hello(&mut carol, json!({})).await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        join(ws, json!("room")).await;
    }
    join(&mut alice, json!(7)).await;
    join(&mut bob, json!("7")).await;

    // A publish reaches every other member, data byte for byte, and not the sender.
    send(
        &mut alice,
        json!({"type": "publish", "session": "room", "data": {"n": 1, "s": "é"}}),
    )
    .await;
    let expected = json!({"type": "message", "session": "room", "from": a.to_string(), "data": {"n": 1, "s": "é"}});
    assert_eq!(recv(&mut bob).await, expected);
    assert_eq!(recv(&mut carol).await, expected);
    quiet(&mut alice).await;

    // Numbered and named sessions stay apart.
    send(&mut bob, json!({"type": "publish", "session": 7})).await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "message", "session": 7, "from": b.to_string(), "data": null})
    );
    quiet(&mut bob).await;

    // Direct by key and by id.
    send(
        &mut bob,
        json!({"type": "direct", "to": "alice", "data": "psst"}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "message", "from": b.to_string(), "data": "psst"})
    );
    send(
        &mut alice,
        json!({"type": "direct", "to": b.to_string(), "data": [1]}),
    )
    .await;
    assert_eq!(recv(&mut bob).await["data"], json!([1]));
    quiet(&mut carol).await;

    // Leaving stops delivery.
    send(&mut carol, json!({"type": "leave", "session": "room"})).await;
    assert_eq!(
        recv(&mut carol).await,
        json!({"type": "left", "session": "room"})
    );
    send(
        &mut alice,
        json!({"type": "publish", "session": "room", "data": 2}),
    )
    .await;
    assert_eq!(recv(&mut bob).await["data"], 2);
    quiet(&mut carol).await;

    // An operator's broadcast arrives with `from: null`.
    let (status, report) = admin(
        &server,
        "POST",
        "/sessions/room/broadcast",
        Some(json!({"notice": "hi"})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["delivered"], 2);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            recv(ws).await,
            json!({"type": "message", "session": "room", "from": null, "data": {"notice": "hi"}})
        );
    }
    let (status, listed) = admin(&server, "GET", "/sessions/room", None).await;
    assert_eq!((status, listed["count"].clone()), (200, json!(2)));

    let _ = server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_hello_gets_an_error_frame_and_the_connection_stays_open() {
    let server = start(config()).await;
    let mut ws = connect(&server).await;
    // 100 tags: a small frame (well under max_frame), over the registry's default
    // bound of 64 tags.
    let tags: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let flood = json!({"type": "hello", "key": "k", "kind": "device",
        "system_info": {"tags": tags}});
    expect_error(&mut ws, flood, "profile_too_large").await;
    // Nothing was registered, and the same connection can still say hello.
    let _me = hello(&mut ws, json!({"key": "k", "kind": "device"})).await;
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let server = start(config()).await;
    let mut ws = connect(&server).await;

    // Before hello.
    expect_error(
        &mut ws,
        json!({"type": "join", "session": "x"}),
        "hello_required",
    )
    .await;
    ws.send(Message::text("not json")).await.expect("open");
    assert_eq!(recv(&mut ws).await["code"], "bad_json");
    expect_error(
        &mut ws,
        json!({"type": "hello", "kind": "robot"}),
        "bad_frame",
    )
    .await;
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("open");
    assert_eq!(recv(&mut ws).await["code"], "binary_unsupported");

    let me = hello(&mut ws, json!({"key": "k", "kind": "device"})).await;

    // After hello.
    ws.send(Message::text("{\"type\":")).await.expect("open");
    assert_eq!(recv(&mut ws).await["code"], "bad_json");
    ws.send(Message::binary(vec![0])).await.expect("open");
    assert_eq!(recv(&mut ws).await["code"], "binary_unsupported");
    let cases = [
        (json!([1, 2]), "bad_frame"),
        (json!({"session": "x"}), "bad_frame"),
        (json!({"type": 5}), "bad_frame"),
        (json!({"type": "dance"}), "unknown_type"),
        (json!({"type": "hello"}), "already_registered"),
        (json!({"type": "join"}), "bad_frame"),
        (json!({"type": "join", "session": -1}), "bad_frame"),
        (json!({"type": "join", "session": true}), "bad_frame"),
        (json!({"type": "leave", "session": "x"}), "not_attached"),
        (json!({"type": "publish", "data": 1}), "bad_frame"),
        (
            json!({"type": "publish", "session": "nowhere", "data": 1}),
            "unknown_session",
        ),
        (json!({"type": "direct", "data": 1}), "bad_frame"),
        (
            json!({"type": "direct", "to": "nobody", "data": 1}),
            "unknown_client",
        ),
        (
            json!({"type": "direct", "to": "c0.999.9", "data": 1}),
            "unknown_client",
        ),
        (
            json!({"type": "task_open", "device": "nobody"}),
            "unknown_client",
        ),
        (json!({"type": "task_open", "device": "k"}), "task_refused"),
        (json!({"type": "task_done"}), "bad_frame"),
        (json!({"type": "task_done", "task": 999}), "unknown_task"),
        (json!({"type": "task_done", "task": "t1"}), "bad_frame"),
    ];
    for (frame, code) in cases {
        expect_error(&mut ws, frame, code).await;
    }
    // Still open and registered.
    join(&mut ws, json!("fine")).await;
    assert!(server.registry().is_online(me));
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let server = start(Config {
        max_frame: 1024,
        ..config()
    })
    .await;
    let mut ws = connect(&server).await;
    let id = hello(&mut ws, json!({})).await;
    let big = json!({"type": "publish", "session": "x", "data": "y".repeat(2000)});
    ws.send(Message::text(big.to_string())).await.expect("open");
    let (code, _) = closed(&mut ws).await;
    assert_eq!(code, u16::from(CloseCode::Size));
    assert_eq!(code, 1009);
    let registry = server.registry().clone();
    eventually("the client is unregistered", || !registry.is_online(id)).await;

    // Before hello too.
    let mut early = connect(&server).await;
    early
        .send(Message::text("z".repeat(5000)))
        .await
        .expect("open");
    assert_eq!(closed(&mut early).await.0, 1009);
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stays_slow_is_closed_with_4000() {
    let server = start(Config {
        queue: 4,
        slow_consumer: SlowConsumerPolicy::Disconnect,
        ..config()
    })
    .await;
    let registry = server.registry().clone();
    let mut slow = connect(&server).await;
    let mut fast = connect(&server).await;
    let slow_id = hello(&mut slow, json!({"key": "slow"})).await;
    let _ = hello(&mut fast, json!({"key": "fast"})).await;
    join(&mut slow, json!("firehose")).await;
    join(&mut fast, json!("firehose")).await;

    // `slow` stops reading. Frames fill its socket buffers, then its queue, and the
    // next broadcast that finds the queue full disconnects it.
    let chunk = "x".repeat(60_000);
    let mut sent = 0;
    while registry.stats().disconnected == 0 {
        assert!(sent < 5_000, "never disconnected after {sent} frames");
        send(
            &mut fast,
            json!({"type": "publish", "session": "firehose", "data": chunk}),
        )
        .await;
        sent += 1;
        if sent % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(!registry.is_online(slow_id));
    assert!(registry.is_online("fast"), "the publisher is untouched");
    // When `slow` reads again, what its socket held arrives, then the close.
    let (code, reason) = closed(&mut slow).await;
    assert_eq!((code, reason.as_str()), (4000, "slow consumer"));
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn idle_clients_are_pinged_and_silent_ones_closed() {
    let server = start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        // Long enough that the server still waits for `silent`'s close reply when
        // the test reads it (reading answers the queued pings first).
        close_linger: Duration::from_secs(3),
        ..config()
    })
    .await;
    let registry = server.registry().clone();
    let mut silent = connect(&server).await;
    let mut lively = connect(&server).await;
    let silent_id = hello(&mut silent, json!({})).await;
    let lively_id = hello(&mut lively, json!({})).await;
    // And one that never says hello.
    let mut mute = connect(&server).await;

    // `lively` keeps reading, so its WebSocket layer answers every ping with a pong;
    // `silent` reads nothing, so it answers none.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            timeout(Duration::from_millis(50), lively.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 5, "pinged every 100 ms, saw {pings}");
    assert!(
        !registry.is_online(silent_id),
        "the silent client was closed"
    );
    assert!(registry.is_online(lively_id), "the lively client was kept");
    assert_eq!(closed(&mut silent).await.0, 4003);

    assert_eq!(closed(&mut mute).await.0, 4003);
    // `lively` answers the shutdown's close, so shutdown need not wait out the linger.
    let lively = tokio::spawn(async move { closed(&mut lively).await.0 });
    let _ = server.shutdown().await;
    assert_eq!(lively.await.ok(), Some(1001));
}

#[tokio::test]
async fn no_hello_within_the_idle_timeout_closes_with_4003_whatever_else_arrives() {
    let idle = Duration::from_millis(300);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    // The server's hello deadline starts after this, so the close cannot come
    // before `connecting + idle`.
    let connecting = tokio::time::Instant::now();
    let mut ws = connect(&server).await;
    // Something every 200 ms, under the idle timeout: pings, and frames that get
    // an error reply. Neither is a hello, so neither may put the deadline off.
    let every = Duration::from_millis(200);
    let mut tick = tokio::time::interval_at(connecting + every, every);
    let window = tokio::time::sleep_until(connecting + Duration::from_millis(1500));
    tokio::pin!(window);
    let mut sent = 0;
    let (code, at) = loop {
        tokio::select! {
            () = &mut window => panic!(
                "no close within 1.5 s of connecting with idle_timeout {idle:?}: \
                 {sent} pings and bad frames, and no hello, kept the connection open"
            ),
            _ = tick.tick() => {
                sent += 1;
                let frame = if sent % 2 == 1 {
                    Message::Ping(Default::default())
                } else {
                    Message::text("not json")
                };
                // The server may have closed meanwhile; its close frame is read below.
                let _ = ws.send(frame).await;
            }
            next = ws.next() => match next {
                Some(Ok(Message::Close(frame))) => {
                    let _ = ws.flush().await;
                    let code = frame.map_or(0, |f| u16::from(f.code));
                    break (code, tokio::time::Instant::now());
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            },
        }
    };
    assert_eq!(code, 4003);
    let after = at - connecting;
    assert!(
        after >= idle - Duration::from_millis(50),
        "closed early, after {after:?}"
    );
    assert!(
        sent >= 1,
        "closed after {after:?}, before anything was sent"
    );
    let _ = server.shutdown().await;
}

/// Opens a raw TCP connection to `addr`, sends `first`, then `trickle` one byte
/// every 50 ms (never a whole request head or body), and reads until the server
/// closes the connection: how long that took, or how long it stayed open if not
/// within `window`; and what the server said meanwhile.
async fn stalled(
    addr: SocketAddr,
    first: &[u8],
    trickle: &[u8],
    window: Duration,
) -> (Result<Duration, Duration>, String) {
    let start = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("the server listens");
    tcp.write_all(first).await.expect("writable");
    let mut bytes = trickle.iter().cycle();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let until = tokio::time::sleep(window);
    tokio::pin!(until);
    let mut buf = [0; 1024];
    let mut said = Vec::new();
    let closed = loop {
        tokio::select! {
            () = &mut until => break Err(start.elapsed()),
            _ = tick.tick(), if !trickle.is_empty() => {
                let byte = *bytes.next().expect("cycled");
                // A refused write means the server has closed; the read sees it.
                let _ = tcp.write_all(&[byte]).await;
            }
            // Whatever the server says first (a 408, say), it must then close.
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Ok(start.elapsed()),
                Ok(n) => said.extend_from_slice(&buf[..n]),
            },
        }
    };
    (closed, String::from_utf8_lossy(&said).into_owned())
}

/// Every way of holding a connection before the upgrade: silence, a request
/// line and then silence, and a head sent a byte at a time. What went wrong, if
/// anything.
async fn stalls_outlasting(
    addr: SocketAddr,
    listener: &str,
    early: Duration,
    bound: Duration,
) -> Vec<String> {
    let window = bound + Duration::from_secs(1);
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("sends nothing", b"", b""),
        (
            "sends a request line and stalls",
            b"GET / HTTP/1.1\r\n",
            b"",
        ),
        (
            "sends its head a byte at a time",
            b"GET /ws HTTP/1.1\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        ),
    ];
    let runs = cases.map(|(what, first, trickle)| async move {
        (what, stalled(addr, first, trickle, window).await.0)
    });
    let mut wrong = Vec::new();
    for (what, result) in futures_util::future::join_all(runs).await {
        match result {
            Ok(after) if (early..=bound).contains(&after) => {}
            Ok(after) => wrong.push(format!(
                "{listener}: a peer that {what} was closed after {after:?}"
            )),
            Err(open) => wrong.push(format!(
                "{listener}: a peer that {what} was still connected after {open:?}"
            )),
        }
    }
    wrong
}

#[tokio::test]
async fn a_peer_that_stalls_before_the_upgrade_is_closed_by_the_hello_deadline() {
    let idle = Duration::from_millis(300);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    // The deadline, not some earlier close; and a margin for a loaded machine.
    let early = idle - Duration::from_millis(50);
    let bound = idle + Duration::from_millis(500);
    let admin = server.admin_addr().expect("the admin API is on");
    let (ws, admin) = tokio::join!(
        stalls_outlasting(server.ws_addr(), "ws", early, bound),
        stalls_outlasting(admin, "admin", early, bound),
    );
    let wrong = [ws, admin].concat();
    assert!(
        wrong.is_empty(),
        "with idle_timeout {idle:?}, not closed between {early:?} and {bound:?}:\n{}",
        wrong.join("\n")
    );
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn an_admin_body_not_complete_within_the_idle_timeout_gets_408_and_a_close() {
    let idle = Duration::from_millis(300);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    let addr = server.admin_addr().expect("the admin API is on");
    // The whole head at once, then a body that stops or comes a byte at a time.
    let head = format!(
        "POST /sessions/lobby/broadcast HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"pad\": \""
    );
    let early = idle - Duration::from_millis(50);
    let bound = idle + Duration::from_millis(500);
    let window = bound + Duration::from_secs(1);
    let cases: [(&str, &[u8]); 2] = [("stops", b""), ("trickles", b"x")];
    let runs = cases.map(|(what, trickle)| {
        let head = head.as_bytes();
        async move { (what, stalled(addr, head, trickle, window).await) }
    });
    let mut wrong = Vec::new();
    for (what, (closed, said)) in futures_util::future::join_all(runs).await {
        let status = said.lines().next().unwrap_or_default();
        if status != "HTTP/1.1 408 Request Timeout" || !said.contains(r#""error":"body_timeout""#) {
            wrong.push(format!("a body that {what} got {said:?}"));
        }
        match closed {
            Ok(after) if (early..=bound).contains(&after) => {}
            Ok(after) => wrong.push(format!("a body that {what} was closed after {after:?}")),
            Err(open) => wrong.push(format!(
                "a body that {what} was still connected after {open:?}"
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "with idle_timeout {idle:?}, not answered 408 and closed between {early:?} and {bound:?}:\n{}",
        wrong.join("\n")
    );
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn the_hello_deadline_counts_from_the_tcp_accept_not_the_upgrade() {
    let idle = Duration::from_millis(900);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    let connecting = tokio::time::Instant::now();
    let tcp = TcpStream::connect(server.ws_addr())
        .await
        .expect("the server listens");
    // Most of the deadline goes before the upgrade request is even sent.
    tokio::time::sleep(idle * 2 / 3).await;
    let url = format!("ws://{}/ws", server.ws_addr());
    let (mut ws, _) = timeout(PATIENCE, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("upgrades in time")
        .expect("the upgrade succeeds");
    let upgraded = connecting.elapsed();
    let next = timeout(PATIENCE, ws.next()).await.expect("a close in time");
    let after = connecting.elapsed();
    let code = match next {
        Some(Ok(Message::Close(frame))) => frame.map_or(0, |f| u16::from(f.code)),
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(code, 4003);
    // Counted from the upgrade it would come at `upgraded + idle`, about 1.5 s.
    assert!(
        after < idle + Duration::from_millis(300),
        "no hello: closed {after:?} after connecting (upgraded at {upgraded:?}); \
         the deadline is {idle:?} from the TCP accept"
    );
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn on_a_kept_alive_connection_the_hello_deadline_counts_from_the_upgrade_request() {
    let idle = Duration::from_millis(600);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    let addr = server.ws_addr();
    let mut tcp = TcpStream::connect(addr).await.expect("the server listens");
    let request = format!("GET /rooms/lobby HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("writable");
    // The whole answer, so that the connection is idle and kept alive.
    let mut answer = Vec::new();
    let mut buf = [0; 1024];
    loop {
        let n = timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("readable");
        assert!(n > 0, "the server closed a kept-alive connection");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse::<usize>().ok())
                .expect("a content-length");
            if body.len() >= length {
                break;
            }
        }
    }
    // Upgrade late, then say hello past the accept's deadline but within the
    // upgrade request's.
    tokio::time::sleep(idle * 2 / 3).await;
    let url = format!("ws://{addr}/ws");
    let tcp = MaybeTlsStream::Plain(tcp);
    let (mut ws, _) = timeout(PATIENCE, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("upgrades in time")
        .expect("the upgrade succeeds");
    tokio::time::sleep(idle * 2 / 3).await;
    let _ = hello(&mut ws, json!({})).await;
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001_and_empties_the_registry() {
    let server = start(config()).await;
    let registry = server.registry().clone();
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut ws = connect(&server).await;
        let _ = hello(&mut ws, json!({"key": format!("k{i}"), "kind": "device"})).await;
        join(&mut ws, json!("all")).await;
        clients.push(ws);
    }
    // Many turns of every reader and writer before the shutdown: each waits for it
    // across its turns, and must still see it after them. Each member gets 28
    // messages, within its queue of 32 even if its writer lags.
    for ws in &mut clients {
        for n in 0..4 {
            send(ws, json!({"type": "publish", "session": "all", "data": n})).await;
        }
    }
    let mut last = clients.pop().expect("eight clients");
    for n in 0..7 * 4 {
        let message = recv(&mut last).await;
        assert_eq!(message["type"], "message", "message {n} of the others'");
    }
    let mut readers = Vec::new();
    for mut ws in clients.into_iter().chain([last]) {
        readers.push(tokio::spawn(async move { closed(&mut ws).await }));
    }
    // One more that never says hello.
    let mut lurker = connect(&server).await;
    assert_eq!(registry.client_count(), 8);

    let report = server.shutdown().await;
    assert_eq!(report.clients, 8);
    assert_eq!(report.forced, 0, "every connection closed itself");
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.session_count(), 0);
    for reader in readers {
        let (code, reason) = reader.await.expect("the reader ran");
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    assert_eq!(closed(&mut lurker).await.0, 1001);
}

#[tokio::test]
async fn a_task_is_cancelled_when_its_orchestrators_socket_drops() {
    let server = start(config()).await;
    let registry = server.registry().clone();
    let mut device = connect(&server).await;
    let mut boss = connect(&server).await;
    let d = hello(
        &mut device,
        json!({"key": "d1", "kind": "device", "platform": "linux"}),
    )
    .await;
    let o = hello(&mut boss, json!({"key": "boss", "kind": "orchestrator"})).await;

    // A task opened and completed by the device.
    send(&mut boss, json!({"type": "task_open", "device": "d1"})).await;
    let opened = recv(&mut boss).await;
    assert_eq!(opened["type"], "task_opened");
    assert_eq!(
        (opened["orchestrator"].clone(), opened["device"].clone()),
        (json!(o.to_string()), json!(d.to_string()))
    );
    assert_eq!(recv(&mut device).await, opened);
    let first = opened["task"].clone();
    send(&mut device, json!({"type": "task_done", "task": first})).await;
    assert_eq!(
        recv(&mut device).await,
        json!({"type": "task_done", "task": first})
    );
    assert_eq!(
        recv(&mut boss).await,
        json!({"type": "task_done", "task": first})
    );

    // A second task; then the orchestrator's TCP connection simply goes away.
    send(
        &mut boss,
        json!({"type": "task_open", "device": d.to_string()}),
    )
    .await;
    let task = recv(&mut boss).await["task"].clone();
    assert_eq!(recv(&mut device).await["task"], task);
    drop(boss);

    assert_eq!(
        recv(&mut device).await,
        json!({"type": "task_cancelled", "task": task, "reason": "orchestrator_disconnected"})
    );
    eventually("the orchestrator is unregistered", || {
        !registry.is_online(o)
    })
    .await;
    assert_eq!(registry.stats().tasks, 0);
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn kicks_and_takeovers_close_with_their_own_codes() {
    let server = start(config()).await;
    let mut first = connect(&server).await;
    let _ = hello(&mut first, json!({"key": "dup"})).await;
    let mut second = connect(&server).await;
    let second_id = hello(&mut second, json!({"key": "dup"})).await;
    assert_eq!(closed(&mut first).await.0, 4002);

    let (status, body) = admin(&server, "DELETE", "/clients/dup?reason=bye%20now", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], second_id.to_string());
    assert_eq!(closed(&mut second).await, (4001, "bye now".to_owned()));
    let (status, body) = admin(&server, "GET", "/clients/dup", None).await;
    assert_eq!(
        (status, body["error"].clone()),
        (404, json!("unknown_client"))
    );
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_full_server_refuses_with_1013() {
    let server = start(Config {
        max_clients: Some(1),
        ..config()
    })
    .await;
    let mut one = connect(&server).await;
    let _ = hello(&mut one, json!({})).await;
    let mut two = connect(&server).await;
    send(&mut two, json!({"type": "hello"})).await;
    assert_eq!(recv(&mut two).await["code"], "server_full");
    assert_eq!(closed(&mut two).await.0, 1013);
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_peer_at_its_session_or_task_bound_gets_an_error_frame() {
    let server = start(Config {
        max_sessions_per_client: Some(2),
        max_tasks_per_client: Some(1),
        ..config()
    })
    .await;
    let mut ws = connect(&server).await;
    let me = hello(&mut ws, json!({"key": "o", "kind": "orchestrator"})).await;
    join(&mut ws, json!("a")).await;
    join(&mut ws, json!(2)).await;
    expect_error(
        &mut ws,
        json!({"type": "join", "session": "c"}),
        "too_many_sessions",
    )
    .await;
    assert!(
        server.registry().members("c").is_err(),
        "the refused join created no session"
    );
    // Already a member: still the no-op it always was.
    join(&mut ws, json!("a")).await;
    send(&mut ws, json!({"type": "leave", "session": "a"})).await;
    assert_eq!(recv(&mut ws).await["type"], "left");
    join(&mut ws, json!("c")).await;
    // The name bound is the registry's default, 256 bytes.
    expect_error(
        &mut ws,
        json!({"type": "join", "session": "x".repeat(257)}),
        "session_name_too_long",
    )
    .await;

    let mut d1 = connect(&server).await;
    let _ = hello(&mut d1, json!({"key": "d1", "kind": "device"})).await;
    let mut d2 = connect(&server).await;
    let _ = hello(&mut d2, json!({"key": "d2", "kind": "device"})).await;
    send(&mut ws, json!({"type": "task_open", "device": "d1"})).await;
    assert_eq!(recv(&mut ws).await["type"], "task_opened");
    assert_eq!(recv(&mut d1).await["type"], "task_opened");
    expect_error(
        &mut ws,
        json!({"type": "task_open", "device": "d2"}),
        "too_many_tasks",
    )
    .await;
    quiet(&mut d2).await;
    assert_eq!(
        server.registry().tasks_of_orchestrator(me).map(|t| t.len()),
        Ok(1)
    );
    let _ = server.shutdown().await;
}

#[tokio::test]
async fn a_frame_trickled_slower_than_the_idle_timeout_closes_with_4003() {
    let idle = Duration::from_millis(500);
    let server = start(Config {
        idle_timeout: idle,
        ..config()
    })
    .await;
    let mut ws = connect(&server).await;
    let _ = hello(&mut ws, json!({})).await;
    let since = tokio::time::Instant::now();
    let MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
        panic!("a plain TCP stream")
    };
    // A text frame announcing 125 bytes, masked with zeros (so sent as they are),
    // whose payload then comes a byte every 50 ms: whole only after 6 s.
    tcp.write_all(&[0x81, 0x80 | 125, 0, 0, 0, 0])
        .await
        .expect("writable");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut said = Vec::new();
    let mut buf = [0; 256];
    let closed = timeout(PATIENCE, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A refused write means the server has closed; the read sees it.
                    let _ = tcp.write_all(b"x").await;
                }
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                },
            }
        }
    })
    .await;
    let after = since.elapsed();
    assert!(closed.is_ok(), "still connected after {after:?}");
    // The server's close frame: unmasked, FIN and opcode 8, then the code.
    assert!(
        said.len() >= 4 && said[0] == 0x88,
        "expected a close frame, got {said:?}"
    );
    assert_eq!(u16::from_be_bytes([said[2], said[3]]), 4003, "{said:?}");
    // Closed at the idle deadline, then the close linger (500 ms) at most.
    let bound = idle + Duration::from_millis(500) + Duration::from_millis(500);
    assert!(
        (idle - Duration::from_millis(50)..bound).contains(&after),
        "closed after {after:?}, idle_timeout {idle:?}"
    );
    let _ = server.shutdown().await;
}

/// Every duration the server counts with is checked at start: zero (a ping every
/// instant, a connection due before it arrives) and lengths the clock cannot add
/// are refused with a typed error, never a panic on the first connection. A
/// linger of zero (do not wait for the peer's close) is a setting, not an error.
#[tokio::test]
async fn durations_the_server_cannot_count_with_are_refused_at_start() {
    type Set = fn(&mut Config, Duration);
    let fields: [(&str, Set, bool); 4] = [
        ("ping_interval", |c, d| c.ping_interval = d, false),
        ("idle_timeout", |c, d| c.idle_timeout = d, false),
        ("write_timeout", |c, d| c.write_timeout = d, false),
        ("close_linger", |c, d| c.close_linger = d, true),
    ];
    for (name, set, zero_ok) in fields {
        let zero = (!zero_ok).then_some(Duration::ZERO);
        let too_long = [
            Config::MAX_DURATION + Duration::from_millis(1),
            Duration::MAX,
        ];
        for bad in zero.into_iter().chain(too_long) {
            let mut c = config();
            set(&mut c, bad);
            let started = tokio::spawn(Server::start(c)).await;
            match started {
                Ok(Err(StartError::Config(e))) => {
                    assert!(e.to_string().contains(name), "{name} = {bad:?}: {e}");
                }
                Ok(Err(e)) => panic!("{name} = {bad:?}: the wrong error: {e}"),
                Ok(Ok(_)) => panic!("{name} = {bad:?} was accepted"),
                Err(panic) => panic!("{name} = {bad:?} panicked: {panic}"),
            }
        }
    }
    // The longest accepted serves: a connection says hello and is answered.
    let mut c = config();
    c.ping_interval = Config::MAX_DURATION;
    c.idle_timeout = Config::MAX_DURATION;
    c.write_timeout = Config::MAX_DURATION;
    c.close_linger = Config::MAX_DURATION;
    let server = start(c).await;
    let mut ws = connect(&server).await;
    hello(&mut ws, json!({"key": "patient"})).await;
}

/// `close_linger` zero: a shutdown closes every client with 1001 without waiting
/// for its close frame.
#[tokio::test]
async fn a_close_linger_of_zero_closes_without_waiting() {
    let mut c = config();
    c.close_linger = Duration::ZERO;
    let server = start(c).await;
    let mut ws = connect(&server).await;
    hello(&mut ws, json!({})).await;
    let report = timeout(PATIENCE, server.shutdown())
        .await
        .expect("the shutdown ends in time");
    assert_eq!(report.clients, 1, "one client closed");
}

/// A shutdown does not wait out the head timeout of a connection still sending
/// its request head: hyper counts such a connection as busy, so a graceful
/// shutdown alone leaves it open until `idle_timeout`. Both listeners.
#[tokio::test]
async fn a_shutdown_closes_connections_stalled_mid_head_within_its_deadline() {
    let mut c = config();
    c.idle_timeout = Duration::from_secs(60);
    c.write_timeout = Duration::from_millis(200);
    // The shutdown's deadline: close_linger (500 ms) + 2 × write_timeout + 1 s.
    let bound = Duration::from_millis(500 + 400 + 1000) + Duration::from_millis(1500);
    let server = start(c).await;
    let mut stalled = Vec::new();
    for addr in [server.ws_addr(), server.admin_addr().expect("admin on")] {
        let mut tcp = TcpStream::connect(addr).await.expect("the server listens");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("writable");
        stalled.push(tcp);
    }
    // Let hyper start reading both heads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = tokio::time::Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    for (i, tcp) in stalled.iter_mut().enumerate() {
        let mut buf = [0; 256];
        let left = bound.saturating_sub(began.elapsed());
        match timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!(
                "listener {i}: answered {:?} instead of closing",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => panic!(
                "listener {i}: still open {:.2?} after the shutdown began",
                began.elapsed()
            ),
        }
    }
    timeout(PATIENCE, shutdown)
        .await
        .expect("the shutdown ends")
        .expect("no panic");
}

/// A peer that pings and never reads what comes back: the WebSocket layer owes it
/// a pong per ping, and queues each one it cannot send. Those pongs are bounded,
/// not kept for as long as the peer keeps pinging (here before its `hello`, where
/// the hello deadline, a minute by default, is the only clock).
#[tokio::test]
async fn a_peer_that_pings_and_never_reads_cannot_grow_the_servers_memory_without_bound() {
    if !alone::here(
        "a_peer_that_pings_and_never_reads_cannot_grow_the_servers_memory_without_bound",
    ) {
        return;
    }
    let server = start(config()).await;
    let ws = connect(&server).await;
    let MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
        panic!("a plain TCP stream")
    };
    // Counted from here: the server and this connection are up.
    let Some(before) = alone::resident_bytes() else {
        println!("skipped: no /proc/self/status to read resident memory from");
        return;
    };
    // A ping with the 125 bytes a control frame may carry, masked with zeros.
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend([b'p'; 125]);
    let burst = ping.repeat(8 * 1024);
    let bursts = 128;
    // 128 MiB of pings; the server reads them all (none is an error), and owes a
    // 127-byte pong for each.
    timeout(Duration::from_secs(120), async {
        for _ in 0..bursts {
            tcp.write_all(&burst).await.expect("the server reads on");
        }
    })
    .await
    .expect("the server reads the pings in time");
    // What is still in the server's socket buffer is read meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = alone::resident_bytes()
        .unwrap_or_default()
        .saturating_sub(before);
    drop(tcp);
    let _ = server.shutdown().await;
    let sent = bursts * burst.len();
    assert!(
        grown < 32 << 20,
        "resident memory grew by {} MiB while a peer that never reads sent {} MiB of pings",
        grown >> 20,
        sent >> 20
    );
}

/// The bound on a connection's unsent bytes adds `write_buffer` to a multiple of
/// `max_frame`; settings too large to add up are refused at start, not left to
/// panic in the WebSocket layer at the first upgrade.
#[tokio::test]
async fn buffer_sizes_too_large_to_bound_are_refused_at_start() {
    for (name, set) in [
        (
            "write_buffer",
            (|c| c.write_buffer = usize::MAX) as fn(&mut Config),
        ),
        ("max_frame", |c| c.max_frame = usize::MAX / 4),
    ] {
        let mut c = config();
        set(&mut c);
        match tokio::spawn(Server::start(c)).await {
            Ok(Err(StartError::Config(e))) => assert!(e.contains(name), "{name}: {e}"),
            Ok(Err(e)) => panic!("{name}: the wrong error: {e}"),
            Ok(Ok(server)) => {
                let _ = server.shutdown().await;
                panic!("{name} too large to bound a connection's unsent bytes was accepted");
            }
            Err(panic) => panic!("{name}: panicked: {panic}"),
        }
    }
}

/// The demo's member list refuses a room name that does not decode to UTF-8 as
/// it refuses any other bad name: 400 with a JSON `bad_room`, not the
/// framework's plain-text rejection.
#[tokio::test]
async fn a_room_name_that_is_not_utf8_gets_a_json_bad_room() {
    let server = start(config()).await;
    let response = http(server.ws_addr(), "GET", "/rooms/%FF%FE", "").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 400 "), "{response}");
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(body["error"], "bad_room", "{body}");
    let _ = server.shutdown().await;
}
