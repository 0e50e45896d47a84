//! Waiting in the cluster tests: for a message, or for a condition to hold.

use std::time::{Duration, Instant};

use switchboard::Receiver;

/// The next message, within 10 s.
pub async fn recv<M>(rx: &mut Receiver<M>) -> M {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("channel open")
}

/// Waits up to `limit` for `check`, polling.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
