//! Profiles, keys and takeover, indexed filters, device selection, config merge,
//! tasks and presence events, through the public API.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use switchboard::{
    AttachError, CancelReason, ClientError, ClientInfo, ClientKind, ConfigError, DeviceConfig,
    Event, Filter, ProfileLimit, RegisterError, Registry, Requirements, SessionId, SystemInfo,
    TaskError, TryRecvError, UpdateError,
};

fn device(key: &str, platform: &str, caps: &[&str], tags: &[&str]) -> ClientInfo {
    let mut sys = SystemInfo::default();
    sys.capabilities = caps.iter().map(|c| c.to_string()).collect();
    sys.tags = tags.iter().map(|t| t.to_string()).collect();
    ClientInfo::new()
        .with_key(key)
        .with_kind(ClientKind::Device)
        .with_platform(platform)
        .with_system_info(sys)
}

fn orchestrator(key: &str) -> ClientInfo {
    ClientInfo::new()
        .with_key(key)
        .with_kind(ClientKind::Orchestrator)
}

fn sorted(mut ids: Vec<switchboard::ClientId>) -> Vec<switchboard::ClientId> {
    ids.sort();
    ids
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-fleet-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("temp dir is writable");
    file.write_all(text.as_bytes())
        .expect("temp dir is writable");
    path
}

#[test]
fn typed_checks_by_key() {
    let registry = Registry::<u8>::new();
    let (d, _rd) = registry
        .register(device("d", "Windows", &[], &[]))
        .expect("room");
    let (o, _ro) = registry.register(orchestrator("o")).expect("room");
    let (plain, _rp) = registry.register(ClientInfo::new()).expect("room");
    assert!(registry.is_device_connected("d"));
    assert!(!registry.is_device_connected("o"));
    assert!(!registry.is_device_connected("nobody"));
    assert_eq!(registry.kind_of("o"), Some(ClientKind::Orchestrator));
    assert_eq!(registry.kind_of(d), Some(ClientKind::Device));
    assert_eq!(registry.kind_of(plain), None);
    assert_eq!(registry.id_of("o"), Some(o));
    assert_eq!(registry.info("nobody").err(), Some(ClientError::NoSuchKey));
    let _ = registry.unregister(d);
    assert!(!registry.is_device_connected("d"));
    assert!(!registry.is_online("d"));
    assert_eq!(registry.id_of("d"), None);
}

#[test]
fn profile_snapshot_carries_connected_at_and_serialises() {
    let registry = Registry::<u8>::new();
    let (id, _rx) = registry
        .register(device("d", "Linux", &["a"], &[]))
        .expect("room");
    let info = registry.info(id).expect("online");
    assert!(info.connected_for() < Duration::from_secs(60));
    let json = serde_json::to_value(&*info).expect("serialisable");
    assert_eq!(json["kind"], "device");
    assert!(json["connected_at"]
        .as_u64()
        .is_some_and(|ms| ms > 1_600_000_000_000));
    let (plain, _rp) = registry.register(ClientInfo::new()).expect("room");
    assert!(registry.info(plain).expect("online").connected_for() < Duration::from_secs(60));
}

