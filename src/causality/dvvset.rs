//! Dotted version vector sets (Almeida et al., "Scalable and Accurate Causality Tracking for
//! Eventually Consistent Stores", 2012): the state of a multi-value register.
//!
//! For every node that has coordinated writes to the key, the set keeps one entry: the node's
//! counter (how many of its writes are known) and the values of its newest writes that are still
//! live, newest first. Value `i` of an entry carries the dot `(node, counter - i)`; every older dot
//! of that node is known and superseded. Because a node mints its dots in order and a causal
//! context is a version vector (a prefix of every node's dots), the live dots of a node are always
//! a contiguous suffix, which is what makes this representation exact and compact: the number of
//! siblings is bounded by the number of truly concurrent writes, never by the number of clients,
//! replicas or coordinators.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CausalityError, Dot, VersionVector, COUNTER_MAX};
use crate::id::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry<V> {
    /// How many of this node's writes are known (live or superseded).
    counter: u64,
    /// Live values of the newest writes, newest first: `values[i]` has dot `counter - i`.
    values: Vec<V>,
}

impl<V: Clone> Entry<V> {
    /// The counter of the oldest live value's predecessor: every dot `<= floor` is superseded.
    fn floor(&self) -> u64 {
        // `values.len() <= counter` is an invariant (checked on decode).
        self.counter - self.values.len() as u64
    }

    /// Drops the live values whose dots are covered by `seen`.
    fn discard_upto(&mut self, seen: u64) {
        let keep = self
            .counter
            .saturating_sub(seen)
            .min(self.values.len() as u64);
        self.values.truncate(keep as usize);
    }

    /// The entry that knows what both know: a dot is live iff it is live wherever it is known.
    fn merged(&self, other: &Entry<V>) -> Entry<V> {
        let (newer, older) = if self.counter >= other.counter {
            (self, other)
        } else {
            (other, self)
        };
        let floor = newer.floor().max(older.floor());
        let mut values = newer.values.clone();
        values.truncate((newer.counter - floor) as usize);
        Entry {
            counter: newer.counter,
            values,
        }
    }
}

/// A dotted version vector set of values of type `V`.
///
/// Equal states are structurally equal and encode to equal bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<NodeId, Entry<V>>",
    into = "BTreeMap<NodeId, Entry<V>>",
    bound(
        serialize = "V: Serialize + Clone",
        deserialize = "V: Deserialize<'de> + Clone"
    )
)]
pub struct DvvSet<V> {
    entries: BTreeMap<NodeId, Entry<V>>,
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        DvvSet {
            entries: BTreeMap::new(),
        }
    }
}

impl<V: Clone> DvvSet<V> {
    /// The empty set: no writes known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a write coordinated by `node` whose client had seen `context` (use an empty
    /// context for a blind write). Every live value the context covers is superseded; values it
    /// does not cover stay as siblings of the new one. Returns the new value's dot.
    ///
    /// Only a replica of the key may coordinate a write, since the dot it mints must be unique:
    /// `node` must hold every write it has coordinated before.
    pub fn write(&mut self, node: NodeId, context: &VersionVector, value: V) -> Dot {
        self.write_above(node, context, value, 0)
    }

    /// Like [`DvvSet::write`], but when this set holds no entry of `node` yet (the key is new
    /// to it, or its state was purged), the new dot's counter is above `floor`. A node that
    /// purged a key's history passes the highest counter it had minted for any purged key, so
    /// the key's next life never reuses a dot of its last one (a copy of the old state that a
    /// lost purge left elsewhere would otherwise take the new write for one it already saw).
    pub fn write_above(
        &mut self,
        node: NodeId,
        context: &VersionVector,
        value: V,
        floor: u64,
    ) -> Dot {
        let fresh = !self.entries.contains_key(&node);
        for (&n, entry) in self.entries.iter_mut() {
            entry.discard_upto(context.get(n));
        }
        // The new write's causal past is the context: remember it even for nodes whose writes
        // never reached this replica, so they are superseded when they arrive.
        for (n, seen) in context.iter() {
            let entry = self.entries.entry(n).or_insert_with(|| Entry {
                counter: 0,
                values: Vec::new(),
            });
            if seen > entry.counter {
                entry.counter = seen;
                entry.values.clear();
            }
        }
        let entry = self.entries.entry(node).or_insert_with(|| Entry {
            counter: 0,
            values: Vec::new(),
        });
        if fresh && entry.counter < floor {
            // (An entry the context just created holds no values: raising it renames nothing.)
            entry.counter = floor;
        }
        entry.counter += 1;
        entry.values.insert(0, value);
        Dot::new(node, entry.counter)
    }

