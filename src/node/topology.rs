//! The cluster as the data path sees it: who replicates what, who is reachable, and where.
//!
//! The router rebuilds a [`Topology`] from the membership sub-machine whenever placement or
//! liveness changes and lends it, read-only, to the other sub-machines with each input. It is a
//! plain value: no I/O, and nothing here changes membership.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::id::NodeId;
use crate::ring::{partition_of, PartitionId, Ring};

/// Placement and liveness, as one node sees them.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    /// This node.
    pub(crate) me: NodeId,
    /// Replicas per key (N).
    pub(crate) n: usize,
    /// Partitions (Q).
    pub(crate) partitions: u32,
    /// The current placement: members and leaving nodes own partitions.
    pub(crate) ring: Option<Ring>,
    /// The placement once every pending leave completed (members only): where handoff sends
    /// data.
    pub(crate) future: Option<Ring>,
    /// Nodes SWIM holds reachable (alive or suspect), and this node.
    pub(crate) alive: BTreeSet<NodeId>,
    /// Every known node's QUIC address.
    pub(crate) addrs: BTreeMap<NodeId, SocketAddr>,
    /// Bumped whenever the owner set (of `ring` or `future`) changes.
    pub(crate) placement_version: u64,
    /// This node is leaving (or has left): it hands everything it holds to others.
    pub(crate) leaving: bool,
    /// This node has left: it takes no writes any more.
    pub(crate) left: bool,
    /// This node is joining: it owns nothing yet, and pulls the partitions it will own.
    pub(crate) joining: bool,
    /// This node is a member (neither joining nor leaving).
    pub(crate) member: bool,
    /// This node's copy of its partitions is complete: it was a member at some point with this
    /// data (a node asked to leave while still joining never was, so an absent key there
    /// proves nothing). Set by the router from the sync sub-machine's persisted record.
    pub(crate) complete: bool,
    /// Partitions this node replicates whose copy is complete: it caught up with the other
    /// replicas after it became one (see the sync sub-machine's notes on complete copies).
    /// Only these may answer a read, and only these may say a key is absent.
    pub(crate) held: BTreeSet<PartitionId>,
    /// Partitions this node replicates in the current placement but has not caught up yet.
    pub(crate) catching_up: usize,
    /// No node in the ring state is joining or leaving: no ring change is in flight as far as
    /// this node knows.
    pub(crate) settled: bool,
    /// The placement once this joining node is a member (`None` unless joining and caught up
    /// with the ring).
    pub(crate) with_me: Option<Ring>,
    /// Nodes the data path takes messages from: every node in the ring state that has not
    /// left (joining, member, leaving). A node that left or was removed, or one this node has
    /// not heard of, is refused (see the router).
    pub(crate) peers: BTreeSet<NodeId>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            me: NodeId::new(0),
            n: 1,
            partitions: 1,
            ring: None,
            future: None,
            alive: BTreeSet::new(),
            addrs: BTreeMap::new(),
            placement_version: 0,
            leaving: false,
            left: false,
            joining: false,
            member: false,
            complete: false,
            held: BTreeSet::new(),
            catching_up: 0,
            settled: false,
            with_me: None,
            peers: BTreeSet::new(),
        }
    }
}

impl Topology {
    /// Replicas a key actually has: N, or every owner when the ring has fewer.
    pub(crate) fn replicas(&self) -> usize {
        self.ring
            .as_ref()
            .map_or(self.n, |r| self.n.min(r.member_count()))
    }

    /// The partition of `key`.
    pub(crate) fn partition(&self, key: &[u8]) -> PartitionId {
        partition_of(key, self.partitions.max(1))
    }

    /// The N replicas of partition `p` in the current placement (empty without one).
    pub(crate) fn primaries(&self, p: PartitionId) -> Vec<NodeId> {
        self.ring
            .as_ref()
            .map(|r| r.preference_list(p, self.n))
            .unwrap_or_default()
    }

    /// The members after the primaries of `p`, in sloppy-quorum order.
    pub(crate) fn fallbacks(&self, p: PartitionId) -> Vec<NodeId> {
        self.ring
            .as_ref()
            .map(|r| r.fallbacks(p, self.n).collect())
            .unwrap_or_default()
    }

    /// The replicas of `p` once pending leaves complete.
    pub(crate) fn future_owners(&self, p: PartitionId) -> Vec<NodeId> {
        self.future
            .as_ref()
            .map(|r| r.preference_list(p, self.n))
            .unwrap_or_default()
    }

    /// Whether this node replicates `p` now, will once pending leaves complete, or will once
    /// its join completes (whether its copy is complete yet or not: see `complete`).
    pub(crate) fn replicates(&self, p: PartitionId) -> bool {
        let holds = |r: &Option<Ring>| {
            r.as_ref()
                .is_some_and(|r| r.preference_list(p, self.n).contains(&self.me))
        };
        holds(&self.ring) || holds(&self.future) || holds(&self.with_me)
    }

    /// The owners of the current placement, sorted (empty without one).
    pub(crate) fn owners(&self) -> Vec<NodeId> {
        self.ring
            .as_ref()
            .map(|r| r.members().iter().map(|m| m.id).collect())
            .unwrap_or_default()
    }

    /// No ring change is in flight as far as this node knows: nobody joining or leaving, the
    /// future placement is the current one, and every owner is reachable.
    pub(crate) fn stable(&self) -> bool {
        let ids = |r: &Option<Ring>| {
            r.as_ref()
                .map(|r| r.members().iter().map(|m| m.id).collect::<Vec<_>>())
        };
        self.settled
            && self.ring.is_some()
            && ids(&self.ring) == ids(&self.future)
            && self.owners().into_iter().all(|o| self.is_alive(o))
    }

    /// Whether this node's copy of partition `p` is complete (see `held`).
    pub(crate) fn holds(&self, p: PartitionId) -> bool {
        self.held.contains(&p)
    }

    /// Whether `node` is reachable (this node always is).
    pub(crate) fn is_alive(&self, node: NodeId) -> bool {
        node == self.me || self.alive.contains(&node)
    }

    /// Where `node` listens.
    pub(crate) fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.addrs.get(&node).copied()
    }

    /// Every partition of the ring, in order.
    pub(crate) fn partition_ids(&self) -> impl Iterator<Item = PartitionId> {
        (0..self.partitions).filter_map(|i| u16::try_from(i).ok().map(PartitionId::new))
    }
}
