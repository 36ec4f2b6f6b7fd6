//! Add-wins observed-remove set without tombstones.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, Serializer};

use super::{Crdt, CrdtError, Element, InvalidReason};
use crate::causality::{Dot, VersionVector};
use crate::id::NodeId;

/// The optimized add-wins observed-remove set of Bieniusa et al., "An optimized conflict-free
/// replicated set" (2012).
///
/// Each add mints a fresh [`Dot`] from the set's causal context (`clock`) for the acting node;
/// an element is present while at least one of its dots is live. A remove drops the dots it has
/// observed but the clock keeps them, so no tombstone is stored: when another replica still
/// holds such a dot, the clock tells merge that this side has seen and removed it. A dot minted
/// concurrently with a remove is not covered by the remover's clock and survives, so a
/// concurrent add wins.
///
/// Invariants (checked on decode, kept by every operation and by merge): every element has at
/// least one dot; every dot is covered by the clock; no dot appears under two elements; an
/// element holds at most one dot per node (a node's later add replaces its earlier dots).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Wire<E>", bound(deserialize = "E: Element"))]
pub struct ORSet<E> {
    clock: VersionVector,
    entries: BTreeMap<E, BTreeSet<Dot>>,
}

impl<E> Default for ORSet<E> {
    fn default() -> Self {
        ORSet {
            clock: VersionVector::new(),
            entries: BTreeMap::new(),
        }
    }
}

