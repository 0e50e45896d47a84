//! `fanout`: the cost of one broadcast to a session of growing size, for the floor, switchboard
//! and the baselines side by side, in three forms.
//!
//! - **Warm.** At each size every contender holds the same number of clients, all in one
//!   session, each drained by a prompt receiver task. The contenders take turns in short bursts
//!   (in an order shuffled every round, see [`Order`]) and the receivers drain completely
//!   between bursts, so every broadcast finds empty channels and parked receivers, as a
//!   server's idle writer tasks would be. Only the broadcast call is timed; the cost is the
//!   median over all bursts. A fifth contender takes its turns here too, with as many samples:
//!   the [`OWN_FLOOR`], the same bare loop as the floor over switchboard's own channel, so that
//!   switchboard over it is the registry's overhead apart from the channel's speed.
//! - **Burst.** [`BURST`] broadcasts back to back without waiting for the receivers, as a chat
//!   room under load sees them; the cost is the burst's time over its length, median over
//!   bursts.
//! - **Cold.** A connection storm, then the very first broadcast: see [`super::cold`].
//!
//! Every contender's receivers do the same work per message, the floors' included: each is a
//! model client whose receipts go through [`receiver::prompt`] and are checked against its
//! ledger, as the worlds' are. The receivers run on the other worker while a broadcast is
//! timed; floors whose receivers only counted measured their broadcast under lighter load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baselines::floor::{Bare, FloorChannel, Own, Tokio};
use baselines::{DashMapRegistry, Inbox, MutexRegistry, SwitchboardRegistry};
use serde::Serialize;

use super::cold::{self, Cold};
use super::{median, Ctx, HeapCheck, Order};
use crate::client::{Client, Kind};
use crate::heap;
use crate::invariants::{outcome_adds_up, Outcome, Violations};
use crate::latency::{Percentiles, Recorder};
use crate::layout::Layout;
use crate::message::{Msg, DISCARDED, EVERYONE};
use crate::receiver::{self, Receipts};
use crate::rng::Rng;
use crate::subject::Subject;
use crate::tally::{Counts, Tally};
use crate::tasks::{TaskCount, TaskGuard};
use crate::world::World;

/// Order in which contenders appear in results.
pub const CONTENDERS: [&str; 4] = ["floor", "switchboard", "dashmap", "mutex"];
/// The floor over switchboard's own channel ([`baselines::OwnFloor`]): warm broadcasts only, beside
/// [`CONTENDERS`].
pub const OWN_FLOOR: &str = "own_floor";

/// Sends per burst to aim for: bursts of many broadcasts to small sessions, of one to the
/// largest. A burst never exceeds half a channel, so it never fills one.
const SENDS_PER_BURST: usize = 100_000;
/// Fewest warm samples per contender at any size, however long they take (quick mode: 5).
const MIN_SAMPLES: usize = 20;
/// Broadcasts in one burst (at most the channel capacity, so none is dropped).
pub const BURST: usize = 32;
/// Fewest bursts per contender at any size (quick mode: 2): at 100k members one burst is
/// 3.2M deliveries for the receivers to drain.
const MIN_BURSTS: usize = 6;

/// One session size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Members of the session.
    pub members: usize,
    /// Median cost of one broadcast per contender, in nanoseconds; warm, so it includes
    /// [`OWN_FLOOR`].
    pub cost_ns: BTreeMap<&'static str, f64>,
    /// Broadcasts timed per contender.
    pub samples: usize,
    /// Median cost of one broadcast within a burst of [`BURST`] per contender, in nanoseconds.
    pub burst_ns: BTreeMap<&'static str, f64>,
    /// Bursts timed per contender.
    pub burst_samples: usize,
    /// Broadcasts in each burst.
    pub burst_len: usize,
    /// The storm and the first broadcast after it, per contender.
    pub cold: BTreeMap<&'static str, Cold>,
}

impl Row {
    /// The median (warm) cost of `contender`, if measured.
    pub fn cost(&self, contender: &str) -> Option<f64> {
        self.cost_ns.get(contender).copied()
    }

    /// The median cost of one broadcast within a burst, if measured.
    pub fn burst(&self, contender: &str) -> Option<f64> {
        self.burst_ns.get(contender).copied()
    }

