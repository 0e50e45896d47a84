//! A batch of publications as the publish script reads it: every frame as an
//! argument of its own, the channels they go to, each once, and runs saying
//! which frames go to which channel.
//!
//! A session's publications in one batch go as bundles (`envelope.rs`): one frame,
//! so one Redis `PUBLISH`, for up to [`MAX_BUNDLE`](envelope::MAX_BUNDLE) of them,
//! none over [`MAX_BYTES`]; a publication alone (or too large to share a bundle)
//! goes as a broadcast frame of its own.
//!
//! ```text
//! runs    ([channel: u16 BE, an index into the channels][count: u16 BE])*
//! frames  one argument each, in order; each run names the channel of the
//!         next `count` frames
//! ```
//!
//! A frame travels as an argument of its own because Redis's Lua makes every
//! string it handles an interned string, hashing all of its bytes: a frame the
//! script cut out of one buffer argument was hashed twice (in the buffer, then
//! as the piece). As arguments, each is hashed once and the script only loops
//! (`scripts::PUBLISH`). On this side the frames share one buffer (each argument
//! is a slice of it), so framing allocates once per batch, not per publication.

use bytes::{BufMut, Bytes, BytesMut};
use fred::bytes_utils::Str;

use super::envelope;

/// Bytes of frames after which a batch takes no more: well under Redis's
/// largest request, and small enough that one batch does not hold up the ones
/// behind it.
pub(crate) const MAX_BYTES: usize = 1 << 20;

/// A batch being written.
#[derive(Debug, Default)]
pub(crate) struct BatchBuf {
    channels: Vec<Str>,
    runs: BytesMut,
    /// The current run: its channel and how many frames it has so far.
    run: Option<(u16, u16)>,
    buf: BytesMut,
    /// Where each frame ends in `buf`.
    ends: Vec<usize>,
    /// Publications in each frame: one, or a bundle's.
    items: Vec<usize>,
}

/// A frame longer than a Redis argument can be (4 GiB is past any server's
/// limit); it is not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// The length of `payload`'s broadcast frame, if it can be published: the most
/// it adds to a batch, alone or in a bundle.
pub(crate) fn frame_len(node: &str, payload: &[u8]) -> Result<usize, TooLong> {
    let n = envelope::broadcast_len(node, payload);
    u32::try_from(n).map_err(|_| TooLong)?;
    Ok(n)
}

impl BatchBuf {
    /// An empty batch whose frames will take at most `bytes`: the one allocation
    /// its frames share.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Adds a channel to the batch and returns its index, for [`put_broadcast`].
    /// The caller adds each channel once per batch (a batch holds at most
    /// `u16::MAX + 1` channels).
    ///
    /// [`put_broadcast`]: Self::put_broadcast
    pub(crate) fn add_channel(&mut self, channel: &Str) -> u16 {
        self.channels.push(channel.clone());
        // The publisher's batches hold far fewer entries than u16::MAX.
        u16::try_from(self.channels.len() - 1).unwrap_or(u16::MAX)
    }