#[test]
fn oversized_metadata_is_a_typed_error_and_registers_nothing() {
    let registry = Registry::<u8>::builder()
        .max_metadata_bytes(64)
        .build()
        .expect("valid");
    let big = ClientInfo::new()
        .with_key("big")
        .with_metadata(serde_json::json!({ "blob": "x".repeat(100) }));
    assert!(matches!(
        registry.register(big),
        Err(RegisterError::MetadataTooLarge { limit: 64, size }) if size > 64
    ));
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.id_of("big"), None);
    // Without a key, kind or platform too: metadata alone is measured.
    let anonymous = ClientInfo::new().with_metadata(serde_json::json!({ "blob": "x".repeat(100) }));
    assert!(matches!(
        registry.register(anonymous),
        Err(RegisterError::MetadataTooLarge { limit: 64, .. })
    ));
    let mut custom = SystemInfo::default();
    custom
        .custom_metadata
        .insert("blob".into(), "x".repeat(100).into());
    assert!(matches!(
        registry.register(ClientInfo::new().with_system_info(custom)),
        Err(RegisterError::MetadataTooLarge { limit: 64, .. })
    ));
    assert_eq!(registry.client_count(), 0);
    let small = ClientInfo::new().with_metadata(serde_json::json!({ "rack": 4 }));
    assert!(registry.register(small).is_ok());
    let id = registry
        .register(device("d", "x", &[], &[]))
        .expect("room")
        .0;
    let grown = registry.update_system_info(id, |s| {
        s.custom_metadata
            .insert("blob".into(), "y".repeat(100).into());
    });
    assert!(grown.is_err());
    assert!(registry
        .info(id)
        .expect("online")
        .system_info
        .custom_metadata
        .is_empty());
}

#[test]
fn takeover_closes_the_old_connection_and_moves_the_key() {
    let registry = Registry::<u8>::new();
    let mut events = registry.subscribe();
    let (old, mut old_rx) = registry
        .register(device("dev", "Windows", &["x"], &[]))
        .expect("room");
    registry.attach(old, "room").expect("online");
    registry.send(old, 1).expect("room");
    let took = registry
        .register_with_report(device("dev", "Windows", &["x"], &[]))
        .expect("room");
    let new = took.id;
    let report = took.took_over.expect("a takeover");
    assert_eq!(report.id, old);
    assert_eq!(report.sessions, vec!["room".into()]);
    assert_eq!(registry.id_of("dev"), Some(new));
    assert!(!registry.is_online(old));
    assert_eq!(old_rx.try_recv(), Ok(1), "queued messages still arrive");
    assert_eq!(old_rx.try_recv(), Err(TryRecvError::Closed));
    assert!(
        registry.members("room").is_err(),
        "without the option, rooms do not move"
    );
    assert_eq!(registry.list(&Filter::new().capability("x")), vec![new]);
    assert_eq!(registry.client_count(), 1);
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(seen.contains(&Event::TakenOver {
        key: "dev".into(),
        old,
        new
    }));
    assert!(seen.contains(&Event::Left {
        id: old,
        key: Some("dev".into())
    }));
}

#[test]
fn takeover_can_move_session_memberships() {
    let registry = Registry::<u8>::builder()
        .takeover_moves_sessions(true)
        .build()
        .expect("valid");
    let (old, _old_rx) = registry.register(orchestrator("o")).expect("room");
    registry.attach(old, "a").expect("online");
    registry.attach(old, 2).expect("online");
    let (new, mut new_rx) = registry.register(orchestrator("o")).expect("room");
    assert_eq!(registry.members("a"), Ok(vec![new]));
    assert_eq!(registry.members(2), Ok(vec![new]));
    let _ = registry.broadcast("a", 9).expect("open");
    assert_eq!(new_rx.try_recv(), Ok(9));
}

