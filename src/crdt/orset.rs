//! Add-wins observed-remove set without tombstones, whose removes can carry the causal context
//! of a read and are then deferred until the adds that read saw have arrived.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Crdt, CrdtError, Element, InvalidReason};
use crate::causality::{Dot, VersionVector};
use crate::id::NodeId;

/// The most deferred removes (distinct contexts) a decoded state may carry; more are rejected.
/// Far above what a live cluster holds (a deferred remove lasts until the replica has seen the
/// adds its context names), and high enough that merging states that each respect it cannot
/// in practice produce one that does not: the object size limit bounds a key's state first.
const DEFERRED_MAX: usize = 65_536;

/// The optimized add-wins observed-remove set of Bieniusa et al., "An optimized conflict-free
/// replicated set" (2012), with the deferred removes of riak_dt's ORSWOT.
///
/// Each add mints a fresh [`Dot`] from the set's causal context (`clock`) for the acting node;
/// an element is present while at least one of its dots is live. A remove drops the dots it has
/// observed but the clock keeps them, so no tombstone is stored: when another replica still
/// holds such a dot, the clock tells merge that this side has seen and removed it. A dot minted
/// concurrently with a remove is not covered by the remover's clock and survives, so a
/// concurrent add wins.
///
/// # Removes with a causal context
///
/// [`remove_with_context`](ORSet::remove_with_context) removes the adds a read observed: the
/// element's dots covered by the read's version vector, including dots this replica has not
/// received yet. While the clock does not cover that context, the remove is kept as *deferred*
/// (context → elements) and every merge drops the covered dots of its elements as they arrive;
/// once the clock covers the context the entry is dropped, because from then on the clock alone
/// keeps those dots out. The context never enters the clock: that would claim unseen adds of
/// other elements as seen, and merge would then drop them.
///
/// Invariants (checked on decode, kept by every operation and by merge): every element has at
/// least one dot; every dot is covered by the clock; no dot appears under two elements; an
/// element holds at most one dot per node (a node's later add replaces its earlier dots);
/// every deferred remove lists at least one element and has a context the clock does not
/// cover; no element holds a dot covered by the context of a deferred remove of it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Wire<E>", bound(deserialize = "E: Element"))]
pub struct ORSet<E> {
    clock: VersionVector,
    entries: BTreeMap<E, BTreeSet<Dot>>,
    /// Removes waiting for adds this replica has not seen: context → removed elements.
    deferred: BTreeMap<RemoveContext, BTreeSet<E>>,
}

/// The context of a deferred remove. `VersionVector` is only partially ordered, so this key
/// orders vectors lexicographically by their (node, counter) entries; equal vectors have equal
/// entries because zero entries are never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct RemoveContext(VersionVector);

impl Ord for RemoveContext {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.iter().cmp(other.0.iter())
    }
}

