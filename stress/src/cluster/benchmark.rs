//! The engine's ceiling: what `redis-benchmark` reaches publishing pipelined
//! against the run's own redis-server (started by `tests/common/redis.rs`, which
//! the tests share).

use std::process::{Command, Stdio};

/// `redis-benchmark -P 16 -n 200000 PUBLISH <channel> <payload>`: requests per
/// second, pipelined 16 deep. The engine's ceiling for publications here.
pub fn publish_ceiling(port: u16, payload_len: usize) -> Result<f64, String> {
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
