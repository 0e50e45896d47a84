//! A batch of publications as the publish script reads it: every frame as an
//! argument of its own, the channels they go to, each once, and runs saying
//! which frames go to which channel.
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
}

/// A frame longer than a Redis argument can be (4 GiB is past any server's
/// limit); it is not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

impl BatchBuf {
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
    pub(crate) fn put_broadcast(
        &mut self,
        channel: u16,
        node: &str,
        epoch: u32,
        seq: u64,
        payload: &[u8],
    ) -> Result<(), TooLong> {
        let n = envelope::broadcast_len(node, payload);
        u32::try_from(n).map_err(|_| TooLong)?;
        self.buf.reserve(n);
        envelope::put_broadcast(&mut self.buf, node, epoch, seq, payload);
        self.ends.push(self.buf.len());
        self.run = match self.run {
            Some((c, count)) if c == channel && count < u16::MAX => Some((c, count + 1)),
            other => {
                self.close_run(other);
                Some((channel, 1))
            }
        };
        Ok(())
    }

    fn close_run(&mut self, run: Option<(u16, u16)>) {
        if let Some((channel, count)) = run {
            self.runs.put_u16(channel);
            self.runs.put_u16(count);
        }
    }

    /// Whether the batch should take no more entries.
    pub(crate) fn full(&self) -> bool {
        self.buf.len() >= MAX_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
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
    use crate::cluster::envelope::{decode, Envelope};

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
                decode(frame),
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

    #[test]
    fn a_batch_fills_at_max_bytes() {
        let mut b = BatchBuf::default();
        let c = b.add_channel(&Str::from("c"));
        let payload = vec![0u8; 64 << 10];
        let mut n = 0;
        while !b.full() {
            b.put_broadcast(c, "n", 0, n, &payload).unwrap();
            n += 1;
        }
        assert_eq!(n, 16, "64 KiB frames: 16 fill 1 MiB");
    }
}
