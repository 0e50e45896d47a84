//! The client channel end to end: receivers that poll, senders that wait.
//!
//! Unlike `models.rs`, these scenarios block: the receiver awaits `recv` and senders
//! await `send_timeout` with no deadline, through [`block_on`]. Under loom a wakeup
//! that is never delivered leaves a thread blocked forever, which loom reports as a
//! deadlock, so each model fails on a lost wakeup. They also drive the ring's slot
//! hand-over: laps of a one-slot ring, and the outer slots allocated mid-flight,
//! and the receiver's waker slot, a loom `UnsafeCell` that the channel's state word
//! hands between the receiver and the send or close that wakes it: an access out
//! of turn fails as a causality violation. loom's `block_on` also wakes spuriously,
//! so the receiver is re-polled while its park still stands or a wake is under way.

use std::future::poll_fn;
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
            let registry = registry.clone();
            start.spawn(move || {
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
/// receiver parked (`RX_PARKED`) first; otherwise the park's CAS fails on the
/// closed state and the receiver sees the close itself. Either way `recv` must
/// report the end, and then the close's reason.
#[test]
fn awaiting_receiver_is_woken_by_the_close_alone() {
    check("channel 1b: unregister | recv", &[], |_| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let closer = {
            let registry = registry.clone();
            start.spawn(move || {
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
            let registry = registry.clone();
            start.spawn(move || block_on(registry.send_timeout(id, 2, Duration::MAX)))
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
            let registry = registry.clone();
            start.spawn(move || registry.send(id, msg))
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
            let registry = registry.clone();
            start.spawn(move || block_on(registry.send_timeout(id, 2, Duration::MAX)))
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
                let registry = registry.clone();
                start.spawn(move || block_on(registry.send_timeout(id, 2, Duration::MAX)))
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
            let registry = registry.clone();
            start.spawn(move || {
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
            let registry = registry.clone();
            start.spawn(move || {
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

/// Channel model 7: a send ∥ a receiver that parks.
///
/// A send wakes the receiver only if its permit CAS finds `RX_PARKED`, so the
/// receiver must not park while a send holds a permit it has not pushed yet
/// (that send saw no bit and will not wake it): it takes the message or wakes
/// itself. Two messages, so that the second send also races a park that follows
/// the first receive. A parked receiver that no send wakes blocks `block_on`
/// forever, which loom reports as a deadlock.
#[test]
fn a_send_wakes_a_receiver_that_parked_or_finds_it_not_parked() {
    const FIRST_POLL: &str = "the first poll took the message";
    const AFTER_PENDING: &str = "the receiver returned Pending, then got the message";
    let cases = [FIRST_POLL, AFTER_PENDING];
    check("channel 7: send, send | recv, recv", &cases, |seen| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let sender = {
            let registry = registry.clone();
            start.spawn(move || {
                assert_eq!(registry.send(id, 1), Ok(()));
                assert_eq!(registry.send(id, 2), Ok(()));
            })
        };
        start.wait();
        for expected in [1, 2] {
            let mut polls = 0;
            let got = block_on(poll_fn(|cx| {
                polls += 1;
                rx.poll_recv(cx)
            }));
            assert_eq!(got, Some(expected));
            if expected == 1 {
                seen.hit(if polls == 1 {
                    FIRST_POLL
                } else {
                    AFTER_PENDING
                });
            }
        }
        join(sender);
    });
}

/// Channel model 8: two sends ∥ a receiver that parked before either.
///
/// Only the send whose CAS clears `RX_PARKED` wakes; the other saw no bit. The
/// woken receiver may find the other send's slot first in the ring and not yet
/// written: it must wait for it or wake itself, never park on a permit in use.
/// Both messages arrive.
#[test]
fn two_sends_to_a_parked_receiver_wake_it_once_and_deliver_both() {
    check("channel 8: send | send | parked recv", &[], |_| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let mut senders = Vec::new();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(block_on(poll_fn(|cx| {
                let polled = rx.poll_recv(cx);
                if senders.is_empty() {
                    assert!(polled.is_pending(), "nothing sent yet: it parks");
                    // Both sends start only once the receiver has parked.
                    for msg in [1, 2] {
                        let registry = registry.clone();
                        senders.push(spawn(move || registry.send(id, msg)));
                    }
                }
                polled
            })));
        }
        for sender in senders {
            assert_eq!(join(sender), Ok(()));
        }
        got.sort_unstable();
        assert_eq!(got, [Some(1), Some(2)]);
    });
}

/// Channel model 9: a send and an unregister ∥ a receiver that parks.
///
/// The close wakes the receiver only if it finds `RX_PARKED`; a park after it
/// fails on `CLOSED`. Either way the receiver yields the message if the send was
/// accepted, then the end.
#[test]
fn a_close_ends_a_parking_receiver() {
    const ACCEPTED: &str = "the send came before the close";
    const REFUSED: &str = "the close came first";
    let cases = [ACCEPTED, REFUSED];
    check("channel 9: send | unregister | recv", &cases, |seen| {
        let registry = registry(2);
        let (id, mut rx) = register(&registry);
        let start = StartLine::new(3);
        let sender = {
            let registry = registry.clone();
            start.spawn(move || registry.send(id, 1))
        };
        let closer = {
            let registry = registry.clone();
            start.spawn(move || {
                assert!(registry.unregister(id).is_ok());
            })
        };
        start.wait();
        let got = recv_all(&mut rx);
        join(closer);
        if join(sender).is_ok() {
            seen.hit(ACCEPTED);
            assert_eq!(got, [1]);
        } else {
            seen.hit(REFUSED);
            assert!(got.is_empty());
        }
    });
}

/// Channel model 10: a sender waiting for room ∥ the receiver, on a ring two laps
/// in, whose capacity (3) is not a power of two.
///
/// Six messages sent and received one by one move both indexes to 6, the start of
/// the third lap; then indexes 6 and 7 fill slots 0 and 1. The sender sends index
/// 8 into slot 2, and then index 9, which must wait for a permit and then wrap to
/// slot 0 of the fourth lap, freed by index 6 (a ring sized up to a power of two,
/// as in `ringmask`, would put it in a free fourth slot instead: there the permits,
/// not the slots, bound the queue at 3).
#[test]
fn a_waiting_sender_wraps_a_ring_whose_capacity_is_not_a_power_of_two() {
    check(
        "channel 10: send, send_timeout | recv (capacity 3)",
        &[],
        |_| {
            let registry = registry(3);
            let (id, mut rx) = register(&registry);
            for msg in 0..6 {
                assert_eq!(registry.send(id, msg), Ok(()));
                assert_eq!(rx.try_recv(), Ok(msg));
            }
            assert_eq!(registry.send(id, 6), Ok(()));
            assert_eq!(registry.send(id, 7), Ok(()));
            let start = StartLine::new(2);
            let sender = {
                let registry = registry.clone();
                start.spawn(move || {
                    assert_eq!(registry.send(id, 8), Ok(()), "the third of three");
                    block_on(registry.send_timeout(id, 9, Duration::MAX))
                })
            };
            start.wait();
            let got: Vec<u32> = (0..4)
                .map(|_| block_on(rx.recv()).expect("open channel"))
                .collect();
            assert_eq!(join(sender), Ok(()));
            assert_eq!(got, [6, 7, 8, 9]);
            assert!(rx.try_recv().is_err(), "nothing more was sent");
        },
    );
}
