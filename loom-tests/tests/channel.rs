//! The client channel end to end: receivers that poll, senders that wait.
//!
//! Unlike `models.rs`, these scenarios block: the receiver awaits `recv` and senders
//! await `send_timeout` with no deadline, through [`block_on`]. Under loom a wakeup
//! that is never delivered leaves a thread blocked forever, which loom reports as a
//! deadlock, so each model fails on a lost wakeup. They also drive the ring's slot
//! hand-over: laps of a one-slot ring, and the outer slots allocated mid-flight.

use std::time::Duration;

use loom_tests::thread::spawn;
use loom_tests::{block_on, check, join, register, registry, StartLine};
use switchboard::{CloseReason, Receiver, SendError};

/// Everything `recv` yields until it reports the end.
fn recv_all(rx: &mut Receiver<u32>) -> Vec<u32> {
    block_on(async {
        let mut got = Vec::new();
        while let Some(msg) = rx.recv().await {
            got.push(msg);
        }
        got
    })
}

/// Channel model 1: send, then unregister ∥ a receiver awaiting `recv`.
///
/// The receiver must be woken for the message and again for the close, and yield
/// the message before the end.
#[test]
fn awaiting_receiver_gets_the_message_then_the_end() {
    check("channel 1: send, unregister | recv", &[], |_| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let sender = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                assert_eq!(registry.send(id, 1), Ok(()));
                assert!(registry.unregister(id).is_ok());
            })
        };
        start.wait();
        assert_eq!(recv_all(&mut rx), [1]);
        join(sender);
    });
}

/// Channel model 1b: unregister ∥ a receiver awaiting `recv` on an empty channel.
///
/// Only the close can end the wait, and the close wakes the receiver only if the
/// receiver announced its waker (`RX_WAKER`) first; otherwise the receiver's
/// re-check must see the close. Either way `recv` must report the end, and then
/// the close's reason.
#[test]
fn awaiting_receiver_is_woken_by_the_close_alone() {
    check("channel 1b: unregister | recv", &[], |_| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let closer = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                assert!(registry.unregister(id).is_ok());
            })
        };
        start.wait();
        assert!(recv_all(&mut rx).is_empty());
        // The reason is written after the closing RMW; the end must not outrun it.
        assert_eq!(rx.close_reason(), Some(&CloseReason::Unregistered));
        join(closer);
    });
}

/// Channel model 2: a sender waiting for room in a one-slot ring ∥ the receiver.
///
/// The ring is full; the sender awaits `send_timeout` with no deadline, so it must
/// be woken when the receive frees the slot. The slot laps: the receiver's free of
/// index 0 is handed to the sender's write of index 1.
#[test]
fn waiting_sender_is_woken_by_a_receive() {
    check("channel 2: send_timeout | recv", &[], |_| {
        let registry = registry(1);
        let (id, mut rx) = register(&registry);
        assert_eq!(registry.send(id, 1), Ok(()), "fills the ring");
        let start = StartLine::new(2);
        let waiting = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                block_on(registry.send_timeout(id, 2, Duration::MAX))
            })
        };
        start.wait();
        let got: Vec<u32> = (0..2)
            .map(|_| block_on(rx.recv()).expect("open channel"))
            .collect();
        assert_eq!(join(waiting), Ok(()));
        assert_eq!(got, [1, 2]);
        assert!(rx.try_recv().is_err(), "nothing more was sent");
    });
}

/// Channel model 5: two senders ∥ a receiver on a two-slot ring.
///
/// The senders claim ring indexes concurrently; the receiver frees the first slot
/// while they may lap onto it. Every accepted message arrives exactly once, in
/// each sender's order, and a refused one is given back as `Full`.
#[test]
fn concurrent_sends_into_a_lapping_ring() {
    const BOTH: &str = "both sends were accepted";
    const ONE_FULL: &str = "one send found the ring full";
    let cases = [BOTH, ONE_FULL];
    check("channel 5: send | send | recv", &cases, |seen| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        assert_eq!(registry.send(id, 1), Ok(()), "index 0; the next ones lap");
        let start = StartLine::new(3);
        let spawn_send = |msg: u32| {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                registry.send(id, msg)
            })
        };
        let (two, three) = (spawn_send(2), spawn_send(3));
        start.wait();
        assert_eq!(block_on(rx.recv()), Some(1));
        let sent = [join(two), join(three)];
        let mut accepted: Vec<u32> = Vec::new();
        for (msg, outcome) in [2, 3].into_iter().zip(sent) {
            match outcome {
                Ok(()) => accepted.push(msg),
                Err(SendError::Full(back)) => assert_eq!(back, msg),
                Err(other) => panic!("send of {msg} failed with {other:?}"),
            }
        }
        seen.hit(if accepted.len() == 2 { BOTH } else { ONE_FULL });
        let mut got = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            got.push(msg);
        }
        got.sort_unstable();
        assert_eq!(got, accepted);
    });
}

