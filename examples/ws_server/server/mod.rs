//! The server: a registry of connected WebSocket clients, the `/ws` endpoint, the
//! admin API on its own listener, and graceful shutdown.
//!
//! Start one with [`Server::start`]; it binds its listeners (port 0 picks a free
//! one), serves in background tasks, and [`Server::shutdown`] closes every client
//! with 1001 and leaves the registry empty. The tests start it on ephemeral
//! loopback ports; `main.rs` adds the command line and Ctrl-C.

pub mod cluster;
mod connection;
mod demo;
pub mod protocol;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard::cluster::Cluster;
use switchboard::http::{self, AdminConfig, AdminConfigError};
use switchboard::{CancelReason, Event, Registry, SendError, SessionId, SlowConsumerPolicy};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;

pub use protocol::Frame;

/// Everything a [`Server`] can be told. [`Config::default`] is what `main.rs` runs
/// without flags. Not `Debug`: it holds the admin token.
#[derive(Clone)]
pub struct Config {
    /// Where the WebSocket endpoint listens; it is served at `/ws`.
    pub ws_addr: SocketAddr,
    /// Where the admin API listens, if anywhere. Loopback by default.
    pub admin_addr: Option<SocketAddr>,
    /// The admin API's bearer token; required if `admin_addr` is not loopback.
    pub admin_token: Option<String>,
    /// The largest frame or message a client may send, in bytes; a larger one
    /// closes the connection with 1009.
    pub max_frame: usize,
    /// The WebSocket read buffer per connection, in bytes.
    pub read_buffer: usize,
    /// How many outgoing bytes are gathered before a write to the socket. A
    /// connection holds at most this plus eight times the larger of `max_frame`
    /// and the admin API's body limit unsent (about 516 KiB with the defaults):
    /// room for the largest frame the server writes (a message or an error frame
    /// built from a client's frame, escaped, or an admin broadcast) and for the
    /// pongs it owes a client that pings and does not read. Beyond it, pongs are
    /// merged into one, and a frame that does not fit ends the connection, as a
    /// stalled write does.
    pub write_buffer: usize,
    /// Each client's queue of outgoing frames.
    pub queue: usize,
    /// What a broadcast does when a client's queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is closed with
    /// 4003; so is one that says no `hello` within this time of its TCP accept (on
    /// a kept-alive connection, of the upgrade request's arrival), whatever else it
    /// sends meanwhile. It also bounds every request head on both listeners: a
    /// connection that has not sent a whole head within this time of its accept (or
    /// of its previous response) is closed without an answer. And every admin
    /// request body: one not wholly arrived within this time of its head gets
    /// `408 body_timeout`, and its connection is closed.
    pub idle_timeout: Duration,
    /// The longest a write to a client, or a wait for room in its queue, may take
    /// before the client counts as dead or slow.
    pub write_timeout: Duration,
    /// How long a closing connection waits for the peer's close frame.
    pub close_linger: Duration,
    /// Refuse clients beyond this many (they get `server_full` and 1013).
    pub max_clients: Option<usize>,
    /// Sessions one client may be in at once; a `join` beyond it gets
    /// `too_many_sessions`. `None`: the registry's default, 1024.
    pub max_sessions_per_client: Option<usize>,
    /// Open tasks one client (orchestrator or device) may have at once; a
    /// `task_open` beyond it gets `too_many_tasks`. `None`: the registry's
    /// default, 1024.
    pub max_tasks_per_client: Option<usize>,
    /// Join the cluster at this Redis URL (`--redis`); `None` runs alone.
    pub redis: Option<String>,
    /// This node's id in the cluster (`--node-id`); random if `None`.
    pub node_id: Option<String>,
}

impl Config {
    /// The longest any of the durations may be: one day. Longer ones, and zero,
    /// are refused by [`Server::start`] with [`StartError::Config`].
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

