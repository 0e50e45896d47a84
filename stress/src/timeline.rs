//! Latency percentiles and throughput over time, sampled twice a second for the chart.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::latency::{histogram, Percentiles, Recorder};

/// Sampling period.
pub const PERIOD: Duration = Duration::from_millis(500);

/// One recorder's deliveries during one period.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the run began, at the end of the period.
    pub t: f64,
    /// Scenario.
    pub scenario: &'static str,
    /// Contender.
    pub contender: &'static str,
    /// Latency percentiles of the period, in µs.
    pub latency: Percentiles,
    /// Prompt receipts per second during the period.
    pub rate: f64,
}

#[derive(Debug)]
struct State {
    tracked: Vec<Arc<Recorder>>,
    points: Vec<Point>,
    scratch: Histogram<u64>,
    last: Instant,
}

/// The run's time series.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    state: Mutex<State>,
}

impl Timeline {
    /// An empty timeline starting now; reserves room for a long soak so that sampling does
    /// not allocate while heap checks are watching.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            start: now,
            state: Mutex::new(State {
                tracked: Vec::with_capacity(64),
                points: Vec::with_capacity(16_384),
                scratch: histogram(),
                last: now,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panic elsewhere cannot tear it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seconds since the run began.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Samples `recorder` from now on.
    pub fn track(&self, recorder: &Arc<Recorder>) {
        self.lock().tracked.push(Arc::clone(recorder));
    }

    /// Takes a last sample of `recorder` and stops sampling it.
    pub fn untrack(&self, recorder: &Arc<Recorder>) {
        self.tick();
        self.lock().tracked.retain(|r| !Arc::ptr_eq(r, recorder));
    }

    /// Harvests every tracked recorder into one point each.
    pub fn tick(&self) {
        let t = self.elapsed();
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = Instant::now();
        let period = now.duration_since(state.last).as_secs_f64().max(1e-3);
        state.last = now;
        for recorder in &state.tracked {
            state.scratch.reset();
            recorder.harvest(&mut state.scratch);
            if state.scratch.is_empty() || state.points.len() == state.points.capacity() {
                continue;
            }
            state.points.push(Point {
                t,
                scenario: recorder.scenario,
                contender: recorder.contender,
                latency: Percentiles::of(&state.scratch),
                rate: state.scratch.len() as f64 / period,
            });
        }
    }

    /// Samples every [`PERIOD`] until `stop` says so.
    pub async fn sample(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.tick(),
                _ = stop.changed() => return,
            }
        }
    }

    /// The points so far.
    pub fn points(&self) -> Vec<Point> {
        self.lock().points.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_turns_each_busy_recorder_into_a_point() {
        let timeline = Timeline::new();
        let busy = Arc::new(Recorder::new("s", "busy"));
        let idle = Arc::new(Recorder::new("s", "idle"));
        timeline.track(&busy);
        timeline.track(&idle);
        busy.record(10_000);
        busy.record(30_000);
        timeline.tick();
        let points = timeline.points();
        assert_eq!(points.len(), 1, "idle recorders add no point");
        assert_eq!(points[0].contender, "busy");
        assert_eq!(points[0].latency.count, 2);
        assert!(points[0].rate > 0.0);
        timeline.untrack(&busy);
        busy.record(5);
        timeline.tick();
        assert_eq!(
            timeline.points().len(),
            1,
            "untracked recorders are not sampled"
        );
    }
}
