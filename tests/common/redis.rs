//! A `redis-server` of a run's own on a free loopback port (never 6379, never a
//! system service): for the tests that need one (`tests/cluster.rs`,
//! `tests/browser.rs`) and for `stress cluster`, which includes this file too, so
//! that both start, restart and check their server the same way.

use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the run's own, SIGKILLed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts one, or returns `None` after one line on stderr if there is no
    /// `redis-server`. Panics instead under `SWITCHBOARD_REQUIRE_EXTERNAL=1`.
    pub fn start(test: &str) -> Option<Self> {
        if !available(test, "redis-server", "redis-server") {
            return None;
        }
        Some(Self::launch("switchboard").unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts one, its files in a temporary directory named after `name`.
    pub fn launch(name: &str) -> Result<Self, String> {
        // A free port can be taken before the server binds it (by another test's
        // server, or as the local port of an outgoing connection): then this
        // server exits, and another port is tried.
        for _ in 0..20 {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("{name}-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut redis = Self {
                child: None,
                port,
                dir,
            };
            if redis.try_spawn(&[])? {
                return Ok(redis);
            }
        }
        Err("redis-server found no free port in 20 tries".into())
    }

    /// Starts the server again on its port (after [`kill`](Self::kill)).
    pub fn spawn(&mut self) -> Result<(), String> {
        self.spawn_with(&[])
    }

    /// [`spawn`](Self::spawn), with `extra` arguments after the usual ones.
    pub fn spawn_with(&mut self, extra: &[&str]) -> Result<(), String> {
        // The port may be held for a moment, as above; it is this run's to reuse.
        for _ in 0..50 {
            if self.try_spawn(extra)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "redis-server could not bind port {} again",
            self.port
        ))
    }

    /// Starts the server; true once it answers, false if it exited first (its port
    /// was taken). Only this server's answer counts: another run's server on the
    /// same port would answer PING just as well.
    fn try_spawn(&mut self, extra: &[&str]) -> Result<bool, String> {
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        let child = spawn_server(self.port, &self.dir, &extra)
            .map_err(|e| format!("{e}; install it with `apt-get install redis-server`"))?;
        let started = child.is_some();
        self.child = child;
        Ok(started)
    }

    /// SIGSTOP: connections stay open and nothing answers, as with a Redis stuck
    /// in a long command or a dead network path. SIGKILL on drop still ends it.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status();
            assert!(status.is_ok_and(|s| s.success()), "redis-server stops");
        }
    }

    /// SIGCONT: undoes [`freeze`](Self::freeze); what clients sent meanwhile runs now.
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            assert!(status.is_ok_and(|s| s.success()), "redis-server continues");
        }
    }

    /// SIGKILL: no goodbye to any client.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command through `redis-cli`; its output trimmed, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli_at(self.port, args)
    }

    /// Subscribers of `channel`, from `PUBSUB NUMSUB`.
    pub fn numsub(&self, channel: &str) -> usize {
        let out = self.cli(&["PUBSUB", "NUMSUB", channel]).unwrap_or_default();
        out.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `program` can be run; if not, one line on stderr saying to install
/// `package`, or a panic under `SWITCHBOARD_REQUIRE_EXTERNAL=1`.
pub fn available(test: &str, program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = format!(
            "test {test}: {program} not found; install it with \
             `apt-get install {package}`"
        );
        if std::env::var("SWITCHBOARD_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{message} (SWITCHBOARD_REQUIRE_EXTERNAL=1 makes this a failure)");
        }
        // Straight to stderr: libtest would swallow eprintln! of a passing test.
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    }
    found
}

/// Starts `redis-server` on `port` (persistence off, files in `dir`, `extra`
/// arguments after), and waits until it answers as itself: another run's server
/// on the same port would answer just as well. `None` if it exited first (its
/// port was taken).
pub fn spawn_server(port: u16, dir: &Path, extra: &[&OsStr]) -> Result<Option<Child>, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server ({e})"))?;
    let pid = format!("process_id:{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child
            .try_wait()
            .map_err(|e| format!("redis-server: {e}"))?
            .is_some()
        {
            return Ok(None);
        }
        let info = cli_at(port, &["INFO", "server"]).unwrap_or_default();
        if info.lines().any(|l| l.trim() == pid) {
            return Ok(Some(child));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("redis-server did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One command through `redis-cli` to `port`; its output trimmed, or `None` if
/// it failed.
pub fn cli_at(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// A free loopback port other than 6379, the default a system service would use.
pub fn free_port() -> Result<u16, String> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        if port != 6379 {
            return Ok(port);
        }
    }
}
