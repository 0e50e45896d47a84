//! The bounded outbound channel of one client, and its [`Receiver`].
//!
//! Why not `tokio::sync::mpsc`? The registry must be able to close a client's channel
//! *from the sending side* (unregister, kick, takeover) while broadcast snapshots may
//! still hold a handle to it, and the close must be final: once it returns, no send
//! succeeds. A tokio channel closes only when its last `Sender` drops, which a
//! snapshot held by a concurrent broadcast can delay indefinitely.
//!
//! # Protocol
//!
//! One word, `state`, holds a `CLOSED` flag, a `WAITERS` flag and the number of
//! *permits* in use
//! (messages accepted and not yet received). A send takes a permit with a CAS that
//! fails if the channel is closed or full, then pushes into a lock-free ring that the
//! permits keep from ever overflowing ([`BoundedQueue`], whose first slots live in the
//! channel itself, so a client's first message allocates nothing). Receiving pops,
//! then returns the permit.
//!
//! * A send succeeds iff its CAS precedes the close in `state`'s modification order,
//!   so after `close` returns, every send fails with `Closed`.
//! * The receiver reports the end only when `CLOSED` is set and no permit is in use,
//!   so every message accepted before the close is received first: nothing is lost.
//! * No lost wakeup: the receiver registers its waker, then re-checks the queue,
//!   while a send publishes its message, then wakes; a sender waiting for capacity
//!   sets `WAITERS` in the same word a receive or close changes, so one of the two
//!   RMWs sees the other (see `Waiter`). The loom models in
//!   `loom-tests/tests/channel.rs` check both.
//! * A close wakes the receiver only if it has ever registered a waker, which it
//!   announces in `state` (`RX_WAKER`) before its first registration: the close's
//!   RMW and the announcement's are ordered on the one word, so either the close
//!   sees the flag and wakes, or the receiver's re-check sees `CLOSED`.
//! * The unregister that closes a channel records why ([`CloseReason`]), so the
//!   connection's writer can tell a kick from a takeover or a slow-consumer
//!   disconnect. The closing RMW sets `REASON` with `CLOSED` and claims the reason
//!   cell by doing so; a reader that sees `REASON` waits for the write that follows.

#![allow(
    unsafe_code,
    reason = "the ring's push and pop contracts; see each SAFETY"
)]

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::client::ChannelRef;
use crate::error::TryRecvError;
use crate::sync::{lock, AtomicUsize, AtomicWaker, BoundedQueue, Mutex, Ordering, WriteOnce};
use crate::ClientId;

/// `state` bit: no more sends are accepted.
const CLOSED: usize = 1;
/// `state` bit: a sender may be waiting in `Channel::waiters`.
const WAITERS: usize = 2;
/// `state` bit, set once and never cleared: the receiver has registered a waker,
/// so a close must wake it (see `Channel::close`).
const RX_WAKER: usize = 4;
/// `state` bit, set with `CLOSED` by the close that records a reason: the reason is
/// written (or being written) in `Channel::reason`.
const REASON: usize = 8;
/// `state` increment for one permit; the permit count sits above the flags.
const PERMIT: usize = 16;

/// Why the registry closed a client's channel, as its [`Receiver`] reports it.
///
/// A server's writer task reads it when `recv` returns `None`, to choose what to
/// tell the peer (for a WebSocket, the close code).
///
/// # Examples
///
/// ```
/// use switchboard::{ClientInfo, CloseReason, Registry};
///
/// let registry = Registry::<u8>::new();
/// let (id, rx) = registry.register(ClientInfo::new().with_key("k"))?;
/// assert_eq!(rx.close_reason(), None);
/// let _ = registry.kick("k", "maintenance")?;
/// assert_eq!(rx.close_reason(), Some(&CloseReason::Kicked { reason: "maintenance".into() }));
/// # let _ = id;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`Registry::unregister`](crate::Registry::unregister)
    /// (or a send found the receiver gone).
    Unregistered,
    /// [`Registry::kick`](crate::Registry::kick) disconnected the client.
    Kicked {
        /// The reason the caller gave.
        reason: String,
    },
    /// A newer connection registered with the same key.
    TakenOver {
        /// The connection that took the key over.
        by: ClientId,
    },
    /// A broadcast found the channel full under
    /// [`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy::Disconnect).
    SlowConsumer,
}

