//! Ring membership as a CRDT: who owns partitions, independent of who is reachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// Where a node stands in the ring. Statuses only move forward:
/// `joining → member → leaving → left`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum RingStatus {
    /// Announced itself; owns no partitions yet.
    Joining,
    /// Owns partitions.
    Member,
    /// Handing its partitions to the others; still owns them until it is gone.
    Leaving,
    /// Gone for good. The same node id never comes back.
    Left,
}

impl RingStatus {
    /// Whether a node in this status holds partitions in the placement.
    pub fn owns_partitions(self) -> bool {
        matches!(self, RingStatus::Member | RingStatus::Leaving)
    }

    /// The lowercase name used in the HTTP API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RingStatus::Joining => "joining",
            RingStatus::Member => "member",
            RingStatus::Leaving => "leaving",
            RingStatus::Left => "left",
        }
    }
}

/// How to reach a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's QUIC endpoint (peers and QUIC clients).
    pub quic_addr: SocketAddr,
    /// The node's HTTP API.
    pub http_addr: SocketAddr,
}

/// One node's ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingEntry {
    /// The furthest status anyone has recorded for the node.
    pub status: RingStatus,
    /// Version of `info`, bumped by the node itself when its addresses change.
    pub info_version: u64,
    /// The node's addresses as of `info_version`.
    pub info: NodeInfo,
}

impl RingEntry {
    /// Least upper bound of two entries of the same node: the furthest status and the newest
    /// info (ties broken by the info itself, so the merge is deterministic).
    pub fn merge(&mut self, other: &RingEntry) {
        self.status = self.status.max(other.status);
        if (other.info_version, other.info) > (self.info_version, self.info) {
            self.info_version = other.info_version;
            self.info = other.info;
        }
    }
}

/// The ring membership of the whole cluster: a map of per-node entries merged pointwise.
/// Commutative, associative and idempotent; gossiped by SWIM broadcasts and by periodic
/// full-state exchange. Liveness is not part of it: a down member keeps its partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RingState {
    entries: BTreeMap<NodeId, RingEntry>,
}

impl RingState {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one node's entry; returns whether anything changed.
    pub fn merge_entry(&mut self, node: NodeId, entry: &RingEntry) -> bool {
        match self.entries.get_mut(&node) {
            Some(mine) => {
                let before = *mine;
                mine.merge(entry);
                *mine != before
            }
            None => {
                self.entries.insert(node, *entry);
                true
            }
        }
    }

    /// Merges another replica's whole state; returns whether anything changed.
    pub fn merge(&mut self, other: &RingState) -> bool {
        let mut changed = false;
        for (&node, entry) in &other.entries {
            changed |= self.merge_entry(node, entry);
        }
        changed
    }

    /// Whether `self` knows everything `other` knows.
    pub fn covers(&self, other: &RingState) -> bool {
        let mut merged = self.clone();
        !merged.merge(other)
    }

    /// One node's entry.
    pub fn get(&self, node: NodeId) -> Option<&RingEntry> {
        self.entries.get(&node)
    }

    /// Every known node and its entry, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &RingEntry)> + '_ {
        self.entries.iter().map(|(&n, e)| (n, e))
    }

    /// The nodes that hold partitions (members and leaving nodes), in node order.
    pub fn owners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.status.owns_partitions())
            .map(|(&n, _)| n)
    }

    /// Number of known nodes (any status).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn info(port: u16) -> NodeInfo {
        NodeInfo {
            quic_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        }
    }

    fn arb_status() -> impl Strategy<Value = RingStatus> {
        prop_oneof![
            Just(RingStatus::Joining),
            Just(RingStatus::Member),
            Just(RingStatus::Leaving),
            Just(RingStatus::Left),
        ]
    }

    fn arb_state() -> impl Strategy<Value = RingState> {
        let entry = (arb_status(), 0u64..3, 0u16..3).prop_map(|(status, v, p)| RingEntry {
            status,
            info_version: v,
            info: info(1000 + p),
        });
        prop::collection::btree_map((1u64..5).prop_map(NodeId::new), entry, 0..5)
            .prop_map(|entries| RingState { entries })
    }

    #[test]
    fn status_only_moves_forward_and_newest_info_wins() {
        let n = NodeId::new(1);
        let mut s = RingState::new();
        assert!(s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Leaving,
                info_version: 1,
                info: info(1)
            }
        ));
        assert!(s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Member,
                info_version: 2,
                info: info(7)
            }
        ));
        let e = s.get(n).unwrap();
        assert_eq!(e.status, RingStatus::Leaving);
        assert_eq!(e.info, info(7));
        assert!(!s.merge_entry(
            n,
            &RingEntry {
                status: RingStatus::Joining,
                info_version: 0,
                info: info(9)
            }
        ));
        assert_eq!(s.owners().collect::<Vec<_>>(), vec![n]);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn merge_is_a_join(a in arb_state(), b in arb_state(), c in arb_state()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            prop_assert!(!aa.merge(&a));
            prop_assert_eq!(&aa, &a);
            prop_assert!(ab.covers(&a) && ab.covers(&b));
        }
    }
}
