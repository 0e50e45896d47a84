//! The registry's interleavings, driven through its public API.
//!
//! Each test is one scenario: a loom model under `--cfg switchboard_loom`, a
//! multi-threaded smoke test otherwise (see `loom_tests::check`). Each asserts its
//! invariant on what the API returns and what the receivers yield, and names the
//! outcomes loom must reach, so that no model passes by missing its race.

use std::collections::BTreeSet;

use loom_tests::{check, drain, join, linearizations, register, registry, Clock, Span, StartLine};
use switchboard::{
    BroadcastError, BroadcastReport, ClientError, ClientId, ClientInfo, RegisterError, Registry,
    SendError, SessionId, SlowConsumerPolicy, TryRecvError,
};

const ROOM: u64 = 7;

/// `(index, generation)` of an id, from the layout `ClientId` documents.
fn slot_of(id: ClientId) -> (u64, u64) {
    let raw = id.as_u64();
    let index = raw & ((1 << ClientId::INDEX_BITS) - 1);
    let generation = raw >> (ClientId::INDEX_BITS + ClientId::SHARD_BITS);
    (index, generation)
}

fn assert_counts_add_up(report: &BroadcastReport) {
    assert_eq!(
        report.delivered + report.dropped + report.closed + report.disconnected,
        report.recipients,
        "report counts do not add up: {report:?}"
    );
}

/// Model 1: register ∥ unregister ∥ send on a reused slot.
///
/// One shard, so the freed slot is the next one handed out (its free list is LIFO):
/// whichever of the two registrations reserves after the release takes it. A send
/// addressed to the old id either reaches the old client (it resolved before the
/// release and queued before the close) or fails; it never reaches a new occupant.
#[test]
fn stale_id_never_reaches_the_slots_next_occupant() {
    const OLD: u32 = 1;
    const DELIVERED: &str = "old id's send delivered to the old client";
    const GONE: &str = "old id's send refused: gone";
    const CLOSED: &str = "old id's send refused: closed";
    const BY_JOINER: &str = "freed slot taken by the concurrent registration";
    const BY_LEAVER: &str = "freed slot taken by the re-registration";
    let cases = [DELIVERED, GONE, CLOSED, BY_JOINER, BY_LEAVER];
    check("1 register | unregister | send", &cases, |seen| {
        let registry = registry(2);
        let (a, mut rx_a) = register(&registry);
        let start = StartLine::new(3);

        let leaver = {
            let registry = registry.clone();
            start.spawn(move || {
                let gone = registry.unregister(a).expect("a is connected");
                assert_eq!(gone.id, a);
                register(&registry)
            })
        };
        let joiner = {
            let registry = registry.clone();
            start.spawn(move || register(&registry))
        };
        start.wait();
        let sent = registry.send(a, OLD);
        let (b, mut rx_b) = join(leaver);
        let (c, mut rx_c) = join(joiner);

        let case = match sent {
            Ok(()) => DELIVERED,
            Err(SendError::Unknown(OLD, ClientError::Gone(id))) if id == a => GONE,
            Err(SendError::Closed(OLD)) => CLOSED,
            Err(other) => panic!("unexpected send outcome {other:?}"),
        };
        seen.hit(case);
        // The slot was reused, by exactly one of them, under the next generation.
        assert!(a != b && b != c && a != c, "ids {a:?} {b:?} {c:?} alias");
        let (index, generation) = slot_of(a);
        let reusers: Vec<_> = [b, c]
            .into_iter()
            .filter(|id| slot_of(*id).0 == index)
            .collect();
        assert_eq!(reusers.len(), 1, "exactly one registration reuses the slot");
        assert_eq!(slot_of(reusers[0]).1, generation + 1);
        seen.hit(if reusers[0] == c {
            BY_JOINER
        } else {
            BY_LEAVER
        });

        // The old id's message went to a or nowhere; the new ids route to their own.
        assert!(registry.send(b, 20).is_ok());
        assert!(registry.send(c, 30).is_ok());
        let expected_a = if case == DELIVERED { vec![OLD] } else { vec![] };
        assert_eq!(drain(&mut rx_a), (expected_a, TryRecvError::Closed));
        assert_eq!(drain(&mut rx_b), (vec![20], TryRecvError::Empty));
        assert_eq!(drain(&mut rx_c), (vec![30], TryRecvError::Empty));
        assert!(!registry.is_online(a));
        assert_eq!(registry.client_count(), 2);
    });
}

