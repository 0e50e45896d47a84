//! The frame around every message that crosses Redis: who sent it, its number, and
//! for whom it is.
//!
//! ```text
//! broadcast  [2][0][n][node: n bytes][epoch: u32 BE][seq: u64 BE][payload]
//! direct     [2][1][n][node: n bytes][k: u16 BE][key: k bytes][payload]
//! takeover   [2][2][JSON {"key","gen","node","by"}]   written by the claim script; gen a decimal string
//! node down  [2][3][JSON {"node","keys","omitted"}]   written by the reap script
//! bundle     [2][4][n][node: n bytes][epoch: u32 BE][first seq: u64 BE][count: u16 BE]
//!            ([len: u32 BE][payload: len bytes]) repeated count times, nothing after
//! ```
//!
//! The first byte is the format's version. Version 2 added the broadcast's epoch
//! (`streams.rs`): a publisher may forget a session's numbering and start it
//! again, in a new epoch. A node reads only its own version: nodes of another
//! version are not understood (their frames count as malformed), so every node
//! of a cluster is upgraded together.
//!
//! A bundle is `count` broadcasts of one node to one session, numbered `first`,
//! `first + 1`, ... in one epoch: the publisher writes the publications a batch
//! holds for one session as one (`publisher.rs`), so that Redis, the client
//! library and the receiver handle one publication where they handled `count`.
//! Receivers count its numbers one by one, as if they had come singly (`gaps.rs`):
//! a lost bundle is `count` gaps. A publication alone in its batch still goes as a
//! broadcast frame, so a lightly loaded node writes what nodes before bundles
//! wrote and read. The kind came without a new version (no frame changed): a node
//! from before it counts a bundle as malformed, of an unknown kind, so during a
//! rolling upgrade the old nodes miss (and count) what the new ones bundle, while
//! the new ones read everything the old ones send.
//!
//! A bundle is decoded whole before any of it is used: its count is at most
//! [`MAX_BUNDLE`] and at least 1, its lengths add up to exactly the bytes that
//! follow, and its last number fits a `u64`; anything else refuses the whole
//! bundle, so no part of a malformed one is delivered.
//!
//! Every length is checked against the frame before it is used: the bytes come from
//! Redis, which any client of that server can publish to. A frame that is not one
//! this build writes is a [`Malformed`], never a panic.
//!
//! A notice (takeover, node down) is bounded by [`Limits`] before and while it is
//! read: one longer than `notice_bytes` is refused unread, and a node-down keeps
//! only its first `keys_listed` keys (each at most `key_bytes`), counting the rest
//! into its `omitted` without holding them. So one notice on the ctl channel,
//! which every node reads, costs each node at most its length.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{SeqAccess, Visitor};
use serde::Deserialize;

/// The only frame version this build reads and writes.
pub(crate) const VERSION: u8 = 2;
const BROADCAST: u8 = 0;
const DIRECT: u8 = 1;
pub(crate) const TAKEOVER: u8 = 2;
pub(crate) const NODE_DOWN: u8 = 3;
const BUNDLE: u8 = 4;

/// Broadcasts in one bundle, at most: a publisher writes at most a batch's
/// publications into one (512), and a receiver refuses a count above this.
pub(crate) const MAX_BUNDLE: usize = 1024;

/// A bundle's bytes before its first payload, besides the node id.
const BUNDLE_HEAD: usize = 3 + 4 + 8 + 2;

/// Bytes a bundle spends on each payload besides the payload itself.
pub(crate) const BUNDLE_ITEM: usize = 4;

/// The longest node id; ids travel in every frame.
pub(crate) const MAX_NODE_ID: usize = 64;

/// The least [`Limits::notice_bytes`] a node takes, whatever its payload bound.
pub(crate) const MIN_NOTICE_BYTES: usize = 64 * 1024;

/// What a control notice (a takeover or node-down, JSON the scripts write) may
/// make a receiver hold: every node reads the ctl channel, and any client of the
/// Redis server can publish to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The longest notice, in bytes; a longer one is refused unread.
    pub(crate) notice_bytes: usize,
    /// Keys a node-down lists at most; the rest are counted in its `omitted`.
    pub(crate) keys_listed: usize,
    /// The longest key, in bytes. A longer one could not have registered, so a
    /// node-down does not list it (it counts in `omitted`).
    pub(crate) key_bytes: usize,
}

#[cfg(test)]
impl Limits {
    /// No bound: for tests of everything else.
    pub(crate) const NONE: Self = Self {
        notice_bytes: usize::MAX,
        keys_listed: usize::MAX,
        key_bytes: usize::MAX,
    };
}

