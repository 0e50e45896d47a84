//! The client lock that lives in the slot word (`src/sync/slot_cell.rs`, "The lock
//! bit"): a client's own calls take the bit instead of an epoch pin and a lock of
//! their own, readers mask it out, and a departure waits for it before it empties
//! the slot. Each scenario is a loom model under `--cfg switchboard_loom` and a
//! multi-threaded smoke test otherwise (see `loom_tests::check`).
//!
//! What each model would catch, seen failing with the protocol broken on purpose
//! (see the branch's report): a vacate that does not wait for the bit lets the
//! holder's unlock put the departed entry back in its slot (L1, L3: the client is
//! online again after its unregister returned); a reader that does not mask the bit
//! dereferences a misaligned pointer (L2); a lock or unlock without its
//! `Acquire`/`Release` lets two holders' accesses to the client's state race (all
//! three: loom reports the unsynchronised access).

use loom_tests::{check, drain, join, register, registry, StartLine};
use switchboard::{ClientError, ClientInfo, SendError, SessionId, TryRecvError};

const ROOM: u64 = 7;

/// Model L1: attach ∥ unregister of the same client.
///
/// The attach holds the slot's lock bit while it joins; the unregister takes the
/// bit to mark the client leaving, then empties the slot, waiting for the bit if
/// the attach holds it then. Either the attach came first (and the report lists
/// the room) or it found the client gone; either way the client is gone for good
/// once both returned: not online, in no room, its slot free for the next one.
#[test]
fn an_attach_racing_an_unregister_leaves_the_client_gone() {
    const ATTACHED: &str = "attach came first";
    const GONE: &str = "attach found the client gone";
    check("L1 attach | unregister", &[ATTACHED, GONE], |seen| {
        let registry = registry(2);
        let (a, mut rx) = register(&registry);
        let start = StartLine::new(2);
        let attacher = {
            let registry = registry.clone();
            start.spawn(move || registry.attach(a, ROOM))
        };
        start.wait();
        let report = registry
            .unregister(a)
            .expect("only this thread unregisters a");
        let attached = join(attacher);
        let reported = report.sessions.contains(&SessionId::from(ROOM));
        match attached {
            Ok(true) => {
                assert!(reported, "attached, yet not in the report: {report:?}");
                seen.hit(ATTACHED);
            }
            Err(e) => {
                assert_eq!(e, ClientError::Gone(a).into());
                assert!(!reported, "{report:?}");
                seen.hit(GONE);
            }
            Ok(false) => panic!("a was in no room"),
        }
        assert!(!registry.is_online(a), "the unregistered client is back");
        assert_eq!(registry.client_count(), 0);
        assert_eq!(registry.session_count(), 0, "{:?}", registry.session_ids());
        assert!(matches!(registry.send(a, 9), Err(SendError::Unknown(9, _))));
        assert_eq!(drain(&mut rx), (vec![], TryRecvError::Closed));
        // The slot is free, and free once: its next occupant is a new client.
        let (b, _rx_b) = register(&registry);
        assert_ne!(a, b);
        assert_eq!(registry.client_count(), 1);
    });
}

/// Model L2: a direct send ∥ an attach that holds the slot's lock bit ∥ the
/// unregister.
///
/// The send reads the slot while the attach may hold its bit: it must mask the
/// bit out and find the entry. It either queues before the close (the receiver
/// yields the message, then the end), finds the channel closed, or finds the
/// client gone; it never reaches anything else, and nothing stays behind.
#[test]
fn a_send_reads_through_a_locked_slot() {
    const SENT: &str = "the send queued before the close";
    const CLOSED: &str = "the send found the channel closed";
    const GONE: &str = "the send found the client gone";
    check(
        "L2 send | attach | unregister",
        &[SENT, CLOSED, GONE],
        |seen| {
            let registry = registry(2);
            let (a, mut rx) = register(&registry);
            let start = StartLine::new(3);
            let attacher = {
                let registry = registry.clone();
                start.spawn(move || {
                    // Ok or Gone; L1 checks which agrees with the report.
                    let _ = registry.attach(a, ROOM);
                })
            };
            let sender = {
                let registry = registry.clone();
                start.spawn(move || registry.send(a, 1))
            };
            start.wait();
            let _gone = registry
                .unregister(a)
                .expect("only this thread unregisters a");
            join(attacher);
            let sent = join(sender);
            let (got, end) = drain(&mut rx);
            assert_eq!(end, TryRecvError::Closed);
            match sent {
                Ok(()) => {
                    assert_eq!(got, [1], "an accepted message is delivered");
                    seen.hit(SENT);
                }
                Err(SendError::Closed(1)) => {
                    assert!(got.is_empty());
                    seen.hit(CLOSED);
                }
                Err(SendError::Unknown(1, ClientError::Gone(id))) => {
                    assert_eq!(id, a);
                    assert!(got.is_empty());
                    seen.hit(GONE);
                }
                other => panic!("the send ended with {other:?}"),
            }
            assert!(!registry.is_online(a));
            assert_eq!(registry.session_count(), 0, "{:?}", registry.session_ids());
        },
    );
}

/// Model L3: a takeover ∥ the old connection's detach from its room, with
/// `takeover_moves_sessions`.
///
/// The takeover's departure takes the old connection's bit, takes its rooms and
/// empties its slot, while the detach takes the same bit. Either the detach came
/// first (the room did not move and is gone) or it found the old connection gone
/// (the room moved to the new one); the old connection is never back online.
#[test]
fn a_takeover_racing_a_detach_moves_the_room_or_not_once() {
    const KEY: &str = "k";
    const DETACHED: &str = "the detach came first: the room did not move";
    const MOVED: &str = "the takeover came first: the room moved";
    check("L3 takeover | detach", &[DETACHED, MOVED], |seen| {
        let registry: switchboard::Registry<u32> = switchboard::Registry::builder()
            .shards(1)
            .takeover_moves_sessions(true)
            .build()
            .expect("valid settings");
        let (old, _old_rx) = registry
            .register(ClientInfo::new().with_key(KEY))
            .expect("room");
        assert_eq!(registry.attach(old, ROOM), Ok(true));
        let start = StartLine::new(2);
        let newcomer = {
            let registry = registry.clone();
            start.spawn(move || {
                registry
                    .register(ClientInfo::new().with_key(KEY))
                    .expect("room")
            })
        };
        start.wait();
        let detached = registry.detach(old, ROOM);
        let (new, _new_rx) = join(newcomer);
        match detached {
            Ok(()) => {
                assert!(registry.members(ROOM).is_err(), "a detached room moved");
                seen.hit(DETACHED);
            }
            Err(e) => {
                assert_eq!(e, ClientError::Gone(old).into());
                assert_eq!(registry.members(ROOM).ok(), Some(vec![new]));
                seen.hit(MOVED);
            }
        }
        assert!(!registry.is_online(old), "the old connection is back");
        assert_eq!(registry.id_of(KEY), Some(new));
        assert_eq!(registry.client_count(), 1);
    });
}
