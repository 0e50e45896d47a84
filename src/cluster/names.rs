//! Redis key and channel names.
//!
//! Presence keys share the hash tag `{prefix}`, so that one script can touch them
//! all even on Redis Cluster. Session channels carry no tag: with sharded pub/sub
//! they spread over the cluster's shards.

use crate::SessionId;

#[derive(Debug)]
pub(crate) struct Names {
    /// `{prefix}`: the base of every presence key, passed to the scripts.
    pub(crate) base: String,
    /// `prefix:s:`: session channels.
    session: String,
    /// `prefix:node:`: each node's own channel (direct sends, takeover notices).
    pub(crate) node_base: String,
    /// `prefix:ctl`: node-down notices, heard by every node.
    pub(crate) ctl: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            base: format!("{{{prefix}}}"),
            session: format!("{prefix}:s:"),
            node_base: format!("{prefix}:node:"),
            ctl: format!("{prefix}:ctl"),
        }
    }

    /// The token that names a session inside keys and channels. Numbered and named
    /// sessions never collide: `7` is `n:7`, `"7"` is `s:7`.
    pub(crate) fn token(session: &SessionId) -> String {
        match session {
            SessionId::Num(n) => format!("n:{n}"),
            SessionId::Name(s) => format!("s:{s}"),
        }
    }

    pub(crate) fn channel(&self, session: &SessionId) -> String {
        format!("{}{}", self.session, Self::token(session))
    }

    pub(crate) fn node_channel(&self, node: &str) -> String {
        format!("{}{node}", self.node_base)
    }

    /// The session a channel name carries, if it is a session channel.
    pub(crate) fn session_of(&self, channel: &str) -> Option<SessionId> {
        let token = channel.strip_prefix(&self.session)?;
        if let Some(n) = token.strip_prefix("n:") {
            n.parse().ok().map(SessionId::Num)
        } else {
            token.strip_prefix("s:").map(SessionId::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip_and_keep_kinds_apart() {
        let n = Names::new("sb");
        for s in [
            SessionId::from(7u64),
            SessionId::from("7"),
            SessionId::from("a:b"),
        ] {
            assert_eq!(n.session_of(&n.channel(&s)), Some(s));
        }
        assert_ne!(n.channel(&7u64.into()), n.channel(&"7".into()));
        assert_eq!(n.session_of("sb:node:x"), None);
        assert_eq!(n.session_of("sb:s:n:notanumber"), None);
    }
}
