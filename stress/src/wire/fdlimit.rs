//! The open-file limit: one socket per connection, so ten thousand connections need more
//! than the usual soft limit of 1024.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit, or
/// `None` where the limit cannot be read.
#[cfg(unix)]
pub fn raise() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit`; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // `rlim_t` is `u64` on Linux, not on every unix.
    #[allow(clippy::unnecessary_cast)]
    Some(limit.rlim_cur as u64)
}

/// No limit to raise here.
#[cfg(not(unix))]
pub fn raise() -> Option<u64> {
    None
}

/// File descriptors the harness needs besides its sockets (runtime, pipes, stdio).
pub const SPARE: u64 = 64;

/// Checks that `connections` sockets fit under `limit`.
pub fn check(connections: u64, limit: Option<u64>) -> Result<(), String> {
    match limit {
        Some(limit) if connections + SPARE > limit => Err(format!(
            "{connections} connections need about {} open files, but the hard limit is \
             {limit}; raise it (`ulimit -Hn`, /etc/security/limits.conf) or open fewer",
            connections + SPARE
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_and_the_check_counts_spares() {
        let before = raise();
        assert_eq!(raise(), before, "a second raise changes nothing");
        assert!(check(100, Some(100 + SPARE)).is_ok());
        assert!(check(101, Some(100 + SPARE)).is_err());
        assert!(check(1_000_000, None).is_ok());
    }
}
