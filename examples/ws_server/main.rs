//! A WebSocket fan-out server built on switchboard: rooms, direct messages, tasks
//! between orchestrators and devices, and the admin API beside it.
//!
//! ```sh
//! cargo run --release --example ws_server -- --ws 127.0.0.1:8080 --admin 127.0.0.1:8081
//! ```
//!
//! On start it prints one line a script can parse:
//! `ws_server listening ws=127.0.0.1:8080 admin=127.0.0.1:8081` (with the real
//! ports when given port 0). Ctrl-C (or SIGTERM) shuts down gracefully: every
//! client gets close code 1001 and the registry ends empty.
//!
//! # In a browser
//!
//! `http://HOST:PORT/` on the WebSocket listener is a demo room page: pick a name
//! and a room, join, publish, see who is in the room, and see the close code and
//! reason when the server ends the connection. The admin listener serves the
//! operations dashboard at `/dashboard` (see `switchboard::http`).
//!
//! # Flags
//!
//! | Flag | Default | Meaning |
//! | --- | --- | --- |
//! | `--ws ADDR` | `127.0.0.1:8080` | WebSocket listener; the endpoint is `/ws` |
//! | `--admin ADDR` or `off` | `127.0.0.1:8081` | admin API listener |
//! | `--admin-token T` | `$SWITCHBOARD_ADMIN_TOKEN` | bearer token; required off loopback |
//! | `--max-frame BYTES` | 65536 | largest frame or message a client may send |
//! | `--read-buffer BYTES` | 2048 | WebSocket read buffer per connection |
//! | `--write-buffer BYTES` | 4096 | bytes gathered before a socket write; a connection holds at most this plus 8 × the larger of `--max-frame` and the admin body limit (64 KiB) unsent, beyond which pongs owed to a peer that pings and does not read are merged into one |
//! | `--queue N` | 32 | frames queued per client |
//! | `--slow-consumer P` | `disconnect` | `disconnect` (close 4000) or `drop` (skip the frame) |
//! | `--ping-interval D` | `20s` | how often each client is pinged |
//! | `--idle-timeout D` | `60s` | silence (no frame, no pong) before close 4003; also the most a request head may take on either listener, from the TCP accept or the previous response (then the connection is closed), the most an admin request body may take after its head (then `408 body_timeout` and the connection is closed), and the time from the accept to `hello` |
//! | `--write-timeout D` | `10s` | a write or a wait for queue room longer than this ends the client |
//! | `--max-clients N` | none | refuse more (error `server_full`, close 1013) |
//! | `--max-sessions-per-client N` | 1024 | sessions one client may be in; a `join` beyond gets `too_many_sessions` |
//! | `--max-tasks-per-client N` | 1024 | open tasks one client may have (either side); a `task_open` beyond gets `too_many_tasks` |
//! | `--redis URL` | none | join the cluster at this Redis (`redis://127.0.0.1:6379`): rooms, `direct` and keys span every node on it; the admin API gains `/cluster` |
//! | `--node-id ID` | random | this node's id in the cluster (1–64 of `A-Za-z0-9._-`) |
//!
//! Durations are `<integer><unit>` with unit `ms`, `s` or `m`, over zero and at most
//! a day (`1440m`); the server refuses to start otherwise.
//!
//! # Protocol
//!
//! Connect to `ws://HOST:PORT/ws`. Every frame is a JSON object in a text frame,
//! with a string `type`. Unknown fields are ignored. Session ids are JSON strings
//! (named) or non-negative integers (numbered); `7` and `"7"` are different
//! sessions. Client ids are strings like `"c0.12.1"`; wherever a client is named
//! (`to`, `device`), its key may be given instead.
//!
//! ## Client to server
//!
//! | Frame | Answer | Notes |
//! | --- | --- | --- |
//! | `{"type":"hello","key"?,"kind"?,"platform"?,"system_info"?,"metadata"?}` | `{"type":"welcome","id":"c0.12.1"}` | must be first; all fields optional; `kind` is `device` or `orchestrator`; a `key` already online takes over from that connection (closed with 4002) |
//! | `{"type":"join","session":S}` | `{"type":"joined","session":S}` | joining twice is not an error |
//! | `{"type":"leave","session":S}` | `{"type":"left","session":S}` | error `not_attached` if not a member |
//! | `{"type":"publish","session":S,"data":D}` | nothing | every other member gets a `message`; the frame is serialised once for all of them; the sender need not be a member |
//! | `{"type":"direct","to":C,"data":D}` | nothing | `C` gets a `message` without `session` |
//! | `{"type":"task_open","device":C}` | `{"type":"task_opened","task":N,"orchestrator":O,"device":D}` | sender must be an orchestrator, `C` a device; the device gets the same frame |
//! | `{"type":"task_done","task":N}` | `{"type":"task_done","task":N}` | either side may send it; the other side gets the same frame |
//!
//! Frames a client sends are handled in order, and every answer travels through
//! the same queue as the messages the client receives, so a client that sends
//! `join` and then sees `joined` knows that every later publish to the session
//! reaches it. A load generator can wait for `joined` from every client before it
//! starts publishing, stamp `data` with a send time, and count `message` frames.
//!
//! ## Server to client
//!
//! | Frame | When |
//! | --- | --- |
//! | `{"type":"message","session":S,"from":C,"data":D}` | a `publish` by `C` to `S` (`data` is passed through byte for byte, `null` if omitted) |
//! | `{"type":"message","from":C,"data":D}` | a `direct` from `C` |
//! | `{"type":"message","session":S,"from":null,"data":D}` | an operator's `POST /sessions/{id}/broadcast` with body `D` |
//! | `{"type":"task_cancelled","task":N,"reason":R}` | the other side of task `N` disconnected; `R` is `orchestrator_disconnected` or `device_disconnected` |
//! | `{"type":"error","code":E,"detail":text}` | a frame was refused; the connection stays open |
//!
//! Error codes: `bad_json` (not JSON), `bad_frame` (not an object with a string
//! `type`, or a field missing or of the wrong type), `unknown_type`,
//! `binary_unsupported`, `hello_required`, `already_registered`,
//! `metadata_too_large`, `profile_too_large` (more tags, capabilities or
//! installed applications, or a bigger profile, than the registry allows),
//! `server_full`, `unknown_session`, `not_attached`, `too_many_sessions` (a
//! `join` beyond `--max-sessions-per-client`), `session_name_too_long` (a `join`
//! to a name over 256 bytes), `session_full`,
//! `unknown_client`, `queue_full` (a `direct` whose recipient's queue is full),
//! `task_refused` (wrong kinds, or the device is at its `max_concurrent_tasks`),
//! `too_many_tasks` (the sender or the device already has
//! `--max-tasks-per-client` open tasks),
//! `unknown_task`; with `--redis`, `publish_failed` (Redis refused or is down:
//! members on this node got the message, other nodes did not; it comes when Redis
//! has answered, so replies to later frames may come first) and
//! `cluster_unavailable` (a `hello` with a key or a `join` that Redis could not
//! record).
//!
//! ## Close codes
//!
//! | Code | Meaning |
//! | --- | --- |
//! | 1000 | normal: the client closed, or the application unregistered it |
//! | 1001 | the server is shutting down |
//! | 1002 | the client broke the WebSocket protocol |
//! | 1007 | a text frame was not UTF-8 |
//! | 1009 | a frame or message over `--max-frame` |
//! | 1013 | the server is full (`--max-clients`) |
//! | 4000 | slow consumer: its queue was full and it stayed slow (under `disconnect`, or a reply could not be queued within `--write-timeout`) |
//! | 4001 | kicked by an operator; the close reason is the operator's, cut to 123 bytes |
//! | 4002 | taken over: a newer connection said `hello` with the same key |
//! | 4003 | idle: nothing received (not even a pong) for `--idle-timeout`, or no `hello` within that time of connecting (other frames do not put it off) |
//!
//! A peer that stops reading altogether is dropped without a close frame once a
//! write has been stuck for `--write-timeout`.
//!
//! # Memory
//!
//! An idle connection holds: the registry slot and its queue (`--queue` frame
//! handles of 40 bytes, allocated up front), the WebSocket state with its
//! `--read-buffer` (allocated up front), and two small tasks (reader and writer).
//! Buffers grow only while a large frame passes. With the defaults, a release
//! build held about 9 KB of resident memory per idle connection at 10,000
//! connections on Linux; `--read-buffer 4096 --queue 64` costs about 3 KB more.
//!
//! # File descriptors
//!
//! Every connection holds one socket. On start the server raises its soft
//! `RLIMIT_NOFILE` to the hard limit (often 1024 soft against a far higher hard
//! limit), so that ten thousand connections need no `ulimit -n` first; it says so on
//! stderr if that fails. The hard limit itself is the operator's to raise.

mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use server::{Config, Server};
use switchboard::SlowConsumerPolicy;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ws_server: {message}\nsee the flag table in examples/ws_server/main.rs");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("ws_server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!("ws_server listening ws={} admin={admin}", server.ws_addr());
    stop_signal().await;
    let clients = server.registry().client_count();
    eprintln!("ws_server: shutting down, closing {clients} clients with 1001");
    let registry = server.registry().clone();
    let report = server.shutdown().await;
    eprintln!(
        "ws_server: stopped; {} clients closed, {} unregistered by force, {} left in the registry",
        report.clients,
        report.forced,
        registry.client_count()
    );
    ExitCode::SUCCESS
}

/// Raises the soft open-file limit to the hard limit; one socket per connection.
#[cfg(unix)]
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        eprintln!("ws_server: cannot read the open-file limit; keeping it");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid `rlimit`; raising the soft limit up to the hard one
    // needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        eprintln!(
            "ws_server: cannot raise the open-file limit to {}",
            limit.rlim_max
        );
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut config = Config {
        admin_token: std::env::var("SWITCHBOARD_ADMIN_TOKEN").ok(),
        ..Config::default()
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => config.ws_addr = addr(&value()?)?,
            "--admin" => {
                let v = value()?;
                config.admin_addr = if v == "off" { None } else { Some(addr(&v)?) };
            }
            "--admin-token" => config.admin_token = Some(value()?),
            "--max-frame" => config.max_frame = number(&flag, &value()?)?,
            "--read-buffer" => config.read_buffer = number(&flag, &value()?)?,
            "--write-buffer" => config.write_buffer = number(&flag, &value()?)?,
            "--queue" => config.queue = number(&flag, &value()?)?,
            "--max-clients" => config.max_clients = Some(number(&flag, &value()?)?),
            "--max-sessions-per-client" => {
                config.max_sessions_per_client = Some(number(&flag, &value()?)?);
            }
            "--max-tasks-per-client" => {
                config.max_tasks_per_client = Some(number(&flag, &value()?)?);
            }
            "--slow-consumer" => {
                config.slow_consumer = match value()?.as_str() {
                    "disconnect" => SlowConsumerPolicy::Disconnect,
                    "drop" => SlowConsumerPolicy::Drop,
                    other => {
                        return Err(format!("--slow-consumer {other:?}: use disconnect or drop"))
                    }
                }
            }
            "--ping-interval" => config.ping_interval = duration(&flag, &value()?)?,
            "--idle-timeout" => config.idle_timeout = duration(&flag, &value()?)?,
            "--write-timeout" => config.write_timeout = duration(&flag, &value()?)?,
            "--redis" => config.redis = Some(value()?),
            "--node-id" => config.node_id = Some(value()?),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(config)
}

fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))
}

fn number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text:?} is not a number"))
}

fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split]
        .parse()
        .map_err(|_| format!("{flag} {text:?} is not a duration like 20s"))?;
    match &text[split..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{flag} {text:?} is too long")),
        _ => Err(format!("{flag} {text:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_long_to_count_is_an_error_not_a_wrapped_or_panicking_value() {
        let parsed = duration("--idle-timeout", "999999999999999999m");
        assert!(parsed.is_err(), "{parsed:?}");
        assert_eq!(
            duration("--idle-timeout", "1440m"),
            Ok(Duration::from_secs(86_400))
        );
    }
}
