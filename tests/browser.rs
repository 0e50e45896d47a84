//! The dashboard and the demo room page in a real headless Chromium, driven
//! through chromedriver (WebDriver) with `fantoccini`.
//!
//! Each test starts its own `ws_server` (WebSocket and admin listeners on free
//! loopback ports), its own chromedriver, and one Chromium per page with a fresh
//! profile; all of them end with the test, even a failing one. The tests take turns,
//! so two Chromiums at most run at once. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/browser/` (under `target/`).
//!
//! Without `chromium` and `chromedriver` each test prints one line and passes;
//! with `SWITCHBOARD_REQUIRE_EXTERNAL=1` it fails instead.
#![cfg(feature = "http")]

#[allow(
    dead_code,
    reason = "shared with tests/cluster.rs; only starting one is needed here"
)]
#[path = "common/redis.rs"]
mod redis;
#[allow(
    dead_code,
    reason = "the example's module is shared with its main; not every item is used here"
)]
#[path = "../examples/ws_server/server/mod.rs"]
mod server;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for any one thing before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// One browser test at a time: two cores cannot run four Chromiums briskly, and a
/// starved page would make the 2 s dashboard bound flaky.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Flags that work for Debian's chromium in a container: no sandbox (no user
/// namespaces), no GPU, and no traffic beyond the test's own loopback servers.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_in_a_room_and_see_each_other_in_order() {
    let Some(browser) =
        Browser::launch("two_pages_chat_in_a_room_and_see_each_other_in_order").await
    else {
        return;
    };
    let server = start(Config::default()).await;
    let home = format!("http://{}/", server.ws_addr());
    let alice = browser.page().await;
    let bob = browser.page().await;
    join(&alice, &home, "alice", "lobby").await;
    join(&bob, &home, "bob", "lobby").await;

    for text in ["hello bob", "are you there?", "third"] {
        say(&alice, text).await;
    }
    wait_for_messages(&bob, 3).await;
    for text in ["hi alice", "yes, here"] {
        say(&bob, text).await;
    }
    wait_for_messages(&alice, 5).await;
    wait_for_messages(&bob, 5).await;
    let expected = [
        "alice: hello bob",
        "alice: are you there?",
        "alice: third",
        "bob: hi alice",
        "bob: yes, here",
    ];
    assert_eq!(messages(&alice).await, expected, "alice's page");
    assert_eq!(messages(&bob).await, expected, "bob's page");

    // Both pages list both members (the list refreshes every two seconds).
    for (page, who) in [(&alice, "alice"), (&bob, "bob")] {
        let script =
            "return [...document.querySelectorAll('#members li')].map(li => li.textContent)";
        let members = wait_js(page, script, PATIENCE, |v| {
            v.as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
        let you = format!("{who} (you)");
        assert!(
            members
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == you.as_str()),
            "{who}'s member list: {members}"
        );
    }
    screenshot(&bob, "demo.png").await;

    browser.close(vec![alice, bob]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_kick_closes_the_page_which_shows_the_reason() {
    let Some(browser) =
        Browser::launch("an_admin_kick_closes_the_page_which_shows_the_reason").await
    else {
        return;
    };
    let server = start(Config::default()).await;
    let home = format!("http://{}/", server.ws_addr());
    let first = browser.page().await;
    join(&first, &home, "mallory", "lobby").await;

    // A second tab with the same name takes the name over: the first is closed
    // with 4002 and says so.
    let page = browser.page().await;
    join(&page, &home, "mallory", "lobby").await;
    let (code, text) = close_notice(&first).await;
    assert_eq!(code, "4002", "{text}");
    assert!(text.contains("taken over"), "{text}");

    say(&page, "spam spam spam").await;
    let admin = server.admin_addr().expect("the admin API is on");
    let (status, body) = http(
        admin,
        "DELETE",
        "/clients/mallory?reason=please%20stop%20spamming",
        None,
    )
    .await;
    assert_eq!(status, 200, "the kick succeeds: {body}");

    let (code, text) = close_notice(&page).await;
    assert_eq!(code, "4001", "the close code: {text}");
    assert!(text.contains("4001"), "the notice shows the code: {text}");
    assert!(
        text.contains("kicked"),
        "the notice says what it means: {text}"
    );
    assert!(
        text.contains("please stop spamming"),
        "the notice shows the operator's reason: {text}"
    );
    screenshot(&page, "demo-kicked.png").await;

    browser.close(vec![first, page]).await;
    server.shutdown().await;
}

/// The close code and the text of the page's close notice, once it shows.
async fn close_notice(page: &Client) -> (String, String) {
    let script = "const n = document.getElementById('notice'); \
                  return n.checkVisibility() ? [n.dataset.code, n.textContent] : null";
    let notice = wait_js(page, script, PATIENCE, |v| !v.is_null()).await;
    let text = |i: usize| notice[i].as_str().unwrap_or_default().to_owned();
    (text(0), text(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_registered_from_rust_appears_on_the_dashboard_within_two_seconds() {
    let Some(browser) = Browser::launch(
        "a_client_registered_from_rust_appears_on_the_dashboard_within_two_seconds",
    )
    .await
    else {
        return;
    };
    let server = start(Config::default()).await;
    let admin = server.admin_addr().expect("the admin API is on");
    let page = browser.page().await;
    page.goto(&format!("http://{admin}/dashboard"))
        .await
        .expect("the dashboard loads");
    let clients = "return document.getElementById('data').checkVisibility() ? document.getElementById('clients-total').textContent : null";
    wait_js(&page, clients, PATIENCE, |v| v == "0").await;

    let registered = Instant::now();
    let mut sensor = ws_client(
        &server,
        json!({"key": "sensor-1", "kind": "device", "platform": "linux"}),
    )
    .await;
    wait_js(&page, clients, Duration::from_secs(2), |v| v == "1").await;
    let took = registered.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let feed = "return [...document.querySelectorAll('#feed li')].map(li => li.textContent)";
    let entries = wait_js(&page, feed, PATIENCE, |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains("sensor-1")))
        })
    })
    .await;
    assert!(entries.to_string().contains("joined"), "{entries}");

    // A busier picture for the screenshot: more kinds and platforms, sessions,
    // traffic for the chart, a takeover and a departure in the feed.
    send(&mut sensor, json!({"type": "join", "session": "fleet"})).await;
    let mut others = Vec::new();
    for (key, kind, platform) in [
        ("pixel-7", "device", "android"),
        ("iphone-15", "device", "ios"),
        ("kiosk-3", "device", "linux"),
        ("ops-console", "orchestrator", "web"),
    ] {
        let mut ws = ws_client(
            &server,
            json!({"key": key, "kind": kind, "platform": platform}),
        )
        .await;
        send(&mut ws, json!({"type": "join", "session": "fleet"})).await;
        others.push(ws);
    }
    send(&mut others[3], json!({"type": "join", "session": "ops"})).await;
    let mut again = ws_client(
        &server,
        json!({"key": "kiosk-3", "kind": "device", "platform": "linux"}),
    )
    .await;
    send(&mut again, json!({"type": "join", "session": "fleet"})).await;
    for round in 0..40 {
        send(
            &mut sensor,
            json!({"type": "publish", "session": "fleet", "data": {"reading": round}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = others.remove(0).close(None).await;
    let platforms =
        "return [...document.querySelectorAll('#platforms tr')].map(tr => tr.textContent)";
    wait_js(&page, platforms, PATIENCE, |v| {
        v.to_string().contains("android")
    })
    .await;
    let top = "return [...document.querySelectorAll('#top-sessions tr')].map(tr => tr.textContent)";
    wait_js(&page, top, PATIENCE, |v| v.to_string().contains("fleet")).await;
    wait_js(&page, feed, PATIENCE, |v| {
        let text = v.to_string();
        text.contains("taken over") && text.contains("left")
    })
    .await;
    screenshot(&page, "dashboard.png").await;

    browser.close(vec![page]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_nothing_without_the_token() {
    let Some(browser) = Browser::launch("the_dashboard_shows_nothing_without_the_token").await
    else {
        return;
    };
    let token = "correct-horse-battery";
    let server = start(Config {
        admin_token: Some(token.into()),
        ..Config::default()
    })
    .await;
    let admin = server.admin_addr().expect("the admin API is on");
    let _client = ws_client(&server, json!({"key": "hidden-device", "kind": "device"})).await;
    let page = browser.page().await;
    page.goto(&format!("http://{admin}/dashboard"))
        .await
        .expect("the page itself loads without the token");

    let state = "const $ = (id) => document.getElementById(id); \
                 return { form: $('token-form').checkVisibility(), data: $('data').checkVisibility(), \
                          clients: $('clients-total').textContent, why: $('token-why').textContent, \
                          body: document.body.innerText }";
    let asked = wait_js(&page, state, PATIENCE, |v| v["form"] == true).await;
    assert_eq!(asked["data"], false, "no data before the token: {asked}");
    assert_eq!(asked["clients"], "–", "{asked}");
    assert!(!asked["body"].as_str().unwrap().contains("hidden-device"));
    screenshot(&page, "dashboard-token.png").await;

    // A wrong token is refused and still shows nothing.
    submit_token(&page, "wrong-token").await;
    let refused = wait_js(&page, state, PATIENCE, |v| {
        v["form"] == true && v["why"].as_str().is_some_and(|w| w.contains("refused"))
    })
    .await;
    assert_eq!(refused["data"], false, "{refused}");
    assert_eq!(refused["clients"], "–", "{refused}");

    // The right one shows the data; the token never enters the address bar.
    submit_token(&page, token).await;
    wait_js(&page, state, PATIENCE, |v| {
        v["data"] == true && v["clients"] == "1"
    })
    .await;
    let url = page.current_url().await.expect("a URL");
    assert!(!url.as_str().contains(token), "{url}");
    assert_eq!(url.path(), "/dashboard");

    browser.close(vec![page]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_nodes_and_a_node_going_down() {
    let test = "the_dashboard_shows_the_cluster_nodes_and_a_node_going_down";
    let Some(redis) = redis::Redis::start(test) else {
        return;
    };
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    let node = |id: &str| Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        ..Config::default()
    };
    let a = start(node("gw-a")).await;
    let b = start(node("gw-b")).await;
    // A third node that is not a server, holding a key when it leaves.
    let c_registry = switchboard::Registry::new();
    let c = server::cluster::connect(&c_registry, &redis.url(), Some("gw-c"))
        .await
        .expect("gw-c joins");
    let (_kiosk, _kiosk_rx) = c
        .register(switchboard::ClientInfo::new().with_key("kiosk-9"))
        .await
        .expect("gw-c registers");
    let mut on_a = Vec::new();
    for key in ["sensor-1", "sensor-2"] {
        let mut ws = ws_client(
            &a,
            json!({"key": key, "kind": "device", "platform": "linux"}),
        )
        .await;
        send(&mut ws, json!({"type": "join", "session": "plant"})).await;
        on_a.push(ws);
    }
    let mut on_b = ws_client(
        &b,
        json!({"key": "ops", "kind": "orchestrator", "platform": "web"}),
    )
    .await;
    send(&mut on_b, json!({"type": "join", "session": "plant"})).await;

    let admin = a.admin_addr().expect("the admin API is on");
    let page = browser.page().await;
    page.goto(&format!("http://{admin}/dashboard"))
        .await
        .expect("the dashboard loads");
    let nodes = "const s = document.getElementById('cluster'); \
                 return s.checkVisibility() ? [...document.querySelectorAll('#nodes tr')] \
                   .map(tr => [...tr.children].map(td => td.textContent)) : null";
    // Client counts are as of each node's last heartbeat, a third of its TTL old at most.
    wait_js(&page, nodes, PATIENCE, |v| {
        v.as_array().is_some_and(|rows| rows.len() == 3)
    })
    .await;

    c.shutdown().await.expect("gw-c leaves");
    let shown = wait_js(&page, nodes, PATIENCE, |v| {
        let rows: Vec<(String, String)> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                let cell = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
                (cell(0), cell(5))
            })
            .collect();
        rows == [
            ("gw-a (this node)".to_owned(), "2".to_owned()),
            ("gw-b".to_owned(), "1".to_owned()),
        ]
    })
    .await;
    for row in shown.as_array().unwrap() {
        assert_eq!(row[1], "up", "{row}");
        assert!(row[2].as_str().unwrap().ends_with("s ago"), "{row}");
    }
    let counters = "return ['cluster-node', 'cluster-subscriptions', 'cluster-gaps'] \
                    .map(id => document.getElementById(id).textContent)";
    let counters = wait_js(&page, counters, PATIENCE, |v| v[0] == "gw-a").await;
    assert_eq!(counters, json!(["gw-a", "1", "0"]));
    let feed = "return [...document.querySelectorAll('#feed li')].map(li => li.textContent)";
    wait_js(&page, feed, PATIENCE, |v| {
        v.as_array().is_some_and(|entries| {
            entries.iter().any(|e| {
                e.as_str().is_some_and(|e| {
                    e.contains("node down") && e.contains("gw-c") && e.contains("kiosk-9")
                })
            })
        })
    })
    .await;

    // Traffic for the chart, then the cluster section in view for the picture.
    for round in 0..20 {
        send(
            &mut on_b,
            json!({"type": "publish", "session": "plant", "data": {"reading": round}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.execute(
        "document.getElementById('cluster').scrollIntoView(false)",
        vec![],
    )
    .await
    .expect("the page scrolls");
    screenshot(&page, "dashboard-cluster.png").await;

    browser.close(vec![page]).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The demo page's member list, over plain HTTP: no browser needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_names_at_most_a_hundred_members_and_counts_them_all() {
    let server = start(Config::default()).await;
    let mut crowd = Vec::new();
    for i in 0..105 {
        let mut ws = ws_client(&server, json!({"key": format!("m{i:03}")})).await;
        send(&mut ws, json!({"type": "join", "session": "lobby"})).await;
        crowd.push(ws);
    }
    // An anonymous member counts but has no name to list.
    let mut anonymous = ws_client(&server, json!({})).await;
    send(&mut anonymous, json!({"type": "join", "session": "lobby"})).await;
    let room = loop {
        let (status, body) = http(server.ws_addr(), "GET", "/rooms/lobby", None).await;
        assert_eq!(status, 200, "{body}");
        let room: Value = serde_json::from_str(&body).expect("JSON");
        if room["count"] == 106 {
            break room;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let names = room["members"].as_array().expect("a list");
    assert_eq!(names.len(), 100);
    assert!(
        names.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
        "sorted: {room}"
    );

    let (status, body) = http(server.ws_addr(), "GET", "/rooms/nobody-here", None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"room":"nobody-here","count":0,"members":[]}"#)
    );
    let long = "x".repeat(65);
    let (status, body) = http(server.ws_addr(), "GET", &format!("/rooms/{long}"), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_room"), "{body}");
    drop((crowd, anonymous));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Pages.

async fn join(page: &Client, home: &str, name: &str, room: &str) {
    page.goto(home).await.expect("the demo page loads");
    type_into(page, "name", name).await;
    type_into(page, "room", room).await;
    click(page, "join").await;
    // What the user sees, not attributes: a style rule can override `hidden`.
    let joined = "const seen = (id) => document.getElementById(id).checkVisibility(); \
                  return [seen('room-view'), seen('join-form')]";
    wait_js(page, joined, PATIENCE, |v| v == &json!([true, false])).await;
}

async fn say(page: &Client, text: &str) {
    type_into(page, "text", text).await;
    click(page, "send").await;
}

async fn submit_token(page: &Client, token: &str) {
    type_into(page, "token", token).await;
    click(page, "token-submit").await;
}

/// The page's messages as `name: text`, oldest first.
async fn messages(page: &Client) -> Vec<String> {
    let script = "return [...document.querySelectorAll('#messages li.msg')]\
                  .map(li => li.dataset.name + ': ' + li.querySelector('.text').textContent)";
    let value = page.execute(script, vec![]).await.expect("the script runs");
    serde_json::from_value(value).expect("a list of strings")
}

async fn wait_for_messages(page: &Client, n: usize) {
    let script = "return document.querySelectorAll('#messages li.msg').length";
    wait_js(page, script, PATIENCE, |v| v.as_u64() == Some(n as u64)).await;
}

async fn type_into(page: &Client, id: &str, text: &str) {
    let field = page.find(Locator::Id(id)).await.expect("the field exists");
    field.clear().await.expect("the field clears");
    field.send_keys(text).await.expect("the field takes keys");
}

async fn click(page: &Client, id: &str) {
    let button = page.find(Locator::Id(id)).await.expect("the button exists");
    button.click().await.expect("the button clicks");
}

/// Runs `script` until `done` accepts its value; fails after `patience`.
async fn wait_js(
    page: &Client,
    script: &str,
    patience: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let value = page.execute(script, vec![]).await.expect("the script runs");
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {patience:?} for `{script}`; last value {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Saves a PNG of the page's viewport under `target/`.
async fn screenshot(page: &Client, name: &str) {
    let png = page.screenshot().await.expect("a screenshot");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("the screenshot is written");
    eprintln!("screenshot: {}", path.display());
}

// ---------------------------------------------------------------------------
// The server and plain clients.

async fn start(config: Config) -> Server {
    Server::start(Config {
        ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        close_linger: Duration::from_millis(500),
        ..config
    })
    .await
    .expect("the server starts")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket client of `server` that has said `hello` with `profile`.
async fn ws_client(server: &Server, profile: Value) -> Ws {
    connect_hello(server.ws_addr(), profile).await
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("the socket is open");
}

/// One HTTP/1.1 request; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("answers in time")
        .expect("reads");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

// ---------------------------------------------------------------------------
// Chromium and chromedriver.

/// A running chromedriver, in a process group of its own so that it and every
/// Chromium it started end together; and this test's turn.
struct Browser {
    driver: Child,
    url: String,
    port: u16,
    chromium: PathBuf,
    profiles: std::sync::Mutex<Vec<PathBuf>>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// chromedriver on a free loopback port, or `None` (after one line on stderr)
    /// if Chromium or chromedriver is not installed. Panics instead when
    /// `SWITCHBOARD_REQUIRE_EXTERNAL=1`.
    async fn launch(test: &str) -> Option<Self> {
        let (Some(driver), Some(chromium)) = (find_chromedriver(), find_chromium()) else {
            let message = format!(
                "browser test {test}: chromium and chromedriver not found; \
                 install them with `apt-get install chromium chromium-driver`"
            );
            if std::env::var("SWITCHBOARD_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!("{message} (SWITCHBOARD_REQUIRE_EXTERNAL=1 makes this a failure)");
            }
            // Straight to stderr: libtest would swallow eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "skipped: {message}");
            return None;
        };
        let turn = TURN.lock().await;
        let port = redis::free_port().expect("a free loopback port");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let browser = Self {
            driver: child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            chromium,
            profiles: std::sync::Mutex::default(),
            _turn: turn,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(browser)
    }

    /// A new headless Chromium with a fresh profile.
    async fn page(&self) -> Client {
        let profile = {
            let mut profiles = self.profiles.lock().expect("not poisoned");
            let dir = std::env::temp_dir().join(format!(
                "switchboard-browser-{}-{}-{}",
                std::process::id(),
                self.port,
                profiles.len()
            ));
            // Removed in `Drop`, with the browser.
            profiles.push(dir.clone());
            dir
        };
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal");
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a Chromium session")
    }

    /// Ends the pages' sessions (Chromium exits), then chromedriver in `Drop`.
    async fn close(self, pages: Vec<Client>) {
        for page in pages {
            let _ = page.close().await;
        }
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and any Chromium a failed test left open.
        let group = self.driver.id() as libc::pid_t;
        // SAFETY: `kill` takes plain integers; a negative pid names the process
        // group that `process_group(0)` made for chromedriver, which it leads.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
        let profiles =
            std::mem::take(&mut *self.profiles.lock().unwrap_or_else(|e| e.into_inner()));
        for profile in &profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

fn find_chromedriver() -> Option<PathBuf> {
    which("chromedriver")
}

/// Debian's `/usr/bin/chromium` is a shell wrapper; chromedriver wants the binary.
fn find_chromium() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/chromium/chromium");
    if debian.is_file() {
        return Some(debian);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(which)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------------------------
// A measurement, not a check of speed: run by hand (see the README).

/// Both pages under load: `SWITCHBOARD_LOAD_CLIENTS` (10,000) registered clients
/// on a `ws_server` process of its own (the release example), and one publisher
/// sending 1,000 messages a second into the demo page's room for ten seconds.
/// Prints how late each page's timers ran (the main thread's longest stall) and
/// how many frames it drew; asserts only that the message list stayed capped and
/// that the dashboard counted every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo build --release --example ws_server, then cargo test --test browser -- --ignored --nocapture"]
async fn measure_both_pages_under_load() {
    let Some(browser) = Browser::launch("measure_both_pages_under_load").await else {
        return;
    };
    let clients: usize = std::env::var("SWITCHBOARD_LOAD_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let (_server, ws_addr, admin) = spawn_release_server();
    let (status, page) = http(ws_addr, "GET", "/", None).await;
    assert!(
        status == 200 && page.contains("switchboard demo room"),
        "the ws_server binary serves no demo page (status {status}): it is older than this \
         branch or another's; rebuild it, or name one with SWITCHBOARD_WS_SERVER_BIN"
    );

    // Registered clients in 100 sessions, 128 handshakes at a time.
    let platforms = ["android", "ios", "linux", "windows", "web"];
    let started = Instant::now();
    let crowd: Vec<Ws> = futures_util::stream::iter(0..clients)
        .map(|i| async move {
            let profile =
                json!({"key": format!("load-{i}"), "kind": "device", "platform": platforms[i % 5]});
            let mut ws = connect_hello(ws_addr, profile).await;
            send(
                &mut ws,
                json!({"type": "join", "session": format!("room-{}", i % 100)}),
            )
            .await;
            ws
        })
        .buffer_unordered(128)
        .collect()
        .await;
    eprintln!(
        "load: {} clients connected in {:?}",
        crowd.len(),
        started.elapsed()
    );

    let dashboard = browser.page().await;
    dashboard
        .goto(&format!("http://{admin}/dashboard"))
        .await
        .expect("loads");
    let demo = browser.page().await;
    join(&demo, &format!("http://{ws_addr}/"), "watcher", "lobby").await;
    let count = "return document.getElementById('clients-total').textContent";
    let expected = (clients + 1).to_string();
    wait_js(&dashboard, count, Duration::from_secs(30), |v| {
        v.as_str().map(|s| s.replace(',', "")) == Some(expected.clone())
    })
    .await;

    // The probe: a 50 ms timer's worst lateness and the frames drawn.
    let probe = "window.__probe = { worst: 0, frames: 0 }; let last = performance.now(); \
                 setInterval(() => { const now = performance.now(); \
                   window.__probe.worst = Math.max(window.__probe.worst, now - last - 50); last = now; }, 50); \
                 const count = () => { window.__probe.frames++; requestAnimationFrame(count); }; \
                 requestAnimationFrame(count); return true";
    for page in [&dashboard, &demo] {
        page.execute(probe, vec![]).await.expect("the probe starts");
    }
    // A Rust member of the room beside the page: what a client that keeps up gets.
    let mut peer = connect_hello(ws_addr, json!({"key": "peer"})).await;
    send(&mut peer, json!({"type": "join", "session": "lobby"})).await;
    let peer = tokio::spawn(async move {
        let (mut received, mut close) = (0u64, None);
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(3), peer.next()).await
        {
            match frame {
                Message::Text(text) if text.contains("\"message\"") => received += 1,
                Message::Close(frame) => {
                    close = frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                _ => {}
            }
        }
        (received, close)
    });
    let mut publisher = connect_hello(ws_addr, json!({"key": "publisher"})).await;
    let seconds = 10;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let sent_from = Instant::now();
    for n in 0..seconds * 100 {
        tick.tick().await;
        for k in 0..10 {
            let text = format!("message {}", n * 10 + k);
            send(&mut publisher, json!({"type": "publish", "session": "lobby", "data": {"name": "load", "text": text}})).await;
        }
    }
    let sending = sent_from.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = "return [window.__probe.worst, window.__probe.frames, document.querySelectorAll('#messages li').length, \
                document.getElementById('clients-total')?.textContent, document.getElementById('rate-delivered')?.textContent, document.querySelector('#messages li:last-child .text')?.textContent]";
    let d = dashboard.execute(read, vec![]).await.expect("reads");
    let m = demo.execute(read, vec![]).await.expect("reads");
    eprintln!(
        "load: {} messages sent to the room in {sending:?} ({:.0}/s)",
        seconds * 1000,
        (seconds * 1000) as f64 / sending.as_secs_f64()
    );
    eprintln!(
        "load: dashboard: worst timer lateness {:.0} ms, {} frames in ~12 s, clients shown {}",
        d[0].as_f64().unwrap_or(-1.0),
        d[1],
        d[3]
    );
    eprintln!("load: demo page: worst timer lateness {:.0} ms, {} frames in ~12 s, {} messages in the list, the last {}", m[0].as_f64().unwrap_or(-1.0), m[1], m[2], m[5]);
    let (received, close) = peer.await.expect("the peer task");
    eprintln!("load: a Rust member of the room received {received} messages; close {close:?}");
    assert!(
        m[2].as_u64().is_some_and(|n| n <= 500),
        "the list is capped: {m}"
    );
    screenshot(&dashboard, "dashboard-load.png").await;
    screenshot(&demo, "demo-load.png").await;

    browser.close(vec![dashboard, demo]).await;
    drop(crowd);
}

/// A child process killed when this is dropped, so that a failing test leaves
/// none behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `ws_server` example as a process of its own (so that its sockets
/// and this test's count against separate open-file limits); its child, and the
/// WebSocket and admin addresses from its first line.
fn spawn_release_server() -> (KillOnDrop, SocketAddr, SocketAddr) {
    use std::io::BufRead;
    let bin = std::env::var_os("SWITCHBOARD_WS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("the target directory")
                .join("release/examples/ws_server")
        });
    // One member receiving 1,000 frames a second: the default queue of 32 is 32 ms of
    // slack, and on a shared, loaded machine a writer stalls that long, so the
    // default disconnect policy would close it with 4000 (seen here at a load
    // average of 6 on two cores). 256 frames is a quarter of a second.
    let extra =
        std::env::var("SWITCHBOARD_LOAD_SERVER_ARGS").unwrap_or_else(|_| "--queue 256".into());
    let child = Command::new(&bin)
        .args(["--ws", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(extra.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it with cargo build --release --example ws_server",
                bin.display()
            )
        });
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
    };
    (child, field("ws="), field("admin="))
}

/// A WebSocket client of the server at `addr` that has said `hello` with `profile`.
async fn connect_hello(addr: SocketAddr, mut profile: Value) -> Ws {
    let (mut ws, _) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("connects in time")
    .expect("the upgrade succeeds");
    profile["type"] = json!("hello");
    send(&mut ws, profile).await;
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a welcome in time")
            .expect("the socket is open")
            .expect("a readable frame");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(value["type"], "welcome", "{value}");
            return ws;
        }
    }
}
