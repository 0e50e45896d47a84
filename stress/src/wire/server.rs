//! The server under test: the `ws_server` example run as a separate process, so that its
//! memory is its own and can be read from `/proc`; or an external server on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the server may take to print its listening line, and to exit on SIGTERM.
const PATIENCE: Duration = Duration::from_secs(15);
/// The most of the server's stderr kept to show when it fails.
const STDERR_KEPT: usize = 16 * 1024;

/// A running ws_server process.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// Its WebSocket listener.
    pub ws: SocketAddr,
    /// Its admin listener (loopback, for `GET /stats`).
    pub admin: Option<SocketAddr>,
    /// What it printed on stderr so far (the tail).
    stderr: Arc<Mutex<String>>,
}

/// Finds the ws_server binary: `--server-bin`, else `release/examples/ws_server` under
/// `$CARGO_TARGET_DIR`, beside this executable, or under the workspace's `target`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("--server-bin {}: no such file", path.display()))
        };
    }
    let name = format!("ws_server{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/examples").join(&name));
    } else {
        // `target/release/stress` has its examples in `target/release/examples`.
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| {
            e.parent()
                .filter(|d| d.ends_with("release"))
                .map(Path::to_path_buf)
        }) {
            candidates.push(dir.join("examples").join(&name));
        }
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/release/examples")
                .join(&name),
        );
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "the ws_server example is not built (looked in {}); run \
             `cargo build --release --example ws_server` first, or pass --server-bin PATH",
                looked.join(", ")
            )
        })
}

/// Parses `ws_server listening ws=ADDR admin=ADDR|off`.
pub fn parse_listening(line: &str) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let rest = line
        .trim()
        .strip_prefix("ws_server listening ")
        .ok_or_else(|| format!("unexpected first line from ws_server: {line:?}"))?;
    let mut ws = None;
    let mut admin = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("ws", v)) => ws = v.parse().ok(),
            Some(("admin", "off")) => {}
            Some(("admin", v)) => admin = v.parse().ok(),
            _ => {}
        }
    }
    let ws = ws.ok_or_else(|| format!("no ws=ADDR in ws_server's line {line:?}"))?;
    Ok((ws, admin))
}

/// Checks that `url` is `ws://IP:PORT/...` on a loopback address and returns the address.
pub fn loopback_target(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--target {url:?}: use ws://127.0.0.1:PORT/ws"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = host.parse().map_err(|_| {
        format!("--target {url:?}: the host must be an IP:PORT, like 127.0.0.1:8080")
    })?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!("--target {url:?}: loopback addresses only"))
    }
}

impl Spawned {
    /// Starts `bin` on an ephemeral loopback port with `args` added, and waits for its
    /// listening line.
    pub fn start(bin: &Path, args: &[String]) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(["--ws", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut kept = keep.lock().unwrap_or_else(PoisonError::into_inner);
                    kept.push_str(&line);
                    kept.push('\n');
                    if kept.len() > STDERR_KEPT {
                        let cut = kept.len() - STDERR_KEPT;
                        let cut = (cut..kept.len())
                            .find(|&i| kept.is_char_boundary(i))
                            .unwrap_or(kept.len());
                        kept.drain(..cut);
                    }
                }
            });
        }
        let (first_tx, first_rx) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            // Keeps reading after the first line, so that the server never writes into a
            // closed pipe.
            std::thread::spawn(move || {
                let mut lines = BufReader::new(pipe).lines();
                let _ = first_tx.send(lines.next());
                for _ in lines {}
            });
        }
        let first = match first_rx.recv_timeout(PATIENCE) {
            Ok(Some(Ok(line))) => Ok(line),
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("ws_server exited before printing its listening line".to_owned())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "ws_server printed nothing within {}s",
                PATIENCE.as_secs()
            )),
        };
        let parsed = first.and_then(|line| parse_listening(&line));
        match parsed {
            Ok((ws, admin)) => Ok(Self {
                child,
                ws,
                admin,
                stderr,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                Err(format!("{e}\nws_server's stderr:\n{}", tail(&stderr)))
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit; `Ok(())` if it exited with status 0.
    pub fn stop(mut self) -> Result<(), String> {
        #[cfg(unix)]
        {
            let pid = libc::pid_t::try_from(self.child.id())
                .map_err(|_| "ws_server's pid does not fit a pid_t".to_owned())?;
            // SAFETY: `kill` has no memory-safety preconditions; the pid is our child's,
            // which has not been reaped yet, so it cannot have been reused.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(format!(
                    "cannot send SIGTERM to ws_server: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = self.child.kill();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "ws_server did not exit within {}s of SIGTERM; killed\n{}",
                        PATIENCE.as_secs(),
                        tail(&self.stderr)
                    ));
                }
                Err(e) => return Err(format!("cannot wait for ws_server: {e}")),
            }
        };
        // Let the stderr reader take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "ws_server exited with {status} after SIGTERM\n{}",
                tail(&self.stderr)
            ))
        }
    }
}

impl Drop for Spawned {
    /// Never leaves the server behind, whatever happened to the run.
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(stderr: &Mutex<String>) -> String {
    stderr
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Resident set size of process `pid`, from `VmRSS` in `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:   1234 kB` line, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `GET path` on a server's admin API, as JSON.
pub fn get_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("admin {admin}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| format!("admin {admin}: no HTTP body"))?;
    serde_json::from_str(body).map_err(|e| format!("admin {admin} {path}: {e}"))
}

/// The server's count of broadcast messages skipped for a full queue, from the admin
/// API's `GET /stats`.
pub fn dropped(admin: SocketAddr) -> Result<u64, String> {
    get_json(admin, "/stats")?
        .get("dropped")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("admin {admin}: /stats has no `dropped`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let (ws, admin) =
            parse_listening("ws_server listening ws=127.0.0.1:40001 admin=127.0.0.1:40002\n")
                .expect("parses");
        assert_eq!(ws, "127.0.0.1:40001".parse().expect("addr"));
        assert_eq!(admin, Some("127.0.0.1:40002".parse().expect("addr")));
        let (_, admin) =
            parse_listening("ws_server listening ws=127.0.0.1:1 admin=off").expect("parses");
        assert_eq!(admin, None);
        assert!(parse_listening("ws_server: address in use").is_err());
        assert!(parse_listening("ws_server listening ws=nowhere admin=off").is_err());
    }

    #[test]
    fn targets_must_be_loopback_ip_addresses() {
        assert!(loopback_target("ws://127.0.0.1:8080/ws").is_ok());
        assert!(loopback_target("ws://[::1]:8080/ws").is_ok());
        assert!(loopback_target("ws://10.0.0.1:8080/ws").is_err());
        assert!(loopback_target("ws://localhost:8080/ws").is_err());
        assert!(loopback_target("http://127.0.0.1:8080/ws").is_err());
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tws_server\nVmPeak:\t  9000 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
