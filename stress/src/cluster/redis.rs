//! A redis-server of the run's own (loopback, a free port, no persistence), the
//! `redis-benchmark` ceiling, and small reads of a node's admin API.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server child; killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts one on a free loopback port (never 6379).
    pub fn start() -> Result<Self, String> {
        let port = loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            if port != 6379 {
                break port;
            }
        };
        let dir = std::env::temp_dir().join(format!("stress-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut redis = Self {
            child: None,
            port,
            dir,
        };
        redis.spawn()?;
        Ok(redis)
    }

    /// (Re)starts the server on the same port.
    pub fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server ({e}); install it with `apt-get install redis-server`")
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command through `redis-cli`; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// `redis-benchmark -P 16 -n 200000 PUBLISH <channel> <payload>`: requests per
    /// second, pipelined 16 deep. The engine's ceiling for publications here.
    pub fn benchmark_publish_on(port: u16, payload_len: usize) -> Result<f64, String> {
        let payload = "x".repeat(payload_len.max(1));
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-P", "16", "-n", "200000", "-q"])
            .args(["PUBLISH", "stress-benchmark", &payload])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_benchmark(&text).ok_or_else(|| format!("redis-benchmark said {text:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `NNN.NN requests per second` in `redis-benchmark -q` output (it redraws
/// the line with `\r` while it runs).
pub fn parse_benchmark(text: &str) -> Option<f64> {
    text.split(['\r', '\n']).rev().find_map(|line| {
        let (_, rest) = line.rsplit_once(": ")?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_output_gives_the_final_rate() {
        let out = "PUBLISH stress-benchmark xxx: rps=0.0 (overall: nan) avg_msec=nan\r\
                   PUBLISH stress-benchmark xxx: 381679.38 requests per second, p50=1.031 msec\n";
        assert_eq!(parse_benchmark(out), Some(381_679.38));
        assert_eq!(parse_benchmark("ERR unknown command"), None);
    }
}
