//! A world: one contender's registry, the harness's clients around it, and every operation
//! the scenarios perform on it, each keeping the model (the clients' ledgers) in step.
//!
//! Every registry call that changes membership goes through here and follows the ledger
//! protocol described in [`ledger`](crate::ledger): lock the client's ledger, call the
//! registry, record the result (and the cut, read after the call returned), unlock. The
//! comparisons of the model with the registry live in [`check`].

mod check;

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baselines::Inbox;
use crossbeam_utils::CachePadded;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::cli::Policy;
use crate::client::{Client, Kind};
use crate::heap;
use crate::invariants::{outcome_adds_up, Outcome, Violations};
use crate::latency::Recorder;
use crate::layout::Layout;
use crate::ledger::{Ledger, Status};
use crate::message::{Msg, DIRECT, EVERYONE};
use crate::receiver::{self, Receipts};
use crate::rng::Rng;
use crate::serial;
use crate::subject::{Sent, Subject};
use crate::tally::Tally;
use crate::tasks::TaskCount;

/// Settings a world is built with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Scenario name, for violation scopes.
    pub scenario: &'static str,
    /// Channel capacity.
    pub capacity: usize,
    /// switchboard's slow-consumer policy.
    pub policy: Policy,
    /// Payload bytes.
    pub message_size: usize,
    /// Initial membership.
    pub layout: Layout,
    /// Share of slow clients.
    pub slow: f64,
    /// Share of abrupt disconnects.
    pub abrupt: f64,
    /// Abrupt disconnects happen within this long after a client's receiver starts.
    pub abrupt_window: Duration,
    /// A late receiver's pause after each message.
    pub late_pause: Duration,
    /// Whether receivers and drivers time their polls (see [`busy`](crate::busy)).
    /// Only `mixed` reports that split; elsewhere the two clock reads per poll
    /// would be one more cost shared by every design, diluting its ratios.
    pub clock_polls: bool,
}

/// How long a refused operation waits for a concurrent eviction to finish before calling the
/// client lost.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// How long teardown waits for receivers to see their channel end.
const TEARDOWN_WAIT: Duration = Duration::from_secs(15);

/// A seat: the slot one long-lived client occupies; churn replaces its occupant.
type Seat<Id> = Mutex<Option<Arc<Client<Id>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Seats hold one `Option<Arc>`, assigned whole; a panicking holder leaves it consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the model keeps per session: its sequence counter and the broadcasts in flight.
///
/// Padded to a cache line of its own: every attach, detach and unregister takes a locked
/// RMW on its sessions' counters, and the drivers on both workers pick sessions at random.
/// Packed eight counters to a line, most of those RMWs found the line last written by the
/// other worker, a cost the harness added to every design, more in proportion to the
/// faster ones.
#[derive(Debug, Default)]
struct SessionModel {
    /// The session's sequence counter; see [`ledger`](crate::ledger) for the protocol.
    ///
    /// Ordering: `AcqRel` read-modify-writes only, so that a broadcast numbered at or above a
    /// cut is ordered after the detach the cut followed.
    seq: AtomicU64,
    /// The numbers of broadcasts drawn and not yet returned. A number is drawn and entered
    /// under the same lock, so the smallest entry (or the counter, if none) is the session's
    /// *floor*: every broadcast numbered below it has returned. See
    /// [`ledger`](crate::ledger) for what membership periods do with it.
    in_flight: Mutex<BTreeSet<u64>>,
}

