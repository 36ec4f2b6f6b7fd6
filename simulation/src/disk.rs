//! One node's simulated disk and the metadata a driver keeps on it.
//!
//! The disk is the core's [`MemoryStore`]: a write is visible at once but lost by a crash until
//! it is synced, and a sync takes simulated time (the cluster schedules it). On it the simulated
//! driver keeps exactly what the production runtime keeps, under the same keys and encodings:
//! the node id, the generation (starts so far, bumped and synced at every start), the ring state
//! (rewritten on every [`chorus::node::Output::PersistRing`]) and the completed-leave mark. This
//! module does not interpret any of it; it only stores and loads.

use chorus::membership::RingState;
use chorus::storage::{meta, MemoryStore, Store};
use chorus::NodeId;

pub use chorus::storage::meta::{
    BootInfo as Persisted, MetaError as DiskError, META_GENERATION, META_LEFT, META_NODE_ID,
    META_RING,
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
    /// bumping the generation (synced at once), exactly like the production runtime (both call
    /// [`chorus::storage::meta::boot`]).
    pub fn load_for_start(&mut self, fresh_id: NodeId) -> Result<Persisted, DiskError> {
        meta::boot(&mut self.store, fresh_id)
    }

    /// Writes the ring state (not yet synced).
    pub fn write_ring(&mut self, ring: &RingState) -> Result<(), DiskError> {
        let bytes = meta::encode_ring(ring)?;
        self.store.put_meta_unsynced(META_RING, &bytes);
        Ok(())
    }

    /// Writes a generation the node reached by renewing its SWIM identity (not yet synced);
    /// never lowers the stored one.
    pub fn write_generation(&mut self, generation: u64) -> Result<(), DiskError> {
        let stored = match self.store.get_meta(META_GENERATION)? {
            Some(b) => b.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        if generation > stored {
            self.store
                .put_meta_unsynced(META_GENERATION, &generation.to_be_bytes());
        }
        Ok(())
    }

    /// Writes the completed-leave mark (not yet synced).
    pub fn write_left(&mut self) {
        self.store.put_meta_unsynced(META_LEFT, b"1");
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) {
        self.store.sync();
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

    fn ring() -> RingState {
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
        ring
    }

    #[test]
    fn generation_is_bumped_and_survives_crashes_with_the_synced_ring() {
        let mut disk = Disk::new();
        let first = disk.load_for_start(NodeId::new(7)).unwrap();
        assert_eq!((first.id, first.generation), (NodeId::new(7), 1));
        assert!(first.ring.is_empty());
        disk.write_ring(&ring()).unwrap();
        disk.sync();
        disk.crash();
        // A fresh id offered on restart is ignored: the persisted one wins.
        let second = disk.load_for_start(NodeId::new(99)).unwrap();
        assert_eq!((second.id, second.generation), (NodeId::new(7), 2));
        assert_eq!(second.ring, ring());
        assert_eq!(disk.ring().unwrap(), ring());
        assert!(!second.leave_complete);
    }

    #[test]
    fn writes_not_synced_are_lost_by_a_crash() {
        let mut disk = Disk::new();
        disk.load_for_start(NodeId::new(7)).unwrap();
        disk.write_ring(&ring()).unwrap();
        disk.write_generation(9).unwrap();
        disk.write_left();
        assert_eq!(disk.ring().unwrap(), ring(), "visible before the sync");
        disk.crash();
        let again = disk.load_for_start(NodeId::new(7)).unwrap();
        assert!(again.ring.is_empty());
        assert_eq!(again.generation, 2);
        assert!(!again.leave_complete);
    }
}