/// Model 2: attach ∥ detach ∥ broadcast on one session.
///
/// `a` starts as the only member; `b` attaches while `a` detaches (which may empty
/// and retire the session, so that `b` creates its successor). The set of clients
/// the broadcast reached must be the membership at some instant within the
/// broadcast's span, for some order of the three calls that agrees with real time;
/// in particular a detach that returned before the broadcast began excludes `a`.
#[test]
fn broadcast_reaches_exactly_one_snapshot() {
    const MSG: u32 = 5;
    const AFTER_DETACH: &str = "detach returned before the broadcast began";
    const NO_SESSION: &str = "found no session";
    let cases = [
        "reached a",
        "reached a and b",
        "reached b",
        "reached nobody in an empty session",
        NO_SESSION,
        AFTER_DETACH,
    ];
    check("2 attach | detach | broadcast", &cases, |seen| {
        let registry = registry(2);
        let (a, mut rx_a) = register(&registry);
        let (b, mut rx_b) = register(&registry);
        assert_eq!(registry.attach(a, ROOM), Ok(true));
        let clock = Clock::new();
        let start = StartLine::new(3);

        let attacher = {
            let (registry, clock) = (registry.clone(), clock.clone());
            start.spawn(move || {
                let (joined, span) = clock.time(|| registry.attach(b, ROOM));
                assert_eq!(joined, Ok(true));
                span
            })
        };
        let detacher = {
            let (registry, clock) = (registry.clone(), clock.clone());
            start.spawn(move || {
                let (left, span) = clock.time(|| registry.detach(a, ROOM));
                assert_eq!(left, Ok(()));
                span
            })
        };
        start.wait();
        let (sent, broadcast) = clock.time(|| registry.broadcast(ROOM, MSG));
        let attach = join(attacher);
        let detach = join(detacher);

        let mut reached = BTreeSet::new();
        for (id, rx) in [(a, &mut rx_a), (b, &mut rx_b)] {
            let (got, _) = drain(rx);
            assert!(got.is_empty() || got == [MSG], "{id:?} got {got:?}");
            if !got.is_empty() {
                reached.insert(id);
            }
        }
        match sent {
            Ok(report) => {
                assert_counts_add_up(&report);
                assert_eq!(report.recipients, reached.len(), "{report:?}");
                assert_eq!(report.delivered, reached.len(), "{report:?}");
                seen.hit(match (reached.contains(&a), reached.contains(&b)) {
                    (true, false) => "reached a",
                    (true, true) => "reached a and b",
                    (false, true) => "reached b",
                    (false, false) => "reached nobody in an empty session",
                });
            }
            // No session in the directory: the membership was empty at that instant.
            Err(BroadcastError::UnknownSession(MSG, _)) => {
                assert!(reached.is_empty());
                seen.hit(NO_SESSION);
            }
            Err(other) => panic!("unexpected broadcast outcome {other:?}"),
        }

        // Membership at the broadcast's point, for every admissible order.
        let snapshots: Vec<BTreeSet<ClientId>> = linearizations(&[attach, detach, broadcast])
            .into_iter()
            .map(|order| {
                let mut members = BTreeSet::from([a]);
                for op in order {
                    match op {
                        0 => members.insert(b),
                        1 => members.remove(&a),
                        _ => break,
                    };
                }
                members
            })
            .collect();
        assert!(
            snapshots.contains(&reached),
            "broadcast reached {reached:?}; possible memberships {snapshots:?} \
             (attach {attach:?}, detach {detach:?}, broadcast {broadcast:?})"
        );
        if detach.precedes(&broadcast) {
            assert!(!reached.contains(&a), "{AFTER_DETACH}, yet reached a");
            seen.hit(AFTER_DETACH);
        }

        assert_eq!(registry.members(ROOM), Ok(vec![b]));
        assert_eq!(registry.session_count(), 1);
        assert_eq!(registry.sessions_of(a), Ok(vec![]));
    });
}