    /// The cold figures of `contender`, if measured.
    pub fn cold(&self, contender: &str) -> Option<&Cold> {
        self.cold.get(contender)
    }
}

/// What `fanout` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    /// One row per size.
    pub rows: Vec<Row>,
    /// Delivery latency per contender, all sizes together.
    pub latency: BTreeMap<&'static str, Percentiles>,
    /// Live heap around the scenario.
    pub heap: HeapCheck,
}

impl Fanout {
    /// The row for `members`, if that size ran.
    pub fn row(&self, members: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.members == members)
    }
}

/// Something a fanout round can broadcast through.
trait Target: Send + Sync {
    fn name(&self) -> &'static str;
    /// One broadcast to all `n` clients; returns how long the call took.
    fn fire(&self, n: usize) -> Duration;
    /// Messages queued and not yet received.
    fn pending(&self) -> u64;
    fn violations(&self) -> &Violations;
}

fn check_full_reach(v: &Violations, scope: &str, n: usize, o: &Outcome) {
    // Receivers are drained between bursts and a burst fits in every channel, so a
    // broadcast must reach and queue for everyone.
    v.expect(
        o.recipients == n && o.delivered == n && outcome_adds_up(o),
        scope,
        || format!("broadcast to a static session of {n} reported {o:?}"),
    );
}

impl<S: Subject> Target for World<S> {
    fn name(&self) -> &'static str {
        World::name(self)
    }

    fn fire(&self, n: usize) -> Duration {
        let (outcome, took) = self.broadcast(0);
        check_full_reach(&self.violations, self.scope(), n, &outcome);
        took
    }

    fn pending(&self) -> u64 {
        World::pending(self)
    }

    fn violations(&self) -> &Violations {
        &self.violations
    }
}

/// What a floor's receivers report into.
#[derive(Debug)]
struct Sink {
    /// `fanout/<floor's name>`.
    scope: String,
    /// The same per-message work as a world's receivers do.
    receipts: Receipts,
    tally: Tally,
    violations: Arc<Violations>,
    tasks: TaskCount,
    /// Next sequence number; `Relaxed`: it only numbers messages, nothing is ordered by it.
    seq: AtomicU64,
}

/// A floor with its receivers: one model client each, attached to the floor's one session,
/// as a world's clients are to theirs.
#[derive(Debug)]
struct FloorSide<C: FloorChannel<Msg>> {
    floor: Bare<Msg, C>,
    sink: Arc<Sink>,
    size: usize,
}

/// A floor of `n` clients, allocated in the order a world seats its clients
/// ([`World::populate`]): each client's channel, then its model client, one client after the
/// other; the caller spawns the receivers once all are seated.
///
/// The order is part of the ratio. At 100k members the broadcast and the receivers chasing it
/// on the other worker are bound by memory, and a floor whose channels lay back to back
/// ([`Bare::new`]) while its clients and tasks lay elsewhere measured 1.3-1.8x slower than
/// the same floor seated like the worlds, with nothing else changed: switchboard then read
/// up to 0.56x its own channel's bare loop, which does a subset of its work.
fn seat<C: FloorChannel<Msg>>(n: usize, capacity: usize) -> (Bare<Msg, C>, Vec<Seated<C>>) {
    let mut senders = Vec::with_capacity(n);
    let mut seated = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = C::channel(capacity);
        senders.push(tx);
        seated.push((Arc::new(Client::new(i, i as u64, Kind::Prompt)), rx));
    }
    (Bare::from_senders(senders), seated)
}

/// One seated floor client and its receiver.
type Seated<C> = (Arc<Client<usize>>, <C as FloorChannel<Msg>>::Rx);

/// `_task` first: it must drop last (parameters drop in reverse order).
async fn floor_receiver<R: Inbox<Msg>>(
    _task: TaskGuard,
    sink: Arc<Sink>,
    client: Arc<Client<usize>>,
    mut rx: R,
) {
    // Unclocked, like FANOUT's worlds' receivers (`Setup::clock_polls`), so both do
    // the same work.
    receiver::prompt(&sink.receipts, &sink.tally, &client, &mut rx).await;
}

