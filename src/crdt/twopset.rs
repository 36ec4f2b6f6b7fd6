//! Two-phase set: removal is permanent.

use std::borrow::Borrow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize, Serializer};

use super::{Crdt, CrdtError, Element, InvalidReason};

/// A set where an element can be added and removed, but once removed it is gone for good: a
/// later or concurrent add, on any replica, never brings it back.
///
/// The state is two disjoint sets: `live` (added and never removed) and `removed` (the
/// permanent tombstones). Removing an element that was never added still records it in
/// `removed`, so it can never be added afterwards; this is what makes a remove that races ahead
/// of its add (or arrives at a replica first) behave the same as one that follows it. Keeping the
/// sets disjoint means two replicas that agree on what is present and what is removed hold
/// identical state and encode it to identical bytes.
///
/// Merge is, per element, the maximum on the chain absent < present < removed: the union of
/// both tombstone sets, and the union of both live sets minus those tombstones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Wire<E>", bound(deserialize = "E: Element"))]
pub struct TwoPSet<E> {
    live: BTreeSet<E>,
    removed: BTreeSet<E>,
}

impl<E> Default for TwoPSet<E> {
    fn default() -> Self {
        TwoPSet {
            live: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<E: Element> TwoPSet<E> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` unless it was ever removed; returns whether it is present afterwards.
    pub fn add(&mut self, element: E) -> bool {
        if self.removed.contains(&element) {
            return false;
        }
        self.live.insert(element);
        true
    }

    /// Removes `element` for good (recording it even if it was never added); returns whether it
    /// was present.
    pub fn remove(&mut self, element: E) -> bool {
        let was_present = self.live.remove(&element);
        self.removed.insert(element);
        was_present
    }

    /// Whether `element` is present.
    pub fn contains<Q>(&self, element: &Q) -> bool
    where
        E: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.live.contains(element)
    }

    /// Whether `element` was removed (and so can never be present again).
    pub fn is_removed<Q>(&self, element: &Q) -> bool
    where
        E: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.removed.contains(element)
    }

    /// The present elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &E> + '_ {
        self.live.iter()
    }

    /// Number of present elements.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl<E: Element> Crdt for TwoPSet<E> {
    fn merge(&mut self, other: &Self) {
        for element in &other.removed {
            if !self.removed.contains(element) {
                self.removed.insert(element.clone());
            }
        }
        self.live.retain(|e| !self.removed.contains(e));
        for element in &other.live {
            if !self.removed.contains(element) && !self.live.contains(element) {
                self.live.insert(element.clone());
            }
        }
    }

    fn leq(&self, other: &Self) -> bool {
        self.removed.is_subset(&other.removed)
            && self
                .live
                .iter()
                .all(|e| other.live.contains(e) || other.removed.contains(e))
    }
}

/// The encoded form: live elements, then removed elements.
#[derive(Debug, Deserialize)]
struct Wire<E: Ord> {
    live: BTreeSet<E>,
    removed: BTreeSet<E>,
}

/// Encodes exactly like [`Wire`], without cloning the state.
#[derive(Serialize)]
struct WireRef<'a, E> {
    live: &'a BTreeSet<E>,
    removed: &'a BTreeSet<E>,
}

impl<E: Serialize> Serialize for TwoPSet<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = WireRef {
            live: &self.live,
            removed: &self.removed,
        };
        wire.serialize(serializer)
    }
}

impl<E: Ord> TryFrom<Wire<E>> for TwoPSet<E> {
    type Error = CrdtError;

    fn try_from(wire: Wire<E>) -> Result<Self, Self::Error> {
        let both = wire.removed.iter().position(|e| wire.live.contains(e));
        if let Some(index) = both {
            let reason = InvalidReason::LiveAndRemoved { index };
            return Err(CrdtError::invalid("2pset", reason));
        }
        Ok(TwoPSet {
            live: wire.live,
            removed: wire.removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::testing::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8),
        Remove(u8),
    }

    fn history() -> impl Strategy<Value = Vec<Step<Op>>> {
        let element = 0u8..6;
        arb_history(prop_oneof![
            2 => element.clone().prop_map(Op::Add),
            1 => element.prop_map(Op::Remove),
        ])
    }

    fn apply(set: &mut TwoPSet<u8>, _node: crate::id::NodeId, op: &Op) {
        match *op {
            Op::Add(e) => {
                set.add(e);
            }
            Op::Remove(e) => {
                set.remove(e);
            }
        }
    }

    /// The specification: present iff some seen operation added it and none removed it.
    fn model(history: &[Step<Op>], seen: &BTreeSet<usize>) -> BTreeSet<u8> {
        let ops = || seen.iter().map(|&i| &history[i]);
        let added = ops().filter_map(|s| match s {
            Step::Apply(_, Op::Add(e)) => Some(*e),
            _ => None,
        });
        let removed: BTreeSet<u8> = ops()
            .filter_map(|s| match s {
                Step::Apply(_, Op::Remove(e)) => Some(*e),
                _ => None,
            })
            .collect();
        added.filter(|e| !removed.contains(e)).collect()
    }

    fn set_of(elements: &[u8]) -> TwoPSet<u8> {
        let mut s = TwoPSet::new();
        for &e in elements {
            s.add(e);
        }
        s
    }

    #[test]
    fn add_remove_contains() {
        let mut s = set_of(&[1, 2]);
        assert!(s.contains(&1) && s.contains(&2) && !s.contains(&3));
        assert!(s.remove(1));
        assert!(!s.remove(1));
        assert!(!s.contains(&1));
        assert!(s.is_removed(&1));
        assert_eq!(s.elements().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn removed_element_never_returns_locally() {
        let mut s = set_of(&[7]);
        s.remove(7);
        assert!(!s.add(7));
        assert!(!s.contains(&7));
        assert!(s.is_empty());
    }

    #[test]
    fn removed_then_added_elsewhere_is_absent_after_any_merge() {
        let mut a = set_of(&[7]);
        let mut b = a.clone();
        a.remove(7);
        assert!(b.add(7), "b has not heard of the removal yet");
        let c = set_of(&[7]);
        let outcomes = [
            merged(&a, &b),
            merged(&b, &a),
            merged(&merged(&b, &c), &a),
            merged(&a, &merged(&c, &b)),
        ];
        for state in outcomes {
            assert!(!state.contains(&7), "{state:?}");
            assert!(state.is_removed(&7));
        }
    }

    #[test]
    fn removing_an_unknown_element_blocks_later_adds_everywhere() {
        let mut a = TwoPSet::<u8>::new();
        assert!(!a.remove(9));
        let b = set_of(&[9, 1]);
        let ab = merged(&a, &b);
        assert!(!ab.contains(&9));
        assert!(ab.contains(&1));
        assert_eq!(ab, merged(&b, &a));
    }

    #[test]
    fn decode_rejects_element_both_live_and_removed() {
        let wire = Wire {
            live: [1u8, 2, 3].into_iter().collect(),
            removed: [0u8, 3].into_iter().collect(),
        };
        let reason = InvalidReason::LiveAndRemoved { index: 1 };
        assert_eq!(
            TwoPSet::try_from(wire),
            Err(CrdtError::invalid("2pset", reason))
        );
        let live: BTreeSet<u8> = [1, 2, 3].into_iter().collect();
        let removed: BTreeSet<u8> = [0, 3].into_iter().collect();
        let bytes = rmp_serde::to_vec(&WireRef {
            live: &live,
            removed: &removed,
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<TwoPSet<u8>>(&bytes).is_err());
    }

    #[test]
    fn byte_string_elements_round_trip() {
        let mut s = TwoPSet::<Vec<u8>>::new();
        s.add(b"apple".to_vec());
        s.add(b"pear".to_vec());
        s.remove(b"pear".to_vec());
        s.remove(Vec::new());
        let bytes = rmp_serde::to_vec(&s).unwrap();
        let back: TwoPSet<Vec<u8>> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
        assert!(back.contains(b"apple".as_slice()));
        assert!(back.is_removed(b"pear".as_slice()));
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
        fn contents_match_remove_wins_forever(
            history in history(),
            order in proptest::collection::vec(0..REPLICAS, 0..8),
        ) {
            let replayed = replay(&history, apply);
            for (state, seen) in replayed.states.iter().zip(&replayed.seen) {
                prop_assert_eq!(state.elements().copied().collect::<BTreeSet<_>>(), model(&history, seen));
            }
            let everything = replayed.seen.iter().flatten().copied().collect();
            let all = converge(&replayed.states, &order);
            prop_assert_eq!(all.elements().copied().collect::<BTreeSet<_>>(), model(&history, &everything));
        }
    }
}