/// Channel model 3: a sender waiting for room ∥ the client's unregister.
///
/// Nothing drains the full ring, so only the close can end the wait: the sender
/// must be woken by it and get its message back as `Closed` (or, if the unregister
/// came first, find the client gone and get it back as `Unknown`).
#[test]
fn waiting_sender_is_woken_by_the_close() {
    const CLOSED: &str = "the sender found the channel full, then closed";
    const GONE: &str = "the unregister came before the send resolved the id";
    let cases = [CLOSED, GONE];
    check("channel 3: send_timeout | unregister", &cases, |seen| {
        let registry = registry(1);
        let (id, mut rx) = register(&registry);
        assert_eq!(registry.send(id, 1), Ok(()), "fills the ring");
        let start = StartLine::new(2);
        let waiting = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                block_on(registry.send_timeout(id, 2, Duration::MAX))
            })
        };
        start.wait();
        assert!(registry.unregister(id).is_ok());
        match join(waiting) {
            Err(SendError::Closed(2)) => seen.hit(CLOSED),
            Err(SendError::Unknown(2, _)) => seen.hit(GONE),
            other => panic!("the waiting send ended with {other:?}"),
        }
        assert_eq!(recv_all(&mut rx), [1], "the accepted message survives");
    });
}

/// Channel model 3b: a sender waiting on a full ring ∥ the receiver's drop.
///
/// The drop closes the channel without the wake of its own waker that `close`
/// does, and without any RMW when a close came first; the waiting sender must
/// still be woken by it and get its message back as `Closed`.
#[test]
fn waiting_sender_is_woken_by_the_receivers_drop() {
    const CLOSED: &str = "the send ended as closed";
    check(
        "channel 3b: send_timeout | receiver drop",
        &[CLOSED],
        |seen| {
            let registry = registry(1);
            let (id, rx) = register(&registry);
            assert_eq!(registry.send(id, 1), Ok(()), "fills the ring");
            let start = StartLine::new(2);
            let waiting = {
                let (registry, start) = (registry.clone(), start.clone());
                spawn(move || {
                    start.wait();
                    block_on(registry.send_timeout(id, 2, Duration::MAX))
                })
            };
            start.wait();
            drop(rx);
            match join(waiting) {
                Err(SendError::Closed(2)) => seen.hit(CLOSED),
                other => panic!("the waiting send ended with {other:?}"),
            }
            // The closed send may already have unregistered it; either way it goes.
            let _ = registry.unregister(id);
        },
    );
}

/// Channel model 4: a send into the ring's outer slots ∥ the receiver.
///
/// Capacity 5 holds 4 slots inline and 1 outer. With indexes 0 to 3 queued, the
/// next send lands in the outer slot while the receiver, on its second message,
/// allocates the outer slots too: one allocation wins, the value is not lost, and
/// order holds.
#[test]
fn send_into_the_outer_slots_races_their_allocation() {
    check("channel 4: send (outer slot) | recv", &[], |_| {
        let registry = registry(5);
        let (id, mut rx) = register(&registry);
        for msg in 0..4 {
            assert_eq!(registry.send(id, msg), Ok(()));
        }
        let start = StartLine::new(2);
        let sender = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                assert_eq!(registry.send(id, 4), Ok(()));
            })
        };
        start.wait();
        let got: Vec<u32> = (0..5)
            .map(|_| block_on(rx.recv()).expect("open channel"))
            .collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        join(sender);
    });
}

/// Channel model 6: a send ∥ the receiver's own thread sending, then `try_recv`.
///
/// The other sender may claim slot 0 and be preempted before writing it, while
/// the receiver's thread fills slot 1. Its `try_recv` comes after its own send
/// returned, so it must get a message, never `Empty`: a claimed, unwritten slot
/// is a send in progress, which `try_recv` waits for.
#[test]
fn try_recv_never_reports_empty_behind_a_send_in_progress() {
    const OTHER: &str = "the other send came first";
    const OWN: &str = "its own send came first";
    check("channel 6: send | send, try_recv", &[OTHER, OWN], |seen| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let other = {
            let (registry, start) = (registry.clone(), start.clone());
            spawn(move || {
                start.wait();
                assert_eq!(registry.send(id, 1), Ok(()));
            })
        };
        start.wait();
        assert_eq!(registry.send(id, 2), Ok(()));
        let first = rx.try_recv().expect("its own send returned before this");
        seen.hit(if first == 1 { OTHER } else { OWN });
        join(other);
    });
}
