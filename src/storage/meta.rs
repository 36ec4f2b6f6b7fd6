//! Node metadata on a [`Store`]: the node id, the generation and the ring state, under fixed
//! keys and encodings. Both drivers (the runtime and the simulator) boot through [`boot`], so a
//! simulated restart reads exactly what a real one does.

use super::{Store, StoreError};
use crate::id::NodeId;
use crate::membership::RingState;
use crate::protocol;

/// Key of the node id (16 hex digits, as text).
pub const META_NODE_ID: &str = "node_id";
/// Key of the generation (big-endian `u64`).
pub const META_GENERATION: &str = "generation";
/// Key of the ring state (the wire encoding of [`RingState`]).
pub const META_RING: &str = "ring";
/// Key present once the node's leave completed (a majority confirmed it): the data directory
/// must never start a node again.
pub const META_LEFT: &str = "left";

/// Why metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value is unreadable; nothing was changed.
    #[error("corrupt metadata {key:?}: {reason}")]
    Corrupt {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What a starting node loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The node's id (created on first start).
    pub id: NodeId,
    /// This start's generation: one more than any generation stored before (synced).
    pub generation: u64,
    /// The ring state as last persisted (empty on first start).
    pub ring: RingState,
    /// Whether the node's leave completed ([`persist_left`]).
    pub leave_complete: bool,
}

/// Loads the metadata for a start: creates the id (`fresh_id`) on first start, bumps and syncs
/// the generation, and reads the persisted ring state.
pub fn boot<S: Store + ?Sized>(store: &mut S, fresh_id: NodeId) -> Result<BootInfo, MetaError> {
    let corrupt = |key, reason: String| MetaError::Corrupt { key, reason };
    let id = match store.get_meta(META_NODE_ID)? {
        Some(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|e| corrupt(META_NODE_ID, e.to_string()))?;
            text.parse::<NodeId>()
                .map_err(|e| corrupt(META_NODE_ID, e.to_string()))?
        }
        None => {
            store.put_meta(META_NODE_ID, fresh_id.to_string().as_bytes())?;
            fresh_id
        }
    };
    let generation = stored_generation(store)?
        .checked_add(1)
        .ok_or_else(|| corrupt(META_GENERATION, "the generation is at its maximum".into()))?;
    store.put_meta(META_GENERATION, &generation.to_be_bytes())?;
    Ok(BootInfo {
        id,
        generation,
        ring: load_ring(store)?,
        leave_complete: store.get_meta(META_LEFT)?.is_some(),
    })
}

fn stored_generation<S: Store + ?Sized>(store: &S) -> Result<u64, MetaError> {
    match store.get_meta(META_GENERATION)? {
        Some(bytes) => {
            let raw: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| MetaError::Corrupt {
                    key: META_GENERATION,
                    reason: format!("{} bytes, expected 8", bytes.len()),
                })?;
            Ok(u64::from_be_bytes(raw))
        }
        None => Ok(0),
    }
}

/// Records a generation the node reached while running (SWIM renewed its identity), so the
/// next start goes beyond it. Never lowers the stored generation.
pub fn persist_generation<S: Store + ?Sized>(
    store: &mut S,
    generation: u64,
) -> Result<(), MetaError> {
    if generation > stored_generation(store)? {
        store.put_meta(META_GENERATION, &generation.to_be_bytes())?;
    }
    Ok(())
}

/// Persists the ring state (a synced write).
pub fn persist_ring<S: Store + ?Sized>(store: &mut S, ring: &RingState) -> Result<(), MetaError> {
    let bytes = encode_ring(ring)?;
    store.put_meta(META_RING, &bytes)?;
    Ok(())
}

/// Records that the node's leave completed (a synced write): no start from this store again.
pub fn persist_left<S: Store + ?Sized>(store: &mut S) -> Result<(), MetaError> {
    store.put_meta(META_LEFT, b"1")?;
    Ok(())
}

/// The wire encoding of a ring state as it is stored under [`META_RING`].
pub fn encode_ring(ring: &RingState) -> Result<Vec<u8>, MetaError> {
    protocol::encode(ring).map_err(|e| MetaError::Corrupt {
        key: META_RING,
        reason: e.to_string(),
    })
}

/// The persisted ring state (empty if none).
pub fn load_ring<S: Store + ?Sized>(store: &S) -> Result<RingState, MetaError> {
    match store.get_meta(META_RING)? {
        Some(bytes) => protocol::decode::<RingState>(&bytes).map_err(|e| MetaError::Corrupt {
            key: META_RING,
            reason: e.to_string(),
        }),
        None => Ok(RingState::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[test]
    fn boot_creates_the_id_once_and_bumps_the_generation() {
        let mut s = MemoryStore::new();
        let first = boot(&mut s, NodeId::new(7)).unwrap();
        assert_eq!((first.id, first.generation), (NodeId::new(7), 1));
        let mut s = s.crash();
        let second = boot(&mut s, NodeId::new(99)).unwrap();
        assert_eq!((second.id, second.generation), (NodeId::new(7), 2));
        assert!(!second.leave_complete);
        persist_generation(&mut s, 5).unwrap();
        persist_generation(&mut s, 3).unwrap();
        assert_eq!(boot(&mut s, NodeId::new(1)).unwrap().generation, 6);
        persist_left(&mut s).unwrap();
        assert!(boot(&mut s, NodeId::new(1)).unwrap().leave_complete);
    }

    #[test]
    fn corrupt_metadata_is_reported_not_used() {
        let mut s = MemoryStore::new();
        s.put_meta(META_GENERATION, b"xyz").unwrap();
        let err = boot(&mut s, NodeId::new(1)).unwrap_err();
        assert!(err.to_string().contains("generation"), "{err}");
        let mut s = MemoryStore::new();
        s.put_meta(META_RING, b"junk").unwrap();
        assert!(matches!(
            boot(&mut s, NodeId::new(1)),
            Err(MetaError::Corrupt { key: META_RING, .. })
        ));
    }

    /// Found while extending the `stored_state` fuzz target to the metadata a start reads: a
    /// stored generation of `u64::MAX` wrapped to 0 at the next start (a panic with overflow
    /// checks), and a node at generation 0 loses to its own earlier incarnation everywhere.
    /// It is refused as corrupt, and the store is left as it was.
    #[test]
    fn a_generation_at_its_maximum_is_corrupt_not_wrapped() {
        let mut s = MemoryStore::new();
        s.put_meta(META_NODE_ID, NodeId::new(7).to_string().as_bytes())
            .unwrap();
        s.put_meta(META_GENERATION, &u64::MAX.to_be_bytes())
            .unwrap();
        assert!(matches!(
            boot(&mut s, NodeId::new(1)),
            Err(MetaError::Corrupt {
                key: META_GENERATION,
                ..
            })
        ));
        assert_eq!(
            s.get_meta(META_GENERATION).unwrap(),
            Some(u64::MAX.to_be_bytes().to_vec())
        );
        s.put_meta(META_GENERATION, &(u64::MAX - 1).to_be_bytes())
            .unwrap();
        assert_eq!(boot(&mut s, NodeId::new(1)).unwrap().generation, u64::MAX);
    }
}