    /// Merges another replica's state of the same key into this one. Commutative, associative
    /// and idempotent.
    pub fn sync(&mut self, other: &DvvSet<V>) {
        for (&n, theirs) in &other.entries {
            match self.entries.get_mut(&n) {
                Some(mine) => *mine = mine.merged(theirs),
                None => {
                    self.entries.insert(n, theirs.clone());
                }
            }
        }
    }

    /// The causal context to hand to a client: every write known here, live or superseded.
    /// A write carrying it supersedes exactly the values known here.
    pub fn context(&self) -> VersionVector {
        self.entries.iter().map(|(&n, e)| (n, e.counter)).collect()
    }

    /// The live (concurrent) values, in node order then newest first.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.values().flat_map(|e| e.values.iter())
    }

    /// The live values with their dots.
    pub fn dotted_values(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.entries.iter().flat_map(|(&n, e)| {
            e.values
                .iter()
                .enumerate()
                .map(move |(i, v)| (Dot::new(n, e.counter - i as u64), v))
        })
    }

    /// The number of live values (siblings).
    pub fn len(&self) -> usize {
        self.entries.values().map(|e| e.values.len()).sum()
    }

    /// Whether no value is live (never written, or every value superseded by knowledge only).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> TryFrom<BTreeMap<NodeId, Entry<V>>> for DvvSet<V> {
    type Error = CausalityError;

    fn try_from(entries: BTreeMap<NodeId, Entry<V>>) -> Result<Self, Self::Error> {
        for (&node, e) in &entries {
            if e.counter == 0 {
                return Err(CausalityError::ZeroCounter { node });
            }
            if e.counter > COUNTER_MAX {
                return Err(CausalityError::CounterTooLarge {
                    node,
                    counter: e.counter,
                });
            }
            if e.values.len() as u64 > e.counter {
                return Err(CausalityError::TooManyValues {
                    node,
                    counter: e.counter,
                    values: e.values.len(),
                });
            }
        }
        Ok(DvvSet { entries })
    }
}

impl<V> From<DvvSet<V>> for BTreeMap<NodeId, Entry<V>> {
    fn from(set: DvvSet<V>) -> Self {
        set.entries
    }
}

/// One value of a register: bytes, or the tombstone a delete writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterValue {
    /// A value a client wrote.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A delete. It supersedes what its context covered, like any write.
    Tombstone,
}

/// A multi-value register: opaque byte values with siblings, deletes as tombstones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Register {
    state: DvvSet<RegisterValue>,
}