    /// Refuses durations the server cannot count with: zero would ping every
    /// instant or close a connection before it arrives, and a length the clock
    /// cannot add to an instant would panic at the first connection.
    fn check(&self) -> Result<(), StartError> {
        // A linger of zero means "do not wait for the peer's close": it counts
        // with nothing.
        let durations = [
            ("ping_interval", self.ping_interval, false),
            ("idle_timeout", self.idle_timeout, false),
            ("write_timeout", self.write_timeout, false),
            ("close_linger", self.close_linger, true),
        ];
        for (name, d, zero_ok) in durations {
            if (d.is_zero() && !zero_ok) || d > Self::MAX_DURATION {
                let least = if zero_ok { "zero" } else { "over zero" };
                return Err(StartError::Config(format!(
                    "{name} is {d:?}; it must be {least} and at most {:?}",
                    Self::MAX_DURATION
                )));
            }
        }
        if self.max_unsent().is_none() {
            return Err(StartError::Config(format!(
                "write_buffer {} and max_frame {} are too large to count a connection's \
                 unsent bytes with",
                self.write_buffer, self.max_frame
            )));
        }
        Ok(())
    }

    /// The most a connection holds unsent (see `write_buffer`); `None` if it
    /// cannot be counted. Without a bound, tungstenite queues a pong for every
    /// ping of a peer that does not read, for as long as the peer pings.
    fn max_unsent(&self) -> Option<usize> {
        let largest = self.max_frame.max(AdminConfig::DEFAULT_BODY_LIMIT);
        self.write_buffer.checked_add(largest.checked_mul(8)?)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            admin_token: None,
            max_frame: 64 * 1024,
            // Small buffers keep an idle connection cheap (the read buffer is
            // allocated up front); both grow while a bigger frame passes. Measured:
            // 4 KiB and a queue of 64 cost about 3 KB more per idle connection.
            read_buffer: 2 * 1024,
            write_buffer: 4 * 1024,
            queue: 32,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(2),
            max_clients: None,
            max_sessions_per_client: None,
            max_tasks_per_client: None,
            redis: None,
            node_id: None,
        }
    }
}

