//! A test the set-once cells ([`OnceArc`](super::OnceArc) and
//! [`WriteOnce`](super::WriteOnce)) share: their `set` must store exactly one of
//! several racing values, and every winner must read back its own.

use std::fmt::Debug;
use std::sync::Arc;

/// Races four threads, thread `n` calling `set_then_get(n)`, which sets `n` and
/// returns whether its set won and what it then read; `stored` reads the cell
/// after all have finished.
pub(crate) fn assert_one_setter_wins<T>(
    set_then_get: impl Fn(usize) -> (bool, Option<T>) + Send + Sync + 'static,
    stored: impl FnOnce() -> Option<T>,
) where
    T: PartialEq + Debug + Send + 'static,
{
    let set_then_get = Arc::new(set_then_get);
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let set_then_get = Arc::clone(&set_then_get);
            std::thread::spawn(move || set_then_get(n))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or((false, None)))
        .collect();
    assert_eq!(results.iter().filter(|(won, _)| *won).count(), 1);
    let stored = stored();
    assert!(stored.is_some());
    for (won, seen) in results {
        if won {
            assert_eq!(seen, stored);
        }
    }
}
