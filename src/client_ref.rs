//! [`ClientRef`]: a client named by id or by key.

use crate::ClientId;

/// Names a client by id or by key, for the calls that accept either.
///
/// Built implicitly: pass a [`ClientId`], a `&str` or a `&String`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRef<'k> {
    /// A connection id.
    Id(ClientId),
    /// An application key; resolves to its current connection.
    Key(&'k str),
}

impl From<ClientId> for ClientRef<'_> {
    fn from(id: ClientId) -> Self {
        Self::Id(id)
    }
}

impl<'k> From<&'k str> for ClientRef<'k> {
    fn from(key: &'k str) -> Self {
        Self::Key(key)
    }
}

impl<'k> From<&'k String> for ClientRef<'k> {
    fn from(key: &'k String) -> Self {
        Self::Key(key)
    }
}
