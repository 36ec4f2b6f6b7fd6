//! Grow-only counter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use super::{Crdt, CrdtError, InvalidReason};
use crate::id::NodeId;

/// A counter that only goes up: one entry per replica node, each written only by its own node,
/// and the value is their sum. Merge takes the pointwise maximum. Entries are 128-bit, so no
/// entry overflows while it takes increments of up to `u64::MAX`: an increment is refused only
/// after more than 2^64 of them (the database's counters rely on it: their range is a property
/// of the value, never of one node's entry).
///
/// Zero entries are never stored, so equal counters encode to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<NodeId, u128>")]
pub struct GCounter {
    entries: BTreeMap<NodeId, u128>,
}

impl GCounter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to `node`'s entry; `by == 0` changes nothing.
    ///
    /// # Errors
    ///
    /// [`CrdtError::CounterOverflow`] if the entry would exceed `u128::MAX`; the counter is then
    /// unchanged.
    pub fn increment(&mut self, node: NodeId, by: u64) -> Result<(), CrdtError> {
        if by == 0 {
            return Ok(());
        }
        let current = self.get(node);
        let next = current
            .checked_add(u128::from(by))
            .ok_or(CrdtError::CounterOverflow { node, current, by })?;
        self.entries.insert(node, next);
        Ok(())
    }

    /// The counter's value: the sum of all entries, saturating at `u128::MAX` (which takes
    /// more than 2^64 increments of `u64::MAX`).
    pub fn value(&self) -> u128 {
        self.entries
            .values()
            .fold(0u128, |sum, &v| sum.saturating_add(v))
    }

    /// `node`'s entry (0 if it never incremented).
    pub fn get(&self, node: NodeId) -> u128 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// The non-zero entries, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u128)> + '_ {
        self.entries.iter().map(|(&n, &v)| (n, v))
    }
}

impl Crdt for GCounter {
    fn merge(&mut self, other: &Self) {
        for (&node, &theirs) in &other.entries {
            let mine = self.entries.entry(node).or_insert(0);
            *mine = (*mine).max(theirs);
        }
    }

    fn leq(&self, other: &Self) -> bool {
        self.iter().all(|(node, v)| v <= other.get(node))
    }
}

impl Serialize for GCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (node, &v) in &self.entries {
            // An entry that fits 64 bits is written as one integer (the usual case); larger
            // ones as MessagePack's 128-bit form. Both decode as `u128`.
            match u64::try_from(v) {
                Ok(small) => map.serialize_entry(node, &small)?,
                Err(_) => map.serialize_entry(node, &v)?,
            }
        }
        map.end()
    }
}

impl TryFrom<BTreeMap<NodeId, u128>> for GCounter {
    type Error = CrdtError;

    fn try_from(entries: BTreeMap<NodeId, u128>) -> Result<Self, Self::Error> {
        if let Some((&node, _)) = entries.iter().find(|(_, &v)| v == 0) {
            let reason = InvalidReason::ZeroEntry { node };
            return Err(CrdtError::invalid("gcounter", reason));
        }
        Ok(GCounter { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::testing::*;
    use proptest::prelude::*;

    fn n(i: u64) -> NodeId {
        NodeId::new(i)
    }

    fn history() -> impl Strategy<Value = Vec<Step<u64>>> {
        arb_history(prop_oneof![1 => Just(0u64), 4 => 1u64..1000])
    }

    fn run(history: &[Step<u64>]) -> Replayed<GCounter> {
        replay(history, |c: &mut GCounter, node, &by| {
            c.increment(node, by)
                .expect("small increments never overflow")
        })
    }

    fn model_sum(history: &[Step<u64>], seen: &std::collections::BTreeSet<usize>) -> u128 {
        seen.iter()
            .map(|&i| match history[i] {
                Step::Apply(_, by) => u128::from(by),
                Step::Sync { .. } => unreachable!("only operations are seen"),
            })
            .sum()
    }

    #[test]
    fn increments_add_up_per_node() {
        let mut c = GCounter::new();
        c.increment(n(1), 3).unwrap();
        c.increment(n(2), 4).unwrap();
        c.increment(n(1), 5).unwrap();
        assert_eq!(c.get(n(1)), 8);
        assert_eq!(c.get(n(2)), 4);
        assert_eq!(c.value(), 12);
    }

    #[test]
    fn zero_increment_stores_nothing() {
        let mut c = GCounter::new();
        c.increment(n(1), 0).unwrap();
        assert_eq!(c, GCounter::new());
        assert_eq!(c.iter().count(), 0);
    }

    #[test]
    fn an_entry_takes_many_maximal_increments_and_overflow_is_rejected() {
        let mut c = GCounter::new();
        for _ in 0..3 {
            c.increment(n(1), u64::MAX).unwrap();
        }
        assert_eq!(c.get(n(1)), 3 * u128::from(u64::MAX));
        // Only an entry near the 128-bit limit (a decoded state) refuses, changing nothing.
        let wire: BTreeMap<NodeId, u128> = [(n(1), u128::MAX - 1), (n(2), 7)].into();
        let mut c = GCounter::try_from(wire).unwrap();
        let before = c.clone();
        let err = c.increment(n(1), 2).unwrap_err();
        assert_eq!(
            err,
            CrdtError::CounterOverflow {
                node: n(1),
                current: u128::MAX - 1,
                by: 2
            }
        );
        assert_eq!(c, before);
        c.increment(n(1), 1).unwrap();
        assert_eq!(c.get(n(1)), u128::MAX);
        assert_eq!(c.value(), u128::MAX, "the sum saturates");
    }

    #[test]
    fn merge_takes_pointwise_max() {
        let mut a = GCounter::new();
        a.increment(n(1), 5).unwrap();
        a.increment(n(2), 1).unwrap();
        let mut b = GCounter::new();
        b.increment(n(1), 2).unwrap();
        b.increment(n(3), 4).unwrap();
        a.merge(&b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [(n(1), 5), (n(2), 1), (n(3), 4)]
        );
        assert_eq!(a.value(), 10);
        assert!(b.leq(&a));
        assert!(!a.leq(&b));
    }

    #[test]
    fn decode_rejects_zero_entry() {
        let wire: BTreeMap<NodeId, u128> = [(n(1), 3), (n(2), 0)].into_iter().collect();
        let reason = InvalidReason::ZeroEntry { node: n(2) };
        assert_eq!(
            GCounter::try_from(wire.clone()),
            Err(CrdtError::invalid("gcounter", reason))
        );
        let bytes = rmp_serde::to_vec(&wire).unwrap();
        assert!(rmp_serde::from_slice::<GCounter>(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_laws_hold(history in history()) {
            let s = run(&history).states;
            check_merge_laws(&s[0], &s[1], &s[2])?;
        }

        #[test]
        fn round_trips_through_msgpack(history in history()) {
            for state in &run(&history).states {
                check_round_trip(state)?;
            }
        }

        #[test]
        fn value_counts_each_seen_increment_once(
            history in history(),
            order in proptest::collection::vec(0..REPLICAS, 0..8),
        ) {
            let replayed = run(&history);
            for (state, seen) in replayed.states.iter().zip(&replayed.seen) {
                prop_assert_eq!(state.value(), model_sum(&history, seen));
            }
            let everything = (0..history.len()).filter(|&i| matches!(history[i], Step::Apply(..)));
            let all = converge(&replayed.states, &order);
            prop_assert_eq!(all.value(), model_sum(&history, &everything.collect()));
        }
    }
}