/// One contender under load, with its model.
pub struct World<S: Subject> {
    /// The registry.
    pub subject: S,
    /// How it was built.
    pub setup: Setup,
    scope: String,
    /// The model's state of each session, one cache line each (see [`SessionModel`]).
    sessions: Box<[CachePadded<SessionModel>]>,
    seats: Box<[Seat<S::Id>]>,
    /// Clients replaced in their seat while the registry still (wrongly) held them.
    orphans: Mutex<Vec<Arc<Client<S::Id>>>>,
    /// What happened, for rates and end-of-run checks.
    pub tally: Tally,
    /// What the receivers do with each message: checks, latencies of prompt receivers.
    receipts: Receipts,
    /// Where violations go.
    pub violations: Arc<Violations>,
    /// Live receiver tasks.
    pub tasks: TaskCount,
    /// Set at teardown: late receivers stop pausing.
    ///
    /// Ordering: `Relaxed`; a late receiver that misses it pauses once more.
    draining: AtomicBool,
    /// Abrupt disconnects take it shared, checkpoints exclusively, so no client vanishes
    /// while a checkpoint compares the model with the registry.
    gate: RwLock<()>,
    /// Clients the scenario keeps registered beside the world's own (the soak's profile
    /// holders); a checkpoint counts them in. Set under [`beside`](Self::beside).
    ///
    /// Ordering: `Relaxed`; the gate orders its stores before a checkpoint's load.
    pub outside: Arc<AtomicUsize>,
    /// Live heap once the world and its empty registry existed, to tell what the registry
    /// retains at teardown. Ordering: `Relaxed`; written once before any other thread runs.
    heap_at_birth: AtomicI64,
}

