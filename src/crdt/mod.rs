//! Conflict-free replicated data types: the values of `gcounter`, `pncounter`, `2pset` and
//! `orset` keys.
//!
//! This module owns the state and merge rule of each CRDT and the checks that a decoded state
//! keeps the invariants of its type. It must not touch anything else: no I/O, no clock, no
//! randomness, no knowledge of keys, partitions or the network. Every operation names the acting
//! replica explicitly, and every type keeps its state in ordered maps and sets so that identical
//! state encodes to identical bytes on every replica.
//!
//! - [`GCounter`]: grow-only counter, one entry per replica node.
//! - [`PNCounter`]: counter that can also go down, a pair of G-Counters.
//! - [`TwoPSet`]: set whose removals are permanent.
//! - [`ORSet`]: add-wins observed-remove set without tombstones (Bieniusa et al. 2012).
//! - [`OpLog`] and [`Counter`]: the operation ids of recent updates, so that a retried update
//!   counts once, and the counter the database serves, built on them.
//!
//! Decoding validates: a state that breaks an invariant of its type is rejected with a
//! [`CrdtError`] (wrapped in the decoder's error) instead of being accepted and corrupting a
//! replica later.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::causality::Dot;
use crate::id::NodeId;

mod gcounter;
mod oplog;
mod orset;
mod pncounter;
mod twopset;

pub use gcounter::GCounter;
pub use oplog::{
    check_op_id, ActorMark, Application, Applied, Counter, Forgotten, OpIdError, OpKey, OpLog,
    OpLogPolicy, Record, RowClaim, Site, NOTHING_HELD, OP_ID_BYTES_MAX, PER_ACTOR_MAX_LIMIT,
};
pub use orset::{ORSet, RemoveOutcome};
pub use pncounter::PNCounter;
pub use twopset::TwoPSet;

/// A state-based CRDT: a join semilattice whose [`merge`](Crdt::merge) is the least upper bound.
///
/// For all states `a`, `b`, `c` of a type, `merge` must be
///
/// - **commutative**: `a ⊔ b == b ⊔ a`;
/// - **associative**: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`;
/// - **idempotent**: `a ⊔ a == a` (so a re-delivered state changes nothing);
/// - **inflationary**: `a.leq(&(a ⊔ b))` and `b.leq(&(a ⊔ b))` (merging never loses
///   information either side had).
///
/// Together these make replicas converge whatever the order, grouping or repetition of the
/// states they exchange. Every implementation proves them with property tests over states
/// reached by random operation histories on several replicas.
pub trait Crdt: Clone + PartialEq + Eq + Debug + Serialize + DeserializeOwned + Default {
    /// Merges `other` into `self`: afterwards `self` is the least upper bound of both.
    fn merge(&mut self, other: &Self);

    /// The lattice order: whether `other` already includes everything `self` knows, that is,
    /// whether merging `self` into `other` would leave `other` unchanged.
    fn leq(&self, other: &Self) -> bool;
}

/// Bounds every set element must meet: ordered (for canonical encoding), cloneable and
/// serialisable. Implemented for every such type; the database uses `Vec<u8>`.
pub trait Element: Ord + Clone + Debug + Serialize + DeserializeOwned {}

impl<T: Ord + Clone + Debug + Serialize + DeserializeOwned> Element for T {}

/// Why a CRDT operation or decode failed. No variant leaves a partly changed state behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// A counter entry would exceed `u128::MAX`. The counter was not changed.
    #[error(
        "counter entry of node {node} is {current}; adding {by} would overflow it, \
         the counter was not changed"
    )]
    CounterOverflow {
        /// The acting node, whose entry would overflow.
        node: NodeId,
        /// Its entry before the operation.
        current: u128,
        /// The amount that was to be added.
        by: u64,
    },
    /// The acting node has minted every possible dot in this set's causal context. The set was
    /// not changed.
    #[error("node {node} has no dots left in this set's causal context; the set was not changed")]
    DotsExhausted {
        /// The acting node.
        node: NodeId,
    },
    /// A decoded state breaks an invariant of its type. Nothing was decoded, so no replica
    /// state was changed.
    #[error("invalid {kind} state: {reason}; it was rejected and nothing was changed")]
    InvalidState {
        /// The CRDT type, e.g. `"orset"`.
        kind: &'static str,
        /// What is wrong, naming the offending node, dot or element position.
        reason: InvalidReason,
    },
}

/// The invariant a decoded state breaks (see [`CrdtError::InvalidState`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    /// Counters never store a zero entry.
    #[error("entry of node {node} is 0")]
    ZeroEntry {
        /// The node with the zero entry.
        node: NodeId,
    },
    /// A 2P-Set element is listed both as present and as removed.
    #[error("element #{index} of the removed set is also listed as present")]
    LiveAndRemoved {
        /// Position of the element in the removed set.
        index: usize,
    },
    /// An OR-Set element is listed with no dots.
    #[error("element #{index} has no dots")]
    NoDots {
        /// Position of the element in the set.
        index: usize,
    },
    /// A dot has counter 0 or lies outside the set's causal context.
    #[error("dot {}:{} is not covered by the causal context", .dot.node, .dot.counter)]
    UncoveredDot {
        /// The offending dot.
        dot: Dot,
    },
    /// One dot is listed under two elements (each add mints its own dot).
    #[error("dot {}:{} is listed under more than one element", .dot.node, .dot.counter)]
    SharedDot {
        /// The offending dot.
        dot: Dot,
    },
    /// An element holds two dots of one node (a later add by a node replaces its earlier one).
    #[error("element #{index} holds more than one dot of node {node}")]
    TwoDotsOfOneNode {
        /// Position of the element in the set.
        index: usize,
        /// The node with several dots.
        node: NodeId,
    },
}

