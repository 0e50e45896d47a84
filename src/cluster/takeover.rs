//! Keys across nodes: the claim that makes a key this node's, its release, and
//! what a node does when it hears that another node took one of its keys.
//!
//! The claim script sets `B:keys[key] = gen|node` atomically with a fresh
//! generation, and publishes a takeover notice to the previous holder's node
//! channel. Redis holds exactly one holder per key at every moment. The previous
//! node closes its connection with [`CloseReason::TakenOver`] when the notice
//! arrives, unless it has claimed the key again since (a higher generation).
//!
//! The notice travels on the subscriber connection and the claim's answer on the
//! command connection, so a notice can overtake the answer to the very claim it
//! supersedes. A notice that finds a claim of this node in flight is therefore
//! kept, and the claim's answer is checked against it when it lands: the local
//! holder is closed then, if the notice superseded the claim (or the claim
//! failed), and not before, since that claim may be the newer one. A
//! registration counts its claim in flight from before the registry takes the
//! key, since the claim itself starts on a task of its own.
//!
//! Claims run on tasks of their own, so two registrations of one key on this
//! node can reach Redis in another order than the registry took the key. Redis
//! records the node, not the connection: a claim's answer binds the key to the
//! registry's holder of it then, and the orphan release follows a takeover made
//! here since, rather than release the key of a live connection.

use std::collections::{HashMap, HashSet};

use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::prelude::{Options, Value};

use crate::client_ref::ClientRef;
use crate::sync::{lock, Arc, Mutex};
use crate::{ClientId, CloseReason, SessionId};

use super::envelope::TakeOver;
use super::stats::ClusterEvent;
use super::{ClusterError, Shared};

/// Keys [`Keys::doubtful`] remembers at most: each is one failed registration,
/// many of which only an outage makes.
const MAX_DOUBTFUL: usize = 65_536;

/// What this node holds for one key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The generation of the claim Redis holds the key under for this node.
    pub(crate) gen: u64,
    /// The local connection holding the key: the registry's holder when the
    /// claim was answered, or since (the orphan release follows it). Redis
    /// records the node, not the connection, so a claim made for one
    /// connection holds the key for whichever one holds it here.
    pub(crate) id: ClientId,
}

/// This node's view of its keys, under one lock.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// Keys its clients hold, with the claim that gave them.
    pub(crate) held: HashMap<String, Held>,
    /// Claims sent and not yet answered, per key.
    pending: HashMap<String, usize>,
    /// The newest takeover (generation, node) heard for a key while a claim of
    /// this node was pending.
    revoked: HashMap<String, (u64, String)>,
    /// Keys whose claim failed with its outcome unknown: Redis may have run it
    /// (fred gave up on the answer, or the connection dropped after sending), so
    /// the key may name this node with no connection holding it. So do keys
    /// whose release failed: Redis may not have run it. The next
    /// heartbeat releases each, unless claimed here since. At most
    /// [`MAX_DOUBTFUL`]; beyond, a key stays until this node leaves.
    doubtful: HashSet<String>,
    /// Redis forgot this node and its keys have not all been claimed back yet:
    /// every heartbeat re-announces until one succeeds.
    pub(crate) unannounced: bool,
    /// A key recheck after a lag: running, and asked for again meanwhile. Lags
    /// come in bursts under load; one recheck at a time, one more at most.
    pub(crate) recheck: (bool, bool),
}

impl Keys {
    /// Whether a claim of this node other than the one just answered settles
    /// `key` after a takeover at generation `r`: one answered at a higher
    /// generation (it took the key back), or one in flight (it checks the
    /// takeover when it lands).
    fn settled_elsewhere(&self, key: &str, r: u64) -> bool {
        self.held.get(key).is_some_and(|h| h.gen > r) || self.pending.contains_key(key)
    }

    /// Remembers that a claim of `key` failed with its outcome unknown.
    fn doubt(&mut self, key: &str) {
        if self.doubtful.len() < MAX_DOUBTFUL {
            self.doubtful.insert(key.to_owned());
        }
    }

    /// Keeps a takeover at generation `gen` by `node` for the claims of `key`
    /// in flight, if it is the newest heard.
    fn revoke(&mut self, key: &str, gen: u64, node: &str) {
        let r = self
            .revoked
            .entry(key.to_owned())
            .or_insert((0, String::new()));
        if gen > r.0 {
            *r = (gen, node.to_owned());
        }
    }

    /// One claim of `key` is answered: returns the newest takeover heard while
    /// it was in flight, forgotten with the last claim in flight.
    fn answered(&mut self, key: &str) -> Option<(u64, String)> {
        let revoked = self.revoked.get(key).cloned();
        match self.pending.get_mut(key) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.pending.remove(key);
                self.revoked.remove(key);
            }
        }
        revoked
    }
}

