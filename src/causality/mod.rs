//! Causality: dots, version vectors and the dotted version vector set behind registers.
//!
//! This module owns the logic that decides which writes supersede which. It is pure: no I/O, no
//! clock, no randomness — the acting node is always named by the caller. Every type encodes
//! identically on every replica (ordered maps, canonical forms), and decoding validates the
//! invariants so malformed peer state is rejected instead of corrupting a replica.

mod dvvset;
mod vv;

pub use dvvset::{DvvSet, Register, RegisterValue};
pub use vv::{CausalOrder, Dot, VersionVector};

/// The largest counter a decoder accepts. Counters grow by one per event, so a state that
/// passed decoding can never overflow `u64` in any realistic lifetime (2^62 events to go).
pub const COUNTER_MAX: u64 = 1 << 62;

use crate::id::NodeId;

/// A causality structure that violates its invariants (only decoding can produce one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CausalityError {
    /// Version vectors never store a zero counter.
    #[error("version vector entry for node {node} has counter 0")]
    ZeroCounter {
        /// The offending node.
        node: NodeId,
    },
    /// A counter beyond [`COUNTER_MAX`]: no real history is that long.
    #[error("counter {counter} of node {node} exceeds the limit {COUNTER_MAX}")]
    CounterTooLarge {
        /// The offending node.
        node: NodeId,
        /// Its counter.
        counter: u64,
    },
    /// A DVV set entry lists more live values than its node has events.
    #[error(
        "dvvset entry for node {node} holds {values} values but its counter is only {counter}"
    )]
    TooManyValues {
        /// The offending node.
        node: NodeId,
        /// Its counter.
        counter: u64,
        /// How many values it lists.
        values: usize,
    },
}

#[cfg(test)]
pub(crate) mod testing {
    //! Generators shared by the causality and CRDT property tests.
    use super::*;
    use proptest::prelude::*;

    /// Node ids from a small pool so that generated values overlap.
    pub(crate) fn arb_node() -> impl Strategy<Value = NodeId> {
        (1u64..=4).prop_map(NodeId::new)
    }

    /// Arbitrary version vectors over the small node pool.
    pub(crate) fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((arb_node(), 0u64..6), 0..5)
            .prop_map(|pairs| pairs.into_iter().collect())
    }
}