impl CrdtError {
    fn invalid(kind: &'static str, reason: InvalidReason) -> Self {
        CrdtError::InvalidState { kind, reason }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A replica simulator for property tests: random operation histories over a few replicas
    //! with interleaved state exchanges, so every generated state is a reachable one.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::Crdt;
    use crate::id::NodeId;

    /// Number of simulated replicas.
    pub(crate) const REPLICAS: usize = 3;

    /// One step of a history.
    #[derive(Clone, Debug)]
    pub(crate) enum Step<Op> {
        /// Replica `.0` performs an operation.
        Apply(usize, Op),
        /// Replica `to` merges the whole state of replica `from`.
        Sync { from: usize, to: usize },
    }

    /// The node id of replica `r` (distinct per replica, as in a real cluster).
    pub(crate) fn node(r: usize) -> NodeId {
        NodeId::new(r as u64 + 1)
    }

    /// Histories of up to 40 steps, about two operations per sync.
    pub(crate) fn arb_history<Op: Clone + std::fmt::Debug>(
        op: impl Strategy<Value = Op>,
    ) -> impl Strategy<Value = Vec<Step<Op>>> {
        let apply = (0..REPLICAS, op).prop_map(|(r, op)| Step::Apply(r, op));
        let sync = (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to });
        proptest::collection::vec(prop_oneof![2 => apply, 1 => sync], 0..40)
    }

    /// The outcome of a replayed history.
    pub(crate) struct Replayed<C> {
        /// Final state of each replica.
        pub(crate) states: Vec<C>,
        /// For each replica, the indices of the `Apply` steps its state includes.
        pub(crate) seen: Vec<BTreeSet<usize>>,
        /// For each `Apply` step, the indices of the steps its replica had seen before it.
        pub(crate) seen_before: BTreeMap<usize, BTreeSet<usize>>,
    }

    /// Replays `history`, applying operations with `apply(state, acting_node, op)`.
    pub(crate) fn replay<C: Crdt, Op>(
        history: &[Step<Op>],
        mut apply: impl FnMut(&mut C, NodeId, &Op),
    ) -> Replayed<C> {
        let mut states = vec![C::default(); REPLICAS];
        let mut seen = vec![BTreeSet::new(); REPLICAS];
        let mut seen_before = BTreeMap::new();
        for (i, step) in history.iter().enumerate() {
            match step {
                Step::Apply(r, op) => {
                    seen_before.insert(i, seen[*r].clone());
                    apply(&mut states[*r], node(*r), op);
                    seen[*r].insert(i);
                }
                Step::Sync { from, to } => {
                    let source = states[*from].clone();
                    states[*to].merge(&source);
                    let source_seen = seen[*from].clone();
                    seen[*to].extend(source_seen);
                }
            }
        }
        Replayed {
            states,
            seen,
            seen_before,
        }
    }

    /// `a ⊔ b` as a new value.
    pub(crate) fn merged<C: Crdt>(a: &C, b: &C) -> C {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// Checks the semilattice laws of [`Crdt`] on three states.
    pub(crate) fn check_merge_laws<C: Crdt>(a: &C, b: &C, c: &C) -> Result<(), TestCaseError> {
        let ab = merged(a, b);
        prop_assert_eq!(&ab, &merged(b, a), "not commutative");
        prop_assert_eq!(merged(&ab, c), merged(a, &merged(b, c)), "not associative");
        prop_assert_eq!(&merged(a, a), a, "not idempotent");
        prop_assert!(a.leq(&ab) && b.leq(&ab), "not inflationary: {:?}", ab);
        prop_assert!(a.leq(a), "leq is not reflexive");
        prop_assert_eq!(a.leq(b), &ab == b, "leq disagrees with merge");
        prop_assert_eq!(
            encode(&ab),
            encode(&merged(b, a)),
            "equal states, unequal bytes"
        );
        Ok(())
    }

    /// Checks that `state` survives an rmp-serde round trip, byte for byte.
    pub(crate) fn check_round_trip<C: Crdt>(state: &C) -> Result<(), TestCaseError> {
        let bytes = encode(state);
        let back: C = rmp_serde::from_slice(&bytes)
            .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
        prop_assert_eq!(&back, state);
        prop_assert_eq!(encode(&back), bytes);
        Ok(())
    }

    /// The rmp-serde encoding of `state`.
    pub(crate) fn encode<C: Crdt>(state: &C) -> Vec<u8> {
        rmp_serde::to_vec(state).expect("CRDT states always encode")
    }

    /// Merges every replica into one state, first in `order` (repeats allowed, to model
    /// re-delivered states) and then each once more so that nothing is missed.
    pub(crate) fn converge<C: Crdt>(states: &[C], order: &[usize]) -> C {
        let mut all = C::default();
        for r in order.iter().copied().chain(0..states.len()) {
            all.merge(&states[r % states.len()]);
        }
        all
    }
}
