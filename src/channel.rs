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
//! * No lost wakeup, and a wake only for a receiver that sleeps. A receiver that
//!   finds nothing registers its waker, then *parks*: it sets `RX_PARKED` with a CAS
//!   on `state` that succeeds only while no permit is in use and the channel is open.
//!   A send's permit CAS clears `RX_PARKED` when it finds it set, and only that send
//!   wakes the receiver, after its push. RMWs on one word are totally ordered: a send
//!   whose CAS follows the park sees the bit (or a send before it cleared it and
//!   wakes), and a send whose CAS precedes it left a permit in use, so the park
//!   fails. The receiver then takes that message, or, if its sender is between its
//!   permit and its push, waits a few spins for it and otherwise wakes itself and
//!   returns `Pending` (see `Channel::poll_recv`). A send to a receiver that is busy
//!   draining costs no wake at all.
//! * The receiver's waker lives in a plain cell ([`WakerSlot`]) that the same word
//!   hands over: the receiver stores it while neither `RX_PARKED` nor `RX_WAKING`
//!   is set, and the park's CAS hands it on; the send (or close) that clears
//!   `RX_PARKED` sets `RX_WAKING` in the same RMW, takes the waker, clears
//!   `RX_WAKING` and wakes it. So a park costs one locked RMW (and the waker's
//!   clone when the task changed or the last one was taken) and a wake one more
//!   than the send, where `atomic-waker` took two for each.
//! * A sender waiting for capacity sets `WAITERS` in the same word a receive or
//!   close changes, so one of the two RMWs sees the other (see `Waiter`). The loom
//!   models in `loom-tests/tests/channel.rs` check both protocols.
//! * A close wakes the receiver only if it is parked: the close's RMW and the park's
//!   CAS are ordered on the one word, so either the close sees `RX_PARKED` and wakes,
//!   or the park's CAS sees `CLOSED` and fails, and the receiver reports the end.
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
use crate::sync::{lock, AtomicUsize, BoundedQueue, Mutex, Ordering, WakerSlot, WriteOnce};
use crate::ClientId;

/// `state` bit: no more sends are accepted.
const CLOSED: usize = 1;
/// `state` bit: a sender may be waiting in `Channel::waiters`.
const WAITERS: usize = 2;
/// `state` bit: the receiver registered its waker and sleeps until a send or a close
/// wakes it. Set by the receiver's park CAS, cleared by the one send whose permit
/// CAS finds it, which then wakes the receiver (see the module docs).
const RX_PARKED: usize = 4;
/// `state` bit, set with `CLOSED` by the close that records a reason: the reason is
/// written (or being written) in `Channel::reason`.
const REASON: usize = 8;
/// `state` bit: the send or close whose RMW cleared `RX_PARKED` (and set this bit in
/// the same RMW) is taking the receiver's waker out of `Channel::rx_waker`; it
/// clears the bit when done, and only then may the receiver store a new one.
const RX_WAKING: usize = 16;
/// `state` increment for one permit; the permit count sits above the flags.
const PERMIT: usize = 32;

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
        /// The connection that took the key over, when it registered on this
        /// registry; `None` when it registered on another node of a
        /// cluster (`switchboard::cluster`), whose ids mean nothing here.
        by: Option<ClientId>,
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

