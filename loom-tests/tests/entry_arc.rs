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
//!
//! Model E2: the weak handle (`EntryWeak`). The last strong drop frees the
//! allocation at once when its `Acquire` load reads a weak count of 1; every
//! access to a count reads a loom cell that the free writes, so loom reports a
//! free not ordered after some handle's last touch of the counts. Three shapes:
//! an upgrade against the last strong drop, a downgrade on the other thread, and
//! a weak handle dropped on a third thread against the last strong drop. Its
//! canary makes the shortcut's load `Relaxed`, without the fence.
//!
//! The sole-handle drop (a handle that reads `strong == 1` drops the value and
//! frees without a decrement, unless a weak handle was ever made) is taken in E1
//! whenever one thread's handles go first; E2's downgrades rule it out there.
//! Two canaries: in E1 with the sole handle's load `Relaxed`, the value's drop is
//! not ordered after the other thread's use; in E2b with the ever-weak flag
//! ignored, the last strong handle drops the value (leaving the count at one)
//! while the other thread's weak handle upgrades and reads it.
#![cfg(switchboard_loom)]

use loom_tests::thread::spawn;
use loom_tests::{check, join, Cases};
use switchboard::loom_entry_arc::{weaken, Handle, WeakHandle, Weakening};

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

/// Weakens one step of the count on this thread until dropped, panicking or not.
struct Weakened(Weakening);

impl Weakened {
    fn new(step: Weakening) -> Self {
        weaken(step, true);
        Self(step)
    }
}

impl Drop for Weakened {
    fn drop(&mut self) {
        weaken(self.0, false);
    }
}

#[test]
fn e1_the_last_handle_drops_the_value_after_every_use() {
    two_threads_let_go("E1 entry count: two threads let go");
}

#[test]
#[should_panic(expected = "Causality violation")]
fn e1_canary_a_relaxed_decrement_drops_the_value_under_a_use() {
    let _weakened = Weakened::new(Weakening::Release);
    two_threads_let_go("canary: E1 with a relaxed decrement");
}

/// Upgrades `weak` and uses the value if it is still alive, then lets go of both.
fn upgrade_then_let_go(weak: WeakHandle<u32>, cases: &Cases) {
    match weak.upgrade() {
        Some(up) => {
            cases.hit("upgraded");
            assert_eq!(*up.get(), 7);
            drop(up);
        }
        None => cases.hit("too late"),
    }
    drop(weak);
}

/// E2a: a weak handle upgrades (or finds the value gone) and lets go on one
/// thread while the last strong handle goes on the other.
fn upgrade_against_the_last_drop(name: &str) {
    check(name, &["upgraded", "too late"], |cases| {
        let a = Handle::new(7_u32);
        let weak = a.downgrade();
        let cases = cases.clone();
        let other = spawn(move || upgrade_then_let_go(weak, &cases));
        assert_eq!(*a.get(), 7);
        drop(a);
        join(other);
    });
}

/// E2b: the other thread makes the weak handle from its own strong one, then
/// every handle goes.
fn downgrade_on_the_other_thread(name: &str) {
    check(name, &["upgraded", "too late"], |cases| {
        let (a, b) = Handle::pair(7_u32);
        let cases = cases.clone();
        let other = spawn(move || {
            let weak = b.downgrade();
            drop(b);
            upgrade_then_let_go(weak, &cases);
        });
        assert_eq!(*a.get(), 7);
        drop(a);
        join(other);
    });
}

/// E2c: a weak handle dropped on a third thread while the last two strong
/// handles go on two others: the shortcut's load against the weak decrement.
fn weak_drop_against_the_last_drop(name: &str) {
    check(name, &[], |_| {
        let (a, b) = Handle::pair(7_u32);
        let weak = a.downgrade();
        let dropper = spawn(move || drop(weak));
        let other = spawn(move || {
            assert_eq!(*b.get(), 7);
            drop(b);
        });
        drop(a);
        join(dropper);
        join(other);
    });
}

#[test]
fn e2a_an_upgrade_against_the_last_strong_drop() {
    upgrade_against_the_last_drop("E2a entry count: upgrade against the last drop");
}

#[test]
fn e2b_a_downgrade_on_the_other_thread_then_every_handle_drops() {
    downgrade_on_the_other_thread("E2b entry count: downgrade on the other thread");
}

#[test]
fn e2c_a_weak_drop_against_the_last_strong_drop() {
    weak_drop_against_the_last_drop("E2c entry count: weak drop against the last drop");
}

#[test]
#[should_panic(expected = "Causality violation")]
fn e2_canary_a_relaxed_shortcut_frees_under_a_weak_drop() {
    let _weakened = Weakened::new(Weakening::Shortcut);
    weak_drop_against_the_last_drop("canary: E2c with a relaxed shortcut");
}

#[test]
#[should_panic(expected = "Causality violation")]
fn e2_canary_a_sole_handle_that_ignores_weak_handles_frees_under_one() {
    let _weakened = Weakened::new(Weakening::Unique);
    downgrade_on_the_other_thread("canary: E2b with the ever-weak flag ignored");
}

#[test]
#[should_panic(expected = "Causality violation")]
fn e1_canary_a_relaxed_sole_handle_load_drops_the_value_under_a_use() {
    let _weakened = Weakened::new(Weakening::UniqueLoad);
    two_threads_let_go("canary: E1 with the sole handle's load relaxed");
}