/// Whether `id` can name a node: 1 to [`MAX_NODE_ID`] bytes of `[A-Za-z0-9._-]`.
/// The builder refuses any other id, so a frame carrying one is forged or corrupt.
pub(crate) fn valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A decoded frame; byte fields borrow from the publication.
#[derive(Debug, PartialEq)]
pub(crate) enum Envelope<'a> {
    Broadcast {
        node: &'a str,
        epoch: u32,
        seq: u64,
        payload: &'a [u8],
    },
    Direct {
        node: &'a str,
        key: &'a str,
        payload: &'a [u8],
    },
    TakeOver(TakeOver),
    NodeDown(NodeDown),
    /// Broadcasts numbered `first`, `first + 1`, ..., one per payload.
    Bundle {
        node: &'a str,
        epoch: u32,
        first: u64,
        payloads: Payloads<'a>,
    },
}

/// A decoded bundle's payloads, in order. Their lengths were checked when it was
/// decoded; iterating only reads them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payloads<'a> {
    left: usize,
    bytes: &'a [u8],
}

impl<'a> Payloads<'a> {
    /// Checks that `bytes` holds exactly `count` length-prefixed payloads.
    fn check(count: usize, bytes: &'a [u8]) -> Result<Self, Malformed> {
        if count == 0 || count > MAX_BUNDLE {
            return Err(Malformed::Count(count));
        }
        // A count the bytes cannot hold is refused before any length is read.
        if bytes.len() < count * BUNDLE_ITEM {
            return Err(Malformed::Truncated);
        }
        let mut rest = bytes;
        for _ in 0..count {
            let (len, after) = split(rest, BUNDLE_ITEM)?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            let len = usize::try_from(len).map_err(|_| Malformed::Truncated)?;
            (_, rest) = split(after, len)?;
        }
        if !rest.is_empty() {
            return Err(Malformed::Trailing);
        }
        Ok(Self { left: count, bytes })
    }

    /// Payloads not yet read.
    pub(crate) fn len(&self) -> usize {
        self.left
    }
}

impl<'a> Iterator for Payloads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked in `check`; a short read ends the iteration rather than panic.
        let (len, rest) = split(self.bytes, BUNDLE_ITEM).ok()?;
        let len = usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).ok()?;
        let (payload, rest) = split(rest, len).ok()?;
        self.bytes = rest;
        Some(payload)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// A claim script's notice to the key's previous node.
#[derive(Debug, PartialEq, Deserialize)]
pub(crate) struct TakeOver {
    pub(crate) key: String,
    /// The claim's generation; a node closes its holder only if it claimed earlier.
    /// A decimal string on the wire (a number is accepted too).
    #[serde(deserialize_with = "decimal")]
    pub(crate) gen: u64,
    /// The node that claimed the key.
    pub(crate) node: String,
    /// The new connection on that node.
    pub(crate) by: String,
}

fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Gen {
        Number(u64),
        Text(String),
    }
    match Gen::deserialize(d)? {
        Gen::Number(n) => Ok(n),
        Gen::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// The reap script's notice that a node's heartbeat expired.
#[derive(Debug, PartialEq)]
pub(crate) struct NodeDown {
    pub(crate) node: String,
    pub(crate) keys: Vec<String>,
    /// Released keys the script did not list.
    pub(crate) omitted: u64,
}

/// Why a frame is not one this build writes. Each is counted as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Another format version (an older or newer node, or not a frame at all).
    Version(u8),
    /// A kind this version does not have.
    Kind(u8),
    /// Shorter than its lengths say.
    Truncated,
    /// A node id no node could have, or a key that is not UTF-8.
    Text,
    /// A notice whose JSON is not what the scripts write.
    Json,
    /// A bundle of no broadcast, or of more than [`MAX_BUNDLE`], or whose last
    /// number would pass `u64::MAX`.
    Count(usize),
    /// Bytes after a bundle's last payload.
    Trailing,
    /// A notice longer than [`Limits::notice_bytes`], of this many bytes.
    TooLarge(usize),
}

#[cfg(test)]
pub(crate) fn broadcast(node: &str, epoch: u32, seq: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(broadcast_len(node, payload));
    put_broadcast(&mut b, node, epoch, seq, payload);
    b.freeze()
}

/// The length of a broadcast frame.
pub(crate) fn broadcast_len(node: &str, payload: &[u8]) -> usize {
    3 + node.len() + 4 + 8 + payload.len()
}