/// Model 2b: model 2 across a compaction.
///
/// `x` joins and leaves the session until its dead cells reach the compaction
/// threshold, then rejoins; its next leave compacts the session (live members are
/// copied into fresh cells and re-indexed) while `b` attaches and a broadcast
/// walks. The broadcast must still reach exactly one snapshot's members, and the
/// re-indexed members must stay removable.
#[test]
fn broadcast_reaches_one_snapshot_across_a_compaction() {
    const MSG: u32 = 5;
    /// `switchboard`'s `COMPACT_SLACK`: dead cells tolerated before compacting.
    const SLACK: usize = 16;
    let cases = [
        "reached a and x",
        "reached a, x and b",
        "reached a",
        "reached a and b",
    ];
    check(
        "2b detach (compacting) | attach | broadcast",
        &cases,
        |seen| {
            let registry = registry(2);
            let (a, mut rx_a) = register(&registry);
            let (b, mut rx_b) = register(&registry);
            let (x, mut rx_x) = register(&registry);
            assert_eq!(registry.attach(a, ROOM), Ok(true));
            for _ in 0..SLACK {
                assert_eq!(registry.attach(x, ROOM), Ok(true));
                assert_eq!(registry.detach(x, ROOM), Ok(()));
            }
            assert_eq!(registry.attach(x, ROOM), Ok(true));
            let clock = Clock::new();
            let start = StartLine::new(3);

            let attacher = {
                let (registry, clock) = (registry.clone(), clock.clone());
                start.spawn(move || {
                    let (joined, span) = clock.time(|| registry.attach(b, ROOM));
                    assert_eq!(joined, Ok(true));
                    span
                })
            };
            let compactor = {
                let (registry, clock) = (registry.clone(), clock.clone());
                start.spawn(move || {
                    let (left, span) = clock.time(|| registry.detach(x, ROOM));
                    assert_eq!(left, Ok(()));
                    span
                })
            };
            start.wait();
            let (sent, broadcast) = clock.time(|| registry.broadcast(ROOM, MSG));
            let attach = join(attacher);
            let detach = join(compactor);

            let mut reached = BTreeSet::new();
            for (id, rx) in [(a, &mut rx_a), (b, &mut rx_b), (x, &mut rx_x)] {
                let (got, _) = drain(rx);
                assert!(got.is_empty() || got == [MSG], "{id:?} got {got:?}");
                if !got.is_empty() {
                    reached.insert(id);
                }
            }
            let report = sent.expect("a keeps the session open");
            assert_counts_add_up(&report);
            assert_eq!(report.delivered, reached.len(), "{report:?}");
            let snapshots: Vec<BTreeSet<ClientId>> = linearizations(&[attach, detach, broadcast])
                .into_iter()
                .map(|order| {
                    let mut members = BTreeSet::from([a, x]);
                    for op in order {
                        match op {
                            0 => members.insert(b),
                            1 => members.remove(&x),
                            _ => break,
                        };
                    }
                    members
                })
                .collect();
            assert!(
                snapshots.contains(&reached),
                "broadcast reached {reached:?}; possible memberships {snapshots:?}"
            );
            seen.hit(match (reached.contains(&x), reached.contains(&b)) {
                (true, false) => "reached a and x",
                (true, true) => "reached a, x and b",
                (false, false) => "reached a",
                (false, true) => "reached a and b",
            });

            // The compacted session lists, reaches and removes its members correctly.
            let members: BTreeSet<_> = registry.members(ROOM).expect("open").into_iter().collect();
            assert_eq!(members, BTreeSet::from([a, b]));
            assert_eq!(registry.detach(a, ROOM), Ok(()));
            assert_eq!(registry.members(ROOM), Ok(vec![b]));
            let after = registry.broadcast(ROOM, 6).expect("b keeps it open");
            assert_eq!((after.recipients, after.delivered), (1, 1));
            assert_eq!(drain(&mut rx_b).0, [6]);
            assert!(drain(&mut rx_a).0.is_empty() && drain(&mut rx_x).0.is_empty());
        },
    );
}

