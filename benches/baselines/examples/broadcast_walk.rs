//! Warm broadcasts to one session of N members, against the own-channel floor, for an
//! instruction profiler: what the registry adds per recipient beyond switchboard's own channel
//! (`broadcast_overhead_vs_own_channel_100k` in `stress fanout`).
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release -p baselines --example broadcast_walk
//! valgrind --tool=callgrind --toggle-collect='broadcast_walk::walk*' \
//!     target/release/examples/broadcast_walk switchboard 100000 5     # or own_floor
//! ```
//!
//! `walk` is the only function collected: the broadcasts themselves, not building the clients
//! or draining the receivers between broadcasts (which both sides do alike). Divide by
//! members × rounds for instructions per recipient. Arguments: the side (`switchboard` or
//! `own_floor`), the members (default 100 000) and the broadcasts (default 5).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use baselines::{Contender, Fanout, OwnFloor, SwitchboardRegistry};
use switchboard::Receiver;

/// What the benches send.
type Msg = Arc<[u8]>;

/// switchboard's default channel capacity, as in the benches.
const CAPACITY: usize = 32;

/// The measured broadcast; `#[inline(never)]` so callgrind can toggle collection on its name.
#[inline(never)]
fn walk(broadcast: &impl Fn(Msg) -> Fanout, msg: &Msg) -> Fanout {
    broadcast(black_box(msg.clone()))
}

fn rounds(
    broadcast: impl Fn(Msg) -> Fanout,
    inboxes: &mut [Receiver<Msg>],
    rounds: u64,
) -> Result<(), String> {
    let msg: Msg = Arc::from(vec![0u8; 64]);
    // A first, uncounted round: every queue's ring is allocated by its receiver once it has
    // taken a message or two, so the counted rounds are warm, as in `stress fanout`.
    for round in 0..=rounds {
        let fanout = if round == 0 {
            broadcast(msg.clone())
        } else {
            walk(&broadcast, &msg)
        };
        if fanout.delivered != inboxes.len() {
            return Err(format!(
                "round {round}: {} delivered of {}",
                fanout.delivered,
                inboxes.len()
            ));
        }
        for inbox in inboxes.iter_mut() {
            while inbox.try_recv().is_ok() {}
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let side = args.next().unwrap_or_else(|| "switchboard".into());
    let mut numbers = args.map(|s| s.parse::<u64>());
    let (members, n) = match (numbers.next(), numbers.next()) {
        (Some(Ok(m)), Some(Ok(n))) => (m, n),
        (Some(Ok(m)), None) => (m, 5),
        (None, _) => (100_000, 5),
        _ => {
            eprintln!("broadcast_walk: members and broadcasts must be numbers");
            return ExitCode::from(2);
        }
    };
    let Ok(members) = usize::try_from(members) else {
        eprintln!("broadcast_walk: {members} members do not fit this machine");
        return ExitCode::from(2);
    };
    let result = match side.as_str() {
        "switchboard" => {
            let registry = SwitchboardRegistry::<Msg>::with_capacity(CAPACITY);
            let mut inboxes: Vec<_> = (0..members)
                .map(|_| {
                    let (id, inbox) = registry.register();
                    assert!(registry.attach(id, 0));
                    inbox
                })
                .collect();
            rounds(|msg| registry.broadcast(0, msg), &mut inboxes, n)
        }
        "own_floor" => {
            let (floor, mut inboxes) = OwnFloor::<Msg>::new(members, CAPACITY);
            rounds(|msg| floor.broadcast(msg), &mut inboxes, n)
        }
        other => Err(format!("unknown side {other:?}: switchboard or own_floor")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broadcast_walk: {e}");
            ExitCode::FAILURE
        }
    }
}