/// A claim counted in [`Keys::pending`] until it is answered, or dropped
/// unanswered (its task aborted as the node stops): a count left behind would
/// keep the key from its orphan release and key rechecks for good.
struct InFlight<'a> {
    keys: &'a Mutex<Keys>,
    key: &'a str,
    open: bool,
}

impl<'a> InFlight<'a> {
    fn start(keys: &'a Mutex<Keys>, key: &'a str) -> Self {
        *lock(keys).pending.entry(key.to_owned()).or_insert(0) += 1;
        Self {
            keys,
            key,
            open: true,
        }
    }

    /// The claim's answer landed; `keys` is the lock of `self.keys`, held.
    fn answered(&mut self, keys: &mut Keys) -> Option<(u64, String)> {
        self.open = false;
        keys.answered(self.key)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.open {
            lock(self.keys).answered(self.key);
        }
    }
}

/// A claim counted in flight before it is made ([`Shared::reserve_claim`]).
/// Dropped unmade (the registry refused the registration, or its task was
/// dropped as the runtime stopped), it acts on a takeover notice kept for it
/// as the notice would have: it closes the key's holder here.
pub(crate) struct Reserved<M: Clone + Send + Sync + 'static> {
    shared: Arc<Shared<M>>,
    key: String,
    open: bool,
}

impl<M: Clone + Send + Sync + 'static> Drop for Reserved<M> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let superseded = {
            let mut keys = lock(&self.shared.keys);
            match keys.answered(&self.key) {
                Some((r, node)) if !keys.settled_elsewhere(&self.key, r) => {
                    keys.held.remove(&self.key);
                    Some(node)
                }
                _ => None,
            }
        };
        let Some(node) = superseded else {
            return;
        };
        // Redis does not say which connection took it.
        let left = self.shared.close_holder(&self.key, node);
        // Without a runtime, the heartbeat's reconcile records the rooms it left.
        if let (false, Ok(runtime)) = (left.is_empty(), tokio::runtime::Handle::try_current()) {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                let _ = shared.sync_sessions(left).await;
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A new connection: take the key from whoever holds it.
    Force,
    /// A re-announcement: take it back only if no live node took it meanwhile
    /// (one Redis has no heartbeat of yet counts as live: `scripts::CLAIM`).
    IfFree,
}