    /// Appends a numbered broadcast frame for the channel at `channel`.
    #[cfg(test)]
    pub(crate) fn put_broadcast(
        &mut self,
        channel: u16,
        node: &str,
        epoch: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<(), TooLong> {
        let n = frame_len(node, payload)?;
        self.buf.reserve(n);
        envelope::put_broadcast(&mut self.buf, node, epoch, seq, payload);
        self.pushed(channel, 1);
        Ok(())
    }

    /// Appends the broadcasts `items` carry (`payload` reads one), numbered
    /// `first`, `first + 1`, ..., for the channel at `channel`: in order, as few
    /// bundles as fit [`MAX_BYTES`] and [`MAX_BUNDLE`](envelope::MAX_BUNDLE) each,
    /// and a broadcast frame for one alone. Every payload passed
    /// [`frame_len`] (the caller numbers only those).
    pub(crate) fn put_broadcasts<T>(
        &mut self,
        channel: u16,
        node: &str,
        epoch: u32,
        first: u64,
        items: &[T],
        payload: impl Fn(&T) -> &[u8],
    ) {
        let mut start = 0;
        while start < items.len() {
            // The longest run from `start` that fits one bundle (at least one item).
            let mut len = envelope::bundle_len(node, [payload(&items[start])]);
            let mut end = start + 1;
            while end < items.len() && end - start < envelope::MAX_BUNDLE {
                let more = envelope::BUNDLE_ITEM + payload(&items[end]).len();
                if len + more > MAX_BYTES {
                    break;
                }
                len += more;
                end += 1;
            }
            let seq = first + start as u64;
            let chunk = &items[start..end];
            if let [one] = chunk {
                let one = payload(one);
                self.buf.reserve(envelope::broadcast_len(node, one));
                envelope::put_broadcast(&mut self.buf, node, epoch, seq, one);
            } else {
                self.buf.reserve(len);
                envelope::put_bundle(&mut self.buf, node, epoch, seq, chunk.iter().map(&payload));
            }
            self.pushed(channel, end - start);
            start = end;
        }
    }

    /// Records the frame just written, of `items` publications, as the channel's.
    fn pushed(&mut self, channel: u16, items: usize) {
        self.ends.push(self.buf.len());
        self.items.push(items);
        self.run = match self.run {
            Some((c, count)) if c == channel && count < u16::MAX => Some((c, count + 1)),
            other => {
                self.close_run(other);
                Some((channel, 1))
            }
        };
    }

    fn close_run(&mut self, run: Option<(u16, u16)>) {
        if let Some((channel, count)) = run {
            self.runs.put_u16(channel);
            self.runs.put_u16(count);
        }
    }

    pub(crate) fn finish(mut self) -> Batch {
        let run = self.run.take();
        self.close_run(run);
        let buf = self.buf.freeze();
        let mut start = 0;
        let frames = self
            .ends
            .iter()
            .map(|&end| {
                let frame = buf.slice(start..end);
                start = end;
                frame
            })
            .collect();
        Batch {
            channels: self.channels,
            runs: self.runs.freeze(),
            frames,
            items: self.items,
        }
    }
}

/// A finished batch.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// The channels runs refer to, by index.
    pub(crate) channels: Vec<Str>,
    /// `[channel index: u16 BE][count: u16 BE]` per run of frames on one channel.
    pub(crate) runs: Bytes,
    /// Every frame, in order (slices of one buffer).
    pub(crate) frames: Vec<Bytes>,
    /// Publications in each frame, in order: its callers are the next this many
    /// of the batch's, which are in frame order.
    pub(crate) items: Vec<usize>,
}