/// Model 3: two concurrent attaches to the same session, while its last member
/// leaves.
///
/// `c` is the only member, so its detach retires the session and removes it from
/// the directory; each attach either joins the old session before that, or finds it
/// retired and creates (or joins) a successor. Neither attach may be lost, in the
/// directory's session or in the clients' own lists.
#[test]
fn concurrent_attaches_lose_no_member() {
    check("3 attach | attach | last member detaches", &[], |_| {
        let registry = registry(2);
        let (a, mut rx_a) = register(&registry);
        let (b, mut rx_b) = register(&registry);
        let (c, _rx_c) = register(&registry);
        assert_eq!(registry.attach(c, ROOM), Ok(true));
        let start = StartLine::new(3);

        let attacher = {
            let registry = registry.clone();
            start.spawn(move || {
                assert_eq!(registry.attach(a, ROOM), Ok(true));
            })
        };
        let detacher = {
            let registry = registry.clone();
            start.spawn(move || {
                assert_eq!(registry.detach(c, ROOM), Ok(()));
            })
        };
        start.wait();
        assert_eq!(registry.attach(b, ROOM), Ok(true));
        join(attacher);
        join(detacher);

        let members: BTreeSet<_> = registry.members(ROOM).expect("open").into_iter().collect();
        assert_eq!(members, BTreeSet::from([a, b]), "a member was lost");
        assert_eq!(registry.member_count(ROOM), Ok(2));
        assert_eq!(registry.session_count(), 1);
        let room = SessionId::from(ROOM);
        assert_eq!(registry.sessions_of(a), Ok(vec![room.clone()]));
        assert_eq!(registry.sessions_of(b), Ok(vec![room]));
        assert_eq!(registry.sessions_of(c), Ok(vec![]));
        let report = registry.broadcast(ROOM, 9).expect("open");
        assert_eq!((report.recipients, report.delivered), (2, 2));
        assert_eq!(drain(&mut rx_a).0, [9]);
        assert_eq!(drain(&mut rx_b).0, [9]);
    });
}

/// Model 4: unregister ∥ broadcast ∥ send.
///
/// Once `unregister` has returned, every later send or broadcast to the client
/// fails, and no session or count still names it. The receiver yields exactly the
/// messages the calls reported as delivered, and never one after it has reported
/// the end: the leaving thread reads it right after `unregister` returns.
#[test]
fn unregister_is_final() {
    const BROADCAST: u32 = 1;
    const DIRECT: u32 = 2;
    const AFTER: &str = "broadcast began after unregister returned";
    const NO_SESSION: &str = "broadcast found no session";
    const LANDING: &str =
        "a message accepted before the close was still landing when unregister returned";
    let cases = [
        "broadcast delivered before the close",
        "broadcast found the channel closed",
        NO_SESSION,
        AFTER,
        "direct send delivered",
        "direct send refused",
        LANDING,
    ];
    check("4 unregister | broadcast | send", &cases, |seen| {
        let registry = registry(2);
        let (a, mut rx_a) = register(&registry);
        assert_eq!(registry.attach(a, ROOM), Ok(true));
        let clock = Clock::new();
        let start = StartLine::new(3);

        let leaver = {
            let (registry, clock) = (registry.clone(), clock.clone());
            start.spawn(move || {
                let (gone, span) = clock.time(|| registry.unregister(a));
                let gone = gone.expect("a is connected");
                assert_eq!(gone.sessions, vec![SessionId::from(ROOM)]);
                // Everything after the return fails.
                assert!(!registry.is_online(a));
                assert!(matches!(
                    registry.send(a, 8),
                    Err(SendError::Unknown(8, ClientError::Gone(_)))
                ));
                assert!(matches!(
                    registry.broadcast(ROOM, 9),
                    Err(BroadcastError::UnknownSession(9, _))
                ));
                // A send accepted before the close may still be pushing, so this may
                // end on `Empty`, but it may never end on `Closed` before a message.
                let early = drain(&mut rx_a);
                (span, early, rx_a)
            })
        };
        let sender = {
            let registry = registry.clone();
            start.spawn(move || match registry.send(a, DIRECT) {
                Ok(()) => true,
                Err(SendError::Unknown(DIRECT, _) | SendError::Closed(DIRECT)) => false,
                Err(other) => panic!("unexpected send outcome {other:?}"),
            })
        };
        start.wait();
        let (sent, broadcast) = clock.time(|| registry.broadcast(ROOM, BROADCAST));
        let (unregister, (early, early_end), mut rx_a): (Span, _, _) = join(leaver);
        let direct_delivered = join(sender);

        let report = match sent {
            Ok(report) => report,
            Err(BroadcastError::UnknownSession(BROADCAST, _)) => {
                seen.hit(NO_SESSION);
                BroadcastReport::default()
            }
            Err(other) => panic!("unexpected broadcast outcome {other:?}"),
        };
        assert_counts_add_up(&report);
        assert!(report.recipients <= 1 && report.disconnected == 0 && report.dropped == 0);
        if report.delivered == 1 {
            seen.hit("broadcast delivered before the close");
        }
        if report.closed == 1 {
            seen.hit("broadcast found the channel closed");
        }
        if unregister.precedes(&broadcast) {
            assert_eq!(report.recipients, 0, "{AFTER}, yet addressed a: {report:?}");
            seen.hit(AFTER);
        }
        seen.hit(if direct_delivered {
            "direct send delivered"
        } else {
            "direct send refused"
        });

        let (late, late_end) = drain(&mut rx_a);
        assert_eq!(late_end, TryRecvError::Closed);
        if early_end == TryRecvError::Closed {
            assert!(late.is_empty(), "{late:?} arrived after the receiver ended");
        } else {
            assert!(!late.is_empty(), "the receiver was open, yet nothing came");
            seen.hit(LANDING);
        }
        let mut got: Vec<u32> = early.into_iter().chain(late).collect();
        got.sort_unstable();
        let mut expected = vec![BROADCAST; report.delivered];
        if direct_delivered {
            expected.push(DIRECT);
        }
        assert_eq!(got, expected, "received vs reported delivered");
        // Nothing left behind.
        assert_eq!(registry.session_count(), 0);
        assert!(registry.members(ROOM).is_err());
        assert_eq!(registry.client_count(), 0);
        assert!(registry.client_ids().is_empty());
    });
}