impl PartialOrd for RemoveContext {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What [`ORSet::remove_with_context`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// Whether adds of the element that this replica held were dropped now. The element may
    /// still be present through adds the context does not cover.
    pub removed: bool,
    /// Whether the context covers adds this replica has not seen, so the remove was kept to
    /// drop those adds when they arrive.
    pub deferred: bool,
}

impl<E> Default for ORSet<E> {
    fn default() -> Self {
        ORSet {
            clock: VersionVector::new(),
            entries: BTreeMap::new(),
            deferred: BTreeMap::new(),
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
    /// [`CrdtError::DotsExhausted`] if `node`'s counter in the clock is already `u64::MAX`, or
    /// if a deferred remove of `element` covers the dot `node` would mint next. The latter only
    /// happens when a remove's context names adds of `node` that this replica never saw (`node`
    /// lost its state, or the context was not taken from a read): that dot is already spent, and
    /// an add under it would be removed again. The set is then unchanged.
    pub fn add(&mut self, node: NodeId, element: E) -> Result<Dot, CrdtError> {
        let Some(counter) = self.clock.get(node).checked_add(1) else {
            return Err(CrdtError::DotsExhausted { node });
        };
        let next = Dot::new(node, counter);
        let spent = self
            .deferred
            .iter()
            .any(|(context, elements)| context.0.contains(next) && elements.contains(&element));
        if spent {
            return Err(CrdtError::DotsExhausted { node });
        }
        let dot = self.clock.increment(node);
        self.entries.insert(element, BTreeSet::from([dot]));
        // The clock may now descend the context of a deferred remove, which is then void.
        let clock = &self.clock;
        self.deferred
            .retain(|context, _| !clock.descends(&context.0));
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

    /// Removes exactly the adds of `element` that `context` covers, the version vector of the
    /// read the remove is based on (for example [`clock`](ORSet::clock) of the replica read).
    ///
    /// Covered adds this replica holds are dropped now. If the context also covers adds this
    /// replica has not seen (its clock does not descend `context`), the remove is deferred: every
    /// later merge drops the covered dots of `element` that arrive, until the clock descends
    /// `context`. Adds of `element` the context does not cover survive (a concurrent add wins),
    /// and other elements are never affected: the context does not enter the clock.
    ///
    /// `context` must come from a read of this set: a context naming adds that were never made
    /// would remove them in advance, so `element` could not be added under those dots.
    pub fn remove_with_context(&mut self, element: E, context: &VersionVector) -> RemoveOutcome {
        let mut removed = false;
        if let Some(dots) = self.entries.get_mut(&element) {
            let before = dots.len();
            dots.retain(|&d| !context.contains(d));
            removed = dots.len() < before;
            if dots.is_empty() {
                self.entries.remove(&element);
            }
        }
        let deferred = !self.clock.descends(context);
        if deferred {
            self.deferred
                .entry(RemoveContext(context.clone()))
                .or_default()
                .insert(element);
        }
        RemoveOutcome { removed, deferred }
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

    /// The deferred removes, in a canonical order: each context the clock does not yet cover,
    /// with the elements removed under it.
    pub fn deferred(&self) -> impl Iterator<Item = (&VersionVector, &BTreeSet<E>)> + '_ {
        self.deferred
            .iter()
            .map(|(context, elements)| (&context.0, elements))
    }

    /// Whether `dot` is live under `element`.
    fn holds(&self, element: &E, dot: Dot) -> bool {
        self.entries.get(element).is_some_and(|d| d.contains(&dot))
    }

    /// Whether `element` holds a dot that `context` covers.
    fn holds_covered(&self, element: &E, context: &VersionVector) -> bool {
        self.entries
            .get(element)
            .is_some_and(|dots| dots.iter().any(|&d| context.contains(d)))
    }

    /// Every (element, live dot) pair.
    fn pairs(&self) -> impl Iterator<Item = (&E, Dot)> + '_ {
        self.entries
            .iter()
            .flat_map(|(e, dots)| dots.iter().map(move |&d| (e, d)))
    }

    /// Applies every deferred remove (drops the covered dots of its elements, and elements left
    /// without dots), then forgets the removes whose context the clock descends.
    fn settle_deferred(&mut self) {
        let ORSet {
            clock,
            entries,
            deferred,
        } = self;
        for (context, elements) in deferred.iter() {
            for element in elements {
                if let Some(dots) = entries.get_mut(element) {
                    dots.retain(|&d| !context.0.contains(d));
                    if dots.is_empty() {
                        entries.remove(element);
                    }
                }
            }
        }
        deferred.retain(|context, _| !clock.descends(&context.0));
    }
}

impl<E: Element> Crdt for ORSet<E> {
    /// A dot survives if both sides hold it, or one holds it and the other has not seen it
    /// (a dot one side holds and the other has seen but does not hold was removed there), and
    /// no deferred remove of either side covers it. The deferred removes are united; those
    /// whose context the merged clock descends are dropped.
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
        for (context, elements) in &other.deferred {
            match self.deferred.get_mut(context) {
                Some(mine) => mine.extend(elements.iter().cloned()),
                None => {
                    self.deferred.insert(context.clone(), elements.clone());
                }
            }
        }
        self.settle_deferred();
    }

    /// `other` has seen everything `self` has; still holds every dot `self` has seen and holds
    /// (dots `self` holds but `other` lacks are then covered by `other`'s clock, because
    /// `self`'s clock covers its own dots); and for every deferred remove of `self`, holds no dot
    /// it covers and either has the same deferred remove or a clock that descends its context.
    fn leq(&self, other: &Self) -> bool {
        other.clock.descends(&self.clock)
            && other
                .pairs()
                .all(|(e, d)| self.holds(e, d) || !self.clock.contains(d))
            && self.deferred.iter().all(|(context, elements)| {
                let covered = other.clock.descends(&context.0);
                let theirs = other.deferred.get(context);
                elements.iter().all(|e| {
                    (covered || theirs.is_some_and(|t| t.contains(e)))
                        && !other.holds_covered(e, &context.0)
                })
            })
    }
}

/// The encoded form: the clock, each element with its dots, then each deferred remove's
/// context with its elements. A state without deferred removes leaves the last field out, so
/// it encodes exactly as before deferred removes existed, and such an encoding decodes to a
/// state without them.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "E: Deserialize<'de> + Ord"))]
struct Wire<E: Ord> {
    clock: VersionVector,
    entries: BTreeMap<E, BTreeSet<Dot>>,
    #[serde(default, deserialize_with = "deserialize_deferred")]
    deferred: BTreeMap<RemoveContext, BTreeSet<E>>,
}

/// Encodes exactly like [`Wire`], without cloning the state.
#[derive(Serialize)]
struct WireRef<'a, E> {
    clock: &'a VersionVector,
    entries: &'a BTreeMap<E, BTreeSet<Dot>>,
    #[serde(skip_serializing_if = "no_deferred")]
    deferred: &'a BTreeMap<RemoveContext, BTreeSet<E>>,
}

/// Whether there is no deferred remove to encode.
fn no_deferred<E>(deferred: &&BTreeMap<RemoveContext, BTreeSet<E>>) -> bool {
    deferred.is_empty()
}

/// Decodes the deferred removes, rejecting more than [`DEFERRED_MAX`] (before reading any when
/// the encoding announces its length) and any remove that lists no element.
fn deserialize_deferred<'de, D, E>(
    deserializer: D,
) -> Result<BTreeMap<RemoveContext, BTreeSet<E>>, D::Error>
where
    D: Deserializer<'de>,
    E: Deserialize<'de> + Ord,
{
    struct Removes<E>(PhantomData<E>);

    impl<'de, E: Deserialize<'de> + Ord> Visitor<'de> for Removes<E> {
        type Value = BTreeMap<RemoveContext, BTreeSet<E>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a map of at most {DEFERRED_MAX} deferred removes")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            if let Some(len) = map.size_hint().filter(|&len| len > DEFERRED_MAX) {
                return Err(de::Error::invalid_length(len, &self));
            }
            let mut removes = BTreeMap::new();
            let mut index = 0;
            while let Some((context, elements)) = map.next_entry::<RemoveContext, BTreeSet<E>>()? {
                if index == DEFERRED_MAX {
                    return Err(de::Error::invalid_length(index + 1, &self));
                }
                if elements.is_empty() {
                    return Err(de::Error::custom(format_args!(
                        "deferred remove #{index} lists no element"
                    )));
                }
                removes.insert(context, elements);
                index += 1;
            }
            Ok(removes)
        }
    }

    deserializer.deserialize_map(Removes(PhantomData))
}