/// Why [`Server::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The registry settings are invalid (a queue of 0, say).
    #[error("registry settings: {0}")]
    Registry(#[from] switchboard::BuildError),
    /// The admin API settings are invalid (no token beyond loopback, say).
    #[error("admin API: {0}")]
    Admin(#[from] AdminConfigError),
    /// A setting is out of its range (a duration of zero other than
    /// `close_linger`, or one over [`Config::MAX_DURATION`]; a `write_buffer` and
    /// `max_frame` too large to add up).
    #[error("{0}")]
    Config(String),
    /// `--redis` was given and the cluster could not be joined.
    #[error("cluster: {0}")]
    Cluster(#[from] switchboard::cluster::ClusterError),
}

/// What every connection shares.
struct Shared {
    registry: Registry<Frame>,
    cluster: Option<Cluster<Frame>>,
    config: Config,
    shutdown: watch::Receiver<bool>,
    /// Held by every connection; the server's receiver sees the end when the last
    /// one is gone.
    _live: mpsc::Sender<()>,
}

/// What [`Server::shutdown`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Clients that were connected when shutdown began.
    pub clients: usize,
    /// Clients still registered after every connection had its chance to close
    /// (then unregistered by force). Zero unless a peer stalled a close.
    pub forced: usize,
}

/// A running server.
pub struct Server {
    registry: Registry<Frame>,
    cluster: Option<Cluster<Frame>>,
    ws_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    live: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    deadline: Duration,
}

impl Server {
    /// Binds the listeners and starts serving.
    ///
    /// # Errors
    ///
    /// [`StartError`] if a listener cannot be bound or a setting is invalid.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config.check()?;
        let mut builder = Registry::<Frame>::builder()
            .channel_capacity(config.queue)
            .slow_consumer(config.slow_consumer)
            // Presence events are how task cancellations reach the surviving side;
            // a deep buffer keeps the forwarder from lagging under connection storms.
            .event_capacity(1 << 16);
        if let Some(limit) = config.max_clients {
            builder = builder.max_clients(limit);
        }
        if let Some(limit) = config.max_sessions_per_client {
            builder = builder.max_sessions_per_client(limit);
        }
        if let Some(limit) = config.max_tasks_per_client {
            builder = builder.max_tasks_per_client(limit);
        }
        let registry = builder.build()?;
        let cluster = match &config.redis {
            Some(url) => Some(cluster::connect(&registry, url, config.node_id.as_deref()).await?),
            None => None,
        };
        let admin = match config.admin_addr {
            Some(addr) => {
                // A request may take as long for its body as for its head.
                let mut admin_config =
                    AdminConfig::for_addr(addr).body_timeout(config.idle_timeout);
                if let Some(token) = &config.admin_token {
                    admin_config = admin_config.token(token.clone());
                }
                let encode = |session: &SessionId, body: serde_json::Value| {
                    protocol::message(Some(session), None, &body, 0)
                };
                let router = match &cluster {
                    Some(c) => http::router_with_cluster(c.clone(), admin_config, encode)?,
                    None => http::router_with_encoder(registry.clone(), admin_config, encode)?,
                };
                Some((bind(addr).await?, router))
            }
            None => None,
        };
        let ws_listener = bind(config.ws_addr).await?;
        let ws_addr = local(&ws_listener, config.ws_addr);
        let admin_addr = admin
            .as_ref()
            .map(|(listener, _)| local(listener, config.admin_addr.unwrap_or(ws_addr)));

        let (stop, shutdown) = watch::channel(false);
        let (live_tx, live) = mpsc::channel(1);
        let deadline = config.close_linger + config.write_timeout * 2 + Duration::from_secs(1);
        let events = registry.subscribe();
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            cluster: cluster.clone(),
            config,
            shutdown: shutdown.clone(),
            _live: live_tx,
        });

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(forward_cancellations(
            registry.clone(),
            events,
            shutdown.clone(),
            shared.config.write_timeout,
        )));
        let app = Router::new()
            .route("/ws", get(upgrade))
            .route("/", get(demo::page))
            .route("/rooms/{room}", get(demo::room))
            .with_state(Arc::clone(&shared));
        let head_timeout = shared.config.idle_timeout;
        drop(shared);
        tasks.push(tokio::spawn(serve(
            ws_listener,
            app,
            Bounds {
                head: head_timeout,
                grace: deadline,
            },
            shutdown.clone(),
        )));
        if let Some((listener, router)) = admin {
            tasks.push(tokio::spawn(serve(
                listener,
                router,
                Bounds {
                    head: head_timeout,
                    grace: deadline,
                },
                shutdown.clone(),
            )));
        }
        Ok(Self {
            registry,
            cluster,
            ws_addr,
            admin_addr,
            stop,
            live,
            tasks,
            deadline,
        })
    }

    /// The WebSocket endpoint's address (clients connect to `ws://{addr}/ws`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The admin API's address, if it is served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The registry the server fills.
    pub fn registry(&self) -> &Registry<Frame> {
        &self.registry
    }

    /// Stops accepting, closes every client with 1001, waits for each connection to
    /// finish its close (bounded by the linger and write timeouts), and leaves the
    /// registry empty.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let clients = self.registry.client_count();
        let _ = self.stop.send(true);
        // Every connection holds a sender; `None` means the last one has finished.
        let _ = tokio::time::timeout(self.deadline, self.live.recv()).await;
        let mut forced = 0;
        for id in self.registry.client_ids() {
            if self.registry.unregister(id).is_ok() {
                forced += 1;
            }
        }
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(cluster) = self.cluster {
            // Leave at once rather than expire: other nodes release our keys now.
            let _ = cluster.shutdown().await;
        }
        ShutdownReport { clients, forced }
    }
}