/// Why a channel refused a message; gives it back.
pub(crate) enum Rejected<M> {
    Full(M),
    Closed(M),
    Timeout(M),
}

pub(crate) struct Channel<M> {
    /// `CLOSED | WAITERS | RX_WAKER | REASON | permits * PERMIT`.
    ///
    /// Ordering: every decision (full, closed, drained) is made on this one word, and
    /// RMWs on one location are totally ordered whatever their ordering. A permit
    /// is taken with an `Acquire` CAS and given back with an `AcqRel` RMW: that
    /// chain is what hands a ring slot from the receiver that freed it to the next
    /// sender that fills it (see `sync/bounded_queue.rs`). A waiting sender's
    /// `WAITERS` flag and the releases and close that must see it are RMWs on this
    /// one word, so no `SeqCst` is needed (see `Waiter`). Plain reads are
    /// `Relaxed`: a momentary count is all they can use.
    state: AtomicUsize,
    /// Set at most once, by the close that set `REASON` with `CLOSED`, right after
    /// that RMW: winning it is the claim, so setting takes no locked instruction
    /// of its own (a compare-and-swap claim would be one more per unregister).
    reason: WriteOnce<CloseReason>,
    capacity: usize,
    queue: BoundedQueue<M>,
    rx_waker: AtomicWaker,
    /// The wakers of senders waiting for capacity; each receive or close that sees
    /// `WAITERS` wakes them all, and each re-checks.
    waiters: Mutex<Waiters>,
}

/// Senders waiting for capacity, by token.
#[derive(Default)]
struct Waiters {
    next_token: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Waiters {
    fn take_all(&mut self) -> Vec<(u64, Waker)> {
        std::mem::take(&mut self.wakers)
    }
}

/// One sender's place in `Channel::waiters`, removed when dropped, even if its
/// future is dropped.
///
/// No lost wakeup: a waiter stores its waker and sets `WAITERS` in `state` (one
/// RMW, under the `waiters` lock), and reads the state that RMW returns. A receive
/// or close changes `state` with one RMW too and reads the flag from its result.
/// RMWs on one word are totally ordered: if the waiter's comes first, the release
/// or close sees `WAITERS`, takes the lock (after the waiter released it) and wakes
/// it; otherwise the waiter's RMW returns the freed permit or the close and it
/// retries at once. The waker clears `WAITERS` under the lock it takes the wakers
/// with, so a waiter registering later sets it again.
struct Waiter<'a, M> {
    chan: &'a Channel<M>,
    token: Option<u64>,
}

impl<'a, M> Waiter<'a, M> {
    fn new(chan: &'a Channel<M>) -> Self {
        Self { chan, token: None }
    }

    /// Registers `waker`; returns whether the channel may have room or be closed
    /// now, in which case the caller retries instead of sleeping.
    fn register(&mut self, waker: &Waker) -> bool {
        let mut waiters = lock(&self.chan.waiters);
        let token = *self.token.get_or_insert_with(|| {
            let token = waiters.next_token;
            waiters.next_token += 1;
            token
        });
        match waiters.wakers.iter_mut().find(|(t, _)| *t == token) {
            Some((_, old)) => old.clone_from(waker),
            None => waiters.wakers.push((token, waker.clone())),
        }
        // AcqRel: see `Waiter`; it reads the latest state whatever the ordering,
        // and acquires the permit releases it reads.
        let state = self.chan.state.fetch_or(WAITERS, Ordering::AcqRel);
        drop(waiters);
        state & CLOSED != 0 || state / PERMIT < self.chan.capacity
    }
}

impl<M> Drop for Waiter<'_, M> {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            let mut waiters = lock(&self.chan.waiters);
            waiters.wakers.retain(|(t, _)| *t != token);
            if waiters.wakers.is_empty() {
                // Relaxed: under the lock, like every change of `WAITERS`; a waiter
                // woken but not yet re-registered sets it again before it sleeps.
                self.chan.state.fetch_and(!WAITERS, Ordering::Relaxed);
            }
        }
    }
}