impl Register {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` through coordinator `node`, superseding what `context` covers.
    pub fn put(&mut self, node: NodeId, context: &VersionVector, value: Vec<u8>) -> Dot {
        self.state.write(node, context, RegisterValue::Bytes(value))
    }

    /// Deletes through coordinator `node`: a tombstone supersedes what `context` covers; values
    /// written concurrently survive as siblings.
    pub fn delete(&mut self, node: NodeId, context: &VersionVector) -> Dot {
        self.state.write(node, context, RegisterValue::Tombstone)
    }

    /// [`Register::put`], minting above `floor` for a key new to `node` (see
    /// [`DvvSet::write_above`]).
    pub fn put_above(
        &mut self,
        node: NodeId,
        context: &VersionVector,
        value: Vec<u8>,
        floor: u64,
    ) -> Dot {
        self.state
            .write_above(node, context, RegisterValue::Bytes(value), floor)
    }

    /// [`Register::delete`], minting above `floor` for a key new to `node` (see
    /// [`DvvSet::write_above`]).
    pub fn delete_above(&mut self, node: NodeId, context: &VersionVector, floor: u64) -> Dot {
        self.state
            .write_above(node, context, RegisterValue::Tombstone, floor)
    }

    /// Merges another replica's state.
    pub fn sync(&mut self, other: &Register) {
        self.state.sync(&other.state);
    }

    /// The causal context to return to clients.
    pub fn context(&self) -> VersionVector {
        self.state.context()
    }

    /// The live byte values (tombstones omitted): one for a settled register, several for
    /// concurrent writes, none when deleted or never written.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.state.values().filter_map(|v| match v {
            RegisterValue::Bytes(b) => Some(b.as_slice()),
            RegisterValue::Tombstone => None,
        })
    }

    /// Whether every live value is a tombstone (and there is at least one): the key reads as
    /// deleted, and the register only remembers the causal history.
    pub fn is_deleted(&self) -> bool {
        !self.state.is_empty()
            && self
                .state
                .values()
                .all(|v| matches!(v, RegisterValue::Tombstone))
    }

    /// The underlying dotted version vector set.
    pub fn dvvset(&self) -> &DvvSet<RegisterValue> {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn n(i: u64) -> NodeId {
        NodeId::new(i)
    }

    fn sorted<V: Clone + Ord>(set: &DvvSet<V>) -> Vec<V> {
        let mut v: Vec<V> = set.values().cloned().collect();
        v.sort();
        v
    }

    #[test]
    fn write_without_context_adds_a_sibling() {
        let mut s = DvvSet::new();
        s.write(n(1), &VersionVector::new(), "a");
        s.write(n(1), &VersionVector::new(), "b");
        assert_eq!(sorted(&s), vec!["a", "b"]);
    }

    #[test]
    fn write_with_full_context_replaces_all_siblings() {
        let mut a = DvvSet::new();
        let mut b = DvvSet::new();
        a.write(n(1), &VersionVector::new(), "x");
        b.write(n(2), &VersionVector::new(), "y");
        a.sync(&b);
        assert_eq!(sorted(&a), vec!["x", "y"]);
        let ctx = a.context();
        let dot = a.write(n(1), &ctx, "z");
        assert_eq!(dot, Dot::new(n(1), 2));
        assert_eq!(sorted(&a), vec!["z"]);
        // The write also supersedes "y" on the replica that still holds it.
        b.sync(&a);
        assert_eq!(sorted(&b), vec!["z"]);
    }

    #[test]
    fn stale_contexts_through_one_coordinator_do_not_explode() {
        // Riak's sibling explosion: two clients keep writing through one coordinator, each with
        // the context of its own last write. Only the two concurrent lines survive.
        let mut s = DvvSet::new();
        let mut ctx1 = VersionVector::new();
        let mut ctx2 = VersionVector::new();
        for round in 0..50 {
            s.write(n(1), &ctx1, ("c1", round));
            ctx1 = s.context();
            s.write(n(1), &ctx2, ("c2", round));
            ctx2 = s.context();
            assert!(s.len() <= 2, "round {round}: {} siblings", s.len());
        }
        assert_eq!(sorted(&s), vec![("c1", 49), ("c2", 49)]);
    }

    #[test]
    fn context_learned_from_elsewhere_supersedes_late_arrivals() {
        // Replica 2 writes y; a client reads it from replica 2 and writes z through replica 1,
        // which has never seen y. When y arrives at replica 1 it must not come back.
        let mut r1 = DvvSet::new();
        let mut r2 = DvvSet::new();
        r2.write(n(2), &VersionVector::new(), "y");
        r1.write(n(1), &r2.context(), "z");
        r1.sync(&r2);
        assert_eq!(sorted(&r1), vec!["z"]);
    }

    #[test]
    fn register_delete_leaves_tombstone_and_concurrent_values() {
        let mut r = Register::new();
        r.put(n(1), &VersionVector::new(), b"v1".to_vec());
        let ctx = r.context();
        let mut other = r.clone();
        r.delete(n(1), &ctx);
        assert!(r.is_deleted());
        assert_eq!(r.values().count(), 0);
        // A concurrent write on another coordinator survives the delete.
        other.put(n(2), &ctx, b"v2".to_vec());
        r.sync(&other);
        assert!(!r.is_deleted());
        assert_eq!(r.values().collect::<Vec<_>>(), vec![b"v2".as_slice()]);
    }

    #[test]
    fn decode_rejects_invalid_entries() {
        let bad: BTreeMap<NodeId, Entry<u8>> = [(
            n(1),
            Entry {
                counter: 1,
                values: vec![1, 2],
            },
        )]
        .into_iter()
        .collect();
        let bytes = rmp_serde::to_vec(&bad).unwrap();
        assert!(rmp_serde::from_slice::<DvvSet<u8>>(&bytes).is_err());
        let zero: BTreeMap<NodeId, Entry<u8>> = [(
            n(1),
            Entry {
                counter: 0,
                values: vec![],
            },
        )]
        .into_iter()
        .collect();
        let bytes = rmp_serde::to_vec(&zero).unwrap();
        assert!(rmp_serde::from_slice::<DvvSet<u8>>(&bytes).is_err());
    }

    /// One step of a history of clients talking to replicas of one key.
    #[derive(Clone, Debug)]
    enum Op {
        /// A client reads a replica and keeps its context.
        Read { client: usize, replica: usize },
        /// A client writes (or deletes) through a coordinator with the context it holds, then
        /// holds the coordinator's context (it is shown the values that context covers).
        Write {
            client: usize,
            coordinator: usize,
            blind: bool,
        },
        /// Anti-entropy from one replica to another.
        Sync { from: usize, to: usize },
    }

    const REPLICAS: usize = 3;
    const CLIENTS: usize = 4;

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..CLIENTS, 0..REPLICAS).prop_map(|(client, replica)| Op::Read { client, replica }),
            (0..CLIENTS, 0..REPLICAS, prop::bool::weighted(0.2)).prop_map(
                |(client, coordinator, blind)| Op::Write {
                    client,
                    coordinator,
                    blind
                }
            ),
            (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// The run of a history: real replica states next to an oracle that tracks causality
    /// explicitly, write by write.
    struct World {
        replicas: Vec<DvvSet<u64>>,
        /// Per replica: the writes it knows of (live or superseded).
        known: Vec<BTreeSet<u64>>,
        /// Per client: its context and the writes that context covers.
        clients: Vec<(VersionVector, BTreeSet<u64>)>,
        /// Per write: the writes in its causal past.
        past: Vec<BTreeSet<u64>>,
    }

    impl World {
        fn run(ops: &[Op]) -> World {
            let mut w = World {
                replicas: vec![DvvSet::new(); REPLICAS],
                known: vec![BTreeSet::new(); REPLICAS],
                clients: vec![(VersionVector::new(), BTreeSet::new()); CLIENTS],
                past: Vec::new(),
            };
            for op in ops {
                w.apply(op);
            }
            w
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Read { client, replica } => {
                    self.clients[client] = (
                        self.replicas[replica].context(),
                        self.known[replica].clone(),
                    );
                }
                Op::Write {
                    client,
                    coordinator,
                    blind,
                } => {
                    let (ctx, seen) = if blind {
                        (VersionVector::new(), BTreeSet::new())
                    } else {
                        self.clients[client].clone()
                    };
                    let id = self.past.len() as u64;
                    self.past.push(seen.clone());
                    let node = n(coordinator as u64 + 1);
                    self.replicas[coordinator].write(node, &ctx, id);
                    self.known[coordinator].extend(seen);
                    self.known[coordinator].insert(id);
                    self.clients[client] = (
                        self.replicas[coordinator].context(),
                        self.known[coordinator].clone(),
                    );
                }
                Op::Sync { from, to } => {
                    let src = self.replicas[from].clone();
                    self.replicas[to].sync(&src);
                    let k = self.known[from].clone();
                    self.known[to].extend(k);
                }
            }
        }

        /// The writes a replica knowing `known` must show: those no known write supersedes.
        fn frontier(&self, known: &BTreeSet<u64>) -> Vec<u64> {
            known
                .iter()
                .copied()
                .filter(|&w| !known.iter().any(|&o| self.past[o as usize].contains(&w)))
                .collect()
        }
    }

    fn arb_history() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(arb_op(), 0..40)
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        /// The live values are exactly the writes no other known write causally follows: no
        /// lost concurrent write, and no sibling beyond the truly concurrent ones.
        #[test]
        fn values_are_exactly_the_concurrent_frontier(ops in arb_history()) {
            let mut w = World::run(&[]);
            for op in &ops {
                w.apply(op);
                for r in 0..REPLICAS {
                    let expected = w.frontier(&w.known[r]);
                    prop_assert_eq!(sorted(&w.replicas[r]), expected, "replica {} after {:?}", r, op);
                }
            }
            // Full anti-entropy converges every replica to the global frontier.
            for _ in 0..2 {
                for from in 0..REPLICAS {
                    for to in 0..REPLICAS {
                        w.apply(&Op::Sync { from, to });
                    }
                }
            }
            let all: BTreeSet<u64> = (0..w.past.len() as u64).collect();
            for r in 0..REPLICAS {
                prop_assert_eq!(&w.replicas[r], &w.replicas[0]);
                prop_assert_eq!(sorted(&w.replicas[r]), w.frontier(&all));
            }
        }

        #[test]
        fn sync_is_commutative_associative_idempotent(
            ops in arb_history(), a in 0..REPLICAS, b in 0..REPLICAS, c in 0..REPLICAS,
        ) {
            let w = World::run(&ops);
            let (a, b, c) = (&w.replicas[a], &w.replicas[b], &w.replicas[c]);
            let mut ab = a.clone(); ab.sync(b);
            let mut ba = b.clone(); ba.sync(a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.sync(c);
            let mut bc = b.clone(); bc.sync(c);
            let mut a_bc = a.clone(); a_bc.sync(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.sync(a);
            prop_assert_eq!(&aa, a);
            // Inflationary: the merge knows everything either side knew.
            prop_assert!(ab.context().descends(&a.context()));
            prop_assert!(ab.context().descends(&b.context()));
        }

        #[test]
        fn write_with_covering_context_replaces_everything(
            ops in arb_history(), r in 0..REPLICAS,
        ) {
            let mut w = World::run(&ops);
            let ctx = w.replicas[r].context();
            let node = n(r as u64 + 1);
            let dot = w.replicas[r].write(node, &ctx, u64::MAX);
            prop_assert_eq!(sorted(&w.replicas[r]), vec![u64::MAX]);
            prop_assert_eq!(w.replicas[r].dotted_values().collect::<Vec<_>>(), vec![(dot, &u64::MAX)]);
            prop_assert!(!ctx.contains(dot));
        }

        /// After a replica purges a key (its state is gone), a write through it above the
        /// highest counter it held mints a dot no copy of the old state covers, whatever
        /// context the client brings: a replica that kept the old state (its purge was lost)
        /// keeps the new write when they merge.
        #[test]
        fn a_write_above_the_floor_after_a_purge_survives_the_old_state(
            ops in arb_history(), r in 0..REPLICAS, client in 0..CLIENTS, blind: bool,
        ) {
            let w = World::run(&ops);
            let old = w.replicas[r].clone();
            let node = n(r as u64 + 1);
            let floor = old.context().get(node);
            let ctx = if blind { VersionVector::new() } else { w.clients[client].0.clone() };
            let mut purged = DvvSet::new();
            let dot = purged.write_above(node, &ctx, u64::MAX, floor);
            prop_assert!(dot.counter > floor);
            prop_assert!(!old.context().contains(dot));
            for (mut a, b) in [(old.clone(), purged.clone()), (purged.clone(), old.clone())] {
                a.sync(&b);
                prop_assert!(sorted(&a).contains(&u64::MAX));
            }
        }

        #[test]
        fn blind_write_adds_exactly_one_sibling(ops in arb_history(), r in 0..REPLICAS) {
            let mut w = World::run(&ops);
            let before = w.replicas[r].len();
            w.replicas[r].write(n(r as u64 + 1), &VersionVector::new(), u64::MAX);
            prop_assert_eq!(w.replicas[r].len(), before + 1);
        }

        #[test]
        fn encoding_round_trips(ops in arb_history(), r in 0..REPLICAS) {
            let w = World::run(&ops);
            let bytes = rmp_serde::to_vec(&w.replicas[r]).unwrap();
            let back: DvvSet<u64> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &w.replicas[r]);
        }
    }
}
