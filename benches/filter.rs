//! `filter`: listing devices by profile over 100,000 registered devices.
//!
//! switchboard's indexed filters (`Registry::list`) against the way fleet servers do
//! it today: one `Mutex` around a `HashMap` of profiles, scanned linearly under the
//! lock. Both answer the same queries over the same 100,000 profiles, and each
//! answer is checked against the other once before timing. Throughput is in
//! matching clients returned.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::{ClientId, ClientInfo, ClientKind, Filter, Receiver, Registry, SystemInfo};

const DEVICES: usize = 100_000;
const PLATFORMS: [&str; 4] = ["windows", "linux", "macos", "android"];

/// The locked linear scan that the indexes replace.
struct LockedScan {
    clients: Mutex<HashMap<ClientId, ClientInfo>>,
}

impl LockedScan {
    fn list(&self, filter: impl Fn(&ClientInfo) -> bool) -> Vec<ClientId> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .iter()
            .filter(|(_, info)| filter(info))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Device `n`'s profile: platform, 1-3 capabilities and a tag, spread so that
/// queries select about 25%, 5%, 1% and 0.1% of the fleet.
fn profile(n: usize) -> ClientInfo {
    let mut sys = SystemInfo::default();
    sys.capabilities.push("browser".into());
    if n % 20 == 0 {
        sys.capabilities.push("excel".into());
    }
    if n % 100 == 0 {
        sys.capabilities.push("cad".into());
    }
    sys.tags.push(format!("rack-{}", n % 1000));
    ClientInfo::new()
        .with_key(format!("device_{n:06}"))
        .with_kind(ClientKind::Device)
        .with_platform(PLATFORMS[n % PLATFORMS.len()])
        .with_system_info(sys)
}

fn setup() -> (Registry<u8>, Vec<Receiver<u8>>, LockedScan) {
    let registry = Registry::new();
    let mut receivers = Vec::with_capacity(DEVICES);
    let mut scan = HashMap::with_capacity(DEVICES);
    for n in 0..DEVICES {
        let info = profile(n);
        let (id, rx) = match registry.register(info.clone()) {
            Ok(pair) => pair,
            Err(e) => panic!("registering device {n}: {e}"),
        };
        receivers.push(rx);
        scan.insert(id, info);
    }
    let scan = LockedScan {
        clients: Mutex::new(scan),
    };
    (registry, receivers, scan)
}

type Query = (&'static str, fn() -> Filter, fn(&ClientInfo) -> bool);

fn queries() -> [Query; 4] {
    [
        (
            "platform_25pct",
            || Filter::new().platform("Linux"),
            |i| i.platform_is("linux"),
        ),
        (
            "capability_5pct",
            || Filter::new().capability("excel"),
            |i| i.system_info.has_capabilities(&["excel"]),
        ),
        (
            "all_capabilities_1pct",
            || Filter::new().capability("excel").capability("cad"),
            |i| i.system_info.has_capabilities(&["excel", "cad"]),
        ),
        (
            "kind_platform_tag_0.1pct",
            || {
                Filter::new()
                    .kind(ClientKind::Device)
                    .platform("windows")
                    .tag("rack-4")
            },
            |i| {
                i.kind == Some(ClientKind::Device)
                    && i.platform_is("windows")
                    && i.system_info.tags.iter().any(|t| t == "rack-4")
            },
        ),
    ]
}

fn filter(c: &mut Criterion) {
    let (registry, _receivers, scan) = setup();
    let mut group = c.benchmark_group("filter");
    for (name, make, predicate) in queries() {
        let filter = make();
        let mut indexed = registry.list(&filter);
        let mut scanned = scan.list(predicate);
        indexed.sort();
        scanned.sort();
        assert_eq!(indexed, scanned, "{name}: the two answers differ");
        assert!(!indexed.is_empty(), "{name}: the query selects nothing");
        group.throughput(Throughput::Elements(indexed.len() as u64));
        group.bench_function(BenchmarkId::new("switchboard", name), |b| {
            b.iter(|| black_box(registry.list(&filter)).len());
        });
        group.bench_function(BenchmarkId::new("locked_scan", name), |b| {
            b.iter(|| black_box(scan.list(predicate)).len());
        });
    }
    group.finish();
}

fn config() -> Criterion {
    let quick = std::env::var_os("SWITCHBOARD_BENCH_QUICK").is_some_and(|v| v != "0");
    if quick {
        Criterion::default()
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10)
    } else {
        Criterion::default()
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = filter
}
criterion_main!(benches);