impl<C: FloorChannel<Msg, Rx: Inbox<Msg>>> FloorSide<C> {
    fn new(n: usize, ctx: &Ctx, latency: Arc<Recorder>) -> Self {
        let (floor, seated) = seat::<C>(n, ctx.plan.capacity);
        let scope = format!("fanout/{}", floor.name());
        let sink = Arc::new(Sink {
            receipts: Receipts::new(
                scope.clone(),
                ctx.plan.message_size,
                latency,
                Arc::clone(&ctx.violations),
            ),
            scope,
            tally: Tally::default(),
            violations: Arc::clone(&ctx.violations),
            tasks: TaskCount::default(),
            seq: AtomicU64::new(0),
        });
        for (client, rx) in seated {
            // Attached from the start: no broadcast was in flight, so the floor is 0.
            client.ledger().joining(0, 0);
            let task = sink.tasks.enter();
            tokio::spawn(floor_receiver(task, Arc::clone(&sink), client, rx));
        }
        Self {
            floor,
            sink,
            size: ctx.plan.message_size,
        }
    }

    async fn teardown(self) -> Counts {
        let sink = Arc::clone(&self.sink);
        drop(self.floor);
        let stuck = sink.tasks.wait_idle(Duration::from_secs(60)).await;
        let t = sink.tally.snapshot();
        sink.violations.expect(
            stuck == 0 && t.received == t.delivered,
            &format!("{}/teardown", sink.scope),
            || {
                format!(
                    "{stuck} receivers still running; {} of {} messages received",
                    t.received, t.delivered
                )
            },
        );
        t
    }
}

impl<C: FloorChannel<Msg>> Target for FloorSide<C> {
    fn name(&self) -> &'static str {
        self.floor.name()
    }

    fn fire(&self, n: usize) -> Duration {
        // Relaxed: see `seq`.
        let seq = self.sink.seq.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::new(0, seq, EVERYONE, self.size);
        let start = Instant::now();
        let f = self.floor.broadcast(msg);
        let took = start.elapsed();
        let o = Outcome {
            recipients: f.recipients,
            delivered: f.delivered,
            dropped: f.dropped,
            closed: f.closed,
            disconnected: 0,
        };
        self.sink.tally.broadcast(&o);
        check_full_reach(&self.sink.violations, &self.sink.scope, n, &o);
        took
    }

    fn pending(&self) -> u64 {
        let t = &self.sink.tally;
        t.delivered.get().saturating_sub(t.received.get())
    }

    fn violations(&self) -> &Violations {
        &self.sink.violations
    }
}

/// Waits until `target`'s receivers have taken everything; false after a minute.
async fn drained(target: &dyn Target) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut spins = 0u32;
    while target.pending() > 0 {
        if Instant::now() > deadline {
            return false;
        }
        spins += 1;
        if spins % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    true
}

/// Runs the fanout sweep.
pub async fn run(ctx: &Ctx) -> Fanout {
    let recorders: Vec<Arc<Recorder>> = CONTENDERS
        .iter()
        .chain([&OWN_FLOOR])
        .map(|c| Arc::new(Recorder::new("fanout", c)))
        .collect();
    for r in &recorders {
        ctx.timeline.track(r);
    }
    let (start, _) = heap::settle().await;
    let mut rows = Vec::new();
    for &n in &ctx.plan.fanout_sizes {
        ctx.progress.phase(format!(
            "fanout: {n} members, 4 contenders and the own floor"
        ));
        let mut row = size(ctx, n, &recorders).await;
        // After `size` has balanced its messages: the cold runs keep their own checks.
        row.cold = cold::measure(ctx, n).await;
        rows.push(row);
    }
    let heap = ctx.heap_check("fanout/teardown", start).await;
    let mut latency = BTreeMap::new();
    for (name, r) in CONTENDERS.iter().chain([&OWN_FLOOR]).zip(&recorders) {
        ctx.timeline.untrack(r);
        latency.insert(*name, r.summary());
        ctx.absorb(r);
    }
    Fanout {
        rows,
        latency,
        heap,
    }
}

