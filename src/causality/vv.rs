//! Dots and version vectors.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CausalityError, COUNTER_MAX};
use crate::id::NodeId;

/// One event: the `counter`-th event minted by `node`. Counters start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that minted the event.
    pub node: NodeId,
    /// Its position in that node's sequence of events, from 1.
    pub counter: u64,
}

impl Dot {
    /// A dot for `node`'s `counter`-th event.
    pub const fn new(node: NodeId, counter: u64) -> Self {
        Dot { node, counter }
    }
}

/// How two version vectors (or the histories they summarise) relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CausalOrder {
    /// Both have seen exactly the same events.
    Equal,
    /// `self` has seen a strict subset of `other`'s events.
    Before,
    /// `self` has seen a strict superset of `other`'s events.
    After,
    /// Each has seen an event the other has not.
    Concurrent,
}

/// A version vector: for each node, how many of its events have been seen (a downward-closed set
/// of dots per node). Zero entries are never stored, so equal vectors encode to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<NodeId, u64>", into = "BTreeMap<NodeId, u64>")]
pub struct VersionVector {
    counters: BTreeMap<NodeId, u64>,
}

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `node`'s events have been seen (0 if none).
    pub fn get(&self, node: NodeId) -> u64 {
        self.counters.get(&node).copied().unwrap_or(0)
    }

    /// Whether `dot` is among the events seen.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Mints the next event of `node`, records it as seen and returns its dot.
    pub fn increment(&mut self, node: NodeId) -> Dot {
        let counter = self.counters.entry(node).or_insert(0);
        *counter += 1;
        Dot::new(node, *counter)
    }

    /// Records every event up to and including `dot` of its node as seen.
    pub fn witness(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let counter = self.counters.entry(dot.node).or_insert(0);
        *counter = (*counter).max(dot.counter);
    }

    /// Least upper bound: afterwards `self` has seen everything either had seen.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&node, &counter) in &other.counters {
            let mine = self.counters.entry(node).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }

    /// Whether `self` has seen every event `other` has seen.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.counters.iter().all(|(&n, &c)| self.get(n) >= c)
    }

    /// The causal relation between the two histories.
    pub fn compare(&self, other: &VersionVector) -> CausalOrder {
        match (self.descends(other), other.descends(self)) {
            (true, true) => CausalOrder::Equal,
            (true, false) => CausalOrder::After,
            (false, true) => CausalOrder::Before,
            (false, false) => CausalOrder::Concurrent,
        }
    }

    /// The nodes with at least one seen event and their counters, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.counters.iter().map(|(&n, &c)| (n, c))
    }

    /// Number of nodes with at least one seen event.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            CausalOrder::Equal => Some(Ordering::Equal),
            CausalOrder::Before => Some(Ordering::Less),
            CausalOrder::After => Some(Ordering::Greater),
            CausalOrder::Concurrent => None,
        }
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    /// Builds a vector from counters; zero counters are dropped and repeated nodes keep the max.
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (node, counter) in iter {
            vv.witness(Dot::new(node, counter));
        }
        vv
    }
}

impl TryFrom<BTreeMap<NodeId, u64>> for VersionVector {
    type Error = CausalityError;

    fn try_from(counters: BTreeMap<NodeId, u64>) -> Result<Self, Self::Error> {
        if let Some((&node, _)) = counters.iter().find(|(_, &c)| c == 0) {
            return Err(CausalityError::ZeroCounter { node });
        }
        if let Some((&node, &counter)) = counters.iter().find(|(_, &c)| c > COUNTER_MAX) {
            return Err(CausalityError::CounterTooLarge { node, counter });
        }
        Ok(VersionVector { counters })
    }
}

impl From<VersionVector> for BTreeMap<NodeId, u64> {
    fn from(vv: VersionVector) -> Self {
        vv.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::testing::arb_vv;
    use proptest::prelude::*;

    fn n(i: u64) -> NodeId {
        NodeId::new(i)
    }

    #[test]
    fn increment_mints_consecutive_dots() {
        let mut vv = VersionVector::new();
        assert_eq!(vv.increment(n(1)), Dot::new(n(1), 1));
        assert_eq!(vv.increment(n(1)), Dot::new(n(1), 2));
        assert_eq!(vv.increment(n(2)), Dot::new(n(2), 1));
        assert!(vv.contains(Dot::new(n(1), 2)));
        assert!(!vv.contains(Dot::new(n(1), 3)));
        assert!(!vv.contains(Dot::new(n(3), 1)));
    }

    #[test]
    fn compare_covers_all_four_relations() {
        let a: VersionVector = [(n(1), 2), (n(2), 1)].into_iter().collect();
        let b: VersionVector = [(n(1), 2), (n(2), 2)].into_iter().collect();
        let c: VersionVector = [(n(1), 3)].into_iter().collect();
        assert_eq!(a.compare(&a.clone()), CausalOrder::Equal);
        assert_eq!(a.compare(&b), CausalOrder::Before);
        assert_eq!(b.compare(&a), CausalOrder::After);
        assert_eq!(b.compare(&c), CausalOrder::Concurrent);
        assert_eq!(a.partial_cmp(&c), None);
    }

    #[test]
    fn zero_counters_are_not_stored_and_rejected_on_decode() {
        let vv: VersionVector = [(n(1), 0)].into_iter().collect();
        assert!(vv.is_empty());
        let bad: BTreeMap<NodeId, u64> = [(n(1), 0)].into_iter().collect();
        assert!(VersionVector::try_from(bad).is_err());
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_is_a_join(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(&aa, &a);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
        }

        #[test]
        fn compare_agrees_with_merge(a in arb_vv(), b in arb_vv()) {
            let mut ab = a.clone(); ab.merge(&b);
            let order = a.compare(&b);
            prop_assert_eq!(order == CausalOrder::Equal, a == b);
            prop_assert_eq!(matches!(order, CausalOrder::Equal | CausalOrder::After), ab == a);
            prop_assert_eq!(matches!(order, CausalOrder::Equal | CausalOrder::Before), ab == b);
            let flipped = match order {
                CausalOrder::Before => CausalOrder::After,
                CausalOrder::After => CausalOrder::Before,
                o => o,
            };
            prop_assert_eq!(b.compare(&a), flipped);
        }
    }
}