/// `repr(C)`, with what a send touches first: the permit word, the capacity and
/// the queue, whose own first fields are its tail and first slot (see
/// `BoundedQueue`). A first message then costs one or two cache lines of the
/// entry instead of four; the bench `cold` shows it.
#[repr(C)]
pub(crate) struct Channel<M> {
    /// `CLOSED | WAITERS | RX_PARKED | REASON | RX_WAKING | permits * PERMIT`.
    ///
    /// Ordering: every decision (full, closed, drained) is made on this one word, and
    /// RMWs on one location are totally ordered whatever their ordering. A permit
    /// is taken with an `Acquire` CAS and given back with an `AcqRel` RMW: that
    /// chain is what hands a ring slot from the receiver that freed it to the next
    /// sender that fills it (see `sync/bounded_queue.rs`). The receiver's waker
    /// goes the same way: from its `Release` park CAS to the send or close whose
    /// `Acquire` RMW clears `RX_PARKED`, and back with that waker's `Release`
    /// clear of `RX_WAKING`, which the receiver reads with `Acquire` before it
    /// stores the next one (see `rx_waker`). A waiting sender's
    /// `WAITERS` flag and the releases and close that must see it are RMWs on this
    /// one word, so no `SeqCst` is needed (see `Waiter`). Plain reads are
    /// `Relaxed`: a momentary count is all they can use.
    state: AtomicUsize,
    capacity: usize,
    queue: BoundedQueue<M>,
    /// Set at most once, by the close that set `REASON` with `CLOSED`, right after
    /// that RMW: winning it is the claim, so setting takes no locked instruction
    /// of its own (a compare-and-swap claim would be one more per unregister).
    reason: WriteOnce<CloseReason>,
    /// The parked receiver's waker. Owned by the receiver while `state` has
    /// neither `RX_PARKED` nor `RX_WAKING`; by nobody while `RX_PARKED` is set;
    /// by the send or close whose RMW swapped `RX_PARKED` for `RX_WAKING`, until
    /// it clears `RX_WAKING`. Each hand-over is a release/acquire pair on `state`.
    rx_waker: WakerSlot,
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
            rx_waker: WakerSlot::new(),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// Queues `msg` without waiting.
    ///
    /// Two locked RMWs: the permit CAS and the ring's index claim. A send that finds
    /// the receiver parked swaps `RX_PARKED` for `RX_WAKING` in the same CAS and
    /// wakes it after its push: one more, clearing `RX_WAKING`, and the task's own
    /// wake.
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
            // Acquire on success: see `state` (the slot hand-over, and the waker
            // the receiver stored before its `Release` park); a failed CAS
            // decides nothing.
            match self.state.compare_exchange_weak(
                state,
                claim_park(state + PERMIT),
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
        if state & RX_PARKED != 0 {
            // This CAS cleared the bit, so this send alone wakes this park.
            self.wake_receiver();
        }
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

    /// Wakes the parked receiver. Only the send or close whose RMW swapped
    /// `RX_PARKED` for `RX_WAKING` (see `claim_park`) calls it, once.
    fn wake_receiver(&self) {
        // SAFETY: the caller's RMW cleared `RX_PARKED` and set `RX_WAKING`, which
        // makes it the slot's owner (see `rx_waker`): the receiver stored its waker
        // before its `Release` park, which that `Acquire` RMW read, and will not
        // touch the slot again until it sees `RX_WAKING` cleared below.
        let waker = unsafe { self.rx_waker.take() };
        // Release: hands the slot back; the receiver's `Acquire` load that sees the
        // bit clear orders the take above before its next store.
        self.state.fetch_and(!RX_WAKING, Ordering::Release);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Wakes every waiting sender if `before`, the state a release or close
    /// changed, had `WAITERS` set. Inlined: every receive runs the test, and the
    /// call around it cost more than the test itself.
    #[inline]
    fn wake_waiters(&self, before: usize) {
        if before & WAITERS != 0 {
            self.wake_all_waiters();
        }
    }

    /// [`wake_waiters`](Self::wake_waiters)' rare half: takes and wakes them all.
    #[cold]
    #[inline(never)]
    fn wake_all_waiters(&self) {
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
    /// receiver is parked (`RX_PARKED`): most clients are unregistered while
    /// their receiver is busy, before it ever waits, or after it is gone. Both skips
    /// are sound: a park is a CAS on `state` that fails once `CLOSED` is set, so a
    /// park either precedes this RMW, which then sees the bit and wakes, or fails and
    /// the receiver reports the end. An earlier close saw the bit then, or preceded
    /// the park the same way; `CLOSED` is never cleared.
    pub(crate) fn close(&self) -> bool {
        // Relaxed: a guess; the CAS re-validates it.
        let mut state = self.state.load(Ordering::Relaxed);
        let before = loop {
            // AcqRel on success: see `state`; a failed CAS decides nothing.
            match self.state.compare_exchange_weak(
                state,
                claim_park(state) | CLOSED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(before) => break before,
                Err(actual) => state = actual,
            }
        };
        if before & RX_PARKED != 0 {
            self.wake_receiver();
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
                claim_park(state) | CLOSED | REASON,
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
        if before & RX_PARKED != 0 {
            self.wake_receiver();
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
    /// (`poll_recv` waits a bounded while, then wakes its own task and returns
    /// `Pending`.)
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

    /// `try_recv` as `poll_recv` reports it: `None` while nothing is receivable.
    fn ready(&self) -> Option<Option<M>> {
        match self.try_recv() {
            Ok(msg) => Some(Some(msg)),
            Err(TryRecvError::Closed) => Some(None),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Makes the receiver the owner of `rx_waker`: waits for a send or close that
    /// is taking the old waker out (`RX_WAKING`), and takes back a park of an
    /// earlier poll that nothing has woken yet. Returns false if the waker's
    /// thread is still at it after a few spins; then it has woken this task to
    /// try again, since the waker it is taking may belong to another task.
    fn own_rx_waker(&self, cx: &Context<'_>) -> bool {
        // Acquire: reading `RX_WAKING` clear orders that waker's take before the
        // caller's store into the slot (see `rx_waker`).
        let mut state = self.state.load(Ordering::Acquire);
        let mut spins = 0u32;
        loop {
            if state & RX_WAKING != 0 {
                if spins >= PUSH_SPINS {
                    cx.waker().wake_by_ref();
                    return false;
                }
                crate::sync::spin_wait(&mut spins);
                // Acquire: as above.
                state = self.state.load(Ordering::Acquire);
            } else if state & RX_PARKED == 0 {
                return true;
            } else {
                // Relaxed on success: the slot holds what this receiver stored and
                // no one has touched since. Acquire on failure: the state it reads
                // may show a waker's `RX_WAKING` cleared, as above.
                match self.state.compare_exchange_weak(
                    state,
                    state & !RX_PARKED,
                    Ordering::Relaxed,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return true,
                    Err(actual) => state = actual,
                }
            }
        }
    }

    /// Sets `RX_PARKED` if no permit is in use and the channel is open; returns
    /// whether it did. The caller owns `rx_waker` and has stored its waker.
    fn park(&self) -> bool {
        // Relaxed: a guess; the CAS re-validates it.
        let mut state = self.state.load(Ordering::Relaxed);
        while state & CLOSED == 0 && state / PERMIT == 0 {
            // Release on success: hands `rx_waker`, and the waker stored in it just
            // before, to the send whose `Acquire` CAS clears the bit or the close
            // whose `AcqRel` RMW does. A failed CAS decides nothing.
            match self.state.compare_exchange_weak(
                state,
                state | RX_PARKED,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
        false
    }

    /// Locked RMWs per park: the park CAS, and the waker's clone (a reference
    /// count) unless the slot still holds one that wakes the same task; none when
    /// a message is waiting.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<M>> {
        if let Some(ready) = self.ready() {
            return Poll::Ready(ready);
        }
        if !self.own_rx_waker(cx) {
            return Poll::Pending;
        }
        // SAFETY: `own_rx_waker` made this receiver the slot's owner, and it stays
        // so until the park below hands the slot over.
        unsafe { self.rx_waker.set(cx.waker()) };
        if self.park() {
            return Poll::Pending;
        }
        // A permit is in use or the channel closed: a message is queued (pushed
        // after the first try) or on its way, or the end is due.
        let mut spins = 0u32;
        loop {
            if let Some(ready) = self.ready() {
                return Poll::Ready(ready);
            }
            if spins >= PUSH_SPINS {
                break;
            }
            // The sender is between its permit CAS and its push, a few instructions
            // apart, and it saw no `RX_PARKED`: it will not wake us.
            crate::sync::spin_wait(&mut spins);
        }
        // Its thread was preempted there: wake this task and return, so the
        // executor runs others before polling again. That is still a busy wait,
        // through the executor, until the sender's thread runs again (before, the
        // receiver slept and the push woke it); a push cannot stop for good
        // between its permit and its write short of an allocation abort.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `next`, the state a send or close is about to write, with `RX_PARKED` swapped
/// for `RX_WAKING` if it is set: the RMW that writes it owns the receiver's waker
/// and must call `Channel::wake_receiver`.
#[inline]
fn claim_park(next: usize) -> usize {
    if next & RX_PARKED == 0 {
        next
    } else {
        (next & !RX_PARKED) | RX_WAKING
    }
}

/// How many times `poll_recv` waits for a message whose send holds a permit but has
/// not pushed yet before it wakes its own task and returns `Pending`: spin hints
/// only (see `spin_wait`), about as long as a push takes when its thread runs.
/// Under loom, one wait (a yield), so that the models also reach the self-wake.
const PUSH_SPINS: u32 = if cfg!(switchboard_loom) { 1 } else { 32 };

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
    use crate::sync::{Arc, EntryArc};

    /// A send's permit CAS, its capacity check, the ring's tail and a first
    /// message's slot fit in one 64-byte cache line of the entry (two at worst,
    /// by where the entry starts), so the first broadcast to fresh clients
    /// fetches that much per client, not the four lines it took in the
    /// compiler's field order.
    #[test]
    fn a_first_send_touches_one_cache_line_of_fields() {
        type Msg = std::sync::Arc<[u8]>;
        let state = std::mem::offset_of!(Channel<Msg>, state);
        let capacity = std::mem::offset_of!(Channel<Msg>, capacity);
        let queue = std::mem::offset_of!(Channel<Msg>, queue);
        let start = state.min(capacity).min(queue);
        let end = (state + 8)
            .max(capacity + 8)
            .max(queue + BoundedQueue::<Msg>::FIRST_PUSH_BYTES);
        assert!(
            end - start <= 64,
            "a first send spans {} bytes",
            end - start
        );
    }

    fn pair(capacity: usize) -> (ChannelRef<u32>, Receiver<u32>) {
        let entry = EntryArc::new(ClientEntry::new(ClientId::pack(0, 0, 0), capacity, 0, None));
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

    /// Capacities that are not a power of two, with and without outer slots: a ring
    /// that wraps by anything but its capacity (or a mask that rounded it up) must
    /// never lose a lap or admit a message the permits refuse.
    const AWKWARD_CAPACITIES: [usize; 4] = [3, 5, 6, 33];

    #[test]
    fn a_capacity_that_is_not_a_power_of_two_refuses_the_message_past_it() {
        for capacity in AWKWARD_CAPACITIES {
            let (tx, mut rx) = pair(capacity);
            for msg in 0..capacity as u32 {
                assert!(tx.try_send(msg).is_ok(), "capacity {capacity}: {msg}");
            }
            assert!(
                matches!(tx.try_send(99), Err(Rejected::Full(99))),
                "capacity {capacity} took one more"
            );
            assert_eq!(rx.len(), capacity);
            assert_eq!(rx.try_recv(), Ok(0));
            assert!(tx.try_send(100).is_ok(), "capacity {capacity}");
            assert!(matches!(tx.try_send(101), Err(Rejected::Full(101))));
        }
    }

    /// Every fill starts at a different slot of the ring and wraps mid-way, and the
    /// partial rounds shift the start again. A slot freed for the wrong lap shows
    /// as a lost or reordered message, or as a push spinning for a slot that is
    /// never freed for its index, which the watchdog turns into a failure.
    #[test]
    fn fill_drain_and_refill_across_many_laps_of_a_capacity_that_is_not_a_power_of_two() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            for capacity in AWKWARD_CAPACITIES {
                let (tx, mut rx) = pair(capacity);
                let mut next = 0u32;
                for round in 0..100 {
                    // Full rounds, then rounds one short of full.
                    let fill = capacity - round % 2;
                    let first = next;
                    for _ in 0..fill {
                        assert!(tx.try_send(next).is_ok(), "capacity {capacity}: {next}");
                        next += 1;
                    }
                    if fill == capacity {
                        assert!(matches!(tx.try_send(0), Err(Rejected::Full(0))));
                    }
                    for expected in first..next {
                        assert_eq!(rx.try_recv(), Ok(expected), "capacity {capacity}");
                    }
                    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
                }
            }
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => worker.join().expect("the worker finished"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(worker.join().expect_err("the worker panicked"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("a send spun on a slot that was never freed for its lap")
            }
        }
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

    /// A waker that counts its wakes. `wake_by_ref` is what the channel calls on a
    /// borrowed waker; the stored clone it takes and wakes ends up in `wake`.
    #[derive(Default)]
    struct CountingWaker(crate::sync::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            // Relaxed: a count read by the same test thread.
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl CountingWaker {
        fn new() -> (Arc<Self>, Waker) {
            let counter = Arc::new(Self::default());
            let waker = Waker::from(Arc::clone(&counter));
            (counter, waker)
        }

        fn wakes(&self) -> usize {
            // Relaxed: see `wake_by_ref`.
            self.0.load(Ordering::Relaxed)
        }
    }

    /// The first send to a parked receiver wakes it and clears the park, so the
    /// sends after it, and sends to a receiver that is draining, skip the waker.
    /// (Those skipped wakes would find no waker and wake nothing: what they would
    /// cost is RMWs, which callgrind counts, not a wake a test sees.)
    #[test]
    fn the_first_send_to_a_parked_receiver_wakes_it_and_clears_the_park() {
        let (tx, rx) = pair(8);
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let chan = rx.channel();
        // Relaxed: one thread; the bit's value is all the test reads.
        let parked = || chan.state.load(Ordering::Relaxed) & RX_PARKED != 0;
        assert!(chan.poll_recv(&mut cx).is_pending(), "nothing queued");
        assert!(parked(), "an empty channel parks its receiver");
        assert!(tx.try_send(1).is_ok());
        assert_eq!(counter.wakes(), 1, "the send that found it parked woke it");
        assert!(!parked(), "and cleared the park, so no later send wakes");
        assert!(tx.try_send(2).is_ok());
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert!(tx.try_send(3).is_ok());
        assert!(!parked(), "a draining receiver is not parked");
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(counter.wakes(), 1);
        assert!(chan.poll_recv(&mut cx).is_pending());
        assert!(parked(), "parks again once drained");
        assert!(tx.try_send(4).is_ok());
        assert_eq!(counter.wakes(), 2, "and the next park is woken again");
    }

    /// A send that took its permit but has not pushed saw no `RX_PARKED` and will
    /// not wake the receiver, so the receiver must not park on it: it wakes itself.
    #[test]
    fn a_receiver_does_not_park_behind_a_send_between_permit_and_push() {
        let (tx, rx) = pair(8);
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let chan = rx.channel();
        // The first half of `try_send`: the permit, without the push. (Acquire,
        // as `try_send`'s CAS; one thread here, so any ordering would do.)
        tx.state.fetch_add(PERMIT, Ordering::Acquire);
        assert!(chan.poll_recv(&mut cx).is_pending(), "nothing to take yet");
        assert_eq!(counter.wakes(), 1, "it woke itself to look again");
        assert_eq!(
            // Relaxed: one thread; the bit's value is all the test reads.
            chan.state.load(Ordering::Relaxed) & RX_PARKED,
            0,
            "and did not park"
        );
        // SAFETY: the permit taken above, as `try_send` holds it.
        unsafe { tx.queue.push(7) };
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(Some(7)));
    }

    /// A park that nothing woke is taken back when the receiver is polled again, so
    /// the next send wakes the waker of that latest poll, not the earlier one.
    #[test]
    fn a_repoll_while_parked_moves_the_park_to_the_new_waker() {
        let (tx, rx) = pair(4);
        let chan = rx.channel();
        let (first, first_waker) = CountingWaker::new();
        let (second, second_waker) = CountingWaker::new();
        assert!(chan
            .poll_recv(&mut Context::from_waker(&first_waker))
            .is_pending());
        assert!(chan
            .poll_recv(&mut Context::from_waker(&second_waker))
            .is_pending());
        assert!(tx.try_send(1).is_ok());
        assert_eq!((first.wakes(), second.wakes()), (0, 1));
    }

    /// While a send is taking the old waker out (`RX_WAKING`), the receiver must
    /// not store a new one: it waits, then wakes itself and tries again.
    #[test]
    fn a_receiver_waits_for_a_send_that_is_taking_its_waker() {
        let (tx, rx) = pair(4);
        let chan = rx.channel();
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        // What a send's CAS leaves while it is in `wake_receiver`. (Relaxed: one
        // thread, and no waker is handed over here.)
        tx.state.fetch_or(RX_WAKING, Ordering::Relaxed);
        assert!(chan.poll_recv(&mut cx).is_pending());
        assert_eq!(counter.wakes(), 1, "it woke itself to try again");
        assert_eq!(
            // Relaxed: one thread; the bit's value is all the test reads.
            chan.state.load(Ordering::Relaxed) & RX_PARKED,
            0,
            "and did not park"
        );
        // Release, as `wake_receiver`'s hand-back.
        tx.state.fetch_and(!RX_WAKING, Ordering::Release);
        assert!(chan.poll_recv(&mut cx).is_pending());
        assert!(tx.try_send(1).is_ok());
        assert_eq!(counter.wakes(), 2, "parked once the send was done");
    }

    /// A close wakes a parked receiver once, and a receiver that is not parked not
    /// at all; either way the next poll reports the end.
    #[test]
    fn close_wakes_a_parked_receiver_only() {
        let (tx, rx) = pair(4);
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let chan = rx.channel();
        assert!(chan.poll_recv(&mut cx).is_pending());
        assert!(tx.close_because(CloseReason::Unregistered));
        assert_eq!(counter.wakes(), 1, "the close woke the parked receiver");
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(None));

        let (tx, rx) = pair(4);
        let chan = rx.channel();
        assert!(tx.try_send(1).is_ok());
        assert!(tx.close());
        assert_eq!(counter.wakes(), 1, "nobody was parked");
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(chan.poll_recv(&mut cx), Poll::Ready(None));
    }

    /// Senders on two threads against a receiver task that parks whenever it runs
    /// dry: every message arrives. A lost wakeup hangs the receiver; the timeout
    /// only turns that hang into a failure and times nothing.
    #[test]
    fn an_awaiting_receiver_gets_every_message_from_two_threads() {
        const PER_THREAD: u32 = 20_000;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let (tx, mut rx) = pair(4);
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let tx = &tx;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut msg = (t << 24) | i;
                        loop {
                            match tx.try_send(msg) {
                                Ok(()) => break,
                                Err(Rejected::Full(back)) => {
                                    msg = back;
                                    std::thread::yield_now();
                                }
                                // The receiver gave up (see below).
                                Err(_) => return,
                            }
                        }
                    }
                });
            }
            let received = runtime.block_on(async {
                let all = async {
                    let mut next = [0u32; 2];
                    for _ in 0..2 * PER_THREAD {
                        let msg = rx.recv().await.expect("open channel");
                        let t = usize::from(msg >> 24 != 0);
                        assert_eq!(msg & 0xff_ffff, next[t], "each sender's messages in order");
                        next[t] += 1;
                    }
                    next
                };
                tokio::time::timeout(Duration::from_secs(60), all).await
            });
            // Lets blocked senders return if the receiver gave up.
            tx.close();
            assert_eq!(received.ok(), Some([PER_THREAD; 2]), "hung: a lost wakeup");
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