async fn size(ctx: &Ctx, n: usize, recorders: &[Arc<Recorder>]) -> Row {
    let plan = &ctx.plan;
    let load = super::Load {
        layout: Layout::new(n, Some(1), n),
        duration: plan.fanout_time,
    };
    let mut setup = plan.setup("fanout", &load);
    (setup.slow, setup.abrupt) = (0.0, 0.0);
    let mut rng = Rng::new(plan.seed, n as u64);
    let discarded = DISCARDED.get();
    let floor = FloorSide::<Tokio>::new(n, ctx, Arc::clone(&recorders[0]));
    let own = FloorSide::<Own>::new(n, ctx, Arc::clone(&recorders[4]));
    let v = &ctx.violations;
    let sb = World::<SwitchboardRegistry<Msg>>::new(
        setup.clone(),
        Arc::clone(&recorders[1]),
        Arc::clone(v),
    );
    let dm =
        World::<DashMapRegistry<Msg>>::new(setup.clone(), Arc::clone(&recorders[2]), Arc::clone(v));
    let mx = World::<MutexRegistry<Msg>>::new(setup, Arc::clone(&recorders[3]), Arc::clone(v));
    sb.populate(&mut rng);
    dm.populate(&mut rng);
    mx.populate(&mut rng);
    sb.checkpoint("populated").await;
    dm.checkpoint("populated").await;
    mx.checkpoint("populated").await;

    // Warm: the own floor takes its turns with the others, so it is sampled as often and
    // under the same cache conditions as switchboard's broadcast it is set against.
    let warm: [&dyn Target; 5] = [&floor, &*sb, &*dm, &*mx, &own];
    let burst = (SENDS_PER_BURST / n).clamp(1, (plan.capacity / 2).max(1));
    let min_samples = if plan.quick { 5 } else { MIN_SAMPLES };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); warm.len()];
    let mut order = Order::new(plan.seed, n as u64, warm.len());
    let begin = Instant::now();
    while samples[0].len() < min_samples || begin.elapsed() < plan.fanout_time {
        for &i in order.next_round() {
            let target = warm[i];
            for _ in 0..burst {
                samples[i].push(target.fire(n).as_nanos() as f64);
            }
            settle(target).await;
        }
    }
    let count = samples.first().map_or(0, Vec::len);
    let mut cost_ns = BTreeMap::new();
    for (target, xs) in warm.iter().zip(samples.iter_mut()) {
        cost_ns.insert(target.name(), median(xs));
    }
    // Done with it: its receivers would only idle through the bursts.
    let own = own.teardown().await;

    let targets: [&dyn Target; 4] = [&floor, &*sb, &*dm, &*mx];

    // Bursts: back to back, the receivers draining while the broadcaster goes on. Their
    // deliveries wait behind up to a burst's worth of others; that queueing is not what the
    // latency figures are for, so the recorders pause.
    for r in recorders {
        r.pause(true);
    }
    let burst_len = BURST.min(plan.capacity);
    let min_bursts = if plan.quick { 2 } else { MIN_BURSTS };
    let mut bursts: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut order = Order::new(plan.seed, n as u64, targets.len());
    let begin = Instant::now();
    while bursts[0].len() < min_bursts || begin.elapsed() < plan.fanout_time / 2 {
        for &i in order.next_round() {
            let target = targets[i];
            let total: Duration = (0..burst_len).map(|_| target.fire(n)).sum();
            bursts[i].push(total.as_nanos() as f64 / burst_len as f64);
            settle(target).await;
        }
    }
    for r in recorders {
        r.pause(false);
    }
    let burst_samples = bursts.first().map_or(0, Vec::len);
    let mut burst_ns = BTreeMap::new();
    for (target, xs) in targets.iter().zip(bursts.iter_mut()) {
        burst_ns.insert(target.name(), median(xs));
    }
    let floor = floor.teardown().await;
    sb.teardown().await;
    dm.teardown().await;
    mx.teardown().await;
    let counts = [
        (floor, true),
        (own, true),
        sb.balance_entry(),
        dm.balance_entry(),
        mx.balance_entry(),
    ];
    ctx.balance(&format!("fanout/{n}/teardown"), discarded, &counts);
    Row {
        members: n,
        cost_ns,
        samples: count,
        burst_ns,
        burst_samples,
        burst_len,
        cold: BTreeMap::new(),
    }
}

