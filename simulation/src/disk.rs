//! One node's simulated disk and the metadata a driver keeps on it.
//!
//! The disk is the core's [`MemoryStore`]: synced writes survive [`Disk::crash`], unsynced ones
//! are lost. On it the simulated driver keeps exactly what the production runtime keeps, under
//! the same keys and encodings: the node id, the generation (starts so far, bumped and synced at
//! every start) and the ring state (rewritten on every [`chorus::node::Output::PersistRing`]).
//! This module does not interpret the ring state; it only stores and loads it.

use chorus::membership::RingState;
use chorus::storage::{meta, MemoryStore};
use chorus::NodeId;

pub use chorus::storage::meta::{
    BootInfo as Persisted, MetaError as DiskError, META_GENERATION, META_NODE_ID, META_RING,
};

/// A node's disk.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    store: MemoryStore,
}

impl Disk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the metadata for a new start, creating the id (`fresh_id`) on first start and
    /// bumping the generation, exactly like the production runtime (both call
    /// [`chorus::storage::meta::boot`]).
    pub fn load_for_start(&mut self, fresh_id: NodeId) -> Result<Persisted, DiskError> {
        meta::boot(&mut self.store, fresh_id)
    }

    /// Persists the ring state (a synced metadata write).
    pub fn persist_ring(&mut self, ring: &RingState) -> Result<(), DiskError> {
        meta::persist_ring(&mut self.store, ring)
    }

    /// Records a generation the node reached by renewing its SWIM identity.
    pub fn persist_generation(&mut self, generation: u64) -> Result<(), DiskError> {
        meta::persist_generation(&mut self.store, generation)
    }

    /// The ring state on disk (empty if none was persisted).
    pub fn ring(&self) -> Result<RingState, DiskError> {
        meta::load_ring(&self.store)
    }

    /// The process died: every write that was not synced is lost.
    pub fn crash(&mut self) {
        self.store = self.store.crash();
    }

    /// The underlying store, for checkers that inspect what is on disk.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chorus::membership::{NodeInfo, RingEntry, RingStatus};

    use super::*;

    #[test]
    fn generation_is_bumped_and_survives_crashes_with_the_ring() {
        let mut disk = Disk::new();
        let first = disk.load_for_start(NodeId::new(7)).unwrap();
        assert_eq!((first.id, first.generation), (NodeId::new(7), 1));
        assert!(first.ring.is_empty());
        let mut ring = RingState::new();
        let addr = SocketAddr::from(([10, 0, 0, 1], 7000));
        ring.merge_entry(
            NodeId::new(7),
            &RingEntry {
                status: RingStatus::Member,
                info_version: 1,
                info: NodeInfo {
                    quic_addr: addr,
                    http_addr: addr,
                },
            },
        );
        disk.persist_ring(&ring).unwrap();
        disk.crash();
        // A fresh id offered on restart is ignored: the persisted one wins.
        let second = disk.load_for_start(NodeId::new(99)).unwrap();
        assert_eq!((second.id, second.generation), (NodeId::new(7), 2));
        assert_eq!(second.ring, ring);
        assert_eq!(disk.ring().unwrap(), ring);
    }
}
