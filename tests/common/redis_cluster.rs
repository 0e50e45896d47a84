//! A Redis Cluster of a run's own: three masters, no replicas, on free loopback
//! ports (never 6379), persistence off, files in a temporary directory. For the
//! tests that need one (`tests/redis_cluster.rs`); it starts and checks its
//! servers as `redis.rs` does its one.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{available, cli_at as cli, free_port, spawn_server};

/// Three `redis-server` masters joined into one cluster, SIGKILLed on drop.
pub struct RedisCluster {
    /// Each master's process and client port.
    masters: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts one, or returns `None` after one line on stderr if `redis-server`
    /// or `redis-cli` is missing. Panics instead under
    /// `SWITCHBOARD_REQUIRE_EXTERNAL=1`, or if the cluster does not form.
    pub fn start(test: &str) -> Option<Self> {
        if !available(test, "redis-server", "redis-server")
            || !available(test, "redis-cli", "redis-tools")
        {
            return None;
        }
        Some(Self::launch(test).unwrap_or_else(|e| panic!("{e}")))
    }

    fn launch(test: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-{test}-cluster-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cluster = Self {
            masters: Vec::new(),
            dir,
        };
        while cluster.masters.len() < 3 {
            cluster.spawn_master()?;
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        // Every master must know every slot's owner before a client asks it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = cluster.ports().iter().all(|&p| {
                let info = cli(p, &["CLUSTER", "INFO"]).unwrap_or_default();
                let has = |l: &str| info.lines().any(|x| x.trim() == l);
                has("cluster_state:ok")
                    && has("cluster_slots_ok:16384")
                    && has("cluster_known_nodes:3")
            });
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err("the Redis Cluster did not reach cluster_state:ok in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one master on a free port (its cluster bus on another), once it
    /// answers; a port taken meanwhile makes it exit, and another is tried.
    fn spawn_master(&mut self) -> Result<(), String> {
        for _ in 0..20 {
            let (port, bus) = (free_port()?, free_port()?);
            if port == bus {
                continue;
            }
            let conf = self.dir.join(format!("nodes-{port}.conf"));
            let bus_arg = bus.to_string();
            let extra: [&OsStr; 6] = [
                "--cluster-port".as_ref(),
                bus_arg.as_ref(),
                "--cluster-enabled".as_ref(),
                "yes".as_ref(),
                "--cluster-config-file".as_ref(),
                conf.as_os_str(),
            ];
            if let Some(child) = spawn_server(port, &self.dir, &extra)? {
                self.masters.push((child, port));
                return Ok(());
            }
        }
        Err("redis-server found no free port in 20 tries".into())
    }

    /// The masters' client ports.
    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(|&(_, p)| p).collect()
    }

    /// The URL fred reads as a cluster: the first master, the others as `node=`.
    pub fn url(&self) -> String {
        let ports = self.ports();
        let others: Vec<String> = ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            ports[0],
            others.join("&")
        )
    }

    /// One command through `redis-cli` to the master on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(port, args)
    }

    /// The slot of `key` (or channel), from `CLUSTER KEYSLOT`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let out = cli(self.ports()[0], &["CLUSTER", "KEYSLOT", key]).unwrap_or_default();
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {out:?}"))
    }

    /// The port of the master that owns `key`'s slot, from `CLUSTER NODES`.
    pub fn owner(&self, key: &str) -> u16 {
        let slot = self.keyslot(key);
        let nodes = cli(self.ports()[0], &["CLUSTER", "NODES"]).unwrap_or_default();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = fields.get(1) else { continue };
            let port = addr
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            let owns = fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(|n| n.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if let (true, Some(port)) = (owns, port) {
                return port;
            }
        }
        panic!("no master owns slot {slot}: {nodes}")
    }

    /// Subscribers of the shard channel `channel`, from `PUBSUB SHARDNUMSUB` on
    /// the master that owns it.
    pub fn shardnumsub(&self, channel: &str) -> usize {
        let out = cli(self.owner(channel), &["PUBSUB", "SHARDNUMSUB", channel]).unwrap_or_default();
        out.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGSTOP to the master on `port`: its connections stay open and nothing
    /// answers, until [`thaw`](Self::thaw). SIGKILL on drop still ends it.
    pub fn freeze(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// SIGCONT: undoes [`freeze`](Self::freeze).
    pub fn thaw(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        let (child, _) = self
            .masters
            .iter()
            .find(|&&(_, p)| p == port)
            .unwrap_or_else(|| panic!("no master on port {port}"));
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill {signal} redis-server"
        );
    }

    /// `CLIENT KILL TYPE pubsub` on every master: every subscriber connection
    /// drops, and its client must reconnect and subscribe again. The number
    /// killed.
    pub fn kill_subscribers(&self) -> usize {
        self.ports()
            .into_iter()
            .map(|p| {
                cli(p, &["CLIENT", "KILL", "TYPE", "pubsub"])
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.masters {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
