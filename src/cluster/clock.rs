//! Redis's clock as seen from this node: the publisher stamps each batch with a
//! deadline on it, so that a batch the client library replays late (after a
//! reconnect) is refused by Redis instead of delivered behind the caller's back.

use std::time::Instant;

use crate::sync::{lock, Mutex};

/// The last Redis time read (ms since the epoch) and when it was read here.
#[derive(Debug, Default)]
pub(crate) struct RedisClock(Mutex<Option<(u64, Instant)>>);

impl RedisClock {
    /// Records a Redis `TIME` just answered. Off by at most that round trip.
    pub(crate) fn observe(&self, redis_ms: u64) {
        *lock(&self.0) = Some((redis_ms, Instant::now()));
    }

    /// Redis's time now, estimated; `None` before the first reading.
    pub(crate) fn now_ms(&self) -> Option<u64> {
        let (ms, at) = (*lock(&self.0))?;
        let since = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(ms.saturating_add(since))
    }
}
