//! The config-reload protocol weakened on purpose, which loom must catch: proof
//! that model R2 (`races.rs`) checks the protocol the std build relies on.
//!
//! A reload stores its config, does an `AcqRel` RMW on `Fleet::config_epoch` and
//! walks the key map; a registration claims its key, does an `AcqRel` RMW on the
//! same word and re-reads the config. The canary (the library's
//! `loom_canary::weaken_registration_epoch`) turns the registration's RMW into a
//! plain `Acquire` load. Then nothing orders the key's insert before the walk, nor
//! the config's store before the re-read: the reload can miss the new key while the
//! registration merges the old config, and the reload is lost.
//!
//! The model sees this only because, under loom, the key map is papaya's orderings
//! (`LockFreeMap`: a `Release` publish, `Acquire` reads) rather than a mutex, and
//! the config cell's read does not release to later stores (arc-swap's RMW is on
//! its own debt slot). With either stand-in as strong as before, this canary
//! passed.
//!
//! loom-only: on real threads (x86) every RMW is a full barrier and the window is
//! a few instructions wide.
#![cfg(switchboard_loom)]

use loom_tests::thread::spawn;
use loom_tests::{check, join};
use switchboard::{ClientInfo, ClientKind, DeviceConfig, Registry};

const KEY: &str = "k";

fn tier(n: u32) -> DeviceConfig {
    DeviceConfig::from_json_str(&format!(r#"{{"{KEY}":{{"tier":{n}}}}}"#)).expect("valid")
}

/// Restores the real protocol on this thread when the test ends, panicking or not.
struct Weakened;

impl Weakened {
    fn new() -> Self {
        switchboard::loom_canary::weaken_registration_epoch(true);
        Self
    }
}

impl Drop for Weakened {
    fn drop(&mut self) {
        switchboard::loom_canary::weaken_registration_epoch(false);
    }
}

/// Model R2 with the registration's epoch RMW weakened to a load.
#[test]
#[should_panic(expected = "reload lost")]
fn a_registration_that_only_loads_the_epoch_loses_a_reload() {
    let _weakened = Weakened::new();
    check("canary: registration loads the epoch", &[], |_| {
        let registry: Registry<u32> = Registry::builder()
            .shards(1)
            .device_config(tier(1))
            .build()
            .expect("valid settings");
        let registrar = {
            let registry = registry.clone();
            spawn(move || {
                let device = ClientInfo::new()
                    .with_key(KEY)
                    .with_kind(ClientKind::Device);
                registry.register(device).expect("room")
            })
        };
        let _ = registry.apply_config(tier(2));
        let (_id, _rx) = join(registrar);
        let info = registry.info(KEY).expect("online");
        let tier = info.system_info.custom_metadata.get("tier");
        assert_eq!(
            tier.and_then(|t| t.as_u64()),
            Some(2),
            "reload lost: the client kept the old config"
        );
    });
}