/// Waits for `target`'s receivers to take everything; a violation if they do not.
async fn settle(target: &dyn Target) {
    let ok = drained(target).await;
    target.violations().expect(ok, "fanout", || {
        format!(
            "{}: receivers still had {} messages a minute after a burst",
            target.name(),
            target.pending()
        )
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Scenario};
    use crate::latency::histogram;
    use crate::progress::Progress;
    use crate::scenarios::Plan;
    use crate::timeline::Timeline;

    fn ctx() -> Ctx {
        let cli = Cli::parse_from(["stress", "fanout"]);
        Ctx {
            plan: Plan::new(Scenario::Fanout, &cli.knobs),
            violations: Arc::new(Violations::default()),
            timeline: Timeline::new(),
            progress: Progress::new(0),
            overall: Mutex::new(histogram()),
        }
    }

    /// Violations per group scope.
    fn found(ctx: &Ctx) -> BTreeMap<String, u64> {
        let groups = ctx.violations.groups();
        groups.into_iter().map(|g| (g.scope, g.count)).collect()
    }

    /// A floor's receivers do a world's receivers' work: they check every message against
    /// their client's ledger and its payload, as switchboard's do, not only count it.
    async fn floor_receivers_check_like_a_worlds<C: FloorChannel<Msg, Rx: Inbox<Msg>>>() {
        let ctx = ctx();
        let latency = Arc::new(Recorder::new("fanout", "test"));
        let side = FloorSide::<C>::new(3, &ctx, Arc::clone(&latency));
        let name = side.name();
        let size = ctx.plan.message_size;
        // One of a session the floor's clients never joined, one with a short payload.
        assert_eq!(
            side.floor
                .broadcast(Msg::new(5, 0, EVERYONE, size))
                .delivered,
            3
        );
        assert_eq!(
            side.floor
                .broadcast(Msg::new(0, 1, EVERYONE, size - 1))
                .delivered,
            3
        );
        side.sink.tally.delivered.add(6);
        let t = side.teardown().await;
        assert_eq!(t.received, 6);
        let expected = BTreeMap::from([
            (format!("fanout/{name}/receipt"), 3),
            (format!("fanout/{name}"), 3),
        ]);
        assert_eq!(found(&ctx), expected);
        assert_eq!(latency.summary().count, 6, "every receipt timed");
    }

    thread_local! {
        /// Clients made on this thread before each channel [`Recording`] built.
        static SEEN: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// tokio's channel, noting how many clients existed when each channel was made.
    struct Recording;

    impl FloorChannel<Msg> for Recording {
        type Tx = <Tokio as FloorChannel<Msg>>::Tx;
        type Rx = <Tokio as FloorChannel<Msg>>::Rx;
        const NAME: &'static str = "recording";

        fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
            let made = crate::client::MADE.with(std::cell::Cell::get);
            SEEN.with(|s| s.borrow_mut().push(made));
            <Tokio as FloorChannel<Msg>>::channel(capacity)
        }

        fn try_send(tx: &Self::Tx, msg: Msg) -> Result<(), baselines::floor::Refused<Msg>> {
            <Tokio as FloorChannel<Msg>>::try_send(tx, msg)
        }
    }

    /// A floor seats its clients as a world does: each channel beside its model client, one
    /// client after the other. Floors that built every channel first, their clients after,
    /// measured up to 1.8x slower at 100k members for their layout alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_floor_allocates_each_channel_beside_its_client() {
        let ctx = ctx();
        let latency = Arc::new(Recorder::new("fanout", "test"));
        let before = crate::client::MADE.with(std::cell::Cell::get);
        SEEN.with(|s| s.borrow_mut().clear());
        let side = FloorSide::<Recording>::new(4, &ctx, latency);
        let seen: Vec<usize> = SEEN.with(|s| s.take().iter().map(|m| m - before).collect());
        assert_eq!(seen, [0, 1, 2, 3], "client i made right after channel i");
        side.teardown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_floor_receivers_check_like_a_worlds() {
        floor_receivers_check_like_a_worlds::<Own>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokio_floor_receivers_check_like_a_worlds() {
        floor_receivers_check_like_a_worlds::<Tokio>().await;
    }
}