impl<S: Subject> std::fmt::Debug for World<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("scope", &self.scope)
            .field("seats", &self.seats.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl<S: Subject> World<S> {
    /// An empty world around a fresh registry.
    pub fn new(setup: Setup, latency: Arc<Recorder>, violations: Arc<Violations>) -> Arc<Self> {
        let subject = S::build(setup.capacity, setup.policy);
        let scope = format!("{}/{}", setup.scenario, subject.name());
        let world = Arc::new(Self {
            sessions: (0..setup.layout.sessions)
                .map(|_| CachePadded::default())
                .collect(),
            seats: (0..setup.layout.clients)
                .map(|_| Mutex::new(None))
                .collect(),
            orphans: Mutex::new(Vec::new()),
            receipts: Receipts::new(
                scope.clone(),
                setup.message_size,
                latency,
                Arc::clone(&violations),
            ),
            subject,
            setup,
            scope,
            tally: Tally::default(),
            violations,
            tasks: TaskCount::default(),
            draining: AtomicBool::new(false),
            gate: RwLock::new(()),
            outside: Arc::new(AtomicUsize::new(0)),
            heap_at_birth: AtomicI64::new(0),
        });
        // Relaxed: see `heap_at_birth`.
        world
            .heap_at_birth
            .store(heap::live_bytes(), Ordering::Relaxed);
        world
    }

    /// Live heap the registry holds beyond what it held empty; meaningful once every client
    /// is gone and every receiver task has ended.
    pub fn retained_bytes(&self) -> i64 {
        // Relaxed: see `heap_at_birth`.
        heap::live_bytes() - self.heap_at_birth.load(Ordering::Relaxed)
    }

    /// The contender's name.
    pub fn name(&self) -> &'static str {
        self.subject.name()
    }

    /// `scenario/contender`, the scope of this world's violations.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Number of sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Number of seats.
    pub fn seats(&self) -> usize {
        self.seats.len()
    }

    /// The client in seat `i`, if any.
    pub fn seat(&self, i: usize) -> Option<Arc<Client<S::Id>>> {
        self.seats.get(i).and_then(|s| lock(s).clone())
    }

    fn set_seat(&self, i: usize, client: Option<Arc<Client<S::Id>>>) {
        if let Some(seat) = self.seats.get(i) {
            *lock(seat) = client;
        }
    }

    /// Whether teardown has begun.
    pub fn draining(&self) -> bool {
        // Relaxed: see `draining`.
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs a registry call; a panic inside it (already recorded as a violation by the panic
    /// hook) counts as a refusal, so that one broken call does not end the scenario.
    fn guarded<T>(&self, call: impl FnOnce(&S) -> T) -> Option<T> {
        std::panic::catch_unwind(AssertUnwindSafe(|| call(&self.subject))).ok()
    }

    fn evictions_allowed(&self) -> bool {
        self.setup.policy == Policy::Disconnect && self.subject.evicts()
    }

    fn cut(&self, session: u64) -> u64 {
        // AcqRel RMW: see `SessionModel::seq`.
        self.sessions
            .get(session as usize)
            .map_or(0, |m| m.seq.fetch_add(0, Ordering::AcqRel))
    }

    /// The session's floor: no broadcast numbered below it is still in flight.
    fn floor(&self, session: u64) -> u64 {
        let Some(model) = self.sessions.get(session as usize) else {
            return 0;
        };
        let in_flight = lock(&model.in_flight);
        // AcqRel RMW: see `SessionModel::seq`.
        let counter = model.seq.fetch_add(0, Ordering::AcqRel);
        in_flight
            .first()
            .map_or(counter, |&oldest| oldest.min(counter))
    }

    /// Records that the client is gone, cutting every session it was in and its direct
    /// sends.
    fn cut_all(&self, client: &Client<S::Id>, ledger: &mut Ledger, how: Status) {
        ledger.gone(how, |s| self.cut(s), client.direct_cut());
        client.gone.notify_one();
    }

    /// The registry refused an operation on a client the model holds as registered: either
    /// the slow-consumer policy removed it (legal under `disconnect`), or it was lost.
    fn discover_gone(&self, client: &Client<S::Id>, ledger: &mut Ledger, during: &str) {
        if self.settled_online(client.id) == Some(true) {
            self.violations.push(
                self.scope.clone(),
                format!(
                    "{during} of client #{} refused although it is registered and, in the \
                     model, attached to {:?}",
                    client.serial,
                    ledger.attached().collect::<Vec<_>>()
                ),
            );
            return;
        }
        self.violations.checked(1);
        if self.evictions_allowed() {
            self.tally.evicted.add(1);
        } else {
            self.violations.push(
                self.scope.clone(),
                format!(
                    "client #{} ({:?}) vanished from the registry without being unregistered \
                     (found by {during})",
                    client.serial, client.kind
                ),
            );
        }
        self.cut_all(client, ledger, Status::Evicted);
    }

    /// Whether the registry holds `id`, waiting out an eviction in progress: switchboard
    /// refuses a client as soon as its unregister begins but lists it online until the
    /// unregister has released its slot.
    fn settled_online(&self, id: S::Id) -> Option<bool> {
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            let online = self.guarded(|r| r.is_online(id)).flatten();
            if online != Some(true) || !self.evictions_allowed() || Instant::now() > deadline {
                return online;
            }
            std::thread::yield_now();
        }
    }

    /// Every client the harness may still hold registered: the seated ones, and those a
    /// replacement could not unregister.
    fn known_clients(&self) -> Vec<Arc<Client<S::Id>>> {
        let mut all: Vec<_> = self.seats.iter().filter_map(|s| lock(s).clone()).collect();
        all.extend(lock(&self.orphans).iter().cloned());
        all
    }

    // ---- clients -------------------------------------------------------------------------

    /// Registers a client; returns it with its receiving end.
    pub fn connect(&self, kind: Kind) -> (Arc<Client<S::Id>>, S::Rx) {
        let (client, rx) = self.connect_here(kind);
        (Arc::new(client), rx)
    }

    /// Registers a client that only the caller will touch (a short-lived one, whose
    /// receiver the caller drains itself): the same registration as
    /// [`connect`](Self::connect), without the shared allocation a client handed to a
    /// receiver task needs, which was about 190 of the harness's instructions per
    /// short-lived client, the same for every design.
    pub fn connect_here(&self, kind: Kind) -> (Client<S::Id>, S::Rx) {
        let (id, rx) = self.subject.register();
        self.tally.churn_ops.add(1);
        (Client::new(id, serial::next(), kind), rx)
    }

    /// Hands a client's receiver to its own task.
    pub fn spawn_receiver(self: &Arc<Self>, client: Arc<Client<S::Id>>, rx: S::Rx) {
        let task = self.tasks.enter();
        tokio::spawn(receiver::run(task, Arc::clone(self), client, rx));
    }

    /// Attaches `client` to `session`. False if the client is gone.
    pub fn attach(&self, client: &Client<S::Id>, session: u64) -> bool {
        let mut ledger = client.ledger();
        if !ledger.is_registered() {
            return false;
        }
        let before = ledger.joining(session, self.floor(session));
        self.tally.churn_ops.add(1);
        match self.guarded(|r| r.attach(client.id, session)) {
            Some(true) => true,
            Some(false) => {
                ledger.join_refused(session, before);
                self.discover_gone(client, &mut ledger, "attach");
                false
            }
            None => {
                ledger.join_refused(session, before);
                self.panicked("attach", client);
                false
            }
        }
    }

    /// Detaches `client` from `session`. False if it was not attached or is gone.
    pub fn detach(&self, client: &Client<S::Id>, session: u64) -> bool {
        let mut ledger = client.ledger();
        if !ledger.is_registered() || !ledger.is_attached(session) {
            return false;
        }
        self.tally.churn_ops.add(1);
        match self.guarded(|r| r.detach(client.id, session)) {
            Some(true) => {
                let cut = self.cut(session);
                ledger.left(session, cut);
                true
            }
            Some(false) => {
                self.discover_gone(client, &mut ledger, "detach");
                false
            }
            None => {
                self.panicked("detach", client);
                false
            }
        }
    }

    /// Unregisters `client` gracefully. False if it was gone already.
    pub fn unregister(&self, client: &Client<S::Id>) -> bool {
        let mut ledger = client.ledger();
        if !ledger.is_registered() {
            return false;
        }
        self.tally.churn_ops.add(1);
        match self.guarded(|r| r.unregister(client.id)) {
            Some(true) => {
                self.cut_all(client, &mut ledger, Status::Unregistered);
                true
            }
            Some(false) => {
                self.discover_gone(client, &mut ledger, "unregister");
                false
            }
            None => {
                self.panicked("unregister", client);
                // Whatever state the registry is in, the harness treats the client as gone.
                self.cut_all(client, &mut ledger, Status::Unregistered);
                false
            }
        }
    }

    /// Records that a registry call panicked (the panic itself is recorded by the hook).
    fn panicked(&self, call: &str, client: &Client<S::Id>) {
        self.violations.push(
            self.scope.clone(),
            format!(
                "{call} of client #{} panicked inside the registry",
                client.serial
            ),
        );
    }

    /// Drops the client's receiver mid-run, then unregisters it, as a connection task does
    /// when its socket dies.
    pub async fn abrupt(&self, client: &Client<S::Id>, rx: S::Rx) {
        let _no_checkpoint = self.gate.read().await;
        let mut ledger = client.ledger();
        let lost = crate::message::dropping(rx);
        self.tally.abrupt_lost.add(lost);
        self.tally.abrupt_drops.add(1);
        if !ledger.is_registered() {
            return;
        }
        // A broadcast or send may have found the channel closed first and unregistered it.
        if self.guarded(|r| r.unregister(client.id)) != Some(true) {
            self.tally.abrupt_early.add(1);
        }
        self.cut_all(client, &mut ledger, Status::Abrupt);
    }

    /// Holds checkpoints off while an operation beside the world's own (a profile holder's)
    /// changes the registry and `outside`.
    pub async fn beside(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Fills every seat with a client attached to its home sessions, each with a receiver
    /// task, kinds drawn from the setup's shares.
    pub fn populate(self: &Arc<Self>, rng: &mut Rng) {
        let layout = self.setup.layout;
        let mut clients = Vec::with_capacity(layout.clients);
        for seat in 0..layout.clients {
            let kind = Kind::draw(
                rng,
                self.setup.slow,
                self.setup.abrupt,
                self.setup.abrupt_window,
            );
            let (client, rx) = self.connect(kind);
            clients.push((client, rx));
            self.set_seat(seat, Some(Arc::clone(&clients[seat].0)));
        }
        for s in 0..layout.sessions {
            for j in 0..layout.members {
                let (client, _) = &clients[layout.member(s, j)];
                self.attach(client, s as u64);
            }
        }
        for (client, rx) in clients {
            self.spawn_receiver(client, rx);
        }
    }

    /// Replaces seat `i`'s occupant: unregisters it if it is still registered, then seats a
    /// new client attached to the seat's home sessions.
    ///
    /// Holds the seat's lock throughout (seat before ledger, the order everywhere), so two
    /// drivers replacing one seat cannot orphan a client.
    pub fn replace(self: &Arc<Self>, i: usize, rng: &mut Rng) {
        let Some(seat) = self.seats.get(i) else {
            return;
        };
        let mut seat = lock(seat);
        if let Some(old) = seat.as_ref() {
            self.unregister(old);
            if old.ledger().is_registered() {
                // Refused although registered (a violation already): keep it in view.
                lock(&self.orphans).push(Arc::clone(old));
            }
        }
        let kind = Kind::draw(
            rng,
            self.setup.slow,
            self.setup.abrupt,
            self.setup.abrupt_window,
        );
        let (client, rx) = self.connect(kind);
        let layout = self.setup.layout;
        for s in layout.homes(i % layout.clients) {
            self.attach(&client, s as u64);
        }
        *seat = Some(Arc::clone(&client));
        drop(seat);
        self.spawn_receiver(client, rx);
    }

    // ---- traffic -------------------------------------------------------------------------

    /// Broadcasts a fresh message to `session`; returns the report and how long the registry
    /// call took.
    pub fn broadcast(&self, session: u64) -> (Outcome, Duration) {
        let model = self.sessions.get(session as usize);
        let seq = model.map_or(0, |m| {
            let mut entered = lock(&m.in_flight);
            // AcqRel RMW: see `SessionModel::seq`.
            let seq = m.seq.fetch_add(1, Ordering::AcqRel);
            entered.insert(seq);
            seq
        });
        let msg = Msg::new(session, seq, EVERYONE, self.setup.message_size);
        let start = Instant::now();
        let outcome = self
            .guarded(|r| r.deliver(session, msg))
            .unwrap_or_default();
        let took = start.elapsed();
        if let Some(m) = model {
            lock(&m.in_flight).remove(&seq);
        }
        self.tally.broadcast(&outcome);
        if !outcome_adds_up(&outcome) {
            self.violations.push(
                self.scope.clone(),
                format!("broadcast report does not add up: {outcome:?}"),
            );
        }
        (outcome, took)
    }

    /// Sends a fresh message to `client` alone.
    pub fn send_to(&self, client: &Client<S::Id>) -> Sent {
        let seq = client.next_direct();
        let msg = Msg::new(DIRECT, seq, client.serial, self.setup.message_size);
        self.tally.directs.add(1);
        let sent = self
            .guarded(|r| r.direct(client.id, msg))
            .unwrap_or(Sent::Refused);
        match sent {
            Sent::Delivered => self.tally.direct_ok.add(1),
            Sent::Closed => self.tally.direct_closed.add(1),
            Sent::Refused => {}
        }
        sent
    }

    /// A receiver took `msg`: see [`Receipts::accept`].
    pub fn accept(&self, client: &Client<S::Id>, msg: Msg, prompt: bool) {
        self.receipts.accept(&self.tally, client, msg, prompt);
    }

    /// What this world's receivers do with each message.
    pub fn receipts(&self) -> &Receipts {
        &self.receipts
    }

    /// Drains a receiver the caller kept (a short-lived client) until its channel ends.
    pub async fn drain(&self, client: &Client<S::Id>, mut rx: S::Rx) {
        while let Some(msg) = rx.recv().await {
            self.accept(client, msg, false);
        }
    }

    /// Final counts for [`Ctx::balance`](crate::scenarios::Ctx::balance).
    pub fn balance_entry(&self) -> (crate::tally::Counts, bool) {
        (self.tally.snapshot(), self.subject.clones_every_recipient())
    }

    /// Messages queued and not yet received.
    pub fn pending(&self) -> u64 {
        let t = &self.tally;
        (t.delivered.get() + t.direct_ok.get()).saturating_sub(t.received.get())
    }
}