/// Resolves once shutdown has begun (at once if it already has).
async fn stopped(signal: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; it is dropped here, not held.
    let _ = signal.wait_for(|stop| *stop).await;
}

/// When the wait for a request began: the TCP accept for a connection's first
/// request, the request's arrival for a later one on a kept-alive connection.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// How long [`serve`] waits for a connection.
#[derive(Clone, Copy)]
struct Bounds {
    /// For a whole request head, from the accept or the previous response.
    head: Duration,
    /// For a connection to finish its request once shutdown has begun.
    grace: Duration,
}

/// Serves `app` on `listener` until shutdown begins, then lets each connection
/// finish its request within `bounds.grace`, and returns when all have.
///
/// `axum::serve` with one bound more: a connection that has not sent a whole
/// request head within `bounds.head` of its accept (or of its previous response)
/// is closed. `axum::serve` gives hyper no timer, so hyper's header read timeout
/// never fired there, and a peer that sent nothing, or a head a byte at a time,
/// kept its socket for ever. HTTP/1 only, as before: hyper-util's auto builder
/// would first wait for the HTTP/2 preface, with no timeout at all.
async fn serve(
    mut listener: TcpListener,
    app: Router,
    bounds: Bounds,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.head);
    // Each connection's task holds a clone; `recv` sees `None` once all have ended.
    let (live, mut ended) = mpsc::channel::<()>(1);
    loop {
        let (tcp, _) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            // axum's accept, which rides out errors such as running out of fds.
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let accepted = Cell::new(Some(Instant::now()));
        // Small frames should leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            let since = accepted.take().unwrap_or_else(Instant::now);
            request.extensions_mut().insert(Arrived(since));
            app.clone().oneshot(request)
        });
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stop = shutdown.clone();
        let live = live.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    // hyper counts a connection mid-head as busy, so it would
                    // wait out the head timeout; dropped, it closes.
                    let _ = tokio::time::timeout(bounds.grace, conn).await;
                }
            }
            drop(live);
        });
    }
    drop(listener);
    drop(live);
    let _ = ended.recv().await;
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

/// `GET /ws`: upgrades with this server's buffer sizes and frame limit.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(since)): Extension<Arrived>,
    ws: WebSocketUpgrade,
) -> Response {
    let config = &shared.config;
    // Fixed once, from the accept: neither a slow request head nor anything the
    // client sends before `hello` moves it.
    let hello_by = since + config.idle_timeout;
    ws.read_buffer_size(config.read_buffer)
        .write_buffer_size(config.write_buffer)
        // `Server::start` checked that it counts.
        .max_write_buffer_size(config.max_unsent().unwrap_or(usize::MAX))
        .max_message_size(config.max_frame)
        .max_frame_size(config.max_frame)
        .on_upgrade(move |socket| connection::serve(shared, socket, hello_by))
}

/// Tells the surviving side of every cancelled task, whatever ended the other side
/// (a dropped socket, a kick, a takeover, the slow-consumer policy): the registry's
/// event stream is the one place that sees them all.
async fn forward_cancellations(
    registry: Registry<Frame>,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    mut shutdown: watch::Receiver<bool>,
    write_timeout: Duration,
) {
    loop {
        let event = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return,
            event = events.recv() => event,
        };
        match event {
            Ok(Event::TaskCancelled {
                task,
                orchestrator,
                device,
                reason,
            }) => {
                let survivor = match reason {
                    CancelReason::OrchestratorDisconnected => device,
                    CancelReason::DeviceDisconnected => orchestrator,
                };
                let frame = protocol::task_cancelled(task, reason);
                if let Err(SendError::Full(frame)) = registry.send(survivor, frame) {
                    // Wait for room off this loop, so one slow survivor delays no one.
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let _ = registry.send_timeout(survivor, frame, write_timeout).await;
                    });
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                eprintln!("ws_server: missed {missed} registry events; some task_cancelled frames were not sent");
            }
            Err(RecvError::Closed) => return,
        }
    }
}