/// Model 4b: unregister ∥ attach ∥ detach of the same client.
///
/// The client's own membership calls race its unregister. Each either takes
/// effect before it, and unregister's report agrees, or fails with `Gone`; either
/// way, once all three have returned no session is left naming the client.
#[test]
fn unregister_leaves_no_membership_behind() {
    const OTHER: u64 = 8;
    const ATTACHED: &str = "attach came first";
    const ATTACH_GONE: &str = "attach found the client gone";
    const DETACHED: &str = "detach came first";
    const DETACH_GONE: &str = "detach found the client gone";
    let cases = [ATTACHED, ATTACH_GONE, DETACHED, DETACH_GONE];
    check("4b unregister | attach | detach", &cases, |seen| {
        let registry = registry(1);
        let (a, _rx_a) = register(&registry);
        assert_eq!(registry.attach(a, ROOM), Ok(true));
        let start = StartLine::new(3);

        let leaver = {
            let registry = registry.clone();
            start.spawn(move || {
                registry
                    .unregister(a)
                    .expect("only this thread unregisters a")
            })
        };
        let attacher = {
            let registry = registry.clone();
            start.spawn(move || registry.attach(a, OTHER))
        };
        start.wait();
        let detached = registry.detach(a, ROOM);
        let gone = join(leaver);
        let attached = join(attacher);

        let gone_error = ClientError::Gone(a);
        let in_report = |key: u64| gone.sessions.contains(&SessionId::from(key));
        match attached {
            Ok(true) => {
                assert!(in_report(OTHER), "attached, yet not unregistered: {gone:?}");
                seen.hit(ATTACHED);
            }
            Err(e) => {
                assert_eq!(e, gone_error.into());
                assert!(!in_report(OTHER), "{gone:?}");
                seen.hit(ATTACH_GONE);
            }
            Ok(false) => panic!("a was never in session {OTHER}"),
        }
        match detached {
            Ok(()) => {
                assert!(!in_report(ROOM), "detached, yet reported: {gone:?}");
                seen.hit(DETACHED);
            }
            Err(e) => {
                assert_eq!(e, gone_error.into());
                assert!(in_report(ROOM), "{gone:?}");
                seen.hit(DETACH_GONE);
            }
        }
        // Nothing left behind.
        assert_eq!(registry.session_count(), 0, "{:?}", registry.session_ids());
        assert!(registry.members(ROOM).is_err() && registry.members(OTHER).is_err());
        assert_eq!(registry.client_count(), 0);
    });
}