impl<M> Channel<M> {
    #[inline]
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: AtomicUsize::new(0),
            reason: WriteOnce::new(),
            capacity,
            queue: BoundedQueue::new(capacity),
            rx_waker: AtomicWaker::new(),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// Queues `msg` without waiting.
    #[inline]
    pub(crate) fn try_send(&self, msg: M) -> Result<(), Rejected<M>> {
        // Relaxed: see `state`; the CAS re-validates this guess.
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & CLOSED != 0 {
                return Err(Rejected::Closed(msg));
            }
            if state / PERMIT >= self.capacity {
                return Err(Rejected::Full(msg));
            }
            // Acquire on success: see `state` (the slot hand-over); a failed CAS
            // decides nothing.
            match self.state.compare_exchange_weak(
                state,
                state + PERMIT,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        // SAFETY: this send holds a permit, taken with the `Acquire` CAS above; at
        // most `capacity` exist, and `try_recv` gives one back (`AcqRel`) only after
        // popping.
        unsafe { self.queue.push(msg) };
        self.rx_waker.wake();
        Ok(())
    }

    /// Waits up to `timeout` for capacity, then queues `msg`. A timeout too large
    /// to add to the current instant waits without a deadline.
    pub(crate) async fn send_timeout(&self, msg: M, timeout: Duration) -> Result<(), Rejected<M>> {
        let mut msg = match self.try_send(msg) {
            Err(Rejected::Full(back)) => Some(back),
            other => return other,
        };
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut sleep = pin!(deadline.map(tokio::time::sleep_until));
        let mut waiter = Waiter::new(self);
        poll_fn(|cx| loop {
            let Some(back) = msg.take() else {
                return Poll::Pending; // polled after completion
            };
            let back = match self.try_send(back) {
                Err(Rejected::Full(back)) => back,
                other => return Poll::Ready(other),
            };
            if waiter.register(cx.waker()) {
                msg = Some(back);
                continue;
            }
            if let Some(sleep) = sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(Err(Rejected::Timeout(back)));
                }
            }
            msg = Some(back);
            return Poll::Pending;
        })
        .await
    }

    /// Wakes every waiting sender if `before`, the state a release or close
    /// changed, had `WAITERS` set.
    fn wake_waiters(&self, before: usize) {
        if before & WAITERS == 0 {
            return;
        }
        let wakers = {
            let mut waiters = lock(&self.waiters);
            // Relaxed: under the lock; see `Waiter`.
            self.state.fetch_and(!WAITERS, Ordering::Relaxed);
            waiters.take_all()
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Refuses every later send. Messages already accepted stay receivable.
    ///
    /// Returns whether this call closed it (false if it was closed already).
    ///
    /// It wakes the receiver only when this call closed the channel and the
    /// receiver has registered a waker (`RX_WAKER`): `atomic-waker`'s wake is two
    /// locked instructions even with no waker, and most clients are unregistered
    /// before or without ever waiting (or after their receiver is gone). Both skips
    /// are sound: the receiver sets `RX_WAKER` with an RMW on `state` before it first
    /// registers a waker, then re-checks `state`; if that RMW follows this one it
    /// returns `CLOSED`, and the re-check, later on the same word, sees it too. An
    /// earlier close saw the flag then, or preceded it the same way; `CLOSED` is
    /// never cleared, so a receiver that re-registers later re-checks and sees it.
    pub(crate) fn close(&self) -> bool {
        // AcqRel: see `state`.
        let before = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if before & (CLOSED | RX_WAKER) == RX_WAKER {
            self.rx_waker.wake();
        }
        self.wake_waiters(before);
        before & CLOSED == 0
    }

    /// [`close`](Self::close) for the receiver's drop, up to three locked
    /// instructions cheaper: no wake of the receiver's own waker, which only the
    /// receiver being dropped ever awaits, and no RMW at all when a close came
    /// first (an unregister usually does). `CLOSED` is never cleared, and the RMW
    /// that set it woke every waiter whose `WAITERS` came before it; a later
    /// waiter's own RMW returns `CLOSED` and it retries (see `Waiter`).
    pub(crate) fn close_from_receiver(&self) {
        // Relaxed: the bit alone decides, and nothing is read on the strength of it.
        if self.state.load(Ordering::Relaxed) & CLOSED != 0 {
            return;
        }
        // AcqRel: as in `close`.
        let before = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        self.wake_waiters(before);
    }

    /// Closes, recording why. Only the close that closes the channel records its
    /// reason, so the first one stands; returns whether this call closed it.
    pub(crate) fn close_because(&self, reason: CloseReason) -> bool {
        // Relaxed: a guess; the CAS re-validates it.
        let mut state = self.state.load(Ordering::Relaxed);
        let before = loop {
            if state & CLOSED != 0 {
                return false;
            }
            // AcqRel on success: as `close`'s RMW; a failed CAS decides nothing.
            match self.state.compare_exchange_weak(
                state,
                state | CLOSED | REASON,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(before) => break before,
                Err(actual) => state = actual,
            }
        };
        // SAFETY: this CAS set `CLOSED`, which is never cleared, so this thread is
        // the one closer that ever gets here; `reason` is set nowhere else.
        unsafe { self.reason.set_unique(reason) };
        if before & RX_WAKER != 0 {
            self.rx_waker.wake();
        }
        self.wake_waiters(before);
        true
    }

    /// Why the channel was closed, once it is.
    ///
    /// A close that records a reason sets `REASON` with `CLOSED`, then writes the
    /// reason; a reader that sees the flag first waits for those few instructions
    /// (unless the closer's thread was preempted in between).
    pub(crate) fn close_reason(&self) -> Option<&CloseReason> {
        // Relaxed: the flag only says a reason is coming; `get`'s `Acquire` load
        // of the reason cell's own state is what makes the reason visible.
        if self.state.load(Ordering::Relaxed) & REASON == 0 {
            return None;
        }
        let mut spins = 0u32;
        loop {
            if let Some(reason) = self.reason.get() {
                return Some(reason);
            }
            crate::sync::spin_wait(&mut spins);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        // Relaxed: see `state`.
        self.state.load(Ordering::Relaxed) & CLOSED != 0
    }

    pub(crate) fn len(&self) -> usize {
        // Relaxed: see `state`; a momentary count is all a caller can use.
        self.state.load(Ordering::Relaxed) / PERMIT
    }

    /// Bytes the channel holds on the heap beyond itself: its ring's outer slots,
    /// once allocated.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.queue.heap_bytes()
    }

    fn release_permit(&self) {
        // AcqRel: its `Release` half hands the freed ring slot on, and it reads
        // `WAITERS` (see `state` and `Waiter`).
        let before = self.state.fetch_sub(PERMIT, Ordering::AcqRel);
        self.wake_waiters(before);
    }

    /// The consumer's side; only the channel's one [`Receiver`] calls it.
    fn try_recv(&self) -> Result<M, TryRecvError> {
        // SAFETY: only `Receiver` calls this, through `&mut self` or its `Drop`, and
        // there is one `Receiver` per channel: one consumer at a time.
        if let Some(msg) = unsafe { self.queue.pop() } {
            self.release_permit();
            return Ok(msg);
        }
        // Relaxed: see `state`. A permit in use means a push is on its way.
        let state = self.state.load(Ordering::Relaxed);
        if state & CLOSED != 0 && state / PERMIT == 0 {
            Err(TryRecvError::Closed)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// [`try_recv`](Self::try_recv) for the receiver's caller. Senders claim slots
    /// in order and fill them in any order, so the next slot can be claimed and
    /// still empty while later ones are full; that is a send in progress, not an
    /// empty channel, and a message sent before this call may be behind it. It is
    /// waited for: a few instructions, unless its thread was preempted in between.
    /// (`poll_recv` returns `Pending` instead: that sender wakes the receiver.)
    fn try_recv_waiting(&self) -> Result<M, TryRecvError> {
        let mut spins = 0u32;
        loop {
            match self.try_recv() {
                Err(TryRecvError::Empty) if self.queue.push_in_progress() => {
                    crate::sync::spin_wait(&mut spins);
                }
                other => return other,
            }
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<M>> {
        match self.try_recv() {
            Ok(msg) => return Poll::Ready(Some(msg)),
            Err(TryRecvError::Closed) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        // Relaxed: only this receiver sets the flag, so its own earlier RMW is what
        // this load may see; the flag's RMW below is ordered against a close's by
        // being on the same word, whatever the ordering (see `close`).
        if self.state.load(Ordering::Relaxed) & RX_WAKER == 0 {
            // Relaxed: as above; nothing is published or read through it.
            self.state.fetch_or(RX_WAKER, Ordering::Relaxed);
        }
        self.rx_waker.register(cx.waker());
        // Re-check after registering: a push that landed in between has already
        // tried to wake the old (absent) waker.
        match self.try_recv() {
            Ok(msg) => Poll::Ready(Some(msg)),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

/// The receiving end of a client's outbound channel.
///
/// The connection's writer task owns it and drains it into the socket. Dropping it
/// is how a disconnect looks to the registry: the next send to the client fails with
/// `Closed`, and the registry unregisters the client.
///
/// Once the registry closes the channel (unregister, disconnect policy), `recv`
/// still yields every message accepted before the close, then `None`.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = switchboard::Registry::<&'static str>::new();
/// let (id, mut rx) = registry.register(Default::default()).unwrap();
/// registry.send(id, "hello").unwrap();
/// let _ = registry.unregister(id);
/// assert_eq!(rx.recv().await, Some("hello"));
/// assert_eq!(rx.recv().await, None);
/// # }
/// ```
pub struct Receiver<M> {
    chan: ChannelRef<M>,
}

impl<M> Receiver<M> {
    pub(crate) fn new(chan: ChannelRef<M>) -> Self {
        Self { chan }
    }

    /// The channel this receiver drains.
    pub(crate) fn channel(&self) -> &Channel<M> {
        &self.chan
    }

    /// Waits for the next message. Returns `None` once the channel is closed and
    /// every message sent before the close has been received.
    ///
    /// Cancel-safe: dropping the future loses no message.
    pub async fn recv(&mut self) -> Option<M> {
        poll_fn(|cx| self.chan.poll_recv(cx)).await
    }

    /// Polls for the next message, for hand-written futures and streams.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<M>> {
        self.chan.poll_recv(cx)
    }

    /// Takes the next message if one is queued.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if nothing is queued now, [`TryRecvError::Closed`] once
    /// the channel is closed and drained. A send that has taken its place in the
    /// queue but not yet written its message is waited for (briefly, unless its
    /// thread was preempted), so a message whose send returned before this call is
    /// never reported missing behind it.
    pub fn try_recv(&mut self) -> Result<M, TryRecvError> {
        self.chan.try_recv_waiting()
    }

    /// Whether the registry has closed this channel (or this receiver is closing).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.chan.is_closed()
    }

    /// Why the registry closed this channel: `None` while it is open, and also when
    /// it closed for no recorded reason (the registry itself was dropped).
    ///
    /// Messages queued before the close are still received; a writer that wants to
    /// stop at once (say, on a kick) checks this before each write.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{CloseReason, Registry};
    ///
    /// let registry = Registry::<u8>::new();
    /// let (id, rx) = registry.register(Default::default()).unwrap();
    /// assert_eq!(rx.close_reason(), None);
    /// let _ = registry.unregister(id);
    /// assert_eq!(rx.close_reason(), Some(&CloseReason::Unregistered));
    /// ```
    #[must_use]
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.chan.close_reason()
    }

    /// Messages queued and not yet received.
    #[must_use]
    pub fn len(&self) -> usize {
        self.chan.len()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channel's capacity, set by [`Builder::channel_capacity`](crate::Builder::channel_capacity).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.chan.capacity
    }
}

impl<M> Drop for Receiver<M> {
    fn drop(&mut self) {
        self.chan.close_from_receiver();
        // Free queued messages now rather than when the last snapshot lets go.
        while self.chan.try_recv().is_ok() {}
    }
}

impl<M> std::fmt::Debug for Receiver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use super::*;
    use crate::client::ClientEntry;
    use crate::sync::Arc;

    fn pair(capacity: usize) -> (ChannelRef<u32>, Receiver<u32>) {
        let entry = Arc::new(ClientEntry::new(ClientId::pack(0, 0, 0), capacity, 0, None));
        let chan = ChannelRef::of(&entry);
        (chan.clone(), Receiver::new(chan))
    }

    #[test]
    fn full_channel_gives_the_message_back() {
        let (tx, mut rx) = pair(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(Rejected::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(tx.try_send(3).is_ok());
        assert_eq!(rx.len(), 2);
    }

    #[test]
    fn close_refuses_new_sends_but_delivers_accepted_ones() {
        let (tx, mut rx) = pair(4);
        tx.try_send(1).ok();
        assert!(tx.close());
        assert!(!tx.close(), "second close reports it was already closed");
        assert!(matches!(tx.try_send(2), Err(Rejected::Closed(2))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn dropping_the_receiver_closes_the_channel() {
        let (tx, rx) = pair(4);
        tx.try_send(1).ok();
        drop(rx);
        assert!(matches!(tx.try_send(2), Err(Rejected::Closed(2))));
        assert_eq!(tx.len(), 0, "queued messages are freed with the receiver");
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_on_close() {
        let (tx, mut rx) = pair(4);
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        });
        for i in 0..3 {
            tokio::task::yield_now().await;
            tx.try_send(i).ok();
        }
        tx.close();
        assert_eq!(task.await.ok(), Some(vec![0, 1, 2]));
    }

    #[tokio::test]
    async fn send_timeout_waits_for_space_and_times_out_with_the_message() {
        let (tx, mut rx) = pair(1);
        tx.try_send(0).ok();
        let timed_out = tx.send_timeout(1, Duration::from_millis(20)).await;
        assert!(matches!(timed_out, Err(Rejected::Timeout(1))));

        let sender = tx.clone();
        let waiter = tokio::spawn(async move {
            sender
                .send_timeout(2, Duration::from_secs(10))
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(waiter.await.ok(), Some(true));
        assert_eq!(rx.try_recv(), Ok(2));
    }

    #[tokio::test]
    async fn send_timeout_returns_closed_when_closed_while_waiting() {
        let (tx, _rx) = pair(1);
        tx.try_send(0).ok();
        let sender = tx.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                sender.send_timeout(1, Duration::from_secs(10)).await,
                Err(Rejected::Closed(1))
            )
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.close();
        assert_eq!(waiter.await.ok(), Some(true));
    }

    /// A message whose `try_send` returned before `try_recv` was called is never
    /// reported missing: another sender that claimed an earlier slot and has not
    /// written it yet (preempted between the two) is waited for, not taken for an
    /// empty queue. Each thread sends its own token, then drains under the lock that
    /// records every receipt; once `try_recv` says Empty its token must be received.
    #[test]
    fn try_recv_waits_for_a_send_in_progress_ahead_of_a_finished_one() {
        let (tx, rx) = pair(1024);
        let shared = crate::sync::Mutex::new((rx, std::collections::HashSet::new()));
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let (tx, shared) = (&tx, &shared);
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        let token = (t << 24) | i;
                        assert!(tx.try_send(token).is_ok(), "room for every thread");
                        let mut guard = crate::sync::lock(shared);
                        let (rx, received) = &mut *guard;
                        while let Ok(m) = rx.try_recv() {
                            received.insert(m);
                        }
                        assert!(received.remove(&token), "sent {token}, then Empty");
                    }
                });
            }
        });
    }

    #[test]
    fn concurrent_senders_never_exceed_capacity_or_lose_accepted_messages() {
        let (tx, mut rx) = pair(8);
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let tx = &tx;
                    s.spawn(move || {
                        (0..1000)
                            .filter(|i| tx.try_send(t * 1000 + i).is_ok())
                            .count()
                    })
                })
                .collect();
            let mut received = 0;
            while handles.iter().any(|h| !h.is_finished()) {
                while rx.try_recv().is_ok() {
                    received += 1;
                }
                assert!(rx.len() <= 8);
            }
            while rx.try_recv().is_ok() {
                received += 1;
            }
            let sent: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            assert_eq!(sent, received);
            sent
        });
        assert!(accepted > 0);
    }
}
