//! The races issue 10 found in registration, config reloads and takeover, each as a
//! scenario: a loom model under `--cfg switchboard_loom`, a multi-threaded smoke
//! test otherwise (see `loom_tests::check`).
//!
//! Each model asserts, once every thread has returned, that what the registry
//! answers agrees with itself: the index sets, the key map and the profiles name
//! exactly the clients that are online, with the last config applied.

use loom_tests::{check, join, registry, StartLine};
use switchboard::{
    ClientId, ClientInfo, ClientKind, DeviceConfig, Filter, Receiver, Registry, SystemInfo,
};

const KEY: &str = "k";

/// A keyed device with the given tags.
fn device(tags: &[&str]) -> ClientInfo {
    let mut sys = SystemInfo::default();
    sys.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    ClientInfo::new()
        .with_key(KEY)
        .with_kind(ClientKind::Device)
        .with_system_info(sys)
}

/// Frees one slot and returns the id its next occupant will get: one shard, and
/// freed slots are reused last-in first-out under the next generation.
fn next_id(registry: &Registry<u32>) -> ClientId {
    let (old, _rx) = registry.register(ClientInfo::new()).expect("room");
    let _ = registry.unregister(old).expect("old is connected");
    let generation = 1u64 << (ClientId::INDEX_BITS + ClientId::SHARD_BITS);
    ClientId::from_u64(old.as_u64() + generation)
}

/// Whether every index the registry answers from names `id` exactly when it is
/// online with that tag: tag sets, the all-clients set, the device count, the key.
fn assert_indexes_agree(registry: &Registry<u32>, id: ClientId, tags: &[&str]) {
    let info = registry.info(id).ok();
    let online = info.is_some();
    for tag in tags {
        let listed = registry.list(&Filter::new().tag(*tag)).contains(&id);
        let has = info
            .as_ref()
            .is_some_and(|i| i.system_info.tags.iter().any(|t| t == tag));
        assert_eq!(
            listed, has,
            "tag {tag:?}: listed {listed}, profile {info:?}"
        );
    }
    assert_eq!(
        registry.list(&Filter::new()).contains(&id),
        online,
        "the all-clients set disagrees with the slot"
    );
    assert_eq!(registry.stats().devices, usize::from(online));
    assert_eq!(registry.id_of(KEY), online.then_some(id));
}

/// Model R1: a registration races an unregister of the same id.
///
/// The unregister guesses the id (the freed slot's next generation), as an admin
/// kick or a shutdown sweep over `client_ids()` would find it. The registration
/// takes the key over from a previous connection. Whichever wins, an unregistered
/// client must leave nothing behind: no index set, no key mapping.
#[test]
fn a_registration_racing_an_unregister_of_its_id_leaves_nothing_behind() {
    const REMOVED: &str = "unregister removed the new client";
    const MISSED: &str = "unregister came before the registration";
    check(
        "R1 register | unregister same id",
        &[REMOVED, MISSED],
        |seen| {
            let registry = registry(32);
            // The key's previous connection, which the registration takes over.
            let (previous, _previous_rx) = registry.register(device(&[])).expect("room");
            let guess = next_id(&registry);
            let start = StartLine::new(2);
            let registrar = {
                let registry = registry.clone();
                start.spawn(move || registry.register(device(&["t"])).expect("room"))
            };
            start.wait();
            let removed = registry.unregister(guess).is_ok();
            let (id, mut rx): (ClientId, Receiver<u32>) = join(registrar);
            assert_eq!(id, guess, "one shard reuses the freed slot");
            seen.hit(if removed { REMOVED } else { MISSED });
            assert_eq!(registry.is_online(id), !removed);
            assert!(!registry.is_online(previous), "taken over either way");
            assert!(rx.try_recv().is_err());
            assert_indexes_agree(&registry, id, &["t"]);
        },
    );
}

/// Model R1b: a profile update races the registration window.
///
/// The update finds the id before the registration has joined its index sets; the
/// tag index must end as the final profile says.
#[test]
fn an_update_racing_a_registration_leaves_the_tag_index_right() {
    const UPDATED: &str = "update applied";
    const TOO_EARLY: &str = "update came before the registration";
    check(
        "R1b register | update same id",
        &[UPDATED, TOO_EARLY],
        |seen| {
            let registry = registry(32);
            let guess = next_id(&registry);
            let start = StartLine::new(2);
            let registrar = {
                let registry = registry.clone();
                start.spawn(move || registry.register(device(&["t"])).expect("room"))
            };
            start.wait();
            let updated = registry
                .update_system_info(guess, |s| s.tags = vec!["u".to_owned()])
                .is_ok();
            let (id, _rx) = join(registrar);
            assert_eq!(id, guess);
            seen.hit(if updated { UPDATED } else { TOO_EARLY });
            let tags = registry.info(id).expect("online").system_info.tags.clone();
            assert_eq!(tags, [if updated { "u" } else { "t" }]);
            assert_indexes_agree(&registry, id, &["t", "u"]);
        },
    );
}