/// Appends a broadcast frame to `b`: the publisher writes a whole batch into one
/// buffer rather than allocating a frame per message.
pub(crate) fn put_broadcast(b: &mut BytesMut, node: &str, epoch: u32, seq: u64, payload: &[u8]) {
    header(b, BROADCAST, node);
    b.put_u32(epoch);
    b.put_u64(seq);
    b.put_slice(payload);
}

/// The length of a bundle of `payloads`.
pub(crate) fn bundle_len<'p>(node: &str, payloads: impl IntoIterator<Item = &'p [u8]>) -> usize {
    BUNDLE_HEAD
        + node.len()
        + payloads
            .into_iter()
            .map(|p| BUNDLE_ITEM + p.len())
            .sum::<usize>()
}

/// Appends a bundle of `payloads` numbered from `first`. The caller keeps to what
/// receivers accept: 1 to [`MAX_BUNDLE`] payloads, each shorter than 4 GiB.
pub(crate) fn put_bundle<'p>(
    b: &mut BytesMut,
    node: &str,
    epoch: u32,
    first: u64,
    payloads: impl ExactSizeIterator<Item = &'p [u8]>,
) {
    header(b, BUNDLE, node);
    b.put_u32(epoch);
    b.put_u64(first);
    debug_assert!((1..=MAX_BUNDLE).contains(&payloads.len()));
    // MAX_BUNDLE fits a u16.
    b.put_u16(payloads.len() as u16);
    for p in payloads {
        debug_assert!(u32::try_from(p.len()).is_ok());
        b.put_u32(p.len() as u32);
        b.put_slice(p);
    }
}

pub(crate) fn direct(node: &str, key: &str, payload: &[u8]) -> Option<Bytes> {
    let k = u16::try_from(key.len()).ok()?;
    let mut b = BytesMut::with_capacity(3 + node.len() + 2 + key.len() + payload.len());
    header(&mut b, DIRECT, node);
    b.put_u16(k);
    b.put_slice(key.as_bytes());
    b.put_slice(payload);
    Some(b.freeze())
}

fn header(b: &mut BytesMut, kind: u8, node: &str) {
    // The builder bounds node ids to MAX_NODE_ID bytes, so the length fits a byte.
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u8(node.len() as u8);
    b.put_slice(node.as_bytes());
}

fn split(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), Malformed> {
    if bytes.len() < n {
        return Err(Malformed::Truncated);
    }
    Ok(bytes.split_at(n))
}

/// A numbered frame's epoch and (first) number, and what follows them.
fn numbering(bytes: &[u8]) -> Result<(u32, u64, &[u8]), Malformed> {
    let (epoch, rest) = bytes.split_first_chunk::<4>().ok_or(Malformed::Truncated)?;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or(Malformed::Truncated)?;
    Ok((u32::from_be_bytes(*epoch), u64::from_be_bytes(*seq), rest))
}

fn text(bytes: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| Malformed::Text)
}

fn node_id(id: &str) -> Result<&str, Malformed> {
    if valid_node_id(id) {
        Ok(id)
    } else {
        Err(Malformed::Text)
    }
}

/// Decodes one publication; a takeover or node-down notice within `limits`
/// (broadcast and direct payloads are bounded where they are delivered).
pub(crate) fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, Malformed> {
    let (head, rest) = split(bytes, 2)?;
    if head[0] != VERSION {
        return Err(Malformed::Version(head[0]));
    }
    if matches!(head[1], TAKEOVER | NODE_DOWN) && bytes.len() > limits.notice_bytes {
        return Err(Malformed::TooLarge(bytes.len()));
    }
    match head[1] {
        TAKEOVER => serde_json::from_slice(rest)
            .map_err(|_| Malformed::Json)
            .and_then(|t: TakeOver| {
                node_id(&t.node)?;
                Ok(Envelope::TakeOver(t))
            }),
        NODE_DOWN => {
            let down = node_down(rest, limits)?;
            node_id(&down.node)?;
            Ok(Envelope::NodeDown(down))
        }
        kind @ (BROADCAST | DIRECT | BUNDLE) => {
            let (n, rest) = split(rest, 1)?;
            let (node, rest) = split(rest, usize::from(n[0]))?;
            let node = node_id(text(node)?)?;
            if kind == BUNDLE {
                let (epoch, first, rest) = numbering(rest)?;
                let (count, rest) = split(rest, 2)?;
                let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
                // The numbers first ..= first + count - 1 must all exist.
                if count > 0 && first.checked_add(count as u64 - 1).is_none() {
                    return Err(Malformed::Count(count));
                }
                Ok(Envelope::Bundle {
                    node,
                    epoch,
                    first,
                    payloads: Payloads::check(count, rest)?,
                })
            } else if kind == BROADCAST {
                let (epoch, seq, payload) = numbering(rest)?;
                Ok(Envelope::Broadcast {
                    node,
                    epoch,
                    seq,
                    payload,
                })
            } else {
                let (k, rest) = split(rest, 2)?;
                let k = u16::from_be_bytes([k[0], k[1]]);
                let (key, payload) = split(rest, usize::from(k))?;
                Ok(Envelope::Direct {
                    node,
                    key: text(key)?,
                    payload,
                })
            }
        }
        kind => Err(Malformed::Kind(kind)),
    }
}

