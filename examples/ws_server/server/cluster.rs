//! `--redis URL`: the server as one node of a cluster. Rooms span every node
//! started against the same Redis, a `direct` reaches a key on any node, and a
//! `hello` with a key held on another node takes it over (that connection closes
//! with 4002). Without `--redis` every helper here is the plain registry call.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use switchboard::cluster::{
    Cluster, ClusterError, Codec, CodecError, PublishError, SendToKeyError,
};
use switchboard::{
    AttachError, ClientId, ClientInfo, DetachError, Receiver, RegisterError, Registry, SendError,
    SessionId,
};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::protocol::{Frame, Refusal};
use super::Shared;

/// Frames cross Redis as their UTF-8 bytes.
pub struct FrameCodec;

impl Codec<Frame> for FrameCodec {
    /// The frame's own bytes, shared: a frame is immutable, so its encoding need
    /// not be a copy (it was an allocation and a copy per publication).
    fn encode(&self, frame: &Frame) -> Result<bytes::Bytes, CodecError> {
        Ok(bytes::Bytes::from(frame.clone()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Frame, CodecError> {
        std::str::from_utf8(bytes)
            .map(Frame::from)
            .map_err(|e| CodecError(e.to_string()))
    }
}

/// Joins `registry` to the cluster at `url`.
pub async fn connect(
    registry: &Registry<Frame>,
    url: &str,
    node: Option<&str>,
) -> Result<Cluster<Frame>, ClusterError> {
    let mut builder = Cluster::builder(registry.clone(), FrameCodec).url(url);
    if let Some(node) = node {
        builder = builder.node_id(node);
    }
    builder.connect().await
}

/// Why a `hello` did not register.
pub(super) enum Refused {
    Register(RegisterError),
    Cluster(String),
}

pub(super) async fn register(
    shared: &Shared,
    info: ClientInfo,
) -> Result<(ClientId, Receiver<Frame>), Refused> {
    match &shared.cluster {
        None => shared.registry.register(info).map_err(Refused::Register),
        Some(cluster) => cluster.register(info).await.map_err(|e| match e {
            ClusterError::Register(e) => Refused::Register(e),
            e => Refused::Cluster(e.to_string()),
        }),
    }
}

pub(super) async fn unregister(shared: &Shared, id: ClientId) {
    match &shared.cluster {
        None => drop(shared.registry.unregister(id)),
        // Gone locally whatever Redis says; the heartbeat corrects Redis later.
        Some(cluster) => drop(cluster.unregister(id).await),
    }
}

/// Attaches; `Ok(false)` if this client was just unregistered (the writer closes).
/// A join the registry refuses (a bound, a full session) is an error frame. A join
/// refused because Redis could not record it is undone locally too, so the client
/// gets no message from a room it was told it is not in.
pub(super) async fn join(
    shared: &Shared,
    me: ClientId,
    session: &SessionId,
) -> Result<bool, Refusal> {
    match &shared.cluster {
        None => match shared.registry.attach(me, session) {
            Ok(_) => Ok(true),
            Err(AttachError::Client(_)) => Ok(false),
            Err(e) => Err(attach_refused(&e)),
        },
        Some(cluster) => {
            let member = shared
                .registry
                .sessions_of(me)
                .is_ok_and(|s| s.contains(session));
            match cluster.attach(me, session).await {
                Ok(_) => Ok(true),
                Err(ClusterError::Attach(AttachError::Client(_))) => Ok(false),
                // Refused locally before Redis was asked: nothing to undo.
                Err(ClusterError::Attach(e)) => Err(attach_refused(&e)),
                Err(e) => {
                    if !member {
                        // The heartbeat brings Redis in line later.
                        let _ = shared.registry.detach(me, session);
                    }
                    Err(unavailable(e))
                }
            }
        }
    }
}

/// Publications one connection may have awaiting Redis's answer; the next waits
/// for one of them (`publish`).
pub(super) const PUBLISHES_AWAITED: usize = 8;

/// A connection's publications awaiting Redis's answer: each tells its client
/// `publish_failed` if Redis refused it. The connection's reader polls them beside
/// its socket, so an answer costs no task of its own: a task spawned per
/// publication was a spawn, a schedule and a wake per frame.
pub(super) type Awaiting = FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// The session's members everywhere but `me` get `frame`.
///
/// With a cluster, returns once this node's members have it and the publication
/// is queued for Redis, in the order of the connection's frames; a
/// `publish_failed` follows when Redis has answered (the reader polls `awaiting`).
/// Waiting for that answer here held up the connection's next frame by a Redis
/// round trip: one connection carried one publication per round trip, and under
/// load its frames queued in the socket for every member, on this node too. At
/// most [`PUBLISHES_AWAITED`] of a connection's publications await their answer;
/// the next waits here for one of them, so under overload a connection's frames
/// still wait in its socket rather than in the node's publish queue, where they
/// would delay only the other nodes' members.
pub(super) async fn publish(
    shared: &Shared,
    me: ClientId,
    session: &SessionId,
    frame: Frame,
    awaiting: &mut Awaiting,
) -> Result<(), Refusal> {
    let Some(cluster) = &shared.cluster else {
        return shared
            .registry
            .broadcast_except(session, me, frame)
            .map(drop)
            .map_err(|e| Refusal::new("unknown_session", e.to_string()));
    };
    while awaiting.len() >= PUBLISHES_AWAITED {
        awaiting.next().await;
    }
    let (cluster, registry) = (cluster.clone(), shared.registry.clone());
    let (session, patience) = (session.clone(), shared.config.write_timeout);
    let mut call: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        if let Err(e) = cluster.broadcast_except(session, me, frame).await {
            tell(&registry, me, publish_failed(&e).frame(), patience).await;
        }
    });
    // The first poll delivers locally and queues the publication (the cluster
    // numbers publications in the order they are queued); only the answer from
    // Redis is awaited beside the reader.
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    if first.is_pending() {
        awaiting.push(call);
    }
    Ok(())
}

/// Queues a refusal for `me` from outside its reader, waiting at most `patience`
/// (the write timeout) as the reader's replies do. A client whose queue stays full
/// that long is slow; it is closed, as the reader closes one, here by a kick whose
/// reason says so.
async fn tell(registry: &Registry<Frame>, me: ClientId, frame: Frame, patience: Duration) {
    // Otherwise sent, or gone meanwhile and nobody is left to tell.
    if let Err(SendError::Timeout(_) | SendError::Full(_)) =
        registry.send_timeout(me, frame, patience).await
    {
        let _ = registry.kick(me, "slow consumer: its queue stayed full");
    }
}

/// A `direct` to a key, through the cluster; `None` without a cluster or when `to`
/// is a connection id (ids are per node).
pub(super) async fn direct_by_key(
    shared: &Shared,
    to: &str,
    frame: Frame,
) -> Option<Result<(), Refusal>> {
    let cluster = shared.cluster.as_ref()?;
    if to.parse::<ClientId>().is_ok() {
        return None;
    }
    Some(match cluster.send_to_key(to, frame).await {
        Ok(_) => Ok(()),
        Err(SendToKeyError::Publish(e)) => Err(publish_failed(&e)),
        Err(SendToKeyError::Local(SendError::Full(_))) => Err(Refusal::new(
            "queue_full",
            format!("{to}'s queue is full; the message was not queued"),
        )),
        Err(_) => Err(super::connection::unknown_client(to)),
    })
}

fn publish_failed(e: &PublishError<Frame>) -> Refusal {
    let reached = match e {
        PublishError::Codec(..) | PublishError::TooLarge(..) => "no member got it",
        _ => "members on this node got it, other nodes did not",
    };
    Refusal::new("publish_failed", format!("{e}; {reached}"))
}

/// The error frame for a join the registry refused. Its detail may name the
/// session: by then the name is within the registry's bound.
fn attach_refused(e: &AttachError) -> Refusal {
    let code = match e {
        AttachError::TooManySessions { .. } => "too_many_sessions",
        AttachError::SessionNameTooLong { .. } => "session_name_too_long",
        _ => "session_full",
    };
    Refusal::new(code, e.to_string())
}

fn unavailable(e: ClusterError) -> Refusal {
    Refusal::new("cluster_unavailable", e.to_string())
}

/// Detaches; with a cluster, unsubscribes after the last local member (if Redis
/// is down the detach stands and the heartbeat unsubscribes later).
pub(super) async fn leave(
    shared: &Shared,
    me: ClientId,
    session: &SessionId,
) -> Result<(), DetachError> {
    match &shared.cluster {
        None => shared.registry.detach(me, session),
        Some(cluster) => match cluster.detach(me, session).await {
            Err(ClusterError::Detach(e)) => Err(e),
            _ => Ok(()),
        },
    }
}
