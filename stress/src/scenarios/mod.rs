//! The scenarios, the plan that sizes them, and what they share.

pub mod churn;
pub mod cold;
pub mod fanout;
pub mod load;
pub mod memory;
pub mod mixed;
pub mod soak;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::{Knobs, Policy, Scenario};
use crate::heap;
use crate::invariants::{heap_returned, message_balance, Balance, Violations};
use crate::latency::Recorder;
use crate::layout::Layout;
use crate::message::DISCARDED;
use crate::progress::Progress;
use crate::rng::Rng;
use crate::tally::Counts;
use crate::timeline::Timeline;
use crate::world::Setup;

/// A late receiver's pause after each message.
const LATE_PAUSE: Duration = Duration::from_millis(20);

/// A phase with clients under load: how many, how dealt, for how long.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    /// Initial membership.
    pub layout: Layout,
    /// Measured time per contender (soak: in total).
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Everything a run will do, resolved from the command line.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// What was asked for.
    pub scenario: Scenario,
    /// CI mode.
    pub quick: bool,
    /// Tokio worker threads, and driver tasks.
    pub workers: usize,
    /// Channel capacity.
    pub capacity: usize,
    /// switchboard's slow-consumer policy.
    pub policy: Policy,
    /// Payload bytes.
    pub message_size: usize,
    /// Share of slow consumers.
    pub slow: f64,
    /// Share of abrupt disconnects.
    pub abrupt: f64,
    /// Seed.
    pub seed: u64,
    /// Session sizes the fanout sweeps.
    pub fanout_sizes: Vec<usize>,
    /// Time spent broadcasting at each size, all contenders together.
    #[serde(serialize_with = "seconds")]
    pub fanout_time: Duration,
    /// Members of the large session in the join-cost measurement.
    pub join_big: usize,
    /// Rounds of the join-cost measurement.
    pub join_rounds: usize,
    /// Churn's background and duration.
    pub churn: Load,
    /// Mixed's population and duration.
    pub mixed: Load,
    /// Clients in the memory measurement.
    pub memory_clients: usize,
    /// Whether memory is also measured at 1M clients.
    pub million: bool,
    /// Soak's population and duration.
    pub soak: Load,
    /// Time between checkpoints.
    #[serde(serialize_with = "seconds")]
    pub checkpoint_every: Duration,
}

impl Plan {
    /// Resolves the knobs for `scenario`.
    pub fn new(scenario: Scenario, k: &Knobs) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let q = k.quick;
        let clients = |default: usize| k.clients.map_or(default, |c| c as usize);
        let layout = |n: usize| Layout::new(n, k.sessions.map(|s| s as usize), k.members as usize);
        let load = |n: usize, all: f64, quick: f64| Load {
            layout: layout(clients(n)),
            duration: k
                .duration
                .unwrap_or(Duration::from_secs_f64(if q { quick } else { all })),
        };
        let soak_alone = scenario == Scenario::Soak;
        Self {
            scenario,
            quick: q,
            workers: k.workers.map_or(cpus, |w| w as usize),
            capacity: k.capacity as usize,
            policy: k.policy,
            message_size: k.message_size as usize,
            slow: k.slow,
            abrupt: k.abrupt,
            seed: k.seed,
            fanout_sizes: if q {
                vec![100, 1_000, 100_000]
            } else {
                vec![10, 100, 1_000, 10_000, 100_000]
            },
            fanout_time: Duration::from_secs_f64(if q { 0.6 } else { 1.5 }),
            join_big: 100_000,
            join_rounds: if q { 3 } else { 7 },
            churn: load(10_000, 2.5, 0.8),
            mixed: load(10_000, 4.0, 1.2),
            memory_clients: clients(100_000),
            million: k.million,
            soak: if soak_alone {
                load(100_000, 60.0, 20.0)
            } else if q {
                load(20_000, 2.0, 2.0)
            } else {
                load(100_000, 8.0, 8.0)
            },
            checkpoint_every: Duration::from_secs(1),
        }
    }

    /// Whether `which` runs.
    pub fn runs(&self, which: Scenario) -> bool {
        self.scenario == which || self.scenario == Scenario::All
    }

    /// Progress steps the run will take.
    pub fn phases(&self) -> u64 {
        let mut n = 0;
        if self.runs(Scenario::Fanout) {
            n += self.fanout_sizes.len() as u64;
        }
        if self.runs(Scenario::Churn) {
            n += 6;
        }
        if self.runs(Scenario::Mixed) {
            n += 3;
        }
        if self.runs(Scenario::Memory) {
            n += if self.million { 8 } else { 4 };
        }
        if self.runs(Scenario::Soak) {
            n += 1;
        }
        n
    }

    /// World settings for `scenario` with `load`.
    pub fn setup(&self, scenario: &'static str, load: &Load) -> Setup {
        Setup {
            scenario,
            capacity: self.capacity,
            policy: self.policy,
            message_size: self.message_size,
            layout: load.layout,
            slow: self.slow,
            abrupt: self.abrupt,
            abrupt_window: load.duration,
            late_pause: LATE_PAUSE,
            clock_polls: false,
        }
    }
}

/// What every scenario gets.
#[derive(Debug)]
pub struct Ctx {
    /// The plan.
    pub plan: Plan,
    /// Violations of the whole run.
    pub violations: Arc<Violations>,
    /// Time series of the whole run.
    pub timeline: Arc<Timeline>,
    /// Progress display.
    pub progress: Progress,
    /// switchboard's delivery latencies over every scenario.
    pub overall: Mutex<Histogram<u64>>,
}

