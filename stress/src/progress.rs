//! Progress: a bar when stdout is a terminal, plain timestamped lines when it is not.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Progress {
    /// Progress over `phases` steps.
    pub fn new(phases: u64) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(phases), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            start: Instant::now(),
        }
    }

    /// A new step begins.
    pub fn phase(&self, what: impl Into<String>) {
        let what = what.into();
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(what);
            }
            None => println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64()),
        }
    }

    /// A line worth keeping on screen.
    pub fn note(&self, what: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(what.as_ref()),
            None => println!(
                "[{:>6.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                what.as_ref()
            ),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