/// Model 5: a full channel ∥ two broadcasts under `SlowConsumerPolicy::Disconnect`.
///
/// Both broadcasts may find the member's channel full; between them they must
/// disconnect it exactly once, and each report's counts must add up.
#[test]
fn full_channel_is_disconnected_exactly_once() {
    const QUEUED: u32 = 1;
    const CLOSED: &str = "the other broadcast also addressed it and counted it closed";
    const EMPTY: &str = "the other broadcast found it gone from the snapshot";
    const NO_SESSION: &str = "the other broadcast found no session";
    let cases = [CLOSED, EMPTY, NO_SESSION];
    check("5 full channel: broadcast | broadcast", &cases, |seen| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .channel_capacity(1)
            .slow_consumer(SlowConsumerPolicy::Disconnect)
            .build()
            .expect("valid settings");
        let (a, mut rx_a) = register(&registry);
        assert_eq!(registry.attach(a, ROOM), Ok(true));
        assert!(registry.send(a, QUEUED).is_ok(), "fills the channel");
        let start = StartLine::new(2);

        let other = {
            let registry = registry.clone();
            start.spawn(move || registry.broadcast(ROOM, 2))
        };
        start.wait();
        let mine = registry.broadcast(ROOM, 3);
        let theirs = join(other);

        let reports: Vec<BroadcastReport> = [mine, theirs]
            .into_iter()
            .map(|sent| match sent {
                Ok(report) => {
                    assert_counts_add_up(&report);
                    assert_eq!((report.delivered, report.dropped), (0, 0), "{report:?}");
                    if report.closed == 1 {
                        seen.hit(CLOSED);
                    } else if report.recipients == 0 {
                        seen.hit(EMPTY);
                    }
                    report
                }
                // The other broadcast's disconnect retired the session first.
                Err(BroadcastError::UnknownSession(..)) => {
                    seen.hit(NO_SESSION);
                    BroadcastReport::default()
                }
            })
            .collect();
        let disconnected: usize = reports.iter().map(|r| r.disconnected).sum();
        assert_eq!(
            disconnected, 1,
            "disconnected {disconnected} times: {reports:?}"
        );
        assert_eq!(registry.stats().disconnected, 1);

        // The queued message survives the disconnect; then the channel ends.
        assert_eq!(drain(&mut rx_a), (vec![QUEUED], TryRecvError::Closed));
        assert!(!registry.is_online(a));
        assert_eq!(registry.client_count(), 0);
        assert_eq!(registry.session_count(), 0);
    });
}

/// Model 6: three concurrent registrations into one shard.
///
/// Distinct ids and slots, the exact count, and each id routes to its own receiver.
#[test]
fn concurrent_registrations_get_distinct_ids() {
    check("6 register | register | register", &[], |_| {
        let registry = registry(1);
        let start = StartLine::new(3);
        let spawn_register = |registry: &Registry<u32>| {
            let registry = registry.clone();
            start.spawn(move || register(&registry))
        };
        let first = spawn_register(&registry);
        let second = spawn_register(&registry);
        start.wait();
        let mut clients = vec![register(&registry)];
        clients.push(join(first));
        clients.push(join(second));

        let ids: BTreeSet<ClientId> = clients.iter().map(|(id, _)| *id).collect();
        let slots: BTreeSet<_> = ids.iter().map(|id| slot_of(*id)).collect();
        assert_eq!(ids.len(), 3, "ids alias: {ids:?}");
        assert_eq!(slots.len(), 3, "slots alias: {slots:?}");
        assert_eq!(registry.client_count(), 3);
        assert_eq!(
            registry.client_ids().into_iter().collect::<BTreeSet<_>>(),
            ids
        );
        for (n, (id, _)) in (0u32..).zip(&clients) {
            assert!(registry.send(*id, n).is_ok());
        }
        for (n, (_, rx)) in (0u32..).zip(&mut clients) {
            assert_eq!(drain(rx), (vec![n], TryRecvError::Empty));
        }
    });
}

