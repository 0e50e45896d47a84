//! One client's receiver parking and being woken, over and over, for an instruction profiler:
//! what a delivery costs when every message finds its receiver asleep (as in `stress mixed`,
//! where receivers take about one message per poll).
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release -p baselines --example park_cycle
//! valgrind --tool=callgrind --dump-instr=yes --toggle-collect='park_cycle::cycle*' \
//!     target/release/examples/park_cycle 100000
//! python3 benches/baselines/locked_rmws.py callgrind.out.<pid> 100000
//! ```
//!
//! Each cycle polls the receiver on an empty channel (it parks), sends one message (the send
//! wakes it) and polls again (it takes the message). The waker is a no-op `Arc` waker, so its
//! clone and drop are one reference-count RMW each, as a tokio task's are. Argument: the
//! cycles (default 100 000).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use switchboard::{ClientId, ClientInfo, Receiver, Registry};

/// A waker that wakes nothing: what is measured is the channel's part of a wake.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// The measured cycle; `#[inline(never)]` so callgrind can toggle collection on its name.
#[inline(never)]
fn cycle(
    registry: &Registry<u64>,
    id: ClientId,
    rx: &mut Receiver<u64>,
    cx: &mut Context<'_>,
    n: u64,
) -> Result<(), String> {
    if rx.poll_recv(cx).is_ready() {
        return Err(format!("cycle {n}: a message before the send"));
    }
    registry
        .send(id, black_box(n))
        .map_err(|e| format!("cycle {n}: {e:?}"))?;
    match rx.poll_recv(cx) {
        Poll::Ready(Some(got)) if got == n => Ok(()),
        other => Err(format!("cycle {n}: polled {other:?} after the send")),
    }
}

fn main() -> ExitCode {
    let cycles = match std::env::args().nth(1).map(|s| s.parse::<u64>()) {
        None => 100_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("park_cycle: the cycles must be a number");
            return ExitCode::from(2);
        }
    };
    let registry = Registry::<u64>::new();
    let (id, mut rx) = match registry.register(ClientInfo::new()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("park_cycle: {e}");
            return ExitCode::FAILURE;
        }
    };
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    for n in 0..cycles {
        if let Err(e) = cycle(&registry, id, &mut rx, &mut cx, n) {
            eprintln!("park_cycle: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