impl<E: Serialize> Serialize for ORSet<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = WireRef {
            clock: &self.clock,
            entries: &self.entries,
            deferred: &self.deferred,
        };
        wire.serialize(serializer)
    }
}

impl<E: Ord> TryFrom<Wire<E>> for ORSet<E> {
    type Error = CrdtError;

    /// Rejects a state that breaks an invariant, with one exception: a deferred remove whose
    /// context the clock descends is void (the clock already keeps out every dot it covers), so
    /// it is dropped instead, which keeps the state canonical. (No [`InvalidReason`] describes
    /// it; the decoder already rejects a deferred remove without elements, and too many.)
    fn try_from(wire: Wire<E>) -> Result<Self, Self::Error> {
        let invalid = |reason| CrdtError::invalid("orset", reason);
        let mut used = BTreeSet::new();
        for (index, dots) in wire.entries.values().enumerate() {
            check_dots(index, dots, &wire.clock, &mut used).map_err(invalid)?;
        }
        check_deferred(&wire.entries, &wire.deferred).map_err(invalid)?;
        let Wire {
            clock,
            entries,
            mut deferred,
        } = wire;
        deferred.retain(|context, elements| !elements.is_empty() && !clock.descends(&context.0));
        Ok(ORSet {
            clock,
            entries,
            deferred,
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

/// Checks that no element holds a dot covered by a deferred remove of it (the remove would
/// have dropped it). The error names the offending (context, element) pair by its position
/// among all such pairs, in encoding order.
fn check_deferred<E: Ord>(
    entries: &BTreeMap<E, BTreeSet<Dot>>,
    deferred: &BTreeMap<RemoveContext, BTreeSet<E>>,
) -> Result<(), InvalidReason> {
    let pairs = deferred
        .iter()
        .flat_map(|(context, elements)| elements.iter().map(move |e| (&context.0, e)));
    for (index, (context, element)) in pairs.enumerate() {
        let covered = entries
            .get(element)
            .is_some_and(|dots| dots.iter().any(|&d| context.contains(d)));
        if covered {
            return Err(InvalidReason::LiveAndRemoved { index });
        }
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
    const Y: u8 = b'y';

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8),
        Remove(u8),
        /// Removes the element with the context of a read: the clock that the replica doing
        /// operation number `.1 % k` had just before it (`k` counts the operations so far, this
        /// one included), so the read may come from another replica and include adds this one
        /// has not seen.
        RemoveWithContext(u8, usize),
    }

    fn history() -> impl Strategy<Value = Vec<Step<Op>>> {
        let element = 0u8..5;
        arb_history(prop_oneof![
            3 => element.clone().prop_map(Op::Add),
            1 => element.clone().prop_map(Op::Remove),
            2 => (element, any::<usize>()).prop_map(|(e, read)| Op::RemoveWithContext(e, read)),
        ])
    }

    /// Replays `history`, giving each context remove the clock of its read.
    fn run(history: &[Step<Op>]) -> Replayed<ORSet<u8>> {
        let mut reads: Vec<VersionVector> = Vec::new();
        replay(history, |set: &mut ORSet<u8>, node, op| {
            reads.push(set.clock().clone());
            match *op {
                Op::Add(e) => {
                    set.add(node, e)
                        .expect("small clocks never run out, and reads name only minted dots");
                }
                Op::Remove(e) => {
                    set.remove(&e);
                }
                Op::RemoveWithContext(e, read) => {
                    let context = &reads[read % reads.len()];
                    let deferred = !set.clock().descends(context);
                    assert_eq!(set.remove_with_context(e, context).deferred, deferred);
                }
            }
        })
    }

    /// For each remove step, the step whose replica's view it removes under: the remove itself
    /// for a plain remove, its read for a context remove (as `run` picks it).
    fn observers(history: &[Step<Op>]) -> BTreeMap<usize, usize> {
        let mut applies = Vec::new();
        let mut out = BTreeMap::new();
        for (j, step) in history.iter().enumerate() {
            if let Step::Apply(_, op) = step {
                applies.push(j);
                match *op {
                    Op::Add(_) => {}
                    Op::Remove(_) => {
                        out.insert(j, j);
                    }
                    Op::RemoveWithContext(_, read) => {
                        out.insert(j, applies[read % applies.len()]);
                    }
                }
            }
        }
        out
    }

    /// The add-wins specification: an element is present iff some seen add of it was not
    /// observed by any seen remove of it. A plain remove observes the adds its replica had seen;
    /// a context remove, the adds its read's replica had seen (whether or not the removing
    /// replica had).
    fn model(
        history: &[Step<Op>],
        r: &Replayed<ORSet<u8>>,
        seen: &BTreeSet<usize>,
    ) -> BTreeSet<u8> {
        let observers = observers(history);
        let removed_by_a_seen_remove = |add: usize, e: u8| {
            seen.iter().any(|&j| match history[j] {
                Step::Apply(_, Op::Remove(x) | Op::RemoveWithContext(x, _)) if x == e => {
                    r.seen_before[&observers[&j]].contains(&add)
                }
                _ => false,
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

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(node, c)| (n(node), c)).collect()
    }

    fn dots(pairs: &[(u64, u64)]) -> BTreeSet<Dot> {
        pairs
            .iter()
            .map(|&(node, c)| Dot::new(n(node), c))
            .collect()
    }

    fn wire(clock: &[(u64, u64)], entries: &[(u8, &[(u64, u64)])]) -> Wire<u8> {
        Wire {
            clock: vv(clock),
            entries: entries.iter().map(|&(e, d)| (e, dots(d))).collect(),
            deferred: BTreeMap::new(),
        }
    }

    fn decode_bytes(w: &Wire<u8>) -> Result<ORSet<u8>, rmp_serde::decode::Error> {
        let wire = WireRef {
            clock: &w.clock,
            entries: &w.entries,
            deferred: &w.deferred,
        };
        rmp_serde::from_slice(&rmp_serde::to_vec(&wire).unwrap())
    }

    fn deferred_of(set: &ORSet<u8>) -> Vec<(VersionVector, Vec<u8>)> {
        set.deferred()
            .map(|(c, e)| (c.clone(), e.iter().copied().collect()))
            .collect()
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
    fn context_remove_drops_the_adds_the_read_saw_even_before_they_arrive() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        a.add(n(2), X).unwrap();
        let read = a.clock().clone();
        // A replica that has received nothing yet.
        let mut c = ORSet::new();
        let outcome = c.remove_with_context(X, &read);
        assert_eq!(
            outcome,
            RemoveOutcome {
                removed: false,
                deferred: true
            }
        );
        assert_eq!(deferred_of(&c), vec![(read.clone(), vec![X])]);
        assert!(c.clock().is_empty(), "the context does not enter the clock");
        for state in [merged(&c, &a), merged(&a, &c)] {
            assert!(!state.contains(&X), "{state:?}");
            assert_eq!(state.deferred().count(), 0, "the clock now covers the read");
            assert_eq!(state.clock(), &read);
        }
        // The remove now travels as seen-but-not-held dots: a replica that only ever saw the
        // adds loses them too, and the add does not come back.
        c.merge(&a);
        let mut b = a.clone();
        b.merge(&c);
        assert!(!b.contains(&X));
        b.merge(&a);
        assert!(!b.contains(&X));
        // On a replica that holds the adds, the remove applies at once and is not deferred.
        let mut held = a.clone();
        let outcome = held.remove_with_context(X, &read);
        assert_eq!(
            outcome,
            RemoveOutcome {
                removed: true,
                deferred: false
            }
        );
        assert_eq!(held, c);
    }

    #[test]
    fn add_not_covered_by_the_context_survives() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        let read = a.clock().clone();
        let mut b = a.clone();
        // Concurrent with the remove: a later add by the read node, and one by another node.
        let later = a.add(n(1), Y).unwrap();
        a.add(n(1), X).unwrap();
        let concurrent = b.add(n(2), X).unwrap();
        let mut c = ORSet::new();
        assert!(c.remove_with_context(X, &read).deferred);
        let all = converge(&[a.clone(), b.clone(), c.clone()], &[2, 0, 1]);
        assert!(all.contains(&X) && all.contains(&Y));
        assert_eq!(all.entries[&X], dots(&[(1, 3), (2, 1)]));
        assert_eq!(all.entries[&Y], BTreeSet::from([later]));
        // Applied where the concurrent add is already present: nothing to remove, nothing kept.
        let outcome = b.remove_with_context(X, &read);
        assert_eq!(
            outcome,
            RemoveOutcome {
                removed: false,
                deferred: false
            }
        );
        assert_eq!(b.entries[&X], BTreeSet::from([concurrent]));
    }

    #[test]
    fn context_remove_never_removes_an_unseen_add_of_another_element() {
        let mut a = ORSet::new();
        a.add(n(1), Y).unwrap();
        a.add(n(1), X).unwrap();
        let read = a.clock().clone();
        let mut c = ORSet::new();
        c.add(n(3), Y).unwrap();
        assert!(c.remove_with_context(X, &read).deferred);
        assert_eq!(
            c.clock(),
            &vv(&[(3, 1)]),
            "the context does not enter the clock"
        );
        for state in [merged(&c, &a), merged(&a, &c)] {
            assert!(!state.contains(&X), "{state:?}");
            assert!(state.contains(&Y), "{state:?}");
            assert_eq!(state.entries[&Y], dots(&[(1, 1), (3, 1)]));
        }
        // What merging the context into the clock would have done: claim a's add of y as seen
        // and removed, and lose it.
        let mut shortcut = c.clone();
        shortcut.clock.merge(&read);
        shortcut.deferred.clear();
        assert_eq!(merged(&shortcut, &a).entries[&Y], dots(&[(3, 1)]));
    }

    #[test]
    fn leq_accounts_for_deferred_removes() {
        let mut a = ORSet::<u8>::new();
        assert!(a.remove_with_context(X, &vv(&[(1, 1)])).deferred);
        // Lacks the remove and has not seen what it covers.
        let empty = ORSet::new();
        assert!(!a.leq(&empty) && empty.leq(&a));
        // Has seen what it covers, but still holds a dot the remove drops.
        let mut b = ORSet::new();
        b.add(n(1), X).unwrap();
        assert!(!a.leq(&b));
        assert_ne!(merged(&a, &b), b);
        // Has seen and removed what it covers: the remove adds nothing.
        b.remove(&X);
        assert!(a.leq(&b));
        assert_eq!(merged(&a, &b), b);
        // Holds another element's dot the context covers: untouched.
        let mut d = ORSet::new();
        d.add(n(1), Y).unwrap();
        assert!(a.leq(&d));
        assert_eq!(merged(&a, &d), d);
    }

    #[test]
    fn add_never_mints_a_dot_a_deferred_remove_covers() {
        // A context naming adds of node 1 this replica never saw (node 1 lost its state).
        let mut s = ORSet::new();
        s.remove_with_context(X, &vv(&[(1, 2)]));
        let before = s.clone();
        assert_eq!(s.add(n(1), X), Err(CrdtError::DotsExhausted { node: n(1) }));
        assert_eq!(s, before);
        assert_eq!(s.add(n(2), X), Ok(Dot::new(n(2), 1)));
        assert_eq!(
            s.add(n(1), Y),
            Ok(Dot::new(n(1), 1)),
            "other elements are free"
        );
        check_round_trip(&s).unwrap();
        assert_eq!(merged(&s, &s), s);
        // Once the clock covers the context, the remove is void and goes.
        assert_eq!(s.add(n(1), b'z'), Ok(Dot::new(n(1), 2)));
        assert_eq!(s.deferred().count(), 0);
        assert_eq!(s.add(n(1), X), Ok(Dot::new(n(1), 3)));
        check_round_trip(&s).unwrap();
        assert_eq!(merged(&s, &s), s);
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
    fn deferred_removes_round_trip_canonically() {
        let mut a = ORSet::new();
        a.add(n(1), X).unwrap();
        a.add(n(1), Y).unwrap();
        let read = a.clock().clone();
        let other = vv(&[(3, 4)]);
        let mut s = ORSet::new();
        s.add(n(2), b'z').unwrap();
        s.remove_with_context(X, &read);
        s.remove_with_context(b'w', &other);
        s.remove_with_context(Y, &read);
        let mut t = ORSet::new();
        t.remove_with_context(Y, &read);
        t.remove_with_context(b'w', &other);
        t.add(n(2), b'z').unwrap();
        t.remove_with_context(X, &read);
        assert_eq!(s, t);
        assert_eq!(
            deferred_of(&s),
            vec![(read, vec![X, Y]), (other, vec![b'w'])]
        );
        let bytes = rmp_serde::to_vec(&s).unwrap();
        assert_eq!(
            bytes,
            rmp_serde::to_vec(&t).unwrap(),
            "equal states, equal bytes"
        );
        let back: ORSet<u8> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(rmp_serde::to_vec(&back).unwrap(), bytes);
        let named: ORSet<u8> =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&s).unwrap()).unwrap();
        assert_eq!(named, s);
    }

    #[test]
    fn states_without_deferred_removes_keep_the_old_encoding() {
        /// The encoding before deferred removes existed.
        #[derive(Serialize)]
        struct Old<'a> {
            clock: &'a VersionVector,
            entries: &'a BTreeMap<u8, BTreeSet<Dot>>,
        }
        let mut s = ORSet::new();
        s.add(n(1), X).unwrap();
        s.add(n(2), Y).unwrap();
        s.remove(&Y);
        let old = Old {
            clock: &s.clock,
            entries: &s.entries,
        };
        for (new, old) in [
            (rmp_serde::to_vec(&s), rmp_serde::to_vec(&old)),
            (rmp_serde::to_vec_named(&s), rmp_serde::to_vec_named(&old)),
        ] {
            let (new, old) = (new.unwrap(), old.unwrap());
            assert_eq!(new, old);
            assert_eq!(rmp_serde::from_slice::<ORSet<u8>>(&old).unwrap(), s);
        }
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

    #[test]
    fn decode_rejects_invalid_deferred_removes() {
        /// A deferred remove: its context's (node, counter) entries and its elements.
        type Remove<'a> = (&'a [(u64, u64)], &'a [u8]);
        let with = |mut w: Wire<u8>, removes: &[Remove]| {
            for &(context, elements) in removes {
                let elements = elements.iter().copied().collect();
                w.deferred.insert(RemoveContext(vv(context)), elements);
            }
            w
        };
        // A live dot that a deferred remove of its element covers.
        let live = with(
            wire(&[(1, 2)], &[(X, &[(1, 2)]), (Y, &[(1, 1)])]),
            &[(&[(1, 1), (2, 1)], &[X, Y])],
        );
        let reason = InvalidReason::LiveAndRemoved { index: 1 };
        let error = decode_bytes(&live).unwrap_err().to_string();
        assert!(error.contains(&reason.to_string()), "{error}");
        assert_eq!(
            ORSet::try_from(live),
            Err(CrdtError::invalid("orset", reason))
        );
        // A deferred remove without elements.
        let empty = with(wire(&[(1, 1)], &[]), &[(&[(2, 1)], &[X]), (&[(2, 2)], &[])]);
        let error = decode_bytes(&empty).unwrap_err().to_string();
        assert!(
            error.contains("deferred remove #1 lists no element"),
            "{error}"
        );
        // More than DEFERRED_MAX deferred removes.
        let many = |count: u64| {
            let mut w = wire(&[], &[]);
            for c in 1..=count {
                w.deferred
                    .insert(RemoveContext(vv(&[(1, c)])), BTreeSet::from([X]));
            }
            w
        };
        let limit = DEFERRED_MAX as u64;
        assert_eq!(
            decode_bytes(&many(limit)).unwrap().deferred().count(),
            DEFERRED_MAX
        );
        let error = decode_bytes(&many(limit + 1)).unwrap_err().to_string();
        assert!(
            error.contains(&format!("at most {DEFERRED_MAX} deferred removes")),
            "{error}"
        );
        // A remove whose context the clock covers is void: dropped, so the state stays canonical.
        let void = with(
            wire(&[(1, 2)], &[(Y, &[(1, 2)])]),
            &[(&[(1, 1)], &[X, Y]), (&[(2, 1)], &[X])],
        );
        let s = decode_bytes(&void).unwrap();
        assert_eq!(deferred_of(&s), vec![(vv(&[(2, 1)]), vec![X])]);
        check_round_trip(&s).unwrap();
    }

    /// Raw states, most of them invalid.
    fn arb_wire() -> impl Strategy<Value = Wire<u8>> {
        let dot = (arb_node(), 0u64..6).prop_map(|(node, c)| Dot::new(node, c));
        let entries = btree_map(0u8..4, btree_set(dot, 0..3), 0..4);
        let context = arb_vv().prop_map(RemoveContext);
        let deferred = btree_map(context, btree_set(0u8..4, 0..3), 0..3);
        (arb_vv(), entries, deferred, any::<bool>()).prop_map(
            |(mut clock, entries, deferred, cover)| {
                if cover {
                    entries.values().flatten().for_each(|&d| clock.witness(d));
                }
                Wire {
                    clock,
                    entries,
                    deferred,
                }
            },
        )
    }

    /// The invariants, stated independently of `check_dots` and `check_deferred` (a deferred
    /// remove whose context the clock covers is accepted, and dropped).
    fn is_valid(w: &Wire<u8>) -> bool {
        let all: Vec<Dot> = w.entries.values().flatten().copied().collect();
        let distinct: BTreeSet<Dot> = all.iter().copied().collect();
        let one_per_node = w.entries.values().all(|d| {
            let nodes: BTreeSet<NodeId> = d.iter().map(|d| d.node).collect();
            nodes.len() == d.len()
        });
        let no_live_removed = w.deferred.iter().all(|(c, elements)| {
            elements.iter().all(|e| {
                w.entries
                    .get(e)
                    .is_none_or(|d| d.iter().all(|d| d.counter > c.0.get(d.node)))
            })
        });
        w.entries.values().all(|d| !d.is_empty())
            && all
                .iter()
                .all(|&d| d.counter >= 1 && d.counter <= w.clock.get(d.node))
            && distinct.len() == all.len()
            && one_per_node
            && w.deferred.values().all(|e| !e.is_empty())
            && no_live_removed
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
            for (context, elements) in &w.deferred {
                for e in elements {
                    if let Some(dots) = w.entries.get_mut(e) {
                        dots.retain(|&d| !context.0.contains(d));
                    }
                }
            }
            w.entries.retain(|_, d| !d.is_empty());
            let clock = w.clock.clone();
            w.deferred
                .retain(|context, elements| !elements.is_empty() && !clock.descends(&context.0));
            ORSet::try_from(w).expect("repaired state is valid")
        })
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_laws_hold(history in history()) {
            let s = run(&history).states;
            check_merge_laws(&s[0], &s[1], &s[2])?;
        }

        #[test]
        fn leq_agrees_with_merge_on_related_states(history in history()) {
            let s = run(&history).states;
            let mut states = s.clone();
            states.push(merged(&s[0], &s[1]));
            states.push(merged(&s[1], &s[2]));
            states.push(merged(&states[3], &s[2]));
            for a in &states {
                for b in &states {
                    prop_assert_eq!(a.leq(b), &merged(a, b) == b, "{:?} vs {:?}", a, b);
                }
            }
        }

        #[test]
        fn round_trips_through_msgpack(history in history()) {
            for state in &run(&history).states {
                check_round_trip(state)?;
            }
        }

        #[test]
        fn contents_match_add_wins_specification(
            history in history(),
            order in vec(0..REPLICAS, 0..8),
        ) {
            let r = run(&history);
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
                    let kept: Vec<_> = w
                        .deferred
                        .iter()
                        .filter(|(c, _)| !w.clock.descends(&c.0))
                        .map(|(c, e)| (c.0.clone(), e.iter().copied().collect()))
                        .collect();
                    prop_assert_eq!(deferred_of(&s), kept);
                    check_round_trip(&s)?;
                    check_round_trip(&merged(&s, &other))?;
                    s.remove(&0);
                    let before = s.clone();
                    match s.add(n(1), 0) {
                        Ok(_) => {}
                        Err(e) => {
                            prop_assert_eq!(e, CrdtError::DotsExhausted { node: n(1) });
                            prop_assert_eq!(&s, &before);
                        }
                    }
                    check_round_trip(&s)?;
                    s.remove_with_context(1, &vv(&[(1, 3), (2, 5)]));
                    check_round_trip(&s)?;
                    prop_assert_eq!(&merged(&s, &s), &s);
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