/// A room of the connection taken over that the new one could not join is
/// reported by the registration, with why, never dropped silently. The new
/// connection can only be past its session bound if something attaches it while
/// the rooms move (a session is full only at 2^32 − 1 members, out of a test's
/// reach), so a second thread attaches it, found by its key, from the moment the
/// key names it. The race runs until it has cost a room; every round must account
/// for each room.
#[test]
fn takeover_reports_the_rooms_it_could_not_move() {
    const ROOMS: usize = 256;
    let registry = Registry::<u8>::builder()
        .takeover_moves_sessions(true)
        .max_sessions_per_client(ROOMS)
        .build()
        .expect("valid");
    let mut refused = 0;
    for round in 0..50 {
        let key = format!("o{round}");
        let (old, _old_rx) = registry.register(orchestrator(&key)).expect("room");
        let rooms: Vec<SessionId> = (0..ROOMS)
            .map(|i| SessionId::from(format!("{round}-old-{i}")))
            .collect();
        for room in &rooms {
            registry.attach(old, room.clone()).expect("under the bound");
        }
        let registration = thread::scope(|s| {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(10);
                let new = loop {
                    match registry.id_of(&key) {
                        Some(id) if id != old => break id,
                        _ if Instant::now() > deadline => return,
                        _ => std::hint::spin_loop(),
                    }
                };
                for i in 0..ROOMS {
                    // Refused once the bound is reached; that is the point.
                    let _ = registry.attach(new, format!("{round}-own-{i}"));
                }
            });
            registry
                .register_with_report(orchestrator(&key))
                .expect("room")
        });
        let held: HashSet<SessionId> = registry
            .sessions_of(registration.id)
            .expect("online")
            .into_iter()
            .collect();
        let mut reported = HashSet::new();
        for (room, why) in &registration.not_moved {
            assert_eq!(
                why,
                &AttachError::TooManySessions {
                    session: room.clone(),
                    limit: ROOMS
                }
            );
            assert!(
                !held.contains(room),
                "{room} reported as not moved, yet held"
            );
            assert!(reported.insert(room.clone()), "{room} reported twice");
        }
        for room in &rooms {
            assert!(
                held.contains(room) || reported.contains(room),
                "room {room} neither moved nor reported (round {round}, {} held)",
                held.len()
            );
        }
        refused += reported.len();
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "the race never cost a room: nothing was tested"
    );
}

/// Many connections race for one key. Whatever the interleaving, once the key is
/// first held it always resolves to exactly one online connection, and at the end
/// exactly one is online.
#[test]
fn racing_takeovers_never_leave_the_key_unresolved() {
    let registry = Registry::<u8>::new();
    let (first, _rx) = registry.register(orchestrator("k")).expect("room");
    assert_eq!(registry.id_of("k"), Some(first));
    let done = AtomicBool::new(false);
    let barrier = Barrier::new(5);
    let keep: Vec<_> = thread::scope(|s| {
        let watcher = s.spawn(|| {
            barrier.wait();
            let mut checks = 0u64;
            while !done.load(Ordering::Relaxed) {
                assert!(registry.id_of("k").is_some(), "the key resolved to nothing");
                checks += 1;
            }
            checks
        });
        let racers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..200)
                        .map(|_| registry.register(orchestrator("k")).expect("room"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let keep = racers
            .into_iter()
            .flat_map(|r| r.join().expect("racer"))
            .collect();
        done.store(true, Ordering::Relaxed);
        assert!(watcher.join().expect("watcher") > 0);
        keep
    });
    assert_eq!(registry.client_count(), 1);
    let holder = registry.id_of("k").expect("held");
    assert!(registry.is_online(holder));
    let online: Vec<_> = keep
        .iter()
        .filter(|(id, _)| registry.is_online(*id))
        .collect();
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].0, holder);
    assert_eq!(registry.list(&Filter::new()), vec![holder]);
}