fn tier(n: u32) -> DeviceConfig {
    DeviceConfig::from_json_str(&format!(r#"{{"{KEY}":{{"tier":{n}}}}}"#)).expect("valid")
}

fn tier_of(registry: &Registry<u32>) -> Option<u64> {
    let info = registry.info(KEY).ok()?;
    info.system_info.custom_metadata.get("tier")?.as_u64()
}

/// Model R2: a config reload races a registration. The client must end on the
/// reloaded config, whether or not the reload found it online.
#[test]
fn a_reload_racing_a_registration_is_not_lost() {
    const FOUND: &str = "the reload updated the new client";
    const NOT_FOUND: &str = "the reload did not find the client";
    check("R2 register | reload", &[FOUND, NOT_FOUND], |seen| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .device_config(tier(1))
            .build()
            .expect("valid settings");
        let start = StartLine::new(2);
        let registrar = {
            let registry = registry.clone();
            start.spawn(move || registry.register(device(&[])).expect("room"))
        };
        start.wait();
        let reloaded = registry.apply_config(tier(2));
        let (_id, _rx) = join(registrar);
        seen.hit(if reloaded.updated == 1 {
            FOUND
        } else {
            NOT_FOUND
        });
        assert_eq!(tier_of(&registry), Some(2), "the last config applied is 2");
    });
}

/// Model R2b: a config reload races a profile update of an online client. Both
/// must show: the reported memory and the reloaded tier.
#[test]
fn a_reload_racing_an_update_is_not_lost() {
    const SAW_NEW: &str = "the update merged the new config";
    const SAW_OLD: &str = "the update merged the old config";
    check("R2b update | reload", &[SAW_NEW, SAW_OLD], |seen| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .device_config(tier(1))
            .build()
            .expect("valid settings");
        let (_id, _rx) = registry.register(device(&[])).expect("room");
        let start = StartLine::new(2);
        let updater = {
            let registry = registry.clone();
            start.spawn(move || {
                registry
                    .update_system_info(KEY, |s| s.memory_available = Some(5))
                    .expect("online")
            })
        };
        start.wait();
        let _ = registry.apply_config(tier(2));
        let returned = join(updater);
        let returned_tier = returned.system_info.custom_metadata.get("tier");
        seen.hit(if returned_tier.and_then(|t| t.as_u64()) == Some(2) {
            SAW_NEW
        } else {
            SAW_OLD
        });
        assert_eq!(tier_of(&registry), Some(2), "the last config applied is 2");
        let info = registry.info(KEY).expect("online");
        assert_eq!(info.system_info.memory_available, Some(5));
    });
}

/// Model R3: two takeovers of one key race, with `takeover_moves_sessions`. The
/// key's final holder must be in every room the first connection was in, and
/// nobody else.
#[test]
fn a_double_takeover_keeps_every_room() {
    const ROOMS: [u64; 2] = [1, 2];
    const FIRST: &str = "the first new connection holds the key";
    const SECOND: &str = "the second new connection holds the key";
    check("R3 takeover | takeover", &[FIRST, SECOND], |seen| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .takeover_moves_sessions(true)
            .build()
            .expect("valid settings");
        let (old, _rx) = registry
            .register(ClientInfo::new().with_key(KEY))
            .expect("room");
        for room in ROOMS {
            registry.attach(old, room).expect("online");
        }
        let start = StartLine::new(2);
        let first = {
            let registry = registry.clone();
            start.spawn(move || {
                registry
                    .register(ClientInfo::new().with_key(KEY))
                    .expect("room")
            })
        };
        start.wait();
        let (second, _rx2) = registry
            .register(ClientInfo::new().with_key(KEY))
            .expect("room");
        let (first, _rx1) = join(first);
        let holder = registry.id_of(KEY).expect("a connection holds the key");
        seen.hit(if holder == first { FIRST } else { SECOND });
        assert!(holder == first || holder == second);
        for room in ROOMS {
            assert_eq!(
                registry.members(room).ok(),
                Some(vec![holder]),
                "room {room}: the final holder {holder} must be its only member"
            );
        }
        assert_eq!(registry.client_count(), 1);
    });
}
