//! One client's life, over and over, for an instruction profiler: register, attach to one of
//! 100 sessions of 10 residents, detach, unregister, drop the receiver (the `churn` bench's
//! cycle, without criterion around it).
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release -p baselines --example churn_cycle
//! valgrind --tool=callgrind --toggle-collect='churn_cycle::cycles*' \
//!     target/release/examples/churn_cycle switchboard 20000
//! ```
//!
//! `cycles` is the only function collected, so setup and teardown stay out of the counts;
//! divide by the cycle count for instructions per cycle. The design is the first argument
//! (`switchboard`, `dashmap` or `mutex`), the cycle count the second (default 20 000).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use baselines::{Contender, DashMapRegistry, MutexRegistry, SwitchboardRegistry};

/// What the benches send; the cycle never sends, but the type sets the channel's.
type Msg = Arc<[u8]>;

const SESSIONS: u64 = 100;
const RESIDENTS: usize = 10;
/// switchboard's default channel capacity, as in the benches.
const CAPACITY: usize = 32;

/// The measured loop; `#[inline(never)]` so callgrind can toggle collection on its name.
#[inline(never)]
fn cycles<C: Contender<Msg>>(registry: &C, n: u64) {
    for i in 0..n {
        let session = i % SESSIONS;
        let (id, inbox) = registry.register();
        assert!(registry.attach(id, session));
        assert!(registry.detach(id, session));
        assert!(registry.unregister(id));
        drop(black_box(inbox));
    }
}

fn run<C: Contender<Msg>>(registry: C, n: u64) {
    let residents: Vec<_> = (0..SESSIONS)
        .flat_map(|session| (0..RESIDENTS).map(move |_| session))
        .map(|session| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, session));
            inbox
        })
        .collect();
    // A first pass so that one-off growth (slabs, maps) is not charged to the profile.
    cycles(&registry, n / 10 + 1);
    cycles(&registry, n);
    assert_eq!(registry.session_count(), SESSIONS as usize);
    drop(residents);
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let design = args.next().unwrap_or_else(|| "switchboard".into());
    let n = match args.next().map(|s| s.parse::<u64>()) {
        None => 20_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("churn_cycle: the cycle count must be a number: {e}");
            return ExitCode::from(2);
        }
    };
    match design.as_str() {
        "switchboard" => run(SwitchboardRegistry::<Msg>::with_capacity(CAPACITY), n),
        "dashmap" => run(DashMapRegistry::<Msg>::new(CAPACITY), n),
        "mutex" => run(MutexRegistry::<Msg>::new(CAPACITY), n),
        other => {
            eprintln!("churn_cycle: unknown design {other:?}: switchboard, dashmap or mutex");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