#[test]
fn filters_are_exact_and_follow_register_update_and_unregister() {
    let registry = Registry::<u8>::new();
    let (w1, _a) = registry
        .register(device("w1", "Windows", &["excel", "word"], &["office"]))
        .expect("room");
    let (w2, _b) = registry
        .register(device("w2", "WINDOWS", &["excel"], &["gpu"]))
        .expect("room");
    let (l1, _c) = registry
        .register(device("l1", "linux", &["docker"], &["gpu"]))
        .expect("room");
    let (o1, _d) = registry.register(orchestrator("o1")).expect("room");
    let (_plain, _e) = registry.register(ClientInfo::new()).expect("room");

    assert_eq!(
        sorted(registry.list(&Filter::new().kind(ClientKind::Device))),
        sorted(vec![w1, w2, l1])
    );
    assert_eq!(
        registry.list(&Filter::new().kind(ClientKind::Orchestrator)),
        vec![o1]
    );
    assert_eq!(
        sorted(registry.list(&Filter::new().platform("windows"))),
        sorted(vec![w1, w2])
    );
    assert_eq!(
        sorted(registry.list(&Filter::new().capability("excel"))),
        sorted(vec![w1, w2])
    );
    assert_eq!(
        registry.list(&Filter::new().capability("excel").capability("word")),
        vec![w1]
    );
    assert_eq!(
        sorted(registry.list(&Filter::new().tag("gpu"))),
        sorted(vec![w2, l1])
    );
    assert_eq!(
        registry.list(&Filter::new().tag("gpu").platform("Linux")),
        vec![l1]
    );
    assert!(registry.list(&Filter::new().capability("cad")).is_empty());
    assert_eq!(
        registry.list(&Filter::new()).len(),
        4,
        "plain clients are not indexed"
    );
    assert_eq!(
        registry
            .list(&Filter::new().connected_within(Duration::from_secs(60)))
            .len(),
        4
    );

    registry
        .update_system_info("w2", |s| s.capabilities.push("word".into()))
        .expect("online");
    assert_eq!(
        sorted(registry.list(&Filter::new().capability("excel").capability("word"))),
        sorted(vec![w1, w2])
    );
    registry
        .update_system_info("l1", |s| s.tags.clear())
        .expect("online");
    assert_eq!(registry.list(&Filter::new().tag("gpu")), vec![w2]);

    let _ = registry.unregister(w1);
    assert_eq!(registry.list(&Filter::new().capability("word")), vec![w2]);
    assert_eq!(registry.list(&Filter::new().tag("office")), vec![]);
    let stats = registry.stats();
    assert_eq!((stats.devices, stats.orchestrators), (2, 1));
    assert_eq!(
        stats.by_platform,
        vec![("linux".into(), 1), ("windows".into(), 1)]
    );
}

#[test]
fn connected_within_excludes_older_clients() {
    let registry = Registry::<u8>::new();
    let (old, _a) = registry.register(orchestrator("old")).expect("room");
    thread::sleep(Duration::from_millis(1500));
    let (new, _b) = registry.register(orchestrator("new")).expect("room");
    assert_eq!(
        registry.list(&Filter::new().connected_within(Duration::from_millis(700))),
        vec![new]
    );
    let both = registry.list(&Filter::new().connected_within(Duration::from_secs(30)));
    assert_eq!(both, vec![new, old], "newest first");
    assert_eq!(
        registry.list(
            &Filter::new()
                .kind(ClientKind::Orchestrator)
                .connected_within(Duration::from_millis(700))
        ),
        vec![new]
    );
}

#[test]
fn select_device_scores_tags_then_breaks_ties_deterministically() {
    let registry = Registry::<u8>::new();
    let (o, _ro) = registry.register(orchestrator("o")).expect("room");
    let (a, _ra) = registry
        .register(device("a", "Windows", &["excel"], &["fast"]))
        .expect("room");
    let (b, _rb) = registry
        .register(device("b", "windows", &["excel"], &["fast"]))
        .expect("room");
    let (c, _rc) = registry
        .register(device("c", "windows", &["excel"], &["fast", "gpu"]))
        .expect("room");
    let (_l, _rl) = registry
        .register(device("l", "linux", &["excel"], &["fast", "gpu"]))
        .expect("room");
    let wanted = Requirements::new()
        .platform("WINDOWS")
        .capability("excel")
        .prefer_tag("fast")
        .prefer_tag("gpu");
    assert_eq!(
        registry.select_device(&wanted),
        Some(c),
        "most shared tags wins"
    );
    let tie = Requirements::new()
        .platform("windows")
        .capability("excel")
        .prefer_tag("fast");
    assert_eq!(
        registry.select_device(&tie),
        Some(a),
        "tie: earliest connected"
    );
    let _task = registry.open_task(o, a).expect("both online");
    assert_eq!(
        registry.select_device(&tie),
        Some(b),
        "tie: fewest open tasks first"
    );
    assert_eq!(
        registry.select_device(&tie.clone().exclude(b).exclude(c)),
        Some(a)
    );
    assert_eq!(
        registry.select_device(&Requirements::new().capability("cad")),
        None
    );
    assert_eq!(
        registry.select_device(&Requirements::new().platform("mac")),
        None
    );
}

