//! The message every scenario sends, and the count of copies that were never received.
//!
//! A [`Msg`] is a handle to one shared [`Payload`]: a broadcast clones the handle once per
//! recipient, as users do with `Arc` or `Bytes` payloads. The payload names its session and
//! sequence number, so a receiver can tell whether it should have got it at all, and carries
//! the instant the broadcast began, for the latency histogram.
//!
//! Every handle is either received (its receiver calls [`Msg::received`]) or dropped
//! unreceived: refused by a full or closed channel, given back by a failed send, left in a
//! dropped receiver, or the original a broadcast cloned from. Those drops are counted in
//! [`DISCARDED`], which makes an exact end-of-run identity possible: see
//! [`invariants::message_balance`](crate::invariants::message_balance).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use crate::striped::Striped;

/// `Payload::session` of a direct send.
pub const DIRECT: u64 = u64::MAX;

/// `Payload::target` of a broadcast, which names no single client.
pub const EVERYONE: u64 = u64::MAX;

/// Handles dropped without being received, since the process started.
pub static DISCARDED: Striped = Striped::new();

thread_local! {
    /// While a receiver is being dropped on this thread ([`dropping`]), the unreceived
    /// handles its drop frees; `None` otherwise.
    static DROPPING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Drops `rx` and returns how many unreceived handles its drop freed: the messages that
/// were queued in it, counted exactly (switchboard's receiver, like tokio's, frees what is
/// queued when it is dropped).
pub fn dropping<R>(rx: R) -> u64 {
    DROPPING.with(|d| d.set(Some(0)));
    drop(rx);
    DROPPING.with(|d| d.take()).unwrap_or(0)
}

/// What one broadcast or send carries.
#[derive(Debug)]
pub struct Payload {
    /// When the broadcast (or send) call began.
    pub sent: Instant,
    /// The session broadcast to, or [`DIRECT`].
    pub session: u64,
    /// The sequence number the sender drew from the session's (or the direct) counter.
    pub seq: u64,
    /// The serial of the client a direct send was meant for, or [`EVERYONE`].
    pub target: u64,
    /// Filler of `--message-size` bytes.
    pub body: Box<[u8]>,
}

/// A handle to a shared payload; one per recipient.
#[derive(Debug)]
pub struct Msg {
    payload: Arc<Payload>,
    received: bool,
}

impl Msg {
    /// A new message; its clock starts now.
    pub fn new(session: u64, seq: u64, target: u64, size: usize) -> Self {
        Self {
            payload: Arc::new(Payload {
                sent: Instant::now(),
                session,
                seq,
                target,
                body: vec![0xA5; size].into_boxed_slice(),
            }),
            received: false,
        }
    }

    /// The shared payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Marks this handle as received and drops it.
    pub fn received(mut self) {
        self.received = true;
    }
}

impl Clone for Msg {
    fn clone(&self) -> Self {
        Self {
            payload: Arc::clone(&self.payload),
            received: false,
        }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        if !self.received {
            DISCARDED.add(1);
            DROPPING.with(|d| {
                if let Some(n) = d.get() {
                    d.set(Some(n + 1));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreceived_handles_count_as_discarded() {
        // DISCARDED is process-wide and tests run in parallel, so count this thread's
        // drops through a message no other test can see: compare with clones made.
        let before = DISCARDED.get();
        let original = Msg::new(1, 2, EVERYONE, 8);
        let copy = original.clone();
        assert_eq!(copy.payload().seq, 2);
        copy.received();
        drop(original);
        assert!(DISCARDED.get() > before);
    }

    #[test]
    fn dropping_a_receiver_counts_exactly_what_it_held() {
        let (tx, rx) = std::sync::mpsc::channel();
        for seq in 0..3 {
            tx.send(Msg::new(1, seq, EVERYONE, 8)).unwrap_or_default();
        }
        let received = Msg::new(1, 9, EVERYONE, 8);
        received.received();
        assert_eq!(dropping(rx), 3);
        assert_eq!(dropping(Msg::new(1, 1, EVERYONE, 8)), 1);
        drop(Msg::new(1, 1, EVERYONE, 8));
        assert_eq!(dropping(()), 0, "nothing counted outside a drop");
    }
}