impl Batch {
    /// Each frame with its channel, for the pipelined `SPUBLISH`es of sharded
    /// pub/sub.
    pub(crate) fn frames(&self) -> impl Iterator<Item = (Str, Bytes)> + '_ {
        let channels = self.runs.chunks_exact(4).flat_map(move |run| {
            let channel = self
                .channels
                .get(usize::from(u16::from_be_bytes([run[0], run[1]])));
            let count = usize::from(u16::from_be_bytes([run[2], run[3]]));
            std::iter::repeat_n(channel, count)
        });
        channels
            .zip(&self.frames)
            .filter_map(|(channel, frame)| Some((channel?.clone(), frame.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::envelope::{decode, Envelope, Limits};

    #[test]
    fn frames_come_back_in_order_with_their_channels() {
        let mut b = BatchBuf::default();
        let (x, y) = (Str::from("x"), Str::from("y"));
        let (ix, iy) = (b.add_channel(&x), b.add_channel(&y));
        b.put_broadcast(ix, "n1", 9, 1, b"one").unwrap();
        b.put_broadcast(ix, "n1", 9, 2, b"two").unwrap();
        b.put_broadcast(iy, "n1", 9, 1, b"").unwrap();
        b.put_broadcast(ix, "n1", 9, 3, b"three").unwrap();
        let batch = b.finish();
        assert_eq!(&batch.runs[..], [0, 0, 0, 2, 0, 1, 0, 1, 0, 0, 0, 1]);
        let got: Vec<_> = batch.frames().collect();
        assert_eq!(got.len(), 4);
        let want = [
            ("x", 1, &b"one"[..]),
            ("x", 2, b"two"),
            ("y", 1, b""),
            ("x", 3, b"three"),
        ];
        for ((channel, frame), (c, s, p)) in got.iter().zip(want) {
            assert_eq!(&**channel, c);
            assert_eq!(
                decode(frame, &Limits::NONE),
                Ok(Envelope::Broadcast {
                    node: "n1",
                    epoch: 9,
                    seq: s,
                    payload: p
                })
            );
        }
    }

    #[test]
    fn a_run_longer_than_its_count_field_splits() {
        let mut b = BatchBuf::default();
        let c = b.add_channel(&Str::from("c"));
        for seq in 0..u64::from(u16::MAX) + 2 {
            b.put_broadcast(c, "n", 0, seq, b"").unwrap();
        }
        let batch = b.finish();
        assert_eq!(&batch.runs[..], [0, 0, 255, 255, 0, 0, 0, 2]);
        assert_eq!(batch.frames().count(), usize::from(u16::MAX) + 2);
    }

    fn bundled(frame: &[u8]) -> (u64, Vec<Vec<u8>>) {
        match decode(frame, &Limits::NONE) {
            Ok(Envelope::Bundle {
                node: "n1",
                epoch: 9,
                first,
                payloads,
            }) => (first, payloads.map(<[u8]>::to_vec).collect()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sessions_broadcasts_go_as_one_bundle_and_one_alone_as_a_frame() {
        let mut b = BatchBuf::default();
        let (x, y) = (Str::from("x"), Str::from("y"));
        let (ix, iy) = (b.add_channel(&x), b.add_channel(&y));
        let items: [&[u8]; 3] = [b"one", b"two", b"three"];
        b.put_broadcasts(ix, "n1", 9, 5, &items, |p| p);
        b.put_broadcasts(iy, "n1", 9, 1, &[&b"alone"[..]], |p| p);
        let batch = b.finish();
        let got: Vec<_> = batch.frames().collect();
        assert_eq!(got.len(), 2, "one frame per session");
        assert_eq!(&*got[0].0, "x");
        assert_eq!(
            bundled(&got[0].1),
            (5, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()])
        );
        assert_eq!(&*got[1].0, "y");
        assert_eq!(
            decode(&got[1].1, &Limits::NONE),
            Ok(Envelope::Broadcast {
                node: "n1",
                epoch: 9,
                seq: 1,
                payload: b"alone"
            })
        );
    }

    #[test]
    fn a_bundle_never_passes_max_bytes_or_max_bundle() {
        let mut b = BatchBuf::default();
        let c = b.add_channel(&Str::from("c"));
        // 300 KiB each: three fit 1 MiB, a fourth does not.
        let big = vec![7u8; 300 << 10];
        let items = vec![&big[..]; 7];
        b.put_broadcasts(c, "n1", 9, 1, &items, |p| p);
        let tiny = vec![&b"t"[..]; envelope::MAX_BUNDLE + 1];
        b.put_broadcasts(c, "n1", 9, 8, &tiny, |p| p);
        let batch = b.finish();
        let mut next = 1;
        let mut sizes = Vec::new();
        for (_, frame) in batch.frames() {
            assert!(frame.len() <= MAX_BYTES, "a frame of {} bytes", frame.len());
            let (first, n) = match decode(&frame, &Limits::NONE) {
                Ok(Envelope::Bundle {
                    first, payloads, ..
                }) => (first, payloads.len() as u64),
                Ok(Envelope::Broadcast { seq, .. }) => (seq, 1),
                other => panic!("{other:?}"),
            };
            assert_eq!(first, next, "numbers continue across frames");
            next += n;
            sizes.push(n);
        }
        assert_eq!(sizes, [3, 3, 1, envelope::MAX_BUNDLE as u64, 1]);
        // Each frame's callers: as many as it carries publications.
        let items: Vec<u64> = batch.items.iter().map(|&n| n as u64).collect();
        assert_eq!(items, sizes);
    }

    #[test]
    fn a_payload_over_max_bytes_goes_alone() {
        let mut b = BatchBuf::default();
        let c = b.add_channel(&Str::from("c"));
        let huge = vec![1u8; MAX_BYTES + 1];
        let items: [&[u8]; 3] = [b"a", &huge, b"b"];
        b.put_broadcasts(c, "n1", 9, 1, &items, |p| p);
        let kinds: Vec<_> = b
            .finish()
            .frames()
            .map(|(_, f)| matches!(decode(&f, &Limits::NONE), Ok(Envelope::Bundle { .. })))
            .collect();
        assert_eq!(kinds, [false, false, false]);
    }
}
