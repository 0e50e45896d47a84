//! Behaviour of the registry through its public API.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use switchboard::{
    AttachError, ClientError, ClientId, ClientInfo, CloseReason, DetachError, Receiver,
    RegisterError, Registry, SendError, SessionId, SlowConsumerPolicy, TryRecvError,
};

fn drain<M>(rx: &mut Receiver<M>) -> Vec<M> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    out
}

#[test]
fn a_hundred_threads_registering_at_once_get_distinct_ids_and_an_exact_count() {
    let registry = Registry::<u32>::new();
    let barrier = Barrier::new(100);
    let ids: Vec<(ClientId, Receiver<u32>)> = thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..50)
                        .map(|_| registry.register(ClientInfo::new()).expect("no limit set"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("registering thread panicked"))
            .collect()
    });
    let distinct: HashSet<_> = ids.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), 5000);
    assert_eq!(registry.client_count(), 5000);
    assert_eq!(registry.client_ids().len(), 5000);
    for (id, _) in &ids {
        assert!(registry.is_online(*id));
    }
}

#[test]
fn a_stale_id_never_reaches_the_slots_next_occupant() {
    let registry = Registry::<u32>::builder().shards(1).build().expect("valid");
    let (old, mut old_rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(old, "room").expect("online");
    let _ = registry.unregister(old).expect("online");
    let (new, mut new_rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(new, "room").expect("online");

    assert_ne!(old, new, "the reused slot carries a new generation");
    assert!(matches!(
        registry.send(old, 1),
        Err(SendError::Unknown(1, ClientError::Gone(id))) if id == old
    ));
    assert!(registry.attach(old, "other").is_err());
    assert!(registry.detach(old, "room").is_err());
    assert!(registry.unregister(old).is_err());
    assert!(registry.info(old).is_err());
    assert_eq!(registry.members("room"), Ok(vec![new]));
    assert_eq!(drain(&mut new_rx), Vec::<u32>::new());
    assert_eq!(old_rx.try_recv(), Err(TryRecvError::Closed));
}

#[test]
fn forged_ids_are_typed_errors_not_panics() {
    let registry = Registry::<u32>::builder().shards(2).build().expect("valid");
    let (real, _rx) = registry.register(ClientInfo::new()).expect("room");
    let bad_shard = ClientId::from_u64(real.as_u64() | (200 << 24));
    let bad_slot = ClientId::from_u64(real.as_u64() | 0x00ff_ffff);
    let bad_generation = ClientId::from_u64(real.as_u64() + (1 << 32));
    assert_eq!(
        registry.unregister(bad_shard).err(),
        Some(ClientError::NoSuchShard(bad_shard))
    );
    assert_eq!(
        registry.unregister(bad_slot).err(),
        Some(ClientError::NoSuchSlot(bad_slot))
    );
    assert_eq!(
        registry.unregister(bad_generation).err(),
        Some(ClientError::Gone(bad_generation))
    );
    for forged in [
        bad_shard,
        bad_slot,
        bad_generation,
        ClientId::from_u64(u64::MAX),
    ] {
        assert!(matches!(
            registry.send(forged, 7),
            Err(SendError::Unknown(7, _))
        ));
        assert!(!registry.is_online(forged));
    }
    assert!(registry.is_online(real));
}

#[test]
fn a_dropped_receiver_is_cleaned_up_at_the_next_send() {
    let registry = Registry::<u32>::new();
    let (id, rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(id, "a").expect("online");
    registry.attach(id, "b").expect("online");
    drop(rx);
    assert!(matches!(registry.send(id, 5), Err(SendError::Closed(5))));
    assert!(!registry.is_online(id));
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.session_count(), 0);
    assert_eq!(registry.stats().closed, 1);
}

#[test]
fn a_dropped_receiver_is_cleaned_up_by_the_broadcast_that_finds_it() {
    let registry = Registry::<u32>::new();
    let (gone, rx) = registry.register(ClientInfo::new()).expect("room");
    let (stays, mut stays_rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(gone, "room").expect("online");
    registry.attach(stays, "room").expect("online");
    drop(rx);
    let report = registry.broadcast("room", 1).expect("open");
    assert_eq!(
        (report.recipients, report.delivered, report.closed),
        (2, 1, 1)
    );
    assert_eq!(registry.members("room"), Ok(vec![stays]));
    assert_eq!(drain(&mut stays_rx), vec![1]);
    assert_eq!(registry.client_count(), 1);
}

#[test]
fn drop_policy_counts_full_channels_and_keeps_the_client() {
    let registry = Registry::<u32>::builder()
        .channel_capacity(2)
        .build()
        .expect("valid");
    let (slow, mut slow_rx) = registry.register(ClientInfo::new()).expect("room");
    let (fast, mut fast_rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(slow, "room").expect("online");
    registry.attach(fast, "room").expect("online");
    let mut dropped = 0;
    for n in 0..5 {
        let report = registry.broadcast("room", n).expect("open");
        assert_eq!(
            report.delivered + report.dropped + report.closed + report.disconnected,
            report.recipients
        );
        dropped += report.dropped;
        assert_eq!(drain(&mut fast_rx), vec![n]);
    }
    assert_eq!(dropped, 3);
    assert!(registry.is_online(slow));
    assert_eq!(drain(&mut slow_rx), vec![0, 1]);
    assert_eq!(registry.stats().dropped, 3);
}

#[test]
fn disconnect_policy_unregisters_a_full_client_once_and_delivers_what_it_queued() {
    let registry = Registry::<u32>::builder()
        .channel_capacity(1)
        .slow_consumer(SlowConsumerPolicy::Disconnect)
        .build()
        .expect("valid");
    let (slow, mut slow_rx) = registry.register(ClientInfo::new()).expect("room");
    let (fast, mut fast_rx) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(slow, "room").expect("online");
    registry.attach(fast, "room").expect("online");
    let first = registry.broadcast("room", 1).expect("open");
    assert_eq!(first.delivered, 2);
    assert_eq!(drain(&mut fast_rx), vec![1]);
    let second = registry.broadcast("room", 2).expect("open");
    assert_eq!(
        (second.recipients, second.delivered, second.disconnected),
        (2, 1, 1)
    );
    assert!(!registry.is_online(slow));
    assert_eq!(registry.members("room"), Ok(vec![fast]));
    assert_eq!(drain(&mut fast_rx), vec![2]);
    let third = registry.broadcast("room", 3).expect("open");
    assert_eq!((third.recipients, third.disconnected), (1, 0));
    assert_eq!(
        drain(&mut slow_rx),
        vec![1],
        "what was queued before is still delivered"
    );
    assert_eq!(slow_rx.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(registry.stats().disconnected, 1);
}

#[test]
fn unregister_reports_every_session_and_leaves_no_orphan() {
    let registry = Registry::<u32>::new();
    let (id, _rx) = registry.register(ClientInfo::new()).expect("room");
    let (other, _orx) = registry.register(ClientInfo::new()).expect("room");
    for s in ["a", "b", "c"] {
        registry.attach(id, s).expect("online");
    }
    registry.attach(other, "b").expect("online");
    let report = registry.unregister(id).expect("online");
    let mut sessions = report.sessions.clone();
    sessions.sort();
    assert_eq!(sessions, vec!["a".into(), "b".into(), "c".into()]);
    assert_eq!(registry.session_count(), 1);
    assert_eq!(registry.members("b"), Ok(vec![other]));
    assert!(registry.members("a").is_err());
    assert_eq!(registry.client_count(), 1);
    assert_eq!(registry.unregister(id).err(), Some(ClientError::Gone(id)));
}

#[test]
fn detach_errors_are_reported() {
    let registry = Registry::<u32>::new();
    let (id, _rx) = registry.register(ClientInfo::new()).expect("room");
    assert_eq!(
        registry.detach(id, 9),
        Err(DetachError::NotAttached {
            client: id,
            session: SessionId::Num(9)
        })
    );
    let _ = registry.unregister(id);
    assert_eq!(
        registry.detach(id, 9),
        Err(DetachError::Client(ClientError::Gone(id)))
    );
}

#[test]
fn numeric_and_named_sessions_never_collide() {
    let registry = Registry::<u32>::new();
    let (a, mut ra) = registry.register(ClientInfo::new()).expect("room");
    let (b, mut rb) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, 7).expect("online");
    registry.attach(b, "7").expect("online");
    assert_eq!(registry.session_count(), 2);
    let _ = registry.broadcast(7, 1).expect("open");
    assert_eq!((drain(&mut ra), drain(&mut rb)), (vec![1], vec![]));
}

#[test]
fn limits_are_typed_errors() {
    let registry = Registry::<u32>::builder()
        .max_clients(2)
        .build()
        .expect("valid");
    let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
    let _b = registry.register(ClientInfo::new()).expect("room");
    assert_eq!(
        registry.register(ClientInfo::new()).err(),
        Some(RegisterError::LimitReached { limit: 2 })
    );
    let _ = registry.unregister(a);
    assert!(registry.register(ClientInfo::new()).is_ok());
    assert!(Registry::<u32>::builder()
        .channel_capacity(0)
        .build()
        .is_err());
}

#[test]
fn a_client_joins_at_most_max_sessions_per_client() {
    let registry = Registry::<u32>::builder()
        .max_sessions_per_client(3)
        .build()
        .expect("valid");
    let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
    let (b, _rb) = registry.register(ClientInfo::new()).expect("room");
    for s in 0..3u64 {
        assert_eq!(registry.attach(a, s), Ok(true), "room for session {s}");
    }
    assert_eq!(
        registry.attach(a, 3),
        Err(AttachError::TooManySessions {
            session: SessionId::from(3),
            limit: 3
        })
    );
    assert!(
        registry.members(3).is_err(),
        "the refused join created no session"
    );
    assert_eq!(registry.sessions_of(a).expect("online").len(), 3);
    // Joining one it is already in is still the no-op it always was.
    assert_eq!(registry.attach(a, 0), Ok(false));
    // The bound is per client: another client still joins.
    assert_eq!(registry.attach(b, 3), Ok(true));
    assert_eq!(registry.members(3), Ok(vec![b]));
    registry.detach(a, 1).expect("a member");
    assert_eq!(registry.attach(a, 3), Ok(true), "the detach made room");
    assert_eq!(registry.members(3), Ok(vec![b, a]));
}

#[test]
fn racing_attaches_at_the_session_bound_admit_exactly_the_limit() {
    for _ in 0..50 {
        let registry = Registry::<u32>::builder()
            .max_sessions_per_client(4)
            .build()
            .expect("valid");
        let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
        let barrier = Barrier::new(8);
        let joined: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..8u64)
                .map(|n| {
                    let (registry, barrier) = (&registry, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        usize::from(registry.attach(a, n) == Ok(true))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .sum()
        });
        assert_eq!(joined, 4);
        assert_eq!(registry.sessions_of(a).expect("online").len(), 4);
        assert_eq!(registry.session_count(), 4);
    }
}

#[test]
fn a_session_name_over_the_limit_is_refused_and_creates_nothing() {
    let registry = Registry::<u32>::builder()
        .max_session_name_bytes(8)
        .build()
        .expect("valid");
    let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
    assert_eq!(registry.attach(a, "12345678"), Ok(true));
    assert_eq!(
        registry.attach(a, "123456789"),
        Err(AttachError::SessionNameTooLong { len: 9, limit: 8 })
    );
    // Bytes, not characters: four two-byte characters fit, five do not.
    assert_eq!(registry.attach(a, "éééé"), Ok(true));
    assert_eq!(
        registry.attach(a, "ééééé"),
        Err(AttachError::SessionNameTooLong { len: 10, limit: 8 })
    );
    // Numbered sessions have no name to bound.
    assert_eq!(registry.attach(a, u64::MAX), Ok(true));
    assert_eq!(registry.session_count(), 3);
}

#[test]
fn the_default_session_name_bound_is_256_bytes() {
    let registry = Registry::<u32>::new();
    let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
    assert_eq!(registry.attach(a, "x".repeat(256)), Ok(true));
    assert_eq!(
        registry.attach(a, "x".repeat(257)),
        Err(AttachError::SessionNameTooLong {
            len: 257,
            limit: 256
        })
    );
}

#[test]
fn unknown_sessions_give_the_message_back() {
    let registry = Registry::<String>::new();
    let err = registry
        .broadcast("nowhere", "lost?".to_string())
        .unwrap_err();
    assert_eq!(err.into_inner(), "lost?");
    assert!(registry.members("nowhere").is_err());
    assert!(registry.release_session("nowhere").is_err());
}

#[tokio::test]
async fn dropping_the_registry_ends_every_receiver() {
    let registry = Registry::<u32>::new();
    let (id, mut rx) = registry.register(ClientInfo::new()).expect("room");
    registry.send(id, 1).expect("room");
    drop(registry);
    // Bounded, so that a registry that forgets to close its channels fails here
    // instead of hanging.
    let within = std::time::Duration::from_secs(10);
    assert_eq!(tokio::time::timeout(within, rx.recv()).await, Ok(Some(1)));
    assert_eq!(
        tokio::time::timeout(within, rx.recv()).await,
        Ok(None),
        "the receiver did not end when the registry was dropped"
    );
}

/// Registers, attaches, broadcasts and unregisters on several threads at once, then
/// checks: no lost member, no orphan, no message to a client detached before the
/// broadcast began, and counts that add up.
#[test]
fn racing_churn_and_broadcast_keeps_every_invariant() {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 400;
    const SESSIONS: u64 = 4;
    let registry = Registry::<(u64, u64)>::builder()
        .channel_capacity(1024)
        .build()
        .expect("valid");
    // Long-lived members that must never be lost.
    let anchors: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let (id, rx) = registry.register(ClientInfo::new()).expect("room");
            registry.attach(id, s).expect("online");
            (id, rx)
        })
        .collect();
    let barrier = Barrier::new(THREADS);
    // (session, seq) of every broadcast, with the report's recipients.
    let sent = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (registry, barrier, sent) = (&registry, &barrier, &sent);
            s.spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let session = (t + round) % SESSIONS;
                    let (id, mut rx) = registry.register(ClientInfo::new()).expect("room");
                    registry.attach(id, session).expect("online");
                    let seq = t * ROUNDS + round;
                    let report = registry
                        .broadcast(session, (session, seq))
                        .expect("anchored");
                    assert_eq!(
                        report.delivered + report.dropped + report.closed + report.disconnected,
                        report.recipients
                    );
                    assert!(report.recipients >= 2, "the anchor and this client");
                    sent.lock().expect("no panic").push((session, seq));
                    // Its own broadcast began after its attach returned.
                    assert!(drain(&mut rx).contains(&(session, seq)));
                    registry.detach(id, session).expect("attached");
                    // Broadcasts that start after the detach returned must not reach it.
                    let marker = (session, u64::MAX - seq);
                    let after = registry.broadcast(session, marker).expect("anchored");
                    assert!(after.recipients >= 1);
                    assert!(
                        !drain(&mut rx).contains(&marker),
                        "a detached client received a later broadcast"
                    );
                    let report = registry.unregister(id).expect("online");
                    assert!(report.sessions.is_empty());
                }
            });
        }
    });
    assert_eq!(registry.client_count(), SESSIONS as usize);
    assert_eq!(registry.session_count(), SESSIONS as usize);
    let sent = sent.into_inner().expect("no panic");
    let mut per_session: HashMap<u64, HashSet<u64>> = HashMap::new();
    for (session, seq) in sent {
        per_session.entry(session).or_default().insert(seq);
    }
    for (s, (id, mut rx)) in anchors.into_iter().enumerate() {
        let s = s as u64;
        assert_eq!(
            registry.members(s),
            Ok(vec![id]),
            "anchor of session {s} lost"
        );
        let got: HashSet<u64> = drain(&mut rx)
            .into_iter()
            .filter(|(session, seq)| *session == s && *seq < u64::MAX / 2)
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(
            got,
            per_session.remove(&s).unwrap_or_default(),
            "anchor {s} missed a broadcast"
        );
        let _ = registry.unregister(id).expect("online");
    }
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.session_count(), 0);
    let stats = registry.stats();
    // `closed` may count: a broadcast that loaded its snapshot before a client's
    // detach can find that client's channel already closed by its unregister.
    assert_eq!(stats.dropped + stats.disconnected, 0);
}