#[test]
fn config_merges_at_registration_and_reloads_atomically() {
    let path = temp_file(
        "fleet.yaml",
        "dev1:\n  tags: [office]\n  tier: gold\n  additional_features: [excel, word]\n  max_concurrent_tasks: 1\n",
    );
    let config = DeviceConfig::load(&path).expect("valid yaml");
    let registry = Registry::<u8>::builder()
        .device_config(config)
        .build()
        .expect("valid");
    let (d, _rd) = registry
        .register(device("dev1", "Windows", &["word", "browser"], &["mine"]))
        .expect("room");
    let info = registry.info(d).expect("online");
    assert_eq!(info.system_info.capabilities, ["word", "browser", "excel"]);
    assert_eq!(info.system_info.tags, ["office"]);
    assert_eq!(info.system_info.custom_metadata["tier"], "gold");
    assert_eq!(registry.list(&Filter::new().capability("excel")), vec![d]);

    let bad = temp_file("bad.yaml", "dev1:\n  tags: [x\n  tier: 2\n");
    match registry.reload_config(&bad) {
        Err(ConfigError::Parse { line, column, .. }) => assert!(line >= 2 && column > 0),
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert_eq!(
        registry.info(d).expect("online").system_info.tags,
        ["office"],
        "unchanged"
    );

    let next = temp_file(
        "next.json",
        r#"{"dev1": {"tags": ["lab"], "additional_features": ["cad"]}}"#,
    );
    let reloaded = registry.reload_config(&next).expect("valid json");
    assert_eq!((reloaded.configured, reloaded.updated), (1, 1));
    let info = registry.info(d).expect("online");
    assert_eq!(
        info.system_info.capabilities,
        ["word", "browser", "cad"],
        "re-merged from what it reported"
    );
    assert_eq!(info.system_info.tags, ["lab"]);
    assert!(registry.list(&Filter::new().capability("excel")).is_empty());
    assert_eq!(registry.list(&Filter::new().tag("lab")), vec![d]);
    assert!(matches!(
        registry.reload_config(temp_file("x.ini", "")),
        Err(ConfigError::Format(_))
    ));
}

#[test]
fn tasks_refuse_bad_input_and_complete_once() {
    let path = temp_file("cap.toml", "[d]\nmax_concurrent_tasks = 2\n");
    let registry = Registry::<u8>::builder()
        .device_config(DeviceConfig::load(&path).expect("valid toml"))
        .build()
        .expect("valid");
    let (o, _ro) = registry.register(orchestrator("o")).expect("room");
    let (d, _rd) = registry.register(device("d", "x", &[], &[])).expect("room");
    let (gone, _rg) = registry
        .register(device("gone", "x", &[], &[]))
        .expect("room");
    let _ = registry.unregister(gone);
    assert_eq!(
        registry.open_task(o, gone),
        Err(TaskError::Offline(ClientError::Gone(gone)))
    );
    assert!(matches!(
        registry.open_task(d, o),
        Err(TaskError::WrongKind { .. })
    ));
    assert!(matches!(
        registry.open_task(o, o),
        Err(TaskError::WrongKind { .. })
    ));
    let t1 = registry.open_task(o, d).expect("room");
    let t2 = registry.open_task(o, d).expect("room");
    assert_eq!(
        registry.open_task(o, d),
        Err(TaskError::AtCapacity {
            device: d,
            limit: 2
        })
    );
    assert_eq!(registry.tasks_of_orchestrator(o).expect("online").len(), 2);
    assert_eq!(registry.stats().tasks, 2);
    let done = registry.complete_task(t1).expect("open");
    assert_eq!((done.orchestrator, done.device), (o, d));
    assert_eq!(registry.complete_task(t1), Err(TaskError::UnknownTask(t1)));
    assert_eq!(
        registry
            .tasks_of_device(d)
            .expect("online")
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        vec![t2]
    );
    assert!(registry.open_task(o, d).is_ok(), "completing freed a slot");
}

#[test]
fn a_client_has_at_most_max_tasks_per_client_open() {
    let registry = Registry::<u8>::builder()
        .max_tasks_per_client(2)
        .build()
        .expect("valid");
    let (o, _ro) = registry.register(orchestrator("o")).expect("room");
    let devices: Vec<_> = (0..3)
        .map(|n| {
            registry
                .register(device(&format!("d{n}"), "x", &[], &[]))
                .expect("room")
        })
        .collect();
    let (d0, d1, d2) = (devices[0].0, devices[1].0, devices[2].0);
    let t0 = registry.open_task(o, d0).expect("room");
    let _t1 = registry.open_task(o, d1).expect("room");
    // The orchestrator is at its bound, whatever the device.
    assert_eq!(
        registry.open_task(o, d2),
        Err(TaskError::TooManyTasks {
            client: o,
            limit: 2
        })
    );
    assert!(registry.tasks_of_device(d2).expect("online").is_empty());
    assert_eq!(registry.tasks_of_orchestrator(o).expect("online").len(), 2);
    assert_eq!(registry.stats().tasks, 2);
    registry.complete_task(t0).expect("open");
    assert!(registry.open_task(o, d2).is_ok(), "completing made room");

    // The device side is bounded too: two orchestrators fill d0, a third is refused.
    let (p, _rp) = registry.register(orchestrator("p")).expect("room");
    let (q, _rq) = registry.register(orchestrator("q")).expect("room");
    let (r, _rr) = registry.register(orchestrator("r")).expect("room");
    registry.open_task(p, d0).expect("room");
    registry.open_task(q, d0).expect("room");
    assert_eq!(
        registry.open_task(r, d0),
        Err(TaskError::TooManyTasks {
            client: d0,
            limit: 2
        })
    );
    assert!(registry
        .tasks_of_orchestrator(r)
        .expect("online")
        .is_empty());
    // A cancellation makes room as a completion does.
    let _ = registry.unregister(p).expect("online");
    assert!(registry.open_task(r, d0).is_ok(), "the cancel made room");
}

#[test]
fn racing_task_opens_at_the_bound_admit_exactly_the_limit() {
    for _ in 0..50 {
        let registry = Registry::<u8>::builder()
            .max_tasks_per_client(3)
            .build()
            .expect("valid");
        let (o, _ro) = registry.register(orchestrator("o")).expect("room");
        let devices: Vec<_> = (0..8)
            .map(|n| {
                registry
                    .register(device(&format!("d{n}"), "x", &[], &[]))
                    .expect("room")
            })
            .collect();
        let barrier = Barrier::new(devices.len());
        let opened: usize = thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .map(|(d, _)| {
                    let (registry, barrier, d) = (&registry, &barrier, *d);
                    s.spawn(move || {
                        barrier.wait();
                        usize::from(registry.open_task(o, d).is_ok())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .sum()
        });
        assert_eq!(opened, 3);
        assert_eq!(registry.stats().tasks, 3);
    }
}

#[test]
fn both_sides_dropping_at_once_cancels_each_task_once() {
    for _ in 0..50 {
        let registry = Registry::<u8>::new();
        let (o, _ro) = registry.register(orchestrator("o")).expect("room");
        let (d, _rd) = registry.register(device("d", "x", &[], &[])).expect("room");
        let tasks: HashSet<_> = (0..5)
            .map(|_| registry.open_task(o, d).expect("room"))
            .collect();
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| registry.unregister(o).expect("online"));
            let b = s.spawn(|| registry.unregister(d).expect("online"));
            (a.join().expect("no panic"), b.join().expect("no panic"))
        });
        let mut cancelled: Vec<_> = a
            .cancelled_tasks
            .iter()
            .chain(&b.cancelled_tasks)
            .map(|c| c.task.id)
            .collect();
        cancelled.sort();
        let mut expected: Vec<_> = tasks.into_iter().collect();
        expected.sort();
        assert_eq!(cancelled, expected, "each task cancelled exactly once");
        assert_eq!(registry.stats().tasks, 0);
    }
}

