//! Counter that can go up and down.

use serde::{Deserialize, Serialize};

use super::{Crdt, CrdtError, GCounter};
use crate::id::NodeId;

/// A counter that can go up and down: one [`GCounter`] of increments and one of decrements, and
/// the value is their difference. Each half merges on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PNCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PNCounter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `node`; `by == 0` changes nothing.
    ///
    /// # Errors
    ///
    /// [`CrdtError::CounterOverflow`] if `node`'s increment entry would exceed `u128::MAX`; the
    /// counter is then unchanged.
    pub fn increment(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.increments.increment(node, by)
    }

    /// Subtracts `by` on behalf of `node`; `by == 0` changes nothing.
    ///
    /// # Errors
    ///
    /// [`CrdtError::CounterOverflow`] if `node`'s decrement entry would exceed `u128::MAX`; the
    /// counter is then unchanged.
    pub fn decrement(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        self.decrements.increment(node, by)
    }

    /// Total increments minus total decrements. Each total is below 2^127 unless a counter has
    /// more than 2^63 entries; beyond that the result saturates rather than wrapping.
    pub fn value(&self) -> i128 {
        let (up, down) = (self.increments.value(), self.decrements.value());
        if up >= down {
            i128::try_from(up - down).unwrap_or(i128::MAX)
        } else {
            i128::try_from(down - up).map_or(i128::MIN, |d| -d)
        }
    }

    /// The increments half.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// The decrements half.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl Crdt for PNCounter {
    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }

    fn leq(&self, other: &Self) -> bool {
        self.increments.leq(&other.increments) && self.decrements.leq(&other.decrements)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::crdt::testing::*;
    use proptest::prelude::*;

    fn n(i: u64) -> NodeId {
        NodeId::new(i)
    }

    /// An operation: a signed amount, incrementing if positive.
    fn history() -> impl Strategy<Value = Vec<Step<i64>>> {
        arb_history(-1000i64..1000)
    }

    fn apply(c: &mut PNCounter, node: NodeId, &by: &i64) {
        let result = if by >= 0 {
            c.increment(node, by.unsigned_abs())
        } else {
            c.decrement(node, by.unsigned_abs())
        };
        result.expect("small amounts never overflow");
    }

    fn model_sum(history: &[Step<i64>], seen: &BTreeSet<usize>) -> i128 {
        seen.iter()
            .map(|&i| match history[i] {
                Step::Apply(_, by) => i128::from(by),
                Step::Sync { .. } => unreachable!("only operations are seen"),
            })
            .sum()
    }

    #[test]
    fn value_is_increments_minus_decrements() {
        let mut c = PNCounter::new();
        c.increment(n(1), 10).unwrap();
        c.decrement(n(2), 4).unwrap();
        c.decrement(n(1), 9).unwrap();
        assert_eq!(c.value(), -3);
        assert_eq!(c.increments().value(), 10);
        assert_eq!(c.decrements().value(), 13);
    }

    #[test]
    fn value_goes_beyond_the_u64_range() {
        let mut c = PNCounter::new();
        c.decrement(n(1), u64::MAX).unwrap();
        c.decrement(n(2), u64::MAX).unwrap();
        assert_eq!(c.value(), -2 * i128::from(u64::MAX));
        c.increment(n(3), 1).unwrap();
        assert_eq!(c.value(), 1 - 2 * i128::from(u64::MAX));
    }

    #[test]
    fn one_node_alternating_maximal_steps_never_overflows() {
        let mut c = PNCounter::new();
        for _ in 0..4 {
            c.increment(n(1), u64::MAX).unwrap();
            c.decrement(n(1), u64::MAX).unwrap();
        }
        assert_eq!(c.value(), 0);
        assert_eq!(c.increments().get(n(1)), 4 * u128::from(u64::MAX));
        // Both halves round-trip at that size.
        let bytes = rmp_serde::to_vec(&c).unwrap();
        assert_eq!(rmp_serde::from_slice::<PNCounter>(&bytes).unwrap(), c);
    }

    #[test]
    fn decode_rejects_zero_entry_in_either_half() {
        let good: BTreeMap<NodeId, u64> = [(n(1), 2)].into_iter().collect();
        let bad: BTreeMap<NodeId, u64> = [(n(1), 0)].into_iter().collect();
        let decode = |p: &BTreeMap<NodeId, u64>, d: &BTreeMap<NodeId, u64>| {
            let bytes = rmp_serde::to_vec(&(p, d)).unwrap();
            rmp_serde::from_slice::<PNCounter>(&bytes)
        };
        assert_eq!(decode(&good, &good).unwrap().value(), 0);
        assert!(decode(&bad, &good).is_err());
        assert!(decode(&good, &bad).is_err());
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_laws_hold(history in history()) {
            let s = replay(&history, apply).states;
            check_merge_laws(&s[0], &s[1], &s[2])?;
        }

        #[test]
        fn round_trips_through_msgpack(history in history()) {
            for state in &replay(&history, apply).states {
                check_round_trip(state)?;
            }
        }

        #[test]
        fn value_matches_model_under_any_delivery(
            history in history(),
            order in proptest::collection::vec(0..REPLICAS, 0..8),
        ) {
            let replayed = replay(&history, apply);
            for (state, seen) in replayed.states.iter().zip(&replayed.seen) {
                prop_assert_eq!(state.value(), model_sum(&history, seen));
            }
            let everything = (0..history.len()).filter(|&i| matches!(history[i], Step::Apply(..)));
            let all = converge(&replayed.states, &order);
            prop_assert_eq!(all.value(), model_sum(&history, &everything.collect()));
        }
    }
}