/// Lua's cjson writes an empty table as `{}`, so `keys` may be an object. Reads
/// at most `limits.keys_listed` keys into memory; past them, and for each key
/// longer than `limits.key_bytes`, it only counts (into `omitted`), so what a
/// notice makes this node hold is bounded whatever its length.
fn node_down(bytes: &[u8], limits: &Limits) -> Result<NodeDown, Malformed> {
    use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess};

    struct Notice(Limits);

    impl<'de> Visitor<'de> for Notice {
        type Value = NodeDown;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a node-down notice")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeDown, A::Error> {
            let (mut node, mut keys, mut omitted) = (None, None, 0u64);
            while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match &*field {
                    "node" => node = Some(map.next_value::<String>()?),
                    "keys" => keys = Some(map.next_value_seed(Keys(self.0))?),
                    "omitted" => omitted = map.next_value()?,
                    // Fields the script does not write are ignored, as before.
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let node = node.ok_or_else(|| serde::de::Error::missing_field("node"))?;
            let (keys, unlisted) = keys.ok_or_else(|| serde::de::Error::missing_field("keys"))?;
            Ok(NodeDown {
                node,
                keys,
                omitted: omitted.saturating_add(unlisted),
            })
        }
    }

    /// The `keys` field: the keys kept, and how many were counted instead.
    struct Keys(Limits);

    impl<'de> DeserializeSeed<'de> for Keys {
        type Value = (Vec<String>, u64);

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Keys {
        type Value = (Vec<String>, u64);

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of keys")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let (mut keys, mut unlisted) = (Vec::new(), 0u64);
            while let Some(key) = seq.next_element_seed(Key(self.0.key_bytes))? {
                match key {
                    Some(key) if keys.len() < self.0.keys_listed => keys.push(key),
                    _ => unlisted += 1,
                }
                if keys.len() >= self.0.keys_listed {
                    // The rest are counted, each checked to be a string, not kept.
                    while seq.next_element_seed(Key(0))?.is_some() {
                        unlisted += 1;
                    }
                    break;
                }
            }
            Ok((keys, unlisted))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            match map.next_key::<IgnoredAny>()? {
                None => Ok((Vec::new(), 0)),
                Some(_) => Err(serde::de::Error::custom("keys as a non-empty object")),
            }
        }
    }

    /// One key, if it is at most this many bytes; `None` for a longer one, which
    /// is read (from the notice, already bounded) but not copied.
    struct Key(usize);

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Option<String>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key")
        }

        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
            Ok((key.len() <= self.0).then(|| key.to_owned()))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let down = de
        .deserialize_map(Notice(*limits))
        .map_err(|_| Malformed::Json)?;
    de.end().map_err(|_| Malformed::Json)?;
    Ok(down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Envelope<'_>, Malformed> {
        super::decode(bytes, &Limits::NONE)
    }

    fn node_down_frame(json: &str) -> Vec<u8> {
        let mut f = vec![VERSION, NODE_DOWN];
        f.extend_from_slice(json.as_bytes());
        f
    }

    #[test]
    fn a_node_down_lists_at_most_its_bound_and_counts_the_rest_unread() {
        let n = 2_000_000;
        let mut json = String::from(r#"{"node":"ghost","keys":["#);
        json.push_str(&vec![r#""""#; n].join(","));
        json.push_str(r#"],"omitted":7}"#);
        let limits = Limits {
            notice_bytes: usize::MAX,
            keys_listed: 1000,
            key_bytes: 64,
        };
        match super::decode(&node_down_frame(&json), &limits) {
            Ok(Envelope::NodeDown(down)) => {
                assert_eq!(down.node, "ghost");
                assert_eq!(
                    (down.keys.len(), down.omitted),
                    (1000, 7 + n as u64 - 1000),
                    "listed and omitted"
                );
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A key longer than any client could register is not listed, only counted;
        // the next one takes its place. Keys past the bound must still be strings.
        let long = "x".repeat(65);
        let json = format!(r#"{{"keys":["a","{long}","b","c"],"node":"n","omitted":1}}"#);
        let limits = Limits {
            keys_listed: 2,
            ..limits
        };
        assert_eq!(
            super::decode(&node_down_frame(&json), &limits),
            Ok(Envelope::NodeDown(NodeDown {
                node: "n".into(),
                keys: vec!["a".into(), "b".into()],
                omitted: 3,
            }))
        );
        let json = r#"{"node":"n","keys":["a","b","c",7]}"#;
        assert_eq!(
            super::decode(&node_down_frame(json), &limits),
            Err(Malformed::Json)
        );
        // The count saturates.
        let json = format!(
            r#"{{"node":"n","keys":["a","b","c"],"omitted":{}}}"#,
            u64::MAX
        );
        match super::decode(&node_down_frame(&json), &limits) {
            Ok(Envelope::NodeDown(down)) => assert_eq!(down.omitted, u64::MAX),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_notice_over_its_bound_is_refused_unread() {
        let limits = Limits {
            notice_bytes: 64,
            keys_listed: 1000,
            key_bytes: 64,
        };
        let fits = node_down_frame(r#"{"node":"n","keys":["a"]}"#);
        assert!(super::decode(&fits, &limits).is_ok());
        let keys = vec![r#""k""#; 20].join(",");
        let over = node_down_frame(&format!(r#"{{"node":"n","keys":[{keys}]}}"#));
        assert_eq!(
            super::decode(&over, &limits),
            Err(Malformed::TooLarge(over.len()))
        );
        // Not even read: no JSON at all past the bound is refused the same way.
        let mut junk = vec![VERSION, TAKEOVER];
        junk.resize(65, b'[');
        assert_eq!(super::decode(&junk, &limits), Err(Malformed::TooLarge(65)));
        // Broadcasts are bounded per payload, elsewhere, not here.
        let b = broadcast("n", 1, 1, &[0; 100]);
        assert!(super::decode(&b, &limits).is_ok());
    }

    #[test]
    fn round_trips() {
        let b = broadcast("a", 0xdead_beef, 7, b"hi");
        assert_eq!(
            decode(&b),
            Ok(Envelope::Broadcast {
                node: "a",
                epoch: 0xdead_beef,
                seq: 7,
                payload: b"hi"
            })
        );
        let d = direct("node-2", "dev", b"x").unwrap();
        assert_eq!(
            decode(&d),
            Ok(Envelope::Direct {
                node: "node-2",
                key: "dev",
                payload: b"x"
            })
        );
    }

    #[test]
    fn every_truncation_is_refused_not_panicked() {
        let b = broadcast("node", 3, 1, b"");
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let d = direct("node", "key", b"").unwrap();
        for n in 0..d.len() {
            assert!(decode(&d[..n]).is_err(), "prefix of {n} bytes");
        }
        assert_eq!(decode(&[VERSION, 9]), Err(Malformed::Kind(9)));
    }

    #[test]
    fn a_frame_of_another_version_is_refused_by_its_version() {
        // A version 1 broadcast (no epoch), as nodes before this one wrote it.
        let mut old = vec![1, BROADCAST, 1, b'a'];
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(b"hi");
        assert_eq!(decode(&old), Err(Malformed::Version(1)));
        for v in [0, 3, 255] {
            let mut f = broadcast("a", 1, 1, b"x").to_vec();
            f[0] = v;
            assert_eq!(decode(&f), Err(Malformed::Version(v)));
        }
    }

    #[test]
    fn a_node_id_no_node_could_have_is_refused() {
        for node in ["has space", "ünï", &"x".repeat(MAX_NODE_ID + 1), ""] {
            let f = broadcast(node, 1, 1, b"x");
            assert_eq!(decode(&f), Err(Malformed::Text), "{node:?}");
            let d = direct(node, "k", b"x").unwrap();
            assert_eq!(decode(&d), Err(Malformed::Text), "{node:?}");
        }
    }

    fn bundle(node: &str, epoch: u32, first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_bundle(&mut b, node, epoch, first, payloads.iter().copied());
        assert_eq!(b.len(), bundle_len(node, payloads.iter().copied()));
        b.to_vec()
    }

    fn payloads_of(bytes: &[u8]) -> Result<(u64, Vec<&[u8]>), Malformed> {
        match decode(bytes)? {
            Envelope::Bundle {
                node: "n1",
                epoch: 9,
                first,
                payloads,
            } => Ok((first, payloads.collect())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bundle_round_trips() {
        let b = bundle("n1", 9, 41, &[b"one", b"", b"three"]);
        assert_eq!(payloads_of(&b), Ok((41, vec![&b"one"[..], b"", b"three"])));
        match decode(&b) {
            Ok(Envelope::Bundle { payloads, .. }) => assert_eq!(payloads.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_truncation_of_a_bundle_is_refused_whole() {
        let b = bundle("n1", 9, 1, &[b"ab", b"cd"]);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(Malformed::Trailing));
    }

    /// Where the count field sits in a bundle from node "n1".
    const COUNT_AT: usize = 3 + 2 + 4 + 8;

    #[test]
    fn a_bundle_count_the_bytes_cannot_hold_is_refused_before_reading() {
        let mut b = bundle("n1", 9, 1, &[b"ab", b"cd"]);
        // More payloads than bytes for their lengths: refused by the count alone.
        b[COUNT_AT..COUNT_AT + 2].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(decode(&b), Err(Malformed::Truncated));
        // One more than it holds, with bytes enough for the lengths: the walk ends short.
        let mut b = bundle("n1", 9, 1, &[b"abcdefgh", b"cd"]);
        b[COUNT_AT..COUNT_AT + 2].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(decode(&b), Err(Malformed::Truncated));
        // Fewer: bytes left over.
        let mut b = bundle("n1", 9, 1, &[b"ab", b"cd"]);
        b[COUNT_AT..COUNT_AT + 2].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(decode(&b), Err(Malformed::Trailing));
    }

    #[test]
    fn a_bundle_count_out_of_bounds_is_refused() {
        let mut empty = bundle("n1", 9, 1, &[b"x"]);
        empty[COUNT_AT..COUNT_AT + 2].copy_from_slice(&0u16.to_be_bytes());
        empty.truncate(COUNT_AT + 2);
        assert_eq!(decode(&empty), Err(Malformed::Count(0)));
        let max: Vec<&[u8]> = vec![b""; MAX_BUNDLE];
        let mut b = bundle("n1", 9, 1, &max);
        assert_eq!(payloads_of(&b).map(|p| p.1.len()), Ok(MAX_BUNDLE));
        // One more empty payload: well formed but for its count.
        let over = u16::try_from(MAX_BUNDLE + 1).unwrap();
        b[COUNT_AT..COUNT_AT + 2].copy_from_slice(&over.to_be_bytes());
        b.extend_from_slice(&[0; BUNDLE_ITEM]);
        assert_eq!(decode(&b), Err(Malformed::Count(MAX_BUNDLE + 1)));
    }

    #[test]
    fn a_payload_length_past_the_bundle_is_refused() {
        let mut b = bundle("n1", 9, 1, &[b"ab", b"cd"]);
        let len_at = COUNT_AT + 2;
        b[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&b), Err(Malformed::Truncated));
    }

    #[test]
    fn a_bundle_numbered_past_u64_max_is_refused() {
        let b = bundle("n1", 9, u64::MAX, &[b"a", b"b"]);
        assert_eq!(decode(&b), Err(Malformed::Count(2)));
        let b = bundle("n1", 9, u64::MAX, &[b"a"]);
        assert_eq!(payloads_of(&b), Ok((u64::MAX, vec![&b"a"[..]])));
    }

    #[test]
    fn a_takeover_generation_reads_as_text_or_number() {
        for json in [
            r#"{"key":"k","gen":"1764000000000001","node":"a","by":"c1.1.0"}"#,
            r#"{"key":"k","gen":1764000000000001,"node":"a","by":"c1.1.0"}"#,
        ] {
            let mut f = vec![VERSION, TAKEOVER];
            f.extend_from_slice(json.as_bytes());
            match decode(&f) {
                Ok(Envelope::TakeOver(t)) => assert_eq!(t.gen, 1_764_000_000_000_001),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn node_down_accepts_cjson_empty_table() {
        let mut f = vec![VERSION, NODE_DOWN];
        f.extend_from_slice(br#"{"node":"a","keys":{}}"#);
        assert_eq!(
            decode(&f),
            Ok(Envelope::NodeDown(NodeDown {
                node: "a".into(),
                keys: vec![],
                omitted: 0,
            }))
        );
    }
}
