//! The names of the profile index sets, and which sets a profile belongs to.
//!
//! The sets themselves belong to [`Fleet`](super::Fleet); how queries read them is
//! described in [`query`](crate::query).

use crate::profile::{fold_platform, ClientInfo, ClientKind};
use crate::session::{Session, SetKey};
use crate::sync::ValueArc;

/// The name of one index set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    Profiled,
    Kind(ClientKind),
    Platform(ValueArc<str>),
    Capability(ValueArc<str>),
    Tag(ValueArc<str>),
}

impl SetKey for IndexKey {
    /// Unnamed: only the directory needs an index set's key.
    #[inline]
    fn new_set<M>(&self) -> Session<M> {
        Session::new()
    }
}

/// The index sets a profile belongs to.
pub(crate) fn index_keys(info: &ClientInfo) -> Vec<IndexKey> {
    if !info.is_profiled() {
        return Vec::new();
    }
    let mut keys = vec![IndexKey::Profiled];
    keys.extend(info.kind.map(IndexKey::Kind));
    if let Some(p) = &info.platform {
        keys.push(IndexKey::Platform(ValueArc::from(fold_platform(p))));
    }
    for c in &info.system_info.capabilities {
        keys.push(IndexKey::Capability(ValueArc::from(c.as_str())));
    }
    for t in &info.system_info.tags {
        keys.push(IndexKey::Tag(ValueArc::from(t.as_str())));
    }
    // A profile may repeat a capability or tag; each set holds a client once.
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    keys.retain(|k| seen.insert(k.clone()));
    keys
}
