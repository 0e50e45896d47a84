//! Which clients belong to which sessions at the start of a scenario.
//!
//! Members are dealt out in order: session `s` holds the clients at flat positions
//! `s * members .. (s + 1) * members`, taken modulo the number of clients. With the default
//! `sessions = clients / members` every client is in exactly one session; with more sessions
//! clients wrap around and join several.

/// The deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    /// Clients (seats).
    pub clients: usize,
    /// Sessions.
    pub sessions: usize,
    /// Members dealt to each session (at most `clients`: a session cannot hold one client twice).
    pub members: usize,
}

impl Layout {
    /// A layout; `sessions` defaults to `clients / members` (at least 1).
    pub fn new(clients: usize, sessions: Option<usize>, members: usize) -> Self {
        let clients = clients.max(1);
        let members = members.clamp(1, clients);
        let sessions = sessions.unwrap_or(clients / members).max(1);
        Self {
            clients,
            sessions,
            members,
        }
    }

    /// Member `j` of session `s` (as a client index).
    pub fn member(&self, session: usize, j: usize) -> usize {
        (session * self.members + j) % self.clients
    }

    /// The sessions client `i` was dealt into, in increasing order.
    pub fn homes(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let dealt = self.sessions * self.members;
        (0..)
            .map(move |wrap| wrap * self.clients + i)
            .take_while(move |&p| p < dealt)
            .map(move |p| p / self.members)
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    fn check_inverse(l: Layout) {
        let mut from_sessions = vec![Vec::new(); l.clients];
        for s in 0..l.sessions {
            for j in 0..l.members {
                from_sessions[l.member(s, j)].push(s);
            }
        }
        for (i, expected) in from_sessions.iter().enumerate() {
            let homes: Vec<_> = l.homes(i).collect();
            assert_eq!(&homes, expected, "client {i} in {l:?}");
        }
    }

    #[test]
    fn homes_inverts_the_deal() {
        check_inverse(Layout::new(100, None, 10));
        check_inverse(Layout::new(100, Some(30), 10));
        check_inverse(Layout::new(10, Some(3), 4));
        check_inverse(Layout::new(7, Some(2), 7));
    }

    #[test]
    fn defaults_put_each_client_in_one_session() {
        let l = Layout::new(1000, None, 100);
        assert_eq!(l.sessions, 10);
        assert!((0..1000).all(|i| l.homes(i).count() == 1));
        assert_eq!(
            Layout::new(5, None, 100).members,
            5,
            "members capped at clients"
        );
    }
}