impl<M: Clone + Send + Sync + 'static> Shared<M> {
    /// Claims `key` for the local connection `id`. Returns whether this node holds
    /// it now (false too when another claim of it in flight here settles that);
    /// under [`Mode::IfFree`] a key another node took is given up and its local
    /// connection closed.
    pub(crate) async fn claim(
        &self,
        key: &str,
        id: ClientId,
        mode: Mode,
    ) -> Result<bool, ClusterError> {
        self.claim_counted(key, id, mode, InFlight::start(&self.keys, key))
            .await
    }

    /// Counts a claim of `key` in flight from now until it is made
    /// ([`claim_reserved`](Self::claim_reserved)): taken before a registration
    /// takes the key in the registry, so that a takeover notice arriving before
    /// its claim starts (on a task of its own) is kept for that claim, rather
    /// than close the connection it is for.
    pub(crate) fn reserve_claim(self: &Arc<Self>, key: &str) -> Reserved<M> {
        *lock(&self.keys).pending.entry(key.to_owned()).or_insert(0) += 1;
        Reserved {
            shared: Arc::clone(self),
            key: key.to_owned(),
            open: true,
        }
    }

    /// As [`claim`](Self::claim), for the key `reserved` counts already.
    pub(crate) async fn claim_reserved(
        &self,
        mut reserved: Reserved<M>,
        id: ClientId,
        mode: Mode,
    ) -> Result<bool, ClusterError> {
        reserved.open = false;
        let in_flight = InFlight {
            keys: &self.keys,
            key: &reserved.key,
            open: true,
        };
        self.claim_counted(&reserved.key, id, mode, in_flight).await
    }

    /// A claim whose count in flight `in_flight` holds.
    async fn claim_counted(
        &self,
        key: &str,
        id: ClientId,
        mode: Mode,
        mut in_flight: InFlight<'_>,
    ) -> Result<bool, ClusterError> {
        let args = vec![
            self.names.base.clone(),
            key.to_owned(),
            self.node.clone(),
            id.to_string(),
            if mode == Mode::Force {
                "force"
            } else {
                "ifree"
            }
            .to_owned(),
            self.names.node_base.clone(),
        ];
        let answer: Result<Vec<Value>, _> = self
            .client
            .eval(self.scripts.claim.text(), self.presence_keys(), args)
            .await;
        // `{1, gen}`, or `{0, holder, holder's generation}`.
        let answer = answer.map(|v| {
            let code = v.first().and_then(Value::as_i64).unwrap_or(0);
            let value = v.get(1).cloned().unwrap_or(Value::Null);
            let gen = v
                .get(2)
                .and_then(Value::as_string)
                .and_then(|g| g.parse::<u64>().ok());
            (code, value, gen)
        });
        let (superseded, failed) = {
            let mut keys = lock(&self.keys);
            let revoked = in_flight.answered(&mut keys);
            match answer {
                // Its outcome unknown, a claim left to settle a takeover
                // (`on_takeover`) settles it as superseded.
                Err(e) => match revoked {
                    Some((r, node)) if !keys.settled_elsewhere(key, r) => {
                        keys.held.remove(key);
                        // It may have run after the takeover all the same.
                        keys.doubt(key);
                        (Some(node), Some(e))
                    }
                    _ => {
                        keys.doubt(key);
                        return Err(e.into());
                    }
                },
                Ok((1, value, _)) => {
                    let gen = value.as_u64().unwrap_or(0);
                    match revoked {
                        Some((r, node)) if r > gen => {
                            if keys.settled_elsewhere(key, r) {
                                return Ok(keys.held.get(key).is_some_and(|h| h.gen > r));
                            }
                            keys.held.remove(key);
                            (Some(node), None)
                        }
                        _ => {
                            // Not necessarily `id`: claims run on tasks of their
                            // own, so a registration that took the key here after
                            // `id` may have had its claim answered first.
                            let id = self
                                .registry
                                .lookup(ClientRef::Key(key))
                                .map_or(id, |entry| entry.id);
                            let held = Held { gen, id };
                            let slot = keys.held.entry(key.to_owned()).or_insert(held);
                            if gen >= slot.gen {
                                *slot = held;
                            }
                            return Ok(true);
                        }
                    }
                }
                // Refused: another node kept the key (a re-announcement). A newer
                // claim of this node in flight ran after this one in Redis, and
                // settles the key and its holder when answered.
                // The refusal is kept for that claim as a takeover notice would
                // be: should it never be made, its reservation closes the holder.
                Ok((_, value, gen)) if keys.pending.contains_key(key) => {
                    if let (Some(node), Some(gen)) = (value.as_string(), gen) {
                        keys.revoke(key, gen, &node);
                    }
                    return Ok(false);
                }
                // One answered first, above the refusing holder's generation,
                // took the key after this one ran: it holds it.
                Ok((_, _, Some(gen))) if keys.settled_elsewhere(key, gen) => {
                    return Ok(false);
                }
                Ok((_, value, _)) => {
                    keys.held.remove(key);
                    (value.as_string(), None)
                }
            }
        };
        // Another node holds the key: it claimed after this claim, or kept it.
        let left = self.close_holder(key, superseded.unwrap_or_default());
        let synced = if left.is_empty() {
            Ok(())
        } else {
            self.sync_sessions(left).await
        };
        if let Some(e) = failed {
            return Err(e.into());
        }
        synced.map(|()| false)
    }

    /// Releases every key whose connection left the registry without the cluster
    /// being told (an admin kick, a slow consumer, an unregister made on the
    /// registry), so that no key resolves to a connection that is gone.
    ///
    /// A key another connection took over here since is not an orphan: this
    /// node's claim holds it for that one (Redis records the node, not the
    /// connection), which it is bound to instead. Released, the key would be
    /// held here with Redis knowing of no holder: a send from another node
    /// would fail, and a claim there would close nothing here.
    ///
    /// One release at a time, it renews the node's deadline meanwhile
    /// ([`keep_alive`](Self::keep_alive)).
    pub(crate) async fn release_orphans(&self) -> Result<(), ClusterError> {
        let orphans: Vec<(String, ClientId)> = {
            let mut keys = lock(&self.keys);
            let Keys { held, pending, .. } = &mut *keys;
            let mut orphans = Vec::new();
            for (key, h) in held.iter_mut() {
                // A key with a claim in flight is settled by that claim.
                if pending.contains_key(key) {
                    continue;
                }
                match self.registry.lookup(ClientRef::Key(key)) {
                    Ok(entry) => h.id = entry.id,
                    Err(_) => orphans.push((key.clone(), h.id)),
                }
            }
            orphans
        };
        let mut renewed = Instant::now();
        for (key, id) in orphans {
            self.keep_alive(&mut renewed).await?;
            self.release(&key, id).await?;
        }
        Ok(())
    }

    /// Settles each key whose claim or release failed with its outcome unknown, if Redis
    /// names this node for it under a claim no newer than a generation read
    /// before the check (a claim made here since runs later, higher): released if
    /// no claim here holds it; if one does, that claim's generation follows
    /// Redis's, so that the holder's release releases it. A key named under a
    /// newer generation (the failed claim replayed since, or one of this node's
    /// in flight at the read) waits for the next heartbeat; one being claimed
    /// here is left to that claim. It renews the node's deadline meanwhile
    /// ([`keep_alive`](Self::keep_alive)).
    pub(crate) async fn release_doubtful(&self) -> Result<(), ClusterError> {
        if lock(&self.keys).doubtful.is_empty() {
            return Ok(());
        }
        // Every claim sent after this read runs after it, at a higher generation.
        let newest: Option<String> = self.client.get(format!("{}:gen", self.names.base)).await?;
        let newest = newest.unwrap_or_else(|| "0".to_owned());
        let candidates: Vec<(String, Option<u64>)> = {
            let keys = lock(&self.keys);
            keys.doubtful
                .iter()
                .filter(|key| !keys.pending.contains_key(*key))
                .map(|key| (key.clone(), keys.held.get(key).map(|h| h.gen)))
                .collect()
        };
        let mut renewed = Instant::now();
        for (key, held) in candidates {
            self.keep_alive(&mut renewed).await?;
            let args = vec![
                self.names.base.clone(),
                key.clone(),
                self.node.clone(),
                newest.clone(),
                held.map(|g| g.to_string()).unwrap_or_default(),
            ];
            let answer: Vec<Value> = self
                .client
                .eval(
                    self.scripts.release_doubtful.text(),
                    self.presence_keys(),
                    args,
                )
                .await?;
            let mut keys = lock(&self.keys);
            match answer.first().and_then(Value::as_i64) {
                Some(2) => continue,
                Some(3) => {
                    let gen = answer
                        .get(1)
                        .and_then(Value::as_string)
                        .and_then(|g| g.parse::<u64>().ok());
                    if let (Some(gen), Some(h)) = (gen, keys.held.get_mut(&key)) {
                        h.gen = h.gen.max(gen);
                    }
                }
                _ => {}
            }
            keys.doubtful.remove(&key);
        }
        Ok(())
    }

    /// Checks every key held here against Redis, for takeover notices this node
    /// missed: they are pub/sub, lost while its subscriber connection was down or
    /// lagging. Closes each connection whose key another node holds now; a key
    /// Redis no longer has at all is claimed back by the next heartbeat.
    pub(crate) async fn recheck_keys(&self) -> Result<(), ClusterError> {
        let held: HashMap<String, u64> = lock(&self.keys)
            .held
            .iter()
            .map(|(key, h)| (key.clone(), h.gen))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let mut args = vec![self.names.base.clone(), self.node.clone()];
        for (key, gen) in &held {
            args.push(key.clone());
            args.push(gen.to_string());
        }
        let lost: Vec<String> = self
            .client
            .eval(self.scripts.held.text(), self.presence_keys(), args)
            .await?;
        let mut left = Vec::new();
        for pair in lost.chunks_exact(2) {
            let (key, node) = (&pair[0], &pair[1]);
            if node == &self.node {
                // Claimed again here since: that claim settles it.
                continue;
            }
            let taken = {
                let mut keys = lock(&self.keys);
                if node.is_empty() {
                    keys.unannounced = true;
                    false
                } else if keys.pending.contains_key(key)
                    || keys.held.get(key).map(|h| h.gen) != held.get(key).copied()
                {
                    // A claim in flight or one answered since the check: it settles it.
                    false
                } else {
                    keys.held.remove(key);
                    true
                }
            };
            if taken {
                left.extend(self.close_holder(key, node.clone()));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        self.sync_sessions(left).await
    }

    /// Releases `key` if this node's claim for connection `id` still holds it.
    /// Should that fail, the next heartbeat releases it
    /// ([`release_doubtful`](Self::release_doubtful)).
    pub(crate) async fn release(&self, key: &str, id: ClientId) -> Result<(), ClusterError> {
        let gen = {
            let mut keys = lock(&self.keys);
            match keys.held.get(key) {
                Some(h) if h.id == id => {
                    let gen = h.gen;
                    keys.held.remove(key);
                    gen
                }
                _ => return Ok(()),
            }
        };
        let args = vec![
            self.names.base.clone(),
            key.to_owned(),
            self.node.clone(),
            gen.to_string(),
        ];
        let released: Result<Value, _> = self
            .client
            .eval(self.scripts.release.text(), self.presence_keys(), args)
            .await;
        if let Err(e) = released {
            // It may not have run, and nothing here holds the key any more to
            // try again: the next heartbeat releases it if Redis still names
            // this node for it.
            lock(&self.keys).doubt(key);
            return Err(e.into());
        }
        Ok(())
    }

    /// Asks Redis who holds `key` and publishes `frame` to that node, in one
    /// script call. Failures are final, as for the publisher's batches: the
    /// script refuses past a deadline on Redis's clock, and the answer is awaited
    /// twice that long, so a send the client library replays after reporting it
    /// failed is not delivered behind the caller's back.
    pub(crate) async fn route(
        &self,
        key: &str,
        frame: bytes::Bytes,
    ) -> Result<Value, fred::error::Error> {
        let io = |text| fred::error::Error::new(fred::error::ErrorKind::IO, text);
        let Some(now) = self.clock.now_ms() else {
            return Err(io("redis clock not read yet"));
        };
        let wait = self.publish_deadline * 2;
        let deadline = now + u64::try_from(self.publish_deadline.as_millis()).unwrap_or(u64::MAX);
        let args: Vec<Value> = vec![
            self.names.base.clone().into(),
            key.into(),
            self.names.node_base.clone().into(),
            frame.into(),
            self.node.clone().into(),
            deadline.to_string().into(),
        ];
        let client = self.client.with_options(&Options {
            // Refuse at once while disconnected rather than queue for a reconnect.
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(wait),
            ..Options::default()
        });
        let call = client.eval(self.scripts.route.text(), self.presence_keys(), args);
        // A margin past fred's own timeout, in case it does not fire.
        match tokio::time::timeout(wait + Duration::from_millis(100), call).await {
            Ok(answer) => answer,
            Err(_) => Err(io("send timed out")),
        }
    }

    pub(crate) async fn locate(&self, key: &str) -> Result<Option<String>, ClusterError> {
        let v: Value = self
            .client
            .eval(
                self.scripts.locate.text(),
                self.presence_keys(),
                vec![self.names.base.clone(), key.to_owned()],
            )
            .await?;
        Ok(v.as_string().filter(|_| !v.is_null()))
    }

    /// Another node claimed a key this node held. Returns the sessions the closed
    /// connection left, whose subscriptions the caller must sync.
    pub(crate) fn on_takeover(&self, notice: TakeOver) -> Vec<SessionId> {
        {
            let mut keys = lock(&self.keys);
            let lost = keys
                .held
                .get(&notice.key)
                .is_some_and(|h| h.gen < notice.gen);
            if lost {
                keys.held.remove(&notice.key);
            }
            if keys.pending.contains_key(&notice.key) {
                keys.revoke(&notice.key, notice.gen, &notice.node);
                // Kept for the claim in flight, which closes the holder if the
                // notice superseded it. It may have run in Redis after the
                // notice's claim (a connection that took the key over here
                // since): closing the holder now would close the connection
                // that won, and leave the key claimed for nobody.
                return Vec::new();
            }
            if !lost {
                // Claimed again here since: nothing to close.
                return Vec::new();
            }
        }
        self.close_holder(&notice.key, notice.node)
    }

    /// Closes the local connection holding `key`, which now belongs to `node`;
    /// returns the sessions it left. Its close reason names no connection: the
    /// new holder's id is another node's, and would mean nothing here (or alias
    /// a client of this node).
    fn close_holder(&self, key: &str, node: String) -> Vec<SessionId> {
        let Ok(entry) = self.registry.lookup(ClientRef::Key(key)) else {
            return Vec::new();
        };
        let Ok(gone) = self
            .registry
            .unregister_because(entry.id, CloseReason::TakenOver { by: None })
        else {
            return Vec::new();
        };
        let _ = self.events.send(ClusterEvent::TakenOver {
            key: key.to_owned(),
            node,
        });
        gone.sessions
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::Poll;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::test_redis as redis;
    use crate::cluster::tests::node;
    use crate::ClientInfo;

    /// Polls `f` once, far enough to send its command, with Redis stopped so
    /// that the answer cannot land within that poll.
    async fn send<F: Future>(redis: &redis::Redis, mut f: Pin<&mut F>)
    where
        F::Output: std::fmt::Debug,
    {
        redis.freeze();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                panic!("answered at once: {out:?}");
            }
            Poll::Ready(())
        })
        .await;
        redis.thaw();
    }

    /// Waits until Redis's last claim generation is `gen`.
    fn claimed(redis: &redis::Redis, prefix: &str, gen: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let key = format!("{{{prefix}}}:gen");
        while redis.cli(&["GET", &key]) != Some(gen.to_string()) {
            assert!(Instant::now() < deadline, "no claim at generation {gen}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Two registrations of one key on one node: the registry takes it for
    /// `old`, then `new`, and their claims reach Redis the other way round (each
    /// runs on a task of its own). The later answer, `old`'s, must not bind the
    /// key to `old`, closed already: the live holder's unregister would then
    /// release nothing, and the heartbeat would release the key of a live
    /// connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_answered_after_a_newer_one_binds_the_key_to_the_live_holder() {
        let Some(redis) = redis::Redis::start("late_claim_answer") else {
            return;
        };
        let cluster = node(&redis, "u1").await;
        let shared = &cluster.shared;
        let info = || ClientInfo::new().with_key("dev");
        let (old, _old_rx) = shared.registry.register(info()).unwrap();
        let (new, _new_rx) = shared.registry.register(info()).unwrap();
        assert!(shared.claim("dev", new, Mode::Force).await.unwrap());
        assert!(shared.claim("dev", old, Mode::Force).await.unwrap());
        assert_eq!(
            lock(&shared.keys).held.get("dev").map(|h| h.id),
            Some(new),
            "the key is bound to a closed connection"
        );
        let gone = cluster.unregister(new).await.unwrap();
        assert_eq!(gone.id, new);
        assert_eq!(cluster.locate("dev").await.unwrap(), None);
    }

    /// Two claims of one key on this node with another node's claim between
    /// them in Redis, whose notice arrives while both are in flight. The older
    /// one was superseded, but by a claim the newer one superseded in turn:
    /// whichever answer is handled first, the key stays with the newer one, and
    /// its connection open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_claim_superseded_in_between_leaves_the_key_with_the_newer_one() {
        let Some(redis) = redis::Redis::start("older_claim_superseded") else {
            return;
        };
        for (prefix, newer_first) in [("u2", true), ("u3", false)] {
            let cluster = node(&redis, prefix).await;
            let shared = &cluster.shared;
            let info = || ClientInfo::new().with_key("dev");
            let (old, _old_rx) = shared.registry.register(info()).unwrap();
            let (new, _new_rx) = shared.registry.register(info()).unwrap();
            // Generations of our choosing, above Redis's time in µs and exact in Lua.
            let base = 1u64 << 52;
            let set_gen = |gen: u64| {
                let key = format!("{{{prefix}}}:gen");
                redis.cli(&["SET", &key, &gen.to_string()]).unwrap();
            };
            set_gen(base);
            let mut older = pin!(shared.claim("dev", old, Mode::Force));
            send(&redis, older.as_mut()).await;
            claimed(&redis, prefix, base + 1);
            set_gen(base + 10);
            let mut newer = pin!(shared.claim("dev", new, Mode::Force));
            send(&redis, newer.as_mut()).await;
            claimed(&redis, prefix, base + 11);
            let notice = TakeOver {
                key: "dev".into(),
                gen: base + 5,
                node: "b".into(),
                by: String::new(),
            };
            assert!(shared.on_takeover(notice).is_empty());
            if newer_first {
                assert!(newer.await.unwrap());
                let _ = older.await.unwrap();
            } else {
                let _ = older.await.unwrap();
                assert!(newer.await.unwrap());
            }
            let held = lock(&shared.keys).held.get("dev").map(|h| (h.gen, h.id));
            let holder = shared.registry.lookup(ClientRef::Key("dev")).map(|e| e.id);
            let what = if newer_first { "newer" } else { "older" };
            assert_eq!(
                held,
                Some((base + 11, new)),
                "{what} answer first: the newer claim was undone"
            );
            assert_eq!(
                holder.ok(),
                Some(new),
                "{what} answer first: the newer connection was closed"
            );
        }
    }

    /// A connection took the key over here while its claim was in flight, and
    /// another node's notice arrives for a claim that ran in Redis between the
    /// old connection's claim and the new one's. The new claim wins in Redis
    /// (the other node closes its connection on its notice), so the new
    /// connection must stay open. (It was closed on the notice, the new claim
    /// then bound the key to a closed connection, and nobody held it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notice_older_than_a_claim_in_flight_closes_nothing() {
        let Some(redis) = redis::Redis::start("notice_older_than_claim") else {
            return;
        };
        let cluster = node(&redis, "u5").await;
        let shared = &cluster.shared;
        let info = || ClientInfo::new().with_key("dev");
        let set_gen = |gen: u64| {
            redis.cli(&["SET", "{u5}:gen", &gen.to_string()]).unwrap();
        };
        let base = 1u64 << 52;
        set_gen(base);
        let (old, _old_rx) = shared.registry.register(info()).unwrap();
        assert!(shared.claim("dev", old, Mode::Force).await.unwrap());
        let (new, _new_rx) = shared.registry.register(info()).unwrap();
        set_gen(base + 10);
        let mut newer = pin!(shared.claim("dev", new, Mode::Force));
        send(&redis, newer.as_mut()).await;
        claimed(&redis, "u5", base + 11);
        let notice = TakeOver {
            key: "dev".into(),
            gen: base + 5,
            node: "b".into(),
            by: String::new(),
        };
        let _ = shared.on_takeover(notice);
        assert!(newer.await.unwrap());
        let holder = shared.registry.lookup(ClientRef::Key("dev")).map(|e| e.id);
        assert_eq!(holder.ok(), Some(new), "the new connection was closed");
        let held = lock(&shared.keys).held.get("dev").map(|h| (h.gen, h.id));
        assert_eq!(held, Some((base + 11, new)));
    }

    /// As above, with the notice arriving after the new registration took the
    /// key in the registry and before its claim started: on a runtime of one
    /// thread, the task that claims cannot start before the notice.
    #[tokio::test(flavor = "current_thread")]
    async fn a_notice_before_a_registrations_claim_starts_closes_nothing() {
        let Some(redis) = redis::Redis::start("notice_before_claim") else {
            return;
        };
        let cluster = node(&redis, "u6").await;
        let shared = &cluster.shared;
        let set_gen = |gen: u64| {
            redis.cli(&["SET", "{u6}:gen", &gen.to_string()]).unwrap();
        };
        let base = 1u64 << 52;
        set_gen(base);
        let info = || ClientInfo::new().with_key("dev");
        let (_old, _old_rx) = cluster.register(info()).await.unwrap();
        set_gen(base + 10);
        let mut registering = pin!(cluster.register(info()));
        std::future::poll_fn(|cx| {
            assert!(registering.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let notice = TakeOver {
            key: "dev".into(),
            gen: base + 5,
            node: "b".into(),
            by: String::new(),
        };
        let _ = shared.on_takeover(notice);
        let (new, _new_rx) = registering.await.unwrap();
        let holder = shared.registry.lookup(ClientRef::Key("dev")).map(|e| e.id);
        assert_eq!(holder.ok(), Some(new), "the new connection was closed");
        let held = lock(&shared.keys).held.get("dev").map(|h| (h.gen, h.id));
        assert_eq!(held, Some((base + 11, new)));
    }

    /// A claim that lost to another node's closes its holder as taken over by
    /// a connection elsewhere: `by` names none, never the closed connection
    /// itself (nor `c0.0.0`, which is a real id here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_claim_closes_its_holder_as_taken_over_by_another() {
        let Some(redis) = redis::Redis::start("lost_claim_by") else {
            return;
        };
        let cluster = node(&redis, "u9").await;
        let shared = &cluster.shared;
        let (old, old_rx) = shared
            .registry
            .register(ClientInfo::new().with_key("dev"))
            .unwrap();
        let base = 1u64 << 52;
        redis.cli(&["SET", "{u9}:gen", &base.to_string()]).unwrap();
        let mut claim = pin!(shared.claim("dev", old, Mode::Force));
        send(&redis, claim.as_mut()).await;
        claimed(&redis, "u9", base + 1);
        // Another node's claim ran after this one; its notice comes first.
        let notice = TakeOver {
            key: "dev".into(),
            gen: base + 5,
            node: "b".into(),
            by: String::new(),
        };
        assert!(shared.on_takeover(notice).is_empty());
        assert!(!claim.await.unwrap(), "the older claim lost");
        match old_rx.close_reason() {
            Some(CloseReason::TakenOver { by }) => {
                assert_eq!(*by, None, "the connection {old} was taken over by {by:?}");
            }
            other => panic!("closed because {other:?}"),
        }
    }

    /// A re-announcement refused because another node holds the key, answered
    /// while a newer claim of this node for the key is in flight: that claim
    /// settles the key (it runs after the other node's in Redis, and takes it),
    /// so the refusal must not close the local holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_reannouncement_leaves_the_holder_to_a_newer_claim_in_flight() {
        refused_reannouncement_beside_a_newer_claim("refused_reannouncement", "u11", false).await;
    }

    /// As above, with the newer claim's answer handled first (each claim's
    /// answer is handled by the task that awaits it, in whatever order those
    /// run): the refusal, for a claim older than the one now held, must leave
    /// the key and its holder to that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_reannouncement_answered_after_a_newer_claim_closes_nothing() {
        refused_reannouncement_beside_a_newer_claim("refused_reannouncement_late", "u15", true)
            .await;
    }

    /// Node b holds "dev"; node a re-announces it (refused) and then claims it
    /// anew for the same holder, both sent before either answer is read, the
    /// newer answer handled first if `newer_first`. The key and its holder
    /// must end with the newer claim.
    async fn refused_reannouncement_beside_a_newer_claim(
        test: &str,
        prefix: &str,
        newer_first: bool,
    ) {
        let Some(redis) = redis::Redis::start(test) else {
            return;
        };
        let a = node(&redis, prefix).await;
        let b = crate::cluster::Cluster::builder(
            crate::Registry::<Arc<str>>::new(),
            crate::cluster::Raw,
        )
        .url(redis.url())
        .prefix(prefix)
        .node_id("b")
        .ttl(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
        let info = || ClientInfo::new().with_key("dev");
        let (_on_b, _on_b_rx) = b.register(info()).await.unwrap();
        let shared = &a.shared;
        let (holder, _holder_rx) = shared.registry.register(info()).unwrap();
        let mut reannounce = pin!(shared.claim("dev", holder, Mode::IfFree));
        send(&redis, reannounce.as_mut()).await;
        let mut newer = pin!(shared.claim("dev", holder, Mode::Force));
        send(&redis, newer.as_mut()).await;
        if newer_first {
            assert!(newer.await.unwrap(), "the newer claim takes it");
            assert!(!reannounce.await.unwrap(), "b held the key");
        } else {
            assert!(!reannounce.await.unwrap(), "b holds the key");
            assert!(newer.await.unwrap(), "the newer claim takes it");
        }
        assert_eq!(
            shared
                .registry
                .lookup(ClientRef::Key("dev"))
                .map(|e| e.id)
                .ok(),
            Some(holder),
            "the refusal closed the holder the newer claim was for"
        );
        assert_eq!(a.locate("dev").await.unwrap().as_deref(), Some("a"));
        assert_eq!(
            lock(&shared.keys).held.get("dev").map(|h| h.id),
            Some(holder),
            "the refusal forgot the newer claim"
        );
    }

    /// A claim of a doubtful key replayed after the generation was read (fred
    /// may resend a command it reported failed) names this node under a newer
    /// generation: kept for the next heartbeat, which releases it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_doubtful_key_claimed_after_the_check_is_released_at_the_next() {
        let Some(redis) = redis::Redis::start("doubtful_replayed") else {
            return;
        };
        let cluster = node(&redis, "u12").await;
        let shared = &cluster.shared;
        // Redis first: the node's heartbeat may settle the key at any moment.
        redis.cli(&["SET", "{u12}:gen", "100"]).unwrap();
        redis.cli(&["HSET", "{u12}:keys", "dev", "150|a"]).unwrap();
        lock(&shared.keys).doubtful.insert("dev".into());
        shared.release_doubtful().await.unwrap();
        assert_eq!(
            redis.cli(&["HGET", "{u12}:keys", "dev"]).as_deref(),
            Some("150|a")
        );
        redis.cli(&["SET", "{u12}:gen", "200"]).unwrap();
        shared.release_doubtful().await.unwrap();
        assert_eq!(
            redis.cli(&["HGET", "{u12}:keys", "dev"]).as_deref(),
            Some(""),
            "a key claimed for nobody here was forgotten, not released"
        );
    }

    /// A doubtful claim that ran after the claim this node holds the key under
    /// left Redis naming this node under its newer generation: the holder's
    /// release must release that one, or the key names this node for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_doubtful_claim_newer_than_the_held_one_is_released_with_the_holder() {
        let Some(redis) = redis::Redis::start("doubtful_newer_than_held") else {
            return;
        };
        let cluster = node(&redis, "u13").await;
        let shared = &cluster.shared;
        let (holder, _rx) = shared
            .registry
            .register(ClientInfo::new().with_key("dev"))
            .unwrap();
        // Redis first: the node's heartbeat may settle the key at any moment.
        redis.cli(&["SET", "{u13}:gen", "10"]).unwrap();
        redis.cli(&["HSET", "{u13}:keys", "dev", "4|a"]).unwrap();
        {
            let mut keys = lock(&shared.keys);
            keys.held.insert("dev".into(), Held { gen: 3, id: holder });
            keys.doubtful.insert("dev".into());
        }
        shared.release_doubtful().await.unwrap();
        let _gone = cluster.unregister(holder).await.unwrap();
        assert_eq!(
            redis.cli(&["HGET", "{u13}:keys", "dev"]).as_deref(),
            Some(""),
            "the key still names this node after its holder left"
        );
    }

    /// A re-announcement refused (another node took the key while Redis had
    /// forgotten this one, so no notice came) while a registration's claim is
    /// reserved: should that registration then be refused, its reservation must
    /// close the old holder, as the refusal would have. Else two live
    /// connections hold the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_kept_for_a_reserved_claim_closes_the_holder_when_it_is_dropped() {
        let Some(redis) = redis::Redis::start("refusal_kept") else {
            return;
        };
        let cluster = node(&redis, "u14").await;
        let shared = &cluster.shared;
        let (holder, _rx) = shared
            .registry
            .register(ClientInfo::new().with_key("dev"))
            .unwrap();
        // Node b, alive, holds the key.
        let alive_until = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 60_000)
            .to_string();
        redis
            .cli(&["ZADD", "{u14}:nodes", &alive_until, "b"])
            .unwrap();
        redis.cli(&["HSET", "{u14}:keys", "dev", "7|b"]).unwrap();
        let reserved = shared.reserve_claim("dev");
        assert!(!shared.claim("dev", holder, Mode::IfFree).await.unwrap());
        drop(reserved);
        assert!(
            shared.registry.lookup(ClientRef::Key("dev")).is_err(),
            "the old holder lives on while b holds the key"
        );
    }
}
