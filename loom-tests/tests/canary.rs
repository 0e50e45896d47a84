//! A deliberately racy miniature that loom must catch: proof the harness can fail.
//!
//! It is model 3 done wrong: a copy-on-write member list whose attach reads the
//! current list, copies it, appends, and stores the copy, in two separate critical
//! sections (check, then act). Two concurrent attaches can both copy the same list,
//! and the second store loses the first member. The registry avoids this by
//! building and publishing every membership under the session's writer lock.
//!
//! loom-only: on real threads the window is a few instructions wide, so the canary
//! would be a flaky test rather than a reliable failure.
#![cfg(switchboard_loom)]

use loom::sync::{Arc, Mutex};
use loom_tests::check;
use loom_tests::thread::spawn;

/// A member list published as an immutable snapshot.
struct RacyMembers(Mutex<Arc<Vec<u32>>>);

impl RacyMembers {
    fn load(&self) -> Arc<Vec<u32>> {
        Arc::clone(&self.0.lock().expect("unpoisoned"))
    }

    /// Check-then-act: the copy is made outside the lock that publishes it.
    fn attach(&self, member: u32) {
        let current = self.load();
        let mut next = Vec::clone(&current);
        next.push(member);
        *self.0.lock().expect("unpoisoned") = Arc::new(next);
    }
}

#[test]
#[should_panic(expected = "lost update")]
fn racy_copy_on_write_attach_is_caught() {
    check("canary: racy copy-on-write attach", &[], |_| {
        let members = Arc::new(RacyMembers(Mutex::new(Arc::new(Vec::new()))));
        let other = {
            let members = Arc::clone(&members);
            spawn(move || members.attach(1))
        };
        members.attach(2);
        other.join().expect("attach thread panicked");
        let mut seen = Vec::clone(&members.load());
        seen.sort_unstable();
        assert_eq!(seen, [1, 2], "lost update");
    });
}
