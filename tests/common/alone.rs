//! Tests that read the process's resident memory: run each in a process of its own,
//! so that no other test's allocations count in what it measures.

use std::process::Command;

/// Set in the child that runs a test alone.
const ALONE: &str = "SWITCHBOARD_TEST_ALONE";

/// Whether the caller, the test named `name` (its full path, as `cargo test`
/// prints it), should run its body here. Outside that child it runs the test
/// again in a process of its own, with no other test beside it, fails if the
/// child fails or ran no test, and returns `false`: the caller returns at once.
pub fn here(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, run alone, failed:\n{stdout}\n{stderr}"
    );
    false
}

/// This process's resident memory in bytes, from `/proc/self/status`; `None`
/// where there is no such file (not Linux).
pub fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
