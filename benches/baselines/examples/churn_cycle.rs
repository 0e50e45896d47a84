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
//!
//! With `transient` as the third argument it runs the stress harness's churn operation
//! instead (`stress churn`, `Op::Transient`), without the harness around it: 100 sessions
//! of 100 residents; register, attach to two sessions, detach from the first, unregister
//! while still in the second, drop the receiver. Collect `churn_cycle::transients*` then.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use baselines::{Contender, DashMapRegistry, MutexRegistry, SwitchboardRegistry};

/// What the benches send; the cycle never sends, but the type sets the channel's.
type Msg = Arc<[u8]>;

const SESSIONS: u64 = 100;
const RESIDENTS: usize = 10;
/// Members of each session in `stress churn` (its default `--members`).
const TRANSIENT_RESIDENTS: usize = 100;
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

/// The stress harness's churn operation, as `cycles` is the bench's.
#[inline(never)]
fn transients<C: Contender<Msg>>(registry: &C, n: u64) {
    for i in 0..n {
        let a = i % SESSIONS;
        // Never `a`: the second room is one to 99 rooms further on.
        let b = (a + 1 + (i * 37) % (SESSIONS - 1)) % SESSIONS;
        let (id, inbox) = registry.register();
        assert!(registry.attach(id, a));
        assert!(registry.attach(id, b));
        assert!(registry.detach(id, a));
        assert!(registry.unregister(id));
        drop(black_box(inbox));
    }
}

/// Seats `residents` clients in each session, then runs `body` (`cycles` or
/// `transients`): a first pass so that one-off growth (slabs, maps) is not charged
/// to the profile, then the measured one.
fn run<C: Contender<Msg>>(registry: C, n: u64, residents: usize, body: fn(&C, u64)) {
    let seated: Vec<_> = (0..SESSIONS)
        .flat_map(|session| (0..residents).map(move |_| session))
        .map(|session| {
            let (id, inbox) = registry.register();
            assert!(registry.attach(id, session));
            inbox
        })
        .collect();
    body(&registry, n / 10 + 1);
    body(&registry, n);
    assert_eq!(registry.session_count(), SESSIONS as usize);
    drop(seated);
}

/// Runs the shape on one design.
fn shape<C: Contender<Msg>>(registry: C, n: u64, transient: bool) {
    if transient {
        run(registry, n, TRANSIENT_RESIDENTS, transients::<C>);
    } else {
        run(registry, n, RESIDENTS, cycles::<C>);
    }
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
    let transient = match args.next().as_deref() {
        None | Some("cycle") => false,
        Some("transient") => true,
        Some(other) => {
            eprintln!("churn_cycle: unknown shape {other:?}: cycle or transient");
            return ExitCode::from(2);
        }
    };
    match design.as_str() {
        "switchboard" => shape(
            SwitchboardRegistry::<Msg>::with_capacity(CAPACITY),
            n,
            transient,
        ),
        "dashmap" => shape(DashMapRegistry::<Msg>::new(CAPACITY), n, transient),
        "mutex" => shape(MutexRegistry::<Msg>::new(CAPACITY), n, transient),
        other => {
            eprintln!("churn_cycle: unknown design {other:?}: switchboard, dashmap or mutex");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
