//! One node's simulated disk and the metadata a driver keeps on it.
//!
//! The disk is the core's [`SharedMemoryStore`]: the node reads it directly (as it reads RocksDB
//! in production), the simulated driver writes, syncs and crashes it. A write is visible at once
//! but lost by a crash until it is synced, and a sync takes simulated time (the cluster
//! schedules it). On it the driver keeps exactly what the production runtime keeps, under the
//! same keys and encodings: the node id, the generation (bumped and synced at every start), the
//! ring state, the completed-leave mark, and the data and hints the node stages. This module
//! interprets none of it.

use std::collections::BTreeMap;

use chorus::membership::RingState;
use chorus::merkle::{leaf, Digest, Tree};
use chorus::node::Object;
use chorus::ring::PartitionId;
use chorus::storage::{
    meta, split_data_key, MemoryStore, ReadStore, SharedMemoryStore, Space, Store, WriteBatch,
};
use chorus::NodeId;

pub use chorus::storage::meta::{
    BootInfo as Persisted, MetaError as DiskError, META_GENERATION, META_LEFT, META_NODE_ID,
    META_RING,
};

/// A node's disk.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    store: SharedMemoryStore,
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

    /// A handle the node core reads through.
    pub fn handle(&self) -> SharedMemoryStore {
        self.store.clone()
    }

    /// Writes the ring state (not yet synced).
    pub fn write_ring(&mut self, ring: &RingState) -> Result<(), DiskError> {
        let bytes = meta::encode_ring(ring)?;
        self.store.lock().put_meta_unsynced(META_RING, &bytes);
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
                .lock()
                .put_meta_unsynced(META_GENERATION, &generation.to_be_bytes());
        }
        Ok(())
    }

    /// Writes the completed-leave mark (not yet synced).
    pub fn write_left(&mut self) {
        self.store.lock().put_meta_unsynced(META_LEFT, b"1");
    }

    /// Writes a batch the node staged (not yet synced).
    pub fn write_batch(&mut self, batch: &WriteBatch) {
        self.store.lock().write_unsynced(batch);
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) {
        self.store.lock().sync();
    }

    /// The ring state on disk (empty if none was persisted).
    pub fn ring(&self) -> Result<RingState, DiskError> {
        meta::load_ring(&self.store)
    }

    /// The process died: every write that was not synced is lost.
    pub fn crash(&mut self) {
        let mut s = self.store.lock();
        let survived: MemoryStore = s.crash();
        *s = survived;
    }

    /// Every object in the data space, by user key (for checkers).
    pub fn objects(&self) -> Vec<(Vec<u8>, Object)> {
        let entries = self
            .store
            .scan(Space::Data, &[], &[], usize::MAX)
            .unwrap_or_default();
        entries
            .into_iter()
            .filter_map(|(k, v)| {
                let (_, key) = split_data_key(&k)?;
                Some((key.to_vec(), Object::decode(&v).ok()?))
            })
            .collect()
    }

    /// What this disk holds of each user key: its data object merged with the states of the
    /// hints it keeps for other nodes (for judging what an operator's removal loses).
    pub fn holdings(&self) -> BTreeMap<Vec<u8>, Object> {
        let mut out: BTreeMap<Vec<u8>, Object> = self.objects().into_iter().collect();
        let hints = self
            .store
            .scan(Space::Hints, &[], &[], usize::MAX)
            .unwrap_or_default();
        for (_, v) in hints {
            let Some((key, object)) = chorus::node::hints::stored_hint_object(&v) else {
                continue;
            };
            match out.get_mut(&key) {
                // (A state of another type merges into a contested one, keeping both.)
                Some(held) => {
                    held.merge(&object);
                }
                None => {
                    out.insert(key, object);
                }
            }
        }
        out
    }

    /// The Merkle root of each non-empty partition, computed from the stored bytes.
    pub fn merkle_roots(&self) -> BTreeMap<PartitionId, Digest> {
        let entries = self
            .store
            .scan(Space::Data, &[], &[], usize::MAX)
            .unwrap_or_default();
        let mut trees: BTreeMap<PartitionId, Tree> = BTreeMap::new();
        for (k, v) in entries {
            if let Some((p, key)) = split_data_key(&k) {
                trees.entry(p).or_default().insert(key, leaf(key, &v));
            }
        }
        trees
            .into_iter()
            .map(|(p, mut t)| (p, t.root()))
            .filter(|(_, r)| *r != Digest::ZERO)
            .collect()
    }

    /// Number of hints on the disk.
    pub fn hints(&self) -> usize {
        self.store.lock().count(Space::Hints)
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
    fn writes_not_synced_are_lost_by_a_crash_and_the_handle_sees_it() {
        let mut disk = Disk::new();
        disk.load_for_start(NodeId::new(7)).unwrap();
        let handle = disk.handle();
        disk.write_ring(&ring()).unwrap();
        disk.write_generation(9).unwrap();
        disk.write_left();
        let mut b = WriteBatch::new();
        b.put(Space::Hints, b"h".to_vec(), b"x".to_vec());
        disk.write_batch(&b);
        assert_eq!(disk.ring().unwrap(), ring(), "visible before the sync");
        assert_eq!(disk.hints(), 1);
        disk.crash();
        assert_eq!(handle.get(Space::Hints, b"h").unwrap(), None);
        let again = disk.load_for_start(NodeId::new(7)).unwrap();
        assert!(again.ring.is_empty());
        assert_eq!(again.generation, 2);
        assert!(!again.leave_complete);
    }
}
