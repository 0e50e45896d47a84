//! The admin API through real HTTP requests on the router: every endpoint, and every
//! error path answering a 4xx with `{"error", "detail"}`.
#![cfg(feature = "http")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use switchboard::http::{self, AdminConfig, AdminConfigError};
use switchboard::{ClientInfo, ClientKind, CloseReason, Registry, SystemInfo};
use tower::ServiceExt;

type Reg = Registry<Value>;

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts an error reply: the status, the code, and a non-empty detail.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a readable body")
        .to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

async fn get(router: &Router, uri: &str) -> Reply {
    send(router, request(Method::GET, uri, Body::empty())).await
}

fn request(method: Method, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("a valid request")
}

fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

fn device(key: &str, platform: &str, caps: &[&str], tags: &[&str]) -> ClientInfo {
    let mut sys = SystemInfo::default();
    sys.capabilities = caps.iter().map(|c| c.to_string()).collect();
    sys.tags = tags.iter().map(|t| t.to_string()).collect();
    ClientInfo::new()
        .with_key(key)
        .with_kind(ClientKind::Device)
        .with_platform(platform)
        .with_system_info(sys)
}

fn keys_of(body: &Value) -> HashSet<String> {
    body["clients"]
        .as_array()
        .expect("a clients array")
        .iter()
        .map(|c| c["key"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn set(keys: &[&str]) -> HashSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn healthz_answers_without_a_token() {
    let registry = Reg::new();
    let router = http::router_with(registry, AdminConfig::new().token("s3cret")).expect("valid");
    let reply = get(&router, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn clients_are_filtered_by_every_criterion() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let _a = registry
        .register(device("win-xl", "Windows", &["excel", "word"], &["fast"]))
        .expect("room");
    let _b = registry
        .register(device("win-x", "windows", &["excel"], &[]))
        .expect("room");
    let _c = registry
        .register(device("mac", "macOS", &["excel", "word"], &["fast"]))
        .expect("room");
    let _o = registry
        .register(
            ClientInfo::new()
                .with_key("boss")
                .with_kind(ClientKind::Orchestrator),
        )
        .expect("room");
    let _plain = registry.register(ClientInfo::new()).expect("room");

    let cases = [
        ("/clients", set(&["win-xl", "win-x", "mac", "boss"])),
        ("/clients?kind=device", set(&["win-xl", "win-x", "mac"])),
        ("/clients?kind=Orchestrator", set(&["boss"])),
        ("/clients?platform=WINDOWS", set(&["win-xl", "win-x"])),
        (
            "/clients?capability=excel&capability=word",
            set(&["win-xl", "mac"]),
        ),
        (
            "/clients?capability=excel&capability=word&platform=windows",
            set(&["win-xl"]),
        ),
        ("/clients?tag=fast&kind=device", set(&["win-xl", "mac"])),
        ("/clients?capability=cad", set(&[])),
        ("/clients?platform=linux", set(&[])),
        (
            "/clients?connected_within=1h",
            set(&["win-xl", "win-x", "mac", "boss"]),
        ),
    ];
    for (uri, expected) in cases {
        let reply = get(&router, uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
        assert_eq!(keys_of(&reply.json()), expected, "{uri}");
    }

    let listed = get(&router, "/clients?kind=orchestrator").await.json();
    let boss = &listed["clients"][0];
    assert_eq!(boss["kind"], "orchestrator");
    assert!(
        boss["id"].as_str().is_some_and(|id| id.starts_with('c')),
        "{boss}"
    );
    assert!(boss["connected_at"].as_u64().is_some(), "{boss}");
    assert_eq!(listed["next_cursor"], Value::Null);
}

#[tokio::test]
async fn connected_within_leaves_out_older_clients() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let _old = registry
        .register(device("old", "linux", &[], &[]))
        .expect("room");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _new = registry
        .register(device("new", "linux", &[], &[]))
        .expect("room");
    let reply = get(&router, "/clients?connected_within=300ms").await;
    assert_eq!(keys_of(&reply.json()), set(&["new"]));
    let reply = get(&router, "/clients?connected_within=1m&kind=device").await;
    assert_eq!(keys_of(&reply.json()), set(&["old", "new"]));
}

#[tokio::test]
async fn clients_page_through_every_match_exactly_once() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let mut receivers = Vec::new();
    for i in 0..7 {
        receivers.push(
            registry
                .register(device(&format!("d{i}"), "linux", &[], &[]))
                .expect("room"),
        );
    }
    let mut seen = Vec::new();
    let mut uri = "/clients?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let body = get(&router, &uri).await.json();
        let page = body["clients"].as_array().expect("array").clone();
        assert!(page.len() <= 3);
        seen.extend(
            page.iter()
                .map(|c| c["key"].as_str().unwrap_or("").to_owned()),
        );
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/clients?limit=3&cursor={cursor}"),
            None => break,
        }
        // Clients leaving between pages shift nothing: one already listed (the
        // cursor's own) and one not yet listed.
        if pages == 1 {
            let cursor_id: switchboard::ClientId = body["next_cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .expect("a cursor");
            let unseen = receivers
                .iter()
                .map(|(id, _)| *id)
                .find(|id| {
                    let key = registry.info(*id).ok().and_then(|i| i.key.clone());
                    !seen.iter().any(|k| Some(k) == key.as_ref())
                })
                .expect("four unseen");
            let _ = registry.unregister(cursor_id);
            let _ = registry.unregister(unseen);
        }
    }
    assert_eq!(pages, 2);
    let distinct: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "nothing listed twice: {seen:?}");
    assert_eq!(
        seen.len(),
        6,
        "three before the churn, the three left after it"
    );
}

#[tokio::test]
async fn bad_client_queries_are_400s() {
    let registry = Reg::new();
    let router = http::router(registry);
    let cases = [
        ("/clients?kind=robot", "invalid_filter"),
        ("/clients?connected_within=soon", "invalid_filter"),
        ("/clients?connected_within=30", "invalid_filter"),
        ("/clients?connected_within=5w", "invalid_filter"),
        ("/clients?limit=0", "invalid_parameter"),
        ("/clients?limit=1001", "invalid_parameter"),
        ("/clients?limit=ten", "invalid_parameter"),
        (
            "/clients?kind=device&kind=orchestrator",
            "invalid_parameter",
        ),
        ("/clients?tag=", "invalid_parameter"),
        ("/clients?cursor=not-an-id", "invalid_cursor"),
        ("/clients?kinds=device", "unknown_parameter"),
        ("/sessions?limit=0", "invalid_parameter"),
        ("/sessions?sort=name", "unknown_parameter"),
        ("/sessions/lobby?cursor=nope", "invalid_cursor"),
        ("/stats/extra", "not_found"),
    ];
    for (uri, code) in cases {
        let reply = get(&router, uri).await;
        let status = if code == "not_found" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        reply.assert_error(status, code);
    }
}

#[tokio::test]
async fn a_client_shows_its_profile_sessions_and_open_tasks() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let (d, _rd) = registry
        .register(device("dev-1", "Windows", &["excel"], &["fast"]))
        .expect("room");
    let (o, _ro) = registry
        .register(
            ClientInfo::new()
                .with_key("boss")
                .with_kind(ClientKind::Orchestrator),
        )
        .expect("room");
    registry.attach(d, "lobby").expect("online");
    registry.attach(d, 7).expect("online");
    let task = registry.open_task(o, d).expect("both online");

    let reply = get(&router, "/clients/dev-1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["id"], d.to_string());
    assert_eq!(body["key"], "dev-1");
    assert_eq!(body["platform"], "Windows");
    assert_eq!(body["system_info"]["capabilities"], json!(["excel"]));
    assert_eq!(body["sessions"], json!(["lobby", 7]));
    assert_eq!(
        body["tasks"],
        json!([{"id": task.as_u64(), "orchestrator": o.to_string(), "device": d.to_string()}])
    );

    // By id, when no key matches.
    let by_id = get(&router, &format!("/clients/{o}")).await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(by_id.json()["key"], "boss");
    assert_eq!(by_id.json()["tasks"][0]["id"], task.as_u64());

    get(&router, "/clients/nobody")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_client");
    get(&router, "/clients/c0.999.1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_client");
    get(&router, "/clients/%FF")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
}

#[tokio::test]
async fn delete_kicks_with_a_reason_and_reports_what_it_cleaned_up() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let (d, rd) = registry
        .register(device("dev-1", "linux", &[], &[]))
        .expect("room");
    let (o, _ro) = registry
        .register(
            ClientInfo::new()
                .with_key("boss")
                .with_kind(ClientKind::Orchestrator),
        )
        .expect("room");
    registry.attach(d, "lobby").expect("online");
    let task = registry.open_task(o, d).expect("both online");

    let reply = send(
        &router,
        request(
            Method::DELETE,
            "/clients/dev-1?reason=firmware%20too%20old",
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["id"], d.to_string());
    assert_eq!(body["key"], "dev-1");
    assert_eq!(body["reason"], "firmware too old");
    assert_eq!(body["sessions"], json!(["lobby"]));
    assert_eq!(body["cancelled_tasks"][0]["task"]["id"], task.as_u64());
    assert_eq!(body["cancelled_tasks"][0]["reason"], "device_disconnected");
    assert!(!registry.is_online(d));
    assert_eq!(
        rd.close_reason(),
        Some(&CloseReason::Kicked {
            reason: "firmware too old".into()
        })
    );

    let again = send(
        &router,
        request(Method::DELETE, "/clients/dev-1", Body::empty()),
    )
    .await;
    again.assert_error(StatusCode::NOT_FOUND, "unknown_client");
    let long = "x".repeat(300);
    send(
        &router,
        request(
            Method::DELETE,
            &format!("/clients/boss?reason={long}"),
            Body::empty(),
        ),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_parameter");
    send(
        &router,
        request(Method::DELETE, "/clients/boss?why=x", Body::empty()),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "unknown_parameter");
    assert!(registry.is_online(o), "rejected kicks change nothing");

    // Without a reason, a default one is given.
    let reply = send(
        &router,
        request(Method::DELETE, "/clients/boss", Body::empty()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["reason"], "kicked by an operator");
}

#[tokio::test]
async fn sessions_list_and_show_members_with_numeric_and_named_ids() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let (a, _ra) = registry
        .register(ClientInfo::new().with_key("alice"))
        .expect("room");
    let (b, _rb) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, "lobby").expect("online");
    registry.attach(b, "lobby").expect("online");
    registry.attach(a, 42).expect("online");
    registry.attach(b, "42").expect("online");

    let body = get(&router, "/sessions").await.json();
    assert_eq!(
        body,
        json!({
            "sessions": [
                {"id": 42, "members": 1},
                {"id": "42", "members": 1},
                {"id": "lobby", "members": 2},
            ],
            "next_cursor": null,
        })
    );

    let page = get(&router, "/sessions?limit=2").await.json();
    assert_eq!(page["sessions"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_cursor"], "name:42");
    let rest = get(&router, "/sessions?limit=2&cursor=name:42")
        .await
        .json();
    assert_eq!(rest["sessions"], json!([{"id": "lobby", "members": 2}]));
    assert_eq!(rest["next_cursor"], Value::Null);

    let lobby = get(&router, "/sessions/lobby").await.json();
    assert_eq!(lobby["id"], "lobby");
    assert_eq!(lobby["count"], 2);
    let mut expected = vec![
        json!({"id": a.to_string(), "key": "alice"}),
        json!({"id": b.to_string(), "key": null}),
    ];
    expected.sort_by_key(|m| {
        m["id"]
            .as_str()
            .and_then(|s| s.parse::<switchboard::ClientId>().ok())
    });
    assert_eq!(lobby["members"], Value::Array(expected));

    let numeric = get(&router, "/sessions/42").await.json();
    assert_eq!(
        (numeric["id"].clone(), numeric["count"].clone()),
        (json!(42), json!(1))
    );
    assert_eq!(numeric["members"][0]["id"], a.to_string());
    let named = get(&router, "/sessions/name:42").await.json();
    assert_eq!(named["id"], "42");
    assert_eq!(named["members"][0]["id"], b.to_string());

    let first = get(&router, "/sessions/lobby?limit=1").await.json();
    assert_eq!(first["count"], 2, "count is the whole session's");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = get(&router, &format!("/sessions/lobby?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_eq!(second["members"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["members"][0], first["members"][0]);
    assert_eq!(second["next_cursor"], Value::Null);

    get(&router, "/sessions/nowhere")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_session");
    get(&router, "/sessions/43")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_session");
}

#[tokio::test]
async fn broadcast_delivers_the_body_and_returns_the_report() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let (a, mut ra) = registry.register(ClientInfo::new()).expect("room");
    let (b, mut rb) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, "lobby").expect("online");
    registry.attach(b, "lobby").expect("online");

    let reply = send(
        &router,
        post_json(
            "/sessions/lobby/broadcast",
            r#"{"notice": "maintenance at 5"}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({"recipients": 2, "delivered": 2, "dropped": 0, "closed": 0, "disconnected": 0})
    );
    for rx in [&mut ra, &mut rb] {
        assert_eq!(rx.try_recv(), Ok(json!({"notice": "maintenance at 5"})));
    }

    let metrics = get(&router, "/metrics").await;
    assert!(
        metrics
            .text
            .contains("switchboard_admin_broadcast_fanout_seconds_count 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("switchboard_admin_broadcast_fanout_seconds_bucket{le=\"1\"} 1"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn bad_broadcasts_are_4xx_and_deliver_nothing() {
    let registry = Reg::new();
    let router =
        http::router_with(registry.clone(), AdminConfig::new().body_limit(64)).expect("valid");
    let (a, mut ra) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, "lobby").expect("online");

    send(&router, post_json("/sessions/lobby/broadcast", "{not json"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    send(&router, post_json("/sessions/lobby/broadcast", ""))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(100));
    send(&router, post_json("/sessions/lobby/broadcast", &big))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    send(&router, post_json("/sessions/nowhere/broadcast", "{}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_session");
    let form = Request::builder()
        .method(Method::POST)
        .uri("/sessions/lobby/broadcast")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .expect("valid");
    send(&router, form)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let bare = request(Method::POST, "/sessions/lobby/broadcast", Body::from("{}"));
    send(&router, bare)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert!(ra.try_recv().is_err(), "nothing was delivered");

    // A declared JSON subtype with parameters is accepted.
    let ok = Request::builder()
        .method(Method::POST)
        .uri("/sessions/lobby/broadcast")
        .header(
            header::CONTENT_TYPE,
            "application/merge-patch+json; charset=utf-8",
        )
        .body(Body::from("[1]"))
        .expect("valid");
    assert_eq!(send(&router, ok).await.status, StatusCode::OK);
    assert_eq!(ra.try_recv(), Ok(json!([1])));
}

/// A broadcast whose JSON body starts with `{"pad": "` and then `rest` brings.
fn broadcast_of(
    rest: impl futures_util::Stream<Item = &'static str> + Send + 'static,
) -> Request<Body> {
    let body = futures_util::stream::iter([r#"{"pad": ""#])
        .chain(rest)
        .map(Ok::<_, std::io::Error>);
    Request::builder()
        .method(Method::POST)
        .uri("/sessions/lobby/broadcast")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("a valid request")
}

#[tokio::test]
async fn a_body_not_complete_within_the_body_timeout_gets_408() {
    let registry = Reg::new();
    let bound = Duration::from_millis(300);
    let router =
        http::router_with(registry.clone(), AdminConfig::new().body_timeout(bound)).expect("valid");
    let (a, mut ra) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, "lobby").expect("online");
    // A body that stops, and one that comes a byte every 50 ms: a wait between
    // chunks would never end the second.
    let stops = broadcast_of(futures_util::stream::pending());
    let trickles = broadcast_of(futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some(("x", ()))
    }));
    let patience = bound + Duration::from_secs(2);
    for (what, request) in [("stops", stops), ("trickles", trickles)] {
        let started = tokio::time::Instant::now();
        let reply = tokio::time::timeout(patience, send(&router, request))
            .await
            .unwrap_or_else(|_| {
                panic!("a body that {what} was not answered within {patience:?}; the body timeout is {bound:?}")
            });
        let took = started.elapsed();
        reply.assert_error(StatusCode::REQUEST_TIMEOUT, "body_timeout");
        assert_eq!(
            reply.headers[header::CONNECTION],
            "close",
            "a body that {what}"
        );
        assert!(
            (bound - Duration::from_millis(50)..patience).contains(&took),
            "a body that {what} was answered after {took:?}; the body timeout is {bound:?}"
        );
    }
    assert!(ra.try_recv().is_err(), "nothing was delivered");

    // A body that arrives in time, if slowly, still goes out.
    let slow = futures_util::stream::iter(["x", r#""}"#]).then(|part| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        part
    });
    let reply = send(&router, broadcast_of(slow)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(ra.try_recv(), Ok(json!({"pad": "x"})));

    // A timeout past the end of time is no timeout, not an overflow.
    let router =
        http::router_with(registry, AdminConfig::new().body_timeout(Duration::MAX)).expect("valid");
    let whole = futures_util::stream::iter([r#"y"}"#]);
    let reply = send(&router, broadcast_of(whole)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(ra.try_recv(), Ok(json!({"pad": "y"})));
}

#[tokio::test]
async fn an_encoder_builds_the_message_once_per_broadcast() {
    let registry = Registry::<Arc<str>>::new();
    let router =
        http::router_with_encoder(registry.clone(), AdminConfig::new(), |session, body| {
            Arc::from(json!({"type": "message", "session": session, "data": body}).to_string())
        })
        .expect("valid");
    let (a, mut ra) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, 5).expect("online");
    let reply = send(&router, post_json("/sessions/5/broadcast", r#""hi""#)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        ra.try_recv().as_deref(),
        Ok(r#"{"data":"hi","session":5,"type":"message"}"#)
    );
}

#[tokio::test]
async fn stats_and_metrics_describe_the_registry() {
    let registry = Reg::new();
    let router = http::router(registry.clone());
    let (d, _rd) = registry
        .register(device("d", "Linux", &[], &[]))
        .expect("room");
    let (_p, _rp) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(d, "room").expect("online");
    registry.send(d, json!(1)).expect("room in the queue");

    let stats = get(&router, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    let stats = stats.json();
    assert_eq!(stats["clients"], 2);
    assert_eq!(stats["devices"], 1);
    assert_eq!(stats["sessions"], 1);
    assert_eq!(stats["delivered"], 1);
    assert_eq!(stats["by_platform"], json!([["linux", 1]]));

    let metrics = get(&router, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    for line in [
        "switchboard_clients{kind=\"device\"} 1",
        "switchboard_clients{kind=\"orchestrator\"} 0",
        "switchboard_clients{kind=\"other\"} 1",
        "switchboard_sessions 1",
        "switchboard_tasks 0",
        "switchboard_messages_delivered_total 1",
        "switchboard_messages_dropped_total 0",
        "switchboard_messages_closed_total 0",
        "switchboard_clients_disconnected_total 0",
        "# TYPE switchboard_admin_broadcast_fanout_seconds histogram",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            metrics.text
        );
    }
    // Scrapes follow the registry.
    let _ = registry.unregister(d);
    let again = get(&router, "/metrics").await;
    assert!(again
        .text
        .lines()
        .any(|l| l == "switchboard_clients{kind=\"device\"} 0"));
}

#[tokio::test]
async fn a_token_guards_everything_but_healthz() {
    let registry = Reg::new();
    let router = http::router_with(
        registry,
        AdminConfig::new().token("s3cret").bind_is_loopback(false),
    )
    .expect("valid");
    for uri in ["/clients", "/sessions", "/stats", "/metrics", "/sessions/x"] {
        let reply = get(&router, uri).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
    }
    for auth in [
        "Bearer wrong",
        "Bearer s3cre",
        "Bearer s3cret2",
        "Basic s3cret",
        "s3cret",
    ] {
        let request = Request::builder()
            .uri("/stats")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .expect("valid");
        send(&router, request)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let delete = request(Method::DELETE, "/clients/x", Body::empty());
    send(&router, delete)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let authorised = Request::builder()
        .uri("/stats")
        .header(header::AUTHORIZATION, "bearer s3cret")
        .body(Body::empty())
        .expect("valid");
    assert_eq!(send(&router, authorised).await.status, StatusCode::OK);
}

#[test]
fn a_router_beyond_loopback_needs_a_token() {
    let registry = Reg::new();
    let public = "0.0.0.0:9090".parse().expect("an address");
    let loopback = "127.0.0.1:9090".parse().expect("an address");
    let v6_loopback = "[::1]:9090".parse().expect("an address");
    assert_eq!(
        http::router_with(registry.clone(), AdminConfig::for_addr(public)).err(),
        Some(AdminConfigError::TokenRequired)
    );
    assert!(http::router_with(registry.clone(), AdminConfig::for_addr(public).token("t")).is_ok());
    assert!(http::router_with(registry.clone(), AdminConfig::for_addr(loopback)).is_ok());
    assert!(http::router_with(registry.clone(), AdminConfig::for_addr(v6_loopback)).is_ok());
    assert_eq!(
        http::router_with(registry.clone(), AdminConfig::new().token("")).err(),
        Some(AdminConfigError::EmptyToken)
    );
    assert_eq!(
        http::router_with(registry.clone(), AdminConfig::new().body_limit(0)).err(),
        Some(AdminConfigError::BodyLimit)
    );
    assert_eq!(
        http::router_with(registry, AdminConfig::new().body_timeout(Duration::ZERO)).err(),
        Some(AdminConfigError::BodyTimeout)
    );
    let shown = format!("{:?}", AdminConfig::new().token("s3cret"));
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let registry = Reg::new();
    let router = http::router(registry);
    get(&router, "/nope")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    send(&router, request(Method::POST, "/clients", Body::empty()))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    send(&router, request(Method::PUT, "/healthz", Body::empty()))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    get(&router, "/sessions/lobby/broadcast")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}