impl<E: Element> ORSet<E> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` on behalf of `node`: mints `node`'s next dot and makes it the element's
    /// only dot (the add has observed, and so supersedes, the element's previous dots).
    /// Returns the new dot.
    ///
    /// # Errors
    ///
    /// [`CrdtError::DotsExhausted`] if `node`'s counter in the clock is already `u64::MAX`; the
    /// set is then unchanged.
    pub fn add(&mut self, node: NodeId, element: E) -> Result<Dot, CrdtError> {
        if self.clock.get(node) == u64::MAX {
            return Err(CrdtError::DotsExhausted { node });
        }
        let dot = self.clock.increment(node);
        self.entries.insert(element, BTreeSet::from([dot]));
        Ok(dot)
    }

    /// Removes `element`, dropping the dots this replica has observed for it; adds that this
    /// replica has not seen survive a later merge. Returns whether the element was present.
    pub fn remove<Q>(&mut self, element: &Q) -> bool
    where
        E: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.remove(element).is_some()
    }

    /// Whether `element` is present.
    pub fn contains<Q>(&self, element: &Q) -> bool
    where
        E: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.contains_key(element)
    }

    /// The present elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &E> + '_ {
        self.entries.keys()
    }

    /// Number of present elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The causal context: every add this replica has seen, present or removed.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// Whether `dot` is live under `element`.
    fn holds(&self, element: &E, dot: Dot) -> bool {
        self.entries.get(element).is_some_and(|d| d.contains(&dot))
    }

    /// Every (element, live dot) pair.
    fn pairs(&self) -> impl Iterator<Item = (&E, Dot)> + '_ {
        self.entries
            .iter()
            .flat_map(|(e, dots)| dots.iter().map(move |&d| (e, d)))
    }
}

impl<E: Element> Crdt for ORSet<E> {
    /// A dot survives if both sides hold it, or one holds it and the other has not seen it.
    /// (A dot one side holds and the other has seen but does not hold was removed there.)
    fn merge(&mut self, other: &Self) {
        for (element, dots) in &mut self.entries {
            dots.retain(|&d| other.holds(element, d) || !other.clock.contains(d));
        }
        for (element, theirs) in &other.entries {
            let unseen: Vec<Dot> = theirs
                .iter()
                .copied()
                .filter(|&d| !self.clock.contains(d))
                .collect();
            if !unseen.is_empty() {
                let mine = self.entries.entry(element.clone()).or_default();
                mine.extend(unseen);
            }
        }
        self.entries.retain(|_, dots| !dots.is_empty());
        self.clock.merge(&other.clock);
    }

    /// `other` has seen everything `self` has, and still holds every dot `self` has seen and
    /// holds (dots `self` holds but `other` lacks are then covered by `other`'s clock, because
    /// `self`'s clock covers its own dots).
    fn leq(&self, other: &Self) -> bool {
        other.clock.descends(&self.clock)
            && other
                .pairs()
                .all(|(e, d)| self.holds(e, d) || !self.clock.contains(d))
    }
}

/// The encoded form: the clock, then each element with its dots.
#[derive(Debug, Deserialize)]
struct Wire<E: Ord> {
    clock: VersionVector,
    entries: BTreeMap<E, BTreeSet<Dot>>,
}

/// Encodes exactly like [`Wire`], without cloning the state.
#[derive(Serialize)]
struct WireRef<'a, E> {
    clock: &'a VersionVector,
    entries: &'a BTreeMap<E, BTreeSet<Dot>>,
}

impl<E: Serialize> Serialize for ORSet<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = WireRef {
            clock: &self.clock,
            entries: &self.entries,
        };
        wire.serialize(serializer)
    }
}

impl<E: Ord> TryFrom<Wire<E>> for ORSet<E> {
    type Error = CrdtError;

    fn try_from(wire: Wire<E>) -> Result<Self, Self::Error> {
        let mut used = BTreeSet::new();
        for (index, dots) in wire.entries.values().enumerate() {
            check_dots(index, dots, &wire.clock, &mut used)
                .map_err(|reason| CrdtError::invalid("orset", reason))?;
        }
        Ok(ORSet {
            clock: wire.clock,
            entries: wire.entries,
        })
    }
}

/// Checks the dots of element number `index`, adding them to `used`.
fn check_dots(
    index: usize,
    dots: &BTreeSet<Dot>,
    clock: &VersionVector,
    used: &mut BTreeSet<Dot>,
) -> Result<(), InvalidReason> {
    if dots.is_empty() {
        return Err(InvalidReason::NoDots { index });
    }
    let mut previous: Option<NodeId> = None;
    // Dots order by node first, so two dots of one node are neighbours.
    for &dot in dots {
        if dot.counter == 0 || !clock.contains(dot) {
            return Err(InvalidReason::UncoveredDot { dot });
        }
        if previous == Some(dot.node) {
            return Err(InvalidReason::TwoDotsOfOneNode {
                index,
                node: dot.node,
            });
        }
        if !used.insert(dot) {
            return Err(InvalidReason::SharedDot { dot });
        }
        previous = Some(dot.node);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::testing::{arb_node, arb_vv};
    use crate::crdt::testing::*;
    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::prelude::*;

    const X: u8 = b'x';

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8),
        Remove(u8),
    }

    fn history() -> impl Strategy<Value = Vec<Step<Op>>> {
        let element = 0u8..5;
        arb_history(prop_oneof![
            2 => element.clone().prop_map(Op::Add),
            1 => element.prop_map(Op::Remove),
        ])
    }

    fn apply(set: &mut ORSet<u8>, node: NodeId, op: &Op) {
        match *op {
            Op::Add(e) => {
                set.add(node, e).expect("small clocks never run out");
            }
            Op::Remove(e) => {
                set.remove(&e);
            }
        }
    }

    /// The add-wins specification: an element is present iff some seen add of it was not
    /// observed by any seen remove of it.
    fn model(
        history: &[Step<Op>],
        r: &Replayed<ORSet<u8>>,
        seen: &BTreeSet<usize>,
    ) -> BTreeSet<u8> {
        let removed_by_a_seen_remove = |add: usize, e: u8| {
            seen.iter().any(|&j| {
                matches!(history[j], Step::Apply(_, Op::Remove(x)) if x == e)
                    && r.seen_before[&j].contains(&add)
            })
        };
        seen.iter()
            .filter_map(|&i| match history[i] {
                Step::Apply(_, Op::Add(e)) if !removed_by_a_seen_remove(i, e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn contents(set: &ORSet<u8>) -> BTreeSet<u8> {
        set.elements().copied().collect()
    }

    fn n(i: u64) -> NodeId {
        NodeId::new(i)
    }

    fn dots(pairs: &[(u64, u64)]) -> BTreeSet<Dot> {
        pairs
            .iter()
            .map(|&(node, c)| Dot::new(n(node), c))
            .collect()
    }

    fn wire(clock: &[(u64, u64)], entries: &[(u8, &[(u64, u64)])]) -> Wire<u8> {
        Wire {
            clock: clock.iter().map(|&(node, c)| (n(node), c)).collect(),
            entries: entries.iter().map(|&(e, d)| (e, dots(d))).collect(),
        }
    }

    fn decode_bytes(w: &Wire<u8>) -> Result<ORSet<u8>, rmp_serde::decode::Error> {
        let wire = WireRef {
            clock: &w.clock,
            entries: &w.entries,
        };
        rmp_serde::from_slice(&rmp_serde::to_vec(&wire).unwrap())
    }

    #[test]
    fn add_replaces_observed_dots() {
        let mut s = ORSet::new();
        assert_eq!(s.add(n(1), X).unwrap(), Dot::new(n(1), 1));
        assert_eq!(s.add(n(1), X).unwrap(), Dot::new(n(1), 2));
        assert_eq!(s.add(n(2), X).unwrap(), Dot::new(n(2), 1));
        assert_eq!(s.entries[&X], dots(&[(2, 1)]));
        assert_eq!(s.clock().get(n(1)), 2);
        assert!(s.contains(&X));
        assert!(s.remove(&X));
        assert!(!s.remove(&X));
        assert!(!s.contains(&X) && s.is_empty());
        assert_eq!(s.clock().get(n(2)), 1, "a remove keeps the clock");
    }

    #[test]
    fn concurrent_add_and_remove_add_wins() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        let mut b = a.clone();
        a.remove(&X);
        let dot = b.add(n(2), X).unwrap();
        for state in [merged(&a, &b), merged(&b, &a)] {
            assert!(state.contains(&X), "{state:?}");
            assert_eq!(state.entries[&X], BTreeSet::from([dot]));
        }
    }

    #[test]
    fn remove_drops_only_the_adds_it_observed() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        let mut b = a.clone();
        a.add(n(1), X).unwrap();
        assert!(b.remove(&X));
        for state in [merged(&a, &b), merged(&b, &a)] {
            assert!(state.contains(&X), "{state:?}");
            assert_eq!(state.entries[&X], dots(&[(1, 2)]));
        }
    }

    #[test]
    fn remove_that_observed_every_add_wins() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        let mut b = ORSet::new();
        b.add(n(2), X).unwrap();
        a.merge(&b);
        b.merge(&a);
        assert_eq!(b.entries[&X], dots(&[(1, 1), (2, 1)]));
        assert!(b.remove(&X));
        for state in [merged(&a, &b), merged(&b, &a)] {
            assert!(!state.contains(&X), "{state:?}");
        }
        a.merge(&b);
        assert!(a.is_empty());
        a.add(n(1), X).unwrap();
        assert!(
            merged(&a, &b).contains(&X),
            "a later add makes it present again"
        );
    }

    #[test]
    fn remove_of_an_unseen_element_does_nothing() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        let mut b = ORSet::<u8>::new();
        assert!(!b.remove(&X));
        assert!(merged(&b, &a).contains(&X));
    }

    #[test]
    fn add_with_an_exhausted_clock_changes_nothing() {
        let mut s = ORSet::try_from(wire(&[(1, u64::MAX)], &[(0, &[(1, u64::MAX)])])).unwrap();
        let before = s.clone();
        assert_eq!(s.add(n(1), X), Err(CrdtError::DotsExhausted { node: n(1) }));
        assert_eq!(s, before);
        assert_eq!(s.add(n(2), X), Ok(Dot::new(n(2), 1)));
    }

    #[test]
    fn byte_string_elements_round_trip() {
        let mut s = ORSet::<Vec<u8>>::new();
        s.add(n(1), b"apple".to_vec()).unwrap();
        s.add(n(1), b"pear".to_vec()).unwrap();
        s.remove(b"pear".as_slice());
        let bytes = rmp_serde::to_vec(&s).unwrap();
        let back: ORSet<Vec<u8>> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
        assert!(back.contains(b"apple".as_slice()));
        assert_eq!(back.clock().get(n(1)), 2);
    }

    #[test]
    fn decode_rejects_each_broken_invariant() {
        let cases = [
            (
                wire(&[(1, 2)], &[(0, &[(1, 1)]), (1, &[])]),
                InvalidReason::NoDots { index: 1 },
            ),
            (
                wire(&[(1, 2)], &[(0, &[(1, 3)])]),
                InvalidReason::UncoveredDot {
                    dot: Dot::new(n(1), 3),
                },
            ),
            (
                wire(&[(1, 2)], &[(0, &[(2, 1)])]),
                InvalidReason::UncoveredDot {
                    dot: Dot::new(n(2), 1),
                },
            ),
            (
                wire(&[(1, 2)], &[(0, &[(1, 0)])]),
                InvalidReason::UncoveredDot {
                    dot: Dot::new(n(1), 0),
                },
            ),
            (
                wire(&[(1, 2)], &[(0, &[(1, 2)]), (1, &[(1, 2)])]),
                InvalidReason::SharedDot {
                    dot: Dot::new(n(1), 2),
                },
            ),
            (
                wire(&[(1, 2), (2, 1)], &[(0, &[(1, 1), (1, 2), (2, 1)])]),
                InvalidReason::TwoDotsOfOneNode {
                    index: 0,
                    node: n(1),
                },
            ),
        ];
        for (w, reason) in cases {
            assert!(decode_bytes(&w).is_err(), "{reason:?} decoded");
            assert_eq!(ORSet::try_from(w), Err(CrdtError::invalid("orset", reason)));
        }
        let good = wire(&[(1, 2), (2, 1)], &[(0, &[(1, 2), (2, 1)]), (1, &[(1, 1)])]);
        assert_eq!(decode_bytes(&good).unwrap().len(), 2);
    }

    /// Raw states, most of them invalid.
    fn arb_wire() -> impl Strategy<Value = Wire<u8>> {
        let dot = (arb_node(), 0u64..6).prop_map(|(node, c)| Dot::new(node, c));
        let entries = btree_map(0u8..4, btree_set(dot, 0..3), 0..4);
        (arb_vv(), entries, any::<bool>()).prop_map(|(mut clock, entries, cover)| {
            if cover {
                entries.values().flatten().for_each(|&d| clock.witness(d));
            }
            Wire { clock, entries }
        })
    }

    /// The invariants, stated independently of `check_dots`.
    fn is_valid(w: &Wire<u8>) -> bool {
        let all: Vec<Dot> = w.entries.values().flatten().copied().collect();
        let distinct: BTreeSet<Dot> = all.iter().copied().collect();
        let one_per_node = w.entries.values().all(|d| {
            let nodes: BTreeSet<NodeId> = d.iter().map(|d| d.node).collect();
            nodes.len() == d.len()
        });
        w.entries.values().all(|d| !d.is_empty())
            && all
                .iter()
                .all(|&d| d.counter >= 1 && d.counter <= w.clock.get(d.node))
            && distinct.len() == all.len()
            && one_per_node
    }

    /// Valid but not necessarily reachable states: `arb_wire` repaired until it is valid
    /// (as a node that lost its state and re-minted dots could produce).
    fn arb_valid() -> impl Strategy<Value = ORSet<u8>> {
        arb_wire().prop_map(|mut w| {
            let mut used = BTreeSet::new();
            for dots in w.entries.values_mut() {
                let mut latest = BTreeMap::new();
                for d in dots.iter().filter(|d| d.counter > 0 && !used.contains(*d)) {
                    latest.insert(d.node, d.counter);
                }
                *dots = latest.into_iter().map(|(n, c)| Dot::new(n, c)).collect();
                used.extend(dots.iter().copied());
                dots.iter().for_each(|&d| w.clock.witness(d));
            }
            w.entries.retain(|_, d| !d.is_empty());
            ORSet::try_from(w).expect("repaired state is valid")
        })
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
        fn contents_match_add_wins_specification(
            history in history(),
            order in vec(0..REPLICAS, 0..8),
        ) {
            let r = replay(&history, apply);
            for (state, seen) in r.states.iter().zip(&r.seen) {
                prop_assert_eq!(contents(state), model(&history, &r, seen));
            }
            let everything = r.seen.iter().flatten().copied().collect();
            let all = converge(&r.states, &order);
            prop_assert_eq!(contents(&all), model(&history, &r, &everything));
        }

        #[test]
        fn decoding_accepts_exactly_the_valid_states(w in arb_wire(), other in arb_valid()) {
            let valid = is_valid(&w);
            match decode_bytes(&w) {
                Err(_) => prop_assert!(!valid, "valid state rejected"),
                Ok(mut s) => {
                    prop_assert!(valid, "invalid state accepted: {:?}", s);
                    check_round_trip(&s)?;
                    check_round_trip(&merged(&s, &other))?;
                    s.remove(&0);
                    s.add(n(1), 0).expect("small clocks never run out");
                    check_round_trip(&s)?;
                }
            }
        }

        #[test]
        fn merge_laws_hold_on_arbitrary_valid_states(
            a in arb_valid(),
            b in arb_valid(),
            c in arb_valid(),
        ) {
            check_merge_laws(&a, &b, &c)?;
            check_round_trip(&merged(&a, &b))?;
        }
    }
}
