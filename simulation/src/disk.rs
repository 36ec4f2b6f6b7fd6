//! One node's simulated disk and the metadata a driver keeps on it.
//!
//! The disk is the core's [`MemoryStore`]: synced writes survive [`Disk::crash`], unsynced ones
//! are lost. On it the simulated driver keeps exactly what the production runtime keeps, under
//! the same keys and encodings: the node id, the generation (starts so far, bumped and synced at
//! every start) and the ring state (rewritten on every [`chorus::node::Output::PersistRing`]).
//! This module does not interpret the ring state; it only stores and loads it.

use chorus::membership::RingState;
use chorus::protocol;
use chorus::storage::{MemoryStore, Store, StoreError};
use chorus::NodeId;

/// Metadata key of the node id (16 hex digits, as text).
pub const META_NODE_ID: &str = "node_id";
/// Metadata key of the generation (big-endian `u64`).
pub const META_GENERATION: &str = "generation";
/// Metadata key of the ring state (the wire encoding of [`RingState`]).
pub const META_RING: &str = "ring";

/// Why the metadata on a disk could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A metadata value is unreadable.
    #[error("corrupt metadata {key:?}: {reason}")]
    Corrupt {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What a starting node loads from its disk.
#[derive(Debug, Clone)]
pub struct Persisted {
    /// The node's id (created on first start).
    pub id: NodeId,
    /// The generation of this start (previous + 1, already synced).
    pub generation: u64,
    /// The ring state as last persisted (empty on first start).
    pub ring: RingState,
}

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
    /// bumping the generation, like the production runtime.
    pub fn load_for_start(&mut self, fresh_id: NodeId) -> Result<Persisted, DiskError> {
        let corrupt = |key, reason: String| DiskError::Corrupt { key, reason };
        let id = match self.store.get_meta(META_NODE_ID)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|e| corrupt(META_NODE_ID, e.to_string()))?;
                text.parse::<NodeId>()
                    .map_err(|e| corrupt(META_NODE_ID, e.to_string()))?
            }
            None => {
                self.store.put_meta(META_NODE_ID, fresh_id.to_string().as_bytes())?;
                fresh_id
            }
        };
        let previous = match self.store.get_meta(META_GENERATION)? {
            Some(bytes) => {
                let raw: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(META_GENERATION, format!("{} bytes, expected 8", bytes.len())))?;
                u64::from_be_bytes(raw)
            }
            None => 0,
        };
        let generation = previous + 1;
        self.store.put_meta(META_GENERATION, &generation.to_be_bytes())?;
        let ring = match self.store.get_meta(META_RING)? {
            Some(bytes) => protocol::decode::<RingState>(&bytes)
                .map_err(|e| corrupt(META_RING, e.to_string()))?,
            None => RingState::new(),
        };
        Ok(Persisted { id, generation, ring })
    }

    /// Persists the ring state (a synced metadata write).
    pub fn persist_ring(&mut self, ring: &RingState) -> Result<(), DiskError> {
        let bytes = protocol::encode(ring).map_err(|e| DiskError::Corrupt {
            key: META_RING,
            reason: e.to_string(),
        })?;
        self.store.put_meta(META_RING, &bytes)?;
        Ok(())
    }

    /// The ring state on disk (empty if none was persisted).
    pub fn ring(&self) -> Result<RingState, DiskError> {
        match self.store.get_meta(META_RING)? {
            Some(bytes) => protocol::decode::<RingState>(&bytes).map_err(|e| DiskError::Corrupt {
                key: META_RING,
                reason: e.to_string(),
            }),
            None => Ok(RingState::new()),
        }
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
                info: NodeInfo { quic_addr: addr, http_addr: addr },
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