/// Live heap at a scenario's start and end.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HeapCheck {
    /// Before anything of the scenario existed.
    pub start: i64,
    /// After everything of it was dropped.
    pub end: i64,
    /// What the pending frees released at teardown held (`heap::settle`); not counted
    /// in `end`.
    pub pending_frees: i64,
}

impl Ctx {
    /// Adds a switchboard recorder's total into [`overall`](Self::overall); ignores others.
    pub fn absorb(&self, recorder: &Recorder) {
        if recorder.contender == "switchboard" {
            recorder.add_total_to(&mut self.overall.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Checks that every message handle made since `discarded_at_start` was read from
    /// [`DISCARDED`] ended, received or discarded; `counts` are the worlds' final counts, each
    /// with whether its design clones for every recipient it reports.
    pub fn balance(&self, scope: &str, discarded_at_start: u64, counts: &[(Counts, bool)]) {
        let mut b = Balance {
            discarded: DISCARDED.get() - discarded_at_start,
            ..Balance::default()
        };
        for (c, exact) in counts {
            if !exact {
                b.uncloned_max += c.closed;
            }
            b.broadcasts += c.broadcasts;
            b.directs += c.directs;
            b.recipients += c.recipients;
            b.received += c.received;
        }
        let verdict = message_balance(&b);
        self.violations
            .expect(verdict.is_ok(), scope, || verdict.err().unwrap_or_default());
    }

    /// Checks that live heap came back to `start` once the pending frees ran
    /// (`heap::settle`), under `scope`.
    pub async fn heap_check(&self, scope: &str, start: i64) -> HeapCheck {
        let (end, pending_frees) = heap::settle().await;
        let verdict = heap_returned(start, end);
        self.violations
            .expect(verdict.is_ok(), scope, || verdict.err().unwrap_or_default());
        HeapCheck {
            start,
            end,
            pending_frees,
        }
    }
}

/// Runs a scenario (or one contender's part of it) as its own task, so that a panic (in the
/// registry, say) is reported as a violation and the rest of the run goes on.
pub async fn isolated<T, F>(
    ctx: &Arc<Ctx>,
    name: &str,
    scenario: impl FnOnce(Arc<Ctx>) -> F,
) -> Option<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    match tokio::spawn(scenario(Arc::clone(ctx))).await {
        Ok(result) => Some(result),
        Err(e) => {
            ctx.violations
                .push(name, format!("the scenario did not finish: {e}"));
            None
        }
    }
}

/// The order in which the contenders take their turns, drawn afresh every round.
///
/// Every contender takes one turn per round, so all are sampled equally often and at the
/// same times: a machine whose load changes mid-run changes it for all of them. A fixed
/// rotation would have each contender follow the same one almost every time (in fanout,
/// switchboard the tokio floor and the own floor the mutex design), each finding the
/// caches and the allocator as that one's turn and its receivers left them; a shuffled
/// order gives every contender every predecessor alike.
#[derive(Debug)]
pub struct Order {
    rng: Rng,
    turns: Vec<usize>,
}

impl Order {
    /// An order of `contenders` turns, seeded from the run's seed and `stream` (the session
    /// size in fanout).
    pub fn new(seed: u64, stream: u64, contenders: usize) -> Self {
        Self {
            rng: Rng::new(seed, !stream),
            turns: (0..contenders).collect(),
        }
    }

    /// The next round: every contender once, in a fresh random order (Fisher-Yates).
    pub fn next_round(&mut self) -> &[usize] {
        for i in (1..self.turns.len()).rev() {
            let j = self.rng.below(i + 1);
            self.turns.swap(i, j);
        }
        &self.turns
    }
}

/// The median of `xs` (0 when empty).
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// `a / b`, or `None` when either is missing or `b` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn ratios_refuse_missing_or_zero() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn soak_alone_defaults_to_a_minute_and_100k_clients() {
        let cli = crate::cli::Cli::parse_from(["stress", "soak"]);
        let plan = Plan::new(Scenario::Soak, &cli.knobs);
        assert_eq!(plan.soak.duration, Duration::from_secs(60));
        assert_eq!(plan.soak.layout.clients, 100_000);
        assert!(plan.runs(Scenario::Soak) && !plan.runs(Scenario::Fanout));
        let quick = crate::cli::Cli::parse_from(["stress", "--quick", "--duration", "2s"]);
        let plan = Plan::new(Scenario::All, &quick.knobs);
        assert_eq!(plan.mixed.duration, Duration::from_secs(2));
        assert_eq!(plan.fanout_sizes, [100, 1_000, 100_000]);
    }

    #[test]
    fn every_contender_follows_every_other_alike() {
        let contenders = 5;
        let mut order = Order::new(7, 100_000, contenders);
        let mut follows = vec![vec![0u32; contenders]; contenders];
        let mut turns = vec![0u32; contenders];
        let mut last = None;
        for _ in 0..400 {
            let round = order.next_round().to_vec();
            let mut sorted = round.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..contenders).collect::<Vec<_>>(), "one turn each");
            for i in round {
                turns[i] += 1;
                if let Some(before) = last.replace(i) {
                    follows[i][before] += 1;
                }
            }
        }
        assert!(turns.iter().all(|&t| t == 400));
        // 1 999 successions over 20 ordered pairs: about 100 each. A fixed rotation gives
        // one predecessor about 80 % of the time and leaves most pairs at 0.
        for (i, row) in follows.iter().enumerate() {
            for (before, &n) in row.iter().enumerate() {
                if i != before {
                    assert!((60..=140).contains(&n), "{i} after {before}: {n} times");
                }
            }
        }
    }
}