#[test]
fn registry_handles_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Registry<Arc<str>>>();
    assert_send_sync::<Receiver<Arc<str>>>();
    let registry = Registry::<u8>::new();
    let clone = registry.clone();
    let (id, _rx) = clone.register(ClientInfo::new()).expect("room");
    assert!(registry.is_online(id));
}

#[test]
fn every_close_says_why() {
    let registry = Registry::<u32>::builder()
        .channel_capacity(1)
        .slow_consumer(SlowConsumerPolicy::Disconnect)
        .build()
        .expect("valid settings");
    let (plain, plain_rx) = registry.register(ClientInfo::new()).expect("room");
    let (kicked, kicked_rx) = registry
        .register(ClientInfo::new().with_key("kicked"))
        .expect("room");
    let (_old, old_rx) = registry
        .register(ClientInfo::new().with_key("dup"))
        .expect("room");
    let (slow, slow_rx) = registry.register(ClientInfo::new()).expect("room");
    for rx in [&plain_rx, &kicked_rx, &old_rx, &slow_rx] {
        assert_eq!(rx.close_reason(), None, "open channels have no reason");
    }

    let _ = registry.unregister(plain).expect("online");
    assert_eq!(plain_rx.close_reason(), Some(&CloseReason::Unregistered));

    let gone = registry.kick("kicked", "too chatty").expect("online");
    assert_eq!(gone.id, kicked);
    assert_eq!(
        kicked_rx.close_reason(),
        Some(&CloseReason::Kicked {
            reason: "too chatty".into()
        })
    );
    assert_eq!(
        registry.kick("kicked", "again").err(),
        Some(ClientError::NoSuchKey),
        "a kick of someone gone is a typed error"
    );
    assert_eq!(
        registry.kick(kicked, "again").err(),
        Some(ClientError::Gone(kicked))
    );

    let (new, _new_rx) = registry
        .register(ClientInfo::new().with_key("dup"))
        .expect("room");
    assert_eq!(
        old_rx.close_reason(),
        Some(&CloseReason::TakenOver { by: Some(new) })
    );

    registry.attach(slow, "room").expect("online");
    let _ = registry.broadcast("room", 1).expect("open");
    let report = registry.broadcast("room", 2).expect("open");
    assert_eq!(report.disconnected, 1);
    assert_eq!(slow_rx.close_reason(), Some(&CloseReason::SlowConsumer));
}

#[test]
fn a_later_unregister_does_not_overwrite_the_first_reason() {
    let registry = Registry::<u32>::new();
    let (id, rx) = registry.register(ClientInfo::new()).expect("room");
    let _ = registry.kick(id, "first").expect("online");
    assert!(registry.unregister(id).is_err());
    assert_eq!(
        rx.close_reason(),
        Some(&CloseReason::Kicked {
            reason: "first".into()
        })
    );
}

#[test]
fn reports_and_session_ids_serialise_for_apis() {
    let registry = Registry::<u32>::new();
    let (a, _ra) = registry.register(ClientInfo::new()).expect("room");
    registry.attach(a, 7).expect("online");
    let report = registry.broadcast(7, 1).expect("open");
    let json = serde_json::to_value(report).expect("serialisable");
    assert_eq!(
        json,
        serde_json::json!({"recipients": 1, "delivered": 1, "dropped": 0, "closed": 0, "disconnected": 0})
    );
    let ids = [SessionId::from(7), SessionId::from("7")];
    let text = serde_json::to_string(&ids).expect("serialisable");
    assert_eq!(text, r#"[7,"7"]"#);
    let back: Vec<SessionId> = serde_json::from_str(&text).expect("round trip");
    assert_eq!(back, ids);
}
