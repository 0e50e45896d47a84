//! [`ClientId`]: the packed generational key of a client slot.

use std::fmt;

/// A connected client's identity: shard, slot index and generation in one `u64`.
///
/// ```text
///  63                         32 31        24 23                        0
/// ┌─────────────────────────────┬────────────┬───────────────────────────┐
/// │      generation (32 bits)   │ shard (8)  │      slot index (24)      │
/// └─────────────────────────────┴────────────┴───────────────────────────┘
/// ```
///
/// * **Slot index, 24 bits:** up to 16,777,216 slots per shard.
/// * **Shard, 8 bits:** up to 256 shards.
/// * **Generation, 32 bits:** bumped every time the slot is freed. An id resolves only
///   while its generation matches the slot's current occupant, so a stale id never
///   reaches the slot's next client. A slot whose generation would wrap (after
///   4,294,967,295 reuses of that one slot) is retired instead of reused, so two live
///   ids can never alias; retiring costs one 8-byte slot, forever.
///
/// Ids are opaque: compare, hash, order, print or store them, and hand them back to
/// the registry that issued them. [`ClientId::from_u64`] accepts any value; a forged
/// or out-of-range one is rejected with a typed error by the registry, never a panic.
///
/// # Examples
///
/// ```
/// let registry = switchboard::Registry::<u32>::new();
/// let (id, _rx) = registry.register(Default::default()).unwrap();
/// let raw = id.as_u64();
/// assert_eq!(switchboard::ClientId::from_u64(raw), id);
/// println!("{id}"); // e.g. "c0.0.1": shard 0, slot 0, generation 1
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

impl ClientId {
    /// Bits of the slot index.
    pub const INDEX_BITS: u32 = 24;
    /// Bits of the shard number.
    pub const SHARD_BITS: u32 = 8;
    /// Bits of the generation.
    pub const GENERATION_BITS: u32 = 32;

    /// Slots per shard: `2^INDEX_BITS`.
    pub const MAX_SLOTS_PER_SHARD: usize = 1 << Self::INDEX_BITS;
    /// Shards per registry: `2^SHARD_BITS`.
    pub const MAX_SHARDS: usize = 1 << Self::SHARD_BITS;

    const INDEX_MASK: u64 = (1 << Self::INDEX_BITS) - 1;
    const SHARD_SHIFT: u32 = Self::INDEX_BITS;
    const SHARD_MASK: u64 = (1 << Self::SHARD_BITS) - 1;
    const GENERATION_SHIFT: u32 = Self::INDEX_BITS + Self::SHARD_BITS;

    /// Packs the three parts. Callers guarantee each part fits its field.
    pub(crate) fn pack(shard: usize, index: usize, generation: u32) -> Self {
        debug_assert!(shard < Self::MAX_SHARDS && index < Self::MAX_SLOTS_PER_SHARD);
        Self(
            (u64::from(generation) << Self::GENERATION_SHIFT)
                | ((shard as u64 & Self::SHARD_MASK) << Self::SHARD_SHIFT)
                | (index as u64 & Self::INDEX_MASK),
        )
    }

    /// The shard this id points into.
    #[inline]
    pub(crate) fn shard(self) -> usize {
        ((self.0 >> Self::SHARD_SHIFT) & Self::SHARD_MASK) as usize
    }

    /// The slot index within its shard.
    #[inline]
    pub(crate) fn index(self) -> usize {
        (self.0 & Self::INDEX_MASK) as usize
    }

    /// The generation the slot had when this id was issued.
    #[inline]
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> Self::GENERATION_SHIFT) as u32
    }

    /// The raw packed value, for storing the id outside the process (a log, a
    /// database row, a wire protocol).
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`as_u64`](Self::as_u64). Any value is accepted: the
    /// registry validates the parts when the id is used.
    #[must_use]
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }
}

/// Serialised as its [`Display`](fmt::Display) form, `"c{shard}.{index}.{generation}"`.
impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for ClientId {
    type Err = ParseClientIdError;

    /// Parses the [`Display`](fmt::Display) form back; the registry still validates
    /// the id when it is used.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.strip_prefix('c').ok_or(ParseClientIdError)?.split('.');
        let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (shard, index, generation) = (next(), next(), next());
        match (shard, index, generation, parts.next()) {
            (Some(s), Some(i), Some(g), None)
                if s < Self::MAX_SHARDS as u64
                    && i < Self::MAX_SLOTS_PER_SHARD as u64
                    && g <= u64::from(u32::MAX) =>
            {
                Ok(Self::pack(s as usize, i as usize, g as u32))
            }
            _ => Err(ParseClientIdError),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Text that is not a client id of the form `c{shard}.{index}.{generation}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a client id (expected c<shard>.<index>.<generation>)")]
pub struct ParseClientIdError;

impl fmt::Display for ClientId {
    /// `c{shard}.{index}.{generation}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "c{}.{}.{}",
            self.shard(),
            self.index(),
            self.generation()
        )
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientId")
            .field("shard", &self.shard())
            .field("index", &self.index())
            .field("generation", &self.generation())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_field_at_its_limits() {
        let shards = [0, 1, 7, ClientId::MAX_SHARDS - 1];
        let indexes = [0, 1, 4095, ClientId::MAX_SLOTS_PER_SHARD - 1];
        let generations = [0, 1, 0x8000_0000, u32::MAX];
        for &s in &shards {
            for &i in &indexes {
                for &g in &generations {
                    let id = ClientId::pack(s, i, g);
                    assert_eq!((id.shard(), id.index(), id.generation()), (s, i, g));
                    assert_eq!(ClientId::from_u64(id.as_u64()), id);
                }
            }
        }
    }

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let a = ClientId::pack(1, 0, 0);
        let b = ClientId::pack(0, 1, 0);
        let c = ClientId::pack(0, 0, 1);
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_ne!(a, c);
        assert_eq!(c.index(), 0);
        assert_eq!(a.generation(), 0);
    }

    #[test]
    fn display_parses_back_and_rejects_garbage() {
        let id = ClientId::pack(3, 42, 7);
        assert_eq!(id.to_string().parse::<ClientId>(), Ok(id));
        for bad in [
            "",
            "c",
            "c1.2",
            "c1.2.3.4",
            "x1.2.3",
            "c256.0.0",
            "c0.16777216.0",
            "c0.0.4294967296",
            "c-1.0.0",
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_and_debug_name_the_parts() {
        let id = ClientId::pack(3, 42, 7);
        assert_eq!(id.to_string(), "c3.42.7");
        assert_eq!(
            format!("{id:?}"),
            "ClientId { shard: 3, index: 42, generation: 7 }"
        );
    }
}