#[test]
fn a_lagging_subscriber_is_told_how_much_it_missed() {
    let registry = Registry::<u8>::builder()
        .event_capacity(4)
        .build()
        .expect("valid");
    let mut events = registry.subscribe();
    for n in 0..10 {
        let _ = registry
            .register(orchestrator(&format!("o{n}")))
            .expect("room");
    }
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(6))
    ));
    assert!(matches!(events.try_recv(), Ok(Event::Joined { .. })));
}

/// The fleet story end to end.
#[test]
fn fleet_scenario() {
    // 1. A Windows device registers; its capabilities merge from a YAML config.
    let path = temp_file(
        "story.yaml",
        "device_windows_001:\n  tags: [finance, fast]\n  additional_features: [excel]\n  max_concurrent_tasks: 3\n",
    );
    let registry = Registry::<String>::builder()
        .device_config(DeviceConfig::load(&path).expect("valid"))
        .build()
        .expect("valid");
    let mut events = registry.subscribe();
    let (dev, mut dev_rx) = registry
        .register(device("device_windows_001", "Windows", &["browser"], &[]))
        .expect("room");
    assert!(registry.is_device_connected("device_windows_001"));

    // 2. It is selected by capability and tags.
    let wanted = Requirements::new()
        .platform("windows")
        .capability("excel")
        .prefer_tag("finance");
    assert_eq!(registry.select_device(&wanted), Some(dev));

    // 3. An orchestrator opens three tasks on it.
    let (orch, _orch_rx) = registry.register(orchestrator("planner")).expect("room");
    let tasks: Vec<_> = (0..3)
        .map(|_| registry.open_task(orch, dev).expect("capacity 3"))
        .collect();
    assert_eq!(registry.tasks_of_device(dev).expect("online").len(), 3);

    // 4. The orchestrator disconnects: all three tasks are cancelled once, and the
    //    device is told through the event stream.
    let report = registry.unregister(orch).expect("online");
    let mut cancelled: Vec<_> = report.cancelled_tasks.iter().map(|c| c.task.id).collect();
    cancelled.sort();
    assert_eq!(cancelled, tasks);
    assert!(report
        .cancelled_tasks
        .iter()
        .all(|c| c.reason == CancelReason::OrchestratorDisconnected));
    assert!(registry.tasks_of_device(dev).expect("online").is_empty());
    let told: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, Event::TaskCancelled { device, .. } if *device == dev))
        .collect();
    assert_eq!(told.len(), 3);

    // 5. A second connection with the same key takes over.
    let again = registry
        .register_with_report(device("device_windows_001", "Windows", &["browser"], &[]))
        .expect("room");
    assert_eq!(again.took_over.map(|t| t.id), Some(dev));
    assert_eq!(registry.id_of("device_windows_001"), Some(again.id));
    assert_eq!(dev_rx.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(
        registry
            .info(again.id)
            .expect("online")
            .system_info
            .capabilities,
        ["browser", "excel"],
        "the new connection gets the config merge too"
    );
    assert_eq!(registry.select_device(&wanted), Some(again.id));
    assert_eq!(registry.client_count(), 1);
}

