//! A deliberately lost wakeup that loom must catch: proof that the channel models
//! in `channel.rs` can fail.
//!
//! A miniature of the channel's receive path done wrong: `poll` checks for a
//! message and only then registers its waker, with no re-check after. A send that
//! lands between the check and the register wakes nobody: the receiver returned
//! `Pending` and no wake ever comes. The channel stores its waker first and then
//! parks with a CAS that fails while a message is queued or on its way
//! (`Channel::poll_recv`).
//!
//! The receiver polls once with a waker that records being woken, rather than
//! blocking: in the channel models a lost wakeup blocks `block_on` forever, which
//! loom reports as a deadlock, but loom aborts the process on that report, which
//! a `should_panic` test cannot observe.
//!
//! loom-only: on real threads the window is a few instructions wide.
#![cfg(switchboard_loom)]

use std::sync::atomic::AtomicBool as StdFlag;
use std::task::{Context, Poll, Wake, Waker};

use loom::future::AtomicWaker;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom_tests::check;
use loom_tests::thread::spawn;

#[derive(Default)]
struct RacyInbox {
    message: AtomicBool,
    waker: AtomicWaker,
}

impl RacyInbox {
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.message.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // Wrong: registered after the check, and not re-checked.
        self.waker.register_by_ref(cx.waker());
        Poll::Pending
    }
}

/// A waker that records that it was woken. `std` types: bookkeeping outside the
/// model, like the harness's `Cases`.
#[derive(Default)]
struct Woken(StdFlag);

impl Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
#[should_panic(expected = "lost wakeup")]
fn register_after_the_check_loses_the_wakeup() {
    check("canary: register after the check", &[], |_| {
        let inbox = Arc::new(RacyInbox::default());
        let sender = {
            let inbox = Arc::clone(&inbox);
            spawn(move || {
                inbox.message.store(true, Ordering::Release);
                inbox.waker.wake();
            })
        };
        let woken = std::sync::Arc::new(Woken::default());
        let waker = Waker::from(std::sync::Arc::clone(&woken));
        let polled = inbox.poll(&mut Context::from_waker(&waker));
        sender.join().expect("sender panicked");
        if polled.is_pending() {
            assert!(
                woken.0.load(std::sync::atomic::Ordering::SeqCst),
                "lost wakeup: Pending, and the send never woke the receiver"
            );
        }
    });
}
