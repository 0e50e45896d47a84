//! The paired cross-node figure, beside `cluster_cross_node_p50_minus_local_ms`
//! (no target of its own): per stamped message, each cross-node receipt minus
//! that message's same-node receipt, and the median of those differences.
//!
//! The targeted key is a difference of two medians taken over different messages.
//! When queues come and go, the bursts that set the medians also set the
//! difference, so it can read several times what any one message's extra path
//! costs. Pairing each cross-node receipt with the same message's receipt on its
//! own node takes the shared queueing out and leaves the cross-node path's cost.

use std::collections::HashMap;

/// One stamped message as a member received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The publishing node.
    pub from: usize,
    /// The publisher's number for it.
    pub seq: u64,
    /// When it arrived, in ns since the run's epoch.
    pub at: u64,
}

/// The median, in ms, of every cross-node receipt minus its message's same-node
/// receipt (the median of that message's same-node receipts, when its node has
/// several members). `receipts`: each member's node and what it received.
/// `None` if no message was received both on its own node and on another.
pub fn median_ms<'a>(receipts: impl IntoIterator<Item = (usize, &'a [Receipt])>) -> Option<f64> {
    let mut by_message: HashMap<(usize, u64), (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (node, got) in receipts {
        for r in got {
            let entry = by_message.entry((r.from, r.seq)).or_default();
            if r.from == node {
                entry.0.push(r.at);
            } else {
                entry.1.push(r.at);
            }
        }
    }
    let mut diffs: Vec<i64> = Vec::new();
    for (mut same, cross) in by_message.into_values() {
        if same.is_empty() {
            continue;
        }
        same.sort_unstable();
        let local = same[(same.len() - 1) / 2];
        diffs.extend(cross.iter().map(|&at| signed(at) - signed(local)));
    }
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_unstable();
    Some(diffs[(diffs.len() - 1) / 2] as f64 / 1e6)
}

fn signed(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{median_ms, Receipt};

    fn r(from: usize, seq: u64, at_us: u64) -> Receipt {
        Receipt {
            from,
            seq,
            at: at_us * 1000,
        }
    }

    #[test]
    fn each_cross_node_receipt_is_set_against_its_own_message() {
        // Message 0 from node 0: same-node at 100 and 300 µs (median 100, the
        // lower middle), cross-node at 400 and 600. Messages 1 and 2: bursts
        // delayed everyone by 10 and 20 ms; cross-node 200 µs after. Pairs give
        // 0.3, 0.5, 0.2 and 0.2 ms: median 0.2. The difference of the medians
        // (600 − 300 µs) would read 0.3.
        let node0 = [r(0, 0, 100), r(0, 1, 10_000), r(0, 2, 20_000)];
        let node0b = [r(0, 0, 300)];
        let node1 = [r(0, 0, 400), r(0, 1, 10_200), r(0, 2, 20_200)];
        let node2 = [r(0, 0, 600)];
        let got = median_ms([
            (0, &node0[..]),
            (0, &node0b[..]),
            (1, &node1[..]),
            (2, &node2[..]),
        ]);
        assert_eq!(got, Some(0.2));
    }

    #[test]
    fn a_message_never_received_on_its_own_node_is_left_out() {
        let node1 = [r(0, 7, 400)];
        assert_eq!(median_ms([(1, &node1[..])]), None);
        // A cross-node receipt earlier than the same-node one is negative, not lost.
        let node0 = [r(0, 7, 500)];
        assert_eq!(median_ms([(0, &node0[..]), (1, &node1[..])]), Some(-0.1));
    }
}