#[test]
fn a_non_ascii_platform_matches_the_same_way_in_every_query() {
    let registry = Registry::<u8>::new();
    let (id, _rx) = registry
        .register(device("d", "éclair", &["cad"], &[]))
        .expect("room");
    let shouted = "ÉCLAIR";
    // One criterion: answered from the index set alone.
    assert_eq!(registry.list(&Filter::new().platform(shouted)), vec![id]);
    // Several criteria: the set is walked and each profile matched.
    assert_eq!(
        registry.list(&Filter::new().platform(shouted).capability("cad")),
        vec![id]
    );
    assert_eq!(
        registry.select_device(&Requirements::new().platform(shouted)),
        Some(id)
    );
    assert!(registry.info(id).expect("online").platform_is(shouted));
    assert_eq!(registry.stats().by_platform, vec![("éclair".to_owned(), 1)]);
}

fn tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

#[test]
fn an_oversized_profile_is_a_typed_error_and_changes_nothing() {
    let registry = Registry::<u8>::builder()
        .max_tags(4)
        .max_capabilities(2)
        .max_installed_applications(3)
        .max_profile_bytes(1024)
        .build()
        .expect("valid");
    let mut events = registry.subscribe();
    let with = |f: &dyn Fn(&mut SystemInfo)| {
        let mut sys = SystemInfo::default();
        f(&mut sys);
        ClientInfo::new()
            .with_key("big")
            .with_kind(ClientKind::Device)
            .with_system_info(sys)
    };
    let cases: [(ClientInfo, ProfileLimit, usize, usize); 4] = [
        (with(&|s| s.tags = tags(5)), ProfileLimit::Tags, 5, 4),
        (
            with(&|s| s.capabilities = tags(3)),
            ProfileLimit::Capabilities,
            3,
            2,
        ),
        (
            with(&|s| s.installed_applications = tags(4)),
            ProfileLimit::InstalledApplications,
            4,
            3,
        ),
        (
            with(&|s| s.os = Some("x".repeat(2000))),
            ProfileLimit::Bytes,
            0,
            1024,
        ),
    ];
    for (info, what, actual, limit) in cases {
        match registry.register(info) {
            Err(RegisterError::ProfileTooLarge {
                what: w,
                actual: a,
                limit: l,
            }) => {
                assert_eq!((w, l), (what, limit));
                if what == ProfileLimit::Bytes {
                    assert!(a > limit, "{a} bytes reported");
                } else {
                    assert_eq!(a, actual);
                }
            }
            other => panic!("{what:?}: expected ProfileTooLarge, got {other:?}"),
        }
    }
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.id_of("big"), None);
    assert!(registry.list(&Filter::new()).is_empty());
    assert!(events.try_recv().is_err(), "no event for a refused client");

    // At the limits: accepted. Then an update past one is refused, unchanged.
    let info = with(&|s| {
        s.tags = tags(4);
        s.capabilities = tags(2);
    });
    let (id, _rx) = registry.register(info).expect("at the limits");
    let before = registry.info(id).expect("online");
    let grown = registry.update_system_info(id, |s| s.tags.push("one-more".into()));
    assert!(
        matches!(
            grown,
            Err(UpdateError::ProfileTooLarge {
                what: ProfileLimit::Tags,
                actual: 5,
                limit: 4
            })
        ),
        "{grown:?}"
    );
    assert_eq!(registry.info(id).expect("online"), before);
    assert!(registry.list(&Filter::new().tag("one-more")).is_empty());
    let huge = registry.update_system_info(id, |s| s.processor = Some("p".repeat(4096)));
    assert!(
        matches!(
            huge,
            Err(UpdateError::ProfileTooLarge {
                what: ProfileLimit::Bytes,
                ..
            })
        ),
        "{huge:?}"
    );
    assert_eq!(registry.info(id).expect("online"), before);
}

#[test]
fn the_default_bounds_refuse_a_flood_of_tags() {
    // The review's hello: 200,000 tags and capabilities under a 1 KiB metadata
    // limit. Refused by count before anything is serialised or indexed.
    let registry = Registry::<u8>::builder()
        .max_metadata_bytes(1024)
        .build()
        .expect("valid");
    let mut sys = SystemInfo::default();
    sys.tags = tags(100_000);
    sys.capabilities = tags(100_000);
    let flood = ClientInfo::new()
        .with_kind(ClientKind::Device)
        .with_system_info(sys);
    assert!(matches!(
        registry.register(flood),
        Err(RegisterError::ProfileTooLarge {
            what: ProfileLimit::Tags,
            actual: 100_000,
            limit: 64
        })
    ));
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.stats().devices, 0);
}
