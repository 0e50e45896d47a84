//! A batch of publications as the publish script reads it: one buffer of entries
//! and the channels they name, each channel once.
//!
//! ```text
//! entry  [channel: u16 BE, an index into the channels][n: u32 BE][frame: n bytes]
//! ```
//!
//! One buffer rather than an argument per publication: the client library
//! encodes, and frees, one argument per batch instead of two per publication,
//! and the publisher writes every frame into it without an allocation of its own.
//! The script slices the frames back out (see `scripts::PUBLISH`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fred::bytes_utils::Str;

use super::envelope;

/// Bytes of entries after which a batch takes no more: well under Redis's
/// largest argument (512 MiB by default), and small enough that one batch does
/// not hold up the ones behind it.
pub(crate) const MAX_BYTES: usize = 1 << 20;

/// The bytes in front of each frame.
const HEAD: usize = 6;

/// A batch being written.
#[derive(Debug, Default)]
pub(crate) struct BatchBuf {
    channels: Vec<Str>,
    buf: BytesMut,
    entries: usize,
}

/// A frame too long for an entry's length field; it is not published.
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
        let len = u32::try_from(n).map_err(|_| TooLong)?;
        self.buf.reserve(HEAD + n);
        self.buf.put_u16(channel);
        self.buf.put_u32(len);
        envelope::put_broadcast(&mut self.buf, node, epoch, seq, payload);
        self.entries += 1;
        Ok(())
    }

    /// Whether the batch should take no more entries.
    pub(crate) fn full(&self) -> bool {
        self.buf.len() >= MAX_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub(crate) fn finish(self) -> Batch {
        Batch {
            channels: self.channels,
            entries: self.buf.freeze(),
        }
    }
}

/// A finished batch.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// The channels entries refer to, by index.
    pub(crate) channels: Vec<Str>,
    /// Every entry, back to back.
    pub(crate) entries: Bytes,
}

impl Batch {
    /// Each entry's channel and frame (sharing the batch's buffer), for the
    /// pipelined `SPUBLISH`es of sharded pub/sub. Stops at an entry that does not
    /// fit, which [`BatchBuf`] never writes.
    pub(crate) fn frames(&self) -> impl Iterator<Item = (Str, Bytes)> + '_ {
        let mut rest = self.entries.clone();
        std::iter::from_fn(move || {
            if rest.len() < HEAD {
                return None;
            }
            let channel = self.channels.get(usize::from(rest.get_u16()))?.clone();
            let n = usize::try_from(rest.get_u32()).ok()?;
            if rest.len() < n {
                return None;
            }
            Some((channel, rest.split_to(n)))
        })
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
        b.put_broadcast(iy, "n1", 9, 1, b"").unwrap();
        b.put_broadcast(ix, "n1", 9, 2, b"three").unwrap();
        let batch = b.finish();
        let got: Vec<_> = batch.frames().collect();
        assert_eq!(got.len(), 3);
        let want = [("x", 1, &b"one"[..]), ("y", 1, b""), ("x", 2, b"three")];
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
