//! Placement: partitions, the consistent-hash ring with virtual nodes, and preference lists.
//!
//! This module owns the answer to "which nodes hold this key?". The key space is cut into Q fixed
//! partitions by a stable hash ([`partition_of`]); a [`Ring`] built from the ring member set
//! places each partition on the first N distinct members clockwise from the partition's position,
//! and orders the remaining members as fallbacks for sloppy quorum ([`Ring::walk`]). [`plan`]
//! computes balance and movement reports for operators.
//!
//! Everything here is a pure function of its inputs: no I/O, no clock, no randomness, no hash-map
//! iteration. Placement depends only on the configuration and the member *set*, so every node
//! computes the same ring. This module does not track liveness, membership changes or data
//! movement — membership decides who is on the ring, the node core routes around down members
//! and hands data over — and it must not reach into those modules.

mod partition;
mod placement;
pub mod plan;

pub use partition::{key_hash, partition_of, PartitionId, DEFAULT_PARTITIONS, PARTITIONS_MAX};
pub use placement::{
    Member, Ring, RingConfig, RingError, Walk, DEFAULT_VNODES, MEMBERS_MAX, TOKENS_MAX, VNODES_MAX,
    WEIGHT_MAX,
};