/// Model 6b: three concurrent registrations against a limit of two.
///
/// The admission count is the one shared decision: exactly two register, the third
/// gets `LimitReached`, and the count stays exact.
#[test]
fn concurrent_registrations_respect_the_client_limit() {
    let cases = ["this thread was refused", "a spawned thread was refused"];
    check("6b register x3, max_clients(2)", &cases, |seen| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .channel_capacity(1)
            .max_clients(2)
            .build()
            .expect("valid settings");
        let start = StartLine::new(3);
        let spawn_register = |registry: &Registry<u32>| {
            let registry = registry.clone();
            start.spawn(move || registry.register(ClientInfo::new()).map(|(id, _rx)| id))
        };
        let first = spawn_register(&registry);
        let second = spawn_register(&registry);
        start.wait();
        let mine = registry.register(ClientInfo::new()).map(|(id, _rx)| id);
        seen.hit(if mine.is_err() {
            "this thread was refused"
        } else {
            "a spawned thread was refused"
        });
        let outcomes = [mine, join(first), join(second)];

        let ids: BTreeSet<ClientId> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Err(RegisterError::LimitReached { limit: 2 })))
            .count();
        assert_eq!((ids.len(), refused), (2, 1), "{outcomes:?}");
        // Dropping a receiver closes its channel; the client stays registered.
        assert_eq!(registry.client_count(), 2);
        assert_eq!(
            registry.client_ids().into_iter().collect::<BTreeSet<_>>(),
            ids
        );
    });
}

/// Model 7: takeover ∥ lookups of the key.
///
/// A second connection registers with a key that is online while another thread
/// resolves the key twice. Every lookup finds exactly one connection, the old or
/// the new, never none; once it finds the new one it never finds the old again; and
/// afterwards the old connection is unregistered with its channel closed, and the
/// key, the count and the indexes name only the new one.
#[test]
fn takeover_never_resolves_a_key_to_none_or_both() {
    const KEY: &str = "device_001";
    const SAW_OLD_THEN_NEW: &str = "lookups saw the old, then the new connection";
    const SAW_OLD: &str = "lookups saw only the old connection";
    const SAW_NEW: &str = "lookups saw only the new connection";
    let cases = [SAW_OLD_THEN_NEW, SAW_OLD, SAW_NEW];
    check("7 takeover | lookups", &cases, |seen| {
        let registry = registry(2);
        let device = || ClientInfo::new().with_key(KEY);
        let (old, mut old_rx) = registry.register(device()).expect("room");
        assert_eq!(registry.attach(old, ROOM), Ok(true));
        let start = StartLine::new(2);
        let newcomer = {
            let registry = registry.clone();
            start.spawn(move || {
                let registration = registry.register_with_report(device()).expect("room");
                let took_over = registration.took_over.map(|report| report.id);
                (registration.id, registration.receiver, took_over)
            })
        };
        start.wait();
        let first = registry.id_of(KEY);
        let first_online = registry.is_online(KEY);
        let second = registry.id_of(KEY);
        let (new, _new_rx, took_over) = join(newcomer);

        assert_eq!(took_over, Some(old), "the takeover is reported");
        for seen_id in [first, second] {
            assert!(
                seen_id == Some(old) || seen_id == Some(new),
                "the key resolved to {seen_id:?}, neither {old:?} nor {new:?}"
            );
        }
        assert!(first_online, "the key resolved to no online connection");
        assert!(
            !(first == Some(new) && second == Some(old)),
            "the key went back to the old connection"
        );
        seen.hit(match (first == Some(old), second == Some(old)) {
            (true, true) => SAW_OLD,
            (true, false) => SAW_OLD_THEN_NEW,
            _ => SAW_NEW,
        });

        assert_eq!(registry.id_of(KEY), Some(new));
        assert!(!registry.is_online(old));
        assert_eq!(drain(&mut old_rx), (vec![], TryRecvError::Closed));
        assert_eq!(registry.client_count(), 1);
        assert_eq!(registry.list(&switchboard::Filter::new()), vec![new]);
        assert!(
            registry.members(ROOM).is_err(),
            "the old connection's room emptied"
        );
    });
}

