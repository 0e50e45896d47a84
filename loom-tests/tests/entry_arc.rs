//! Model E1: a client entry's reference count (`EntryArc`, `src/sync/entry_arc.rs`).
//!
//! An entry is shared by its slot, its receiver and its sessions' member cells,
//! and freed by whichever lets go last, on any thread. Every dereference reads a
//! loom cell that the value's drop writes, so loom reports a drop that is not
//! ordered after some other handle's last use. The count is the textbook one
//! (`Release` decrements, an `Acquire` fence before the drop); what is new is
//! that a pair is counted at the allocation and that the free skips the weak
//! count's decrement, so the model starts from a pair and frees on either thread.
//! The canary below weakens the decrement to `Relaxed` without the fence, and
//! loom must report it.
#![cfg(switchboard_loom)]

use loom_tests::thread::spawn;
use loom_tests::{check, join};
use switchboard::loom_entry_arc::{weaken_release, Handle};

/// Two threads each use their handles, then let go; either may drop the value.
fn two_threads_let_go(name: &str) {
    check(name, &[], |_| {
        let (a, b) = Handle::pair(7_u32);
        let c = b.clone();
        let other = spawn(move || {
            assert_eq!(*a.get(), 7);
            drop(a);
            assert_eq!(*c.get(), 7);
            drop(c);
        });
        assert_eq!(*b.get(), 7);
        drop(b);
        join(other);
    });
}

#[test]
fn e1_the_last_handle_drops_the_value_after_every_use() {
    two_threads_let_go("E1 entry count: two threads let go");
}

/// Restores the real count on this thread when the test ends, panicking or not.
struct Weakened;

impl Weakened {
    fn new() -> Self {
        weaken_release(true);
        Self
    }
}

impl Drop for Weakened {
    fn drop(&mut self) {
        weaken_release(false);
    }
}

#[test]
#[should_panic(expected = "Causality violation")]
fn e1_canary_a_relaxed_decrement_drops_the_value_under_a_use() {
    let _weakened = Weakened::new();
    two_threads_let_go("canary: E1 with a relaxed decrement");
}
