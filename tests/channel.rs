//! The client channel through the public API: capacity, close, waiting senders.

use std::time::Duration;

use switchboard::{Registry, SendError, TryRecvError};

fn registry(capacity: usize) -> Registry<u32> {
    Registry::builder()
        .channel_capacity(capacity)
        .build()
        .expect("valid config")
}

/// Issue 10 item 5: a timeout too large to add to `now` means "no deadline", not a
/// panic on the deadline's overflow.
#[tokio::test]
async fn send_timeout_with_duration_max_waits_without_a_deadline() {
    let registry = registry(1);
    let (id, mut rx) = registry.register(Default::default()).expect("register");
    registry
        .send_timeout(id, 1, Duration::MAX)
        .await
        .expect("room for one message");
    let drain = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rx.recv().await
    };
    let (sent, first) = tokio::join!(registry.send_timeout(id, 2, Duration::MAX), drain);
    assert!(
        sent.is_ok(),
        "the waiting send went through once space freed"
    );
    assert_eq!(first, Some(1));
    assert_eq!(rx.try_recv(), Ok(2));
}

/// A sender waiting without a deadline learns of the close and gets its message back.
#[tokio::test]
async fn send_without_a_deadline_ends_with_the_message_when_the_client_leaves() {
    let registry = registry(1);
    let (id, _rx) = registry.register(Default::default()).expect("register");
    registry.send(id, 1).expect("room for one message");
    let leave = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        registry.unregister(id).is_ok()
    };
    let (sent, left) = tokio::join!(registry.send_timeout(id, 2, Duration::MAX), leave);
    assert!(left);
    assert!(
        matches!(sent, Err(SendError::Closed(2))),
        "got {sent:?} instead of the message back as Closed"
    );
}

/// The first message of a fresh channel, then a full ring's worth, in order.
#[test]
fn a_channel_delivers_in_order_across_many_laps() {
    for capacity in [1, 2, 3, 4, 5, 7, 32, 33] {
        let registry = registry(capacity);
        let (id, mut rx) = registry.register(Default::default()).expect("register");
        let mut next_sent = 0u32;
        let mut next_received = 0u32;
        for round in 0..(3 * capacity + 5) {
            // Fill to a depth that varies per round, up to the capacity.
            let depth = 1 + round % capacity;
            for _ in 0..depth {
                registry.send(id, next_sent).expect("under capacity");
                next_sent += 1;
            }
            if depth == capacity {
                assert!(
                    matches!(registry.send(id, u32::MAX), Err(SendError::Full(u32::MAX))),
                    "a full channel gives the message back"
                );
            }
            assert_eq!(rx.len(), depth);
            while let Ok(msg) = rx.try_recv() {
                assert_eq!(msg, next_received, "capacity {capacity}");
                next_received += 1;
            }
        }
        assert_eq!(next_sent, next_received);
        let _ = registry.unregister(id);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }
}

/// Messages left in a channel are dropped exactly once, whoever lets go last.
#[test]
fn queued_messages_are_freed_once_with_the_channel() {
    let payload = std::sync::Arc::new(());
    let registry = Registry::<std::sync::Arc<()>>::builder()
        .channel_capacity(8)
        .build()
        .expect("valid config");
    let (id, rx) = registry.register(Default::default()).expect("register");
    for _ in 0..6 {
        registry.send(id, payload.clone()).expect("room");
    }
    assert_eq!(std::sync::Arc::strong_count(&payload), 7);
    drop(rx);
    drop(registry);
    assert_eq!(std::sync::Arc::strong_count(&payload), 1);
}