/// Model 8: two unregisters ∥ two registrations ∥ a send to a departing id, in one
/// shard, so the free slots' list runs through the slot words themselves.
///
/// A free slot holds a tag (its next generation and the next free slot) instead of
/// an entry. Whichever way the releases and reservations interleave, each freed
/// slot comes back at most once, LIFO, under exactly the next generation, and
/// fresh slots are handed out only while the list is empty; the send to the
/// departing `a` reaches `a` or fails, never the slot's next occupant.
#[test]
fn freed_slots_come_back_once_each_under_the_next_generation() {
    const STALE: u32 = 1;
    const NONE_REUSED: &str = "both registrations took fresh slots";
    const A_REUSED: &str = "a's slot alone came back";
    const B_REUSED: &str = "b's slot alone came back";
    const BOTH_REUSED: &str = "both slots came back";
    const STALE_DELIVERED: &str = "the send reached a before it left";
    const STALE_REFUSED: &str = "the send was refused";
    let cases = [
        NONE_REUSED,
        A_REUSED,
        B_REUSED,
        BOTH_REUSED,
        STALE_DELIVERED,
        STALE_REFUSED,
    ];
    check("8 unregister x2 | register x2 | send", &cases, |seen| {
        let registry = registry(2);
        let (a, mut rx_a) = register(&registry);
        let (b, mut rx_b) = register(&registry);
        let start = StartLine::new(3);

        let leaver = {
            let registry = registry.clone();
            start.spawn(move || {
                assert!(registry.unregister(a).is_ok());
                assert!(registry.unregister(b).is_ok());
            })
        };
        let joiner = {
            let registry = registry.clone();
            start.spawn(move || {
                let first = register(&registry);
                let second = register(&registry);
                [first, second]
            })
        };
        start.wait();
        let sent = registry.send(a, STALE);
        join(leaver);
        let [(c, mut rx_c), (d, mut rx_d)] = join(joiner);

        seen.hit(match sent {
            Ok(()) => STALE_DELIVERED,
            Err(SendError::Unknown(STALE, _) | SendError::Closed(STALE)) => STALE_REFUSED,
            Err(other) => panic!("unexpected send outcome {other:?}"),
        });
        let ids = BTreeSet::from([a, b, c, d]);
        assert_eq!(ids.len(), 4, "ids alias: {a:?} {b:?} {c:?} {d:?}");
        let (slot_a, gen_a) = slot_of(a);
        let (slot_b, gen_b) = slot_of(b);
        let next = |id: ClientId| {
            let (slot, generation) = slot_of(id);
            if slot == slot_a {
                assert_eq!(generation, gen_a + 1, "a's slot under a wrong generation");
                "a"
            } else if slot == slot_b {
                assert_eq!(generation, gen_b + 1, "b's slot under a wrong generation");
                "b"
            } else {
                assert_eq!(generation, 0, "a fresh slot starts at generation 0");
                "fresh"
            }
        };
        let taken = [next(c), next(d)];
        // LIFO: b's slot, freed last, is taken before a's whenever both are free; a
        // fresh slot only while none is; and never one slot twice.
        seen.hit(match taken {
            ["fresh", "fresh"] => NONE_REUSED,
            ["a", "fresh"] | ["fresh", "a"] => A_REUSED,
            ["fresh", "b"] => B_REUSED,
            ["a", "b"] | ["b", "a"] => BOTH_REUSED,
            other => panic!("slots came back out of order: {other:?}"),
        });
        assert_ne!(slot_of(c).0, slot_of(d).0, "one slot handed out twice");

        assert!(!registry.is_online(a) && !registry.is_online(b));
        assert!(registry.send(c, 30).is_ok() && registry.send(d, 40).is_ok());
        let expected_a = if sent.is_ok() { vec![STALE] } else { vec![] };
        assert_eq!(drain(&mut rx_a), (expected_a, TryRecvError::Closed));
        assert_eq!(drain(&mut rx_b), (vec![], TryRecvError::Closed));
        assert_eq!(drain(&mut rx_c), (vec![30], TryRecvError::Empty));
        assert_eq!(drain(&mut rx_d), (vec![40], TryRecvError::Empty));
        assert_eq!(registry.client_count(), 2);
    });
}
