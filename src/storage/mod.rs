//! Storage: the [`Store`] trait and its implementations.
//!
//! The node core never touches a disk; its drivers persist what it asks them to through a
//! `Store`. Two implementations: [`MemoryStore`] (simulator and tests; it can model a crash by
//! dropping writes that were not synced) and, with the `server` feature, [`RocksStore`]
//! (RocksDB, for real nodes). Today the store holds node metadata (id, generation, ring state);
//! the replicated key-value data will live beside it in its own column family.

use std::collections::BTreeMap;

pub mod meta;
#[cfg(feature = "server")]
mod rocks;

#[cfg(feature = "server")]
pub use rocks::RocksStore;

/// Why a storage operation failed. A failed write may or may not have reached the disk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine reported an error.
    #[error("storage engine error at {path}: {message}")]
    Engine {
        /// The database directory.
        path: String,
        /// What the engine said.
        message: String,
    },
}

/// Durable storage for one node.
pub trait Store {
    /// Reads a metadata value.
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a metadata value and syncs it to stable storage before returning.
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// An in-memory store with crash semantics: [`MemoryStore::crash`] keeps only synced writes.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    synced: BTreeMap<String, Vec<u8>>,
    unsynced: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a metadata value without syncing it: it is visible at once, but a crash before
    /// the next [`MemoryStore::sync`] loses it (what a driver's write-then-fsync goes through).
    pub fn put_meta_unsynced(&mut self, key: &str, value: &[u8]) {
        self.unsynced.insert(key.to_owned(), value.to_vec());
    }

    /// Makes every unsynced write durable (an fsync).
    pub fn sync(&mut self) {
        let unsynced = std::mem::take(&mut self.unsynced);
        self.synced.extend(unsynced);
    }

    /// Whether some write would be lost by a crash now.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// What survives a crash: the synced state, with every unsynced write lost.
    pub fn crash(&self) -> MemoryStore {
        MemoryStore {
            synced: self.synced.clone(),
            unsynced: BTreeMap::new(),
        }
    }
}

impl Store for MemoryStore {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .unsynced
            .get(key)
            .or_else(|| self.synced.get(key))
            .cloned())
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        // Metadata writes are synced: they go straight to the durable map.
        self.unsynced.remove(key);
        self.synced.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_metadata_survives_a_crash() {
        let mut s = MemoryStore::new();
        s.put_meta("node_id", b"abc").unwrap();
        let after = s.crash();
        assert_eq!(
            after.get_meta("node_id").unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(after.get_meta("missing").unwrap(), None);
    }

    #[test]
    fn unsynced_writes_are_visible_but_lost_by_a_crash_until_synced() {
        let mut s = MemoryStore::new();
        s.put_meta("a", b"1").unwrap();
        s.put_meta_unsynced("a", b"2");
        s.put_meta_unsynced("b", b"3");
        assert!(s.has_unsynced());
        assert_eq!(s.get_meta("a").unwrap().as_deref(), Some(&b"2"[..]));
        let crashed = s.crash();
        assert_eq!(crashed.get_meta("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(crashed.get_meta("b").unwrap(), None);
        s.sync();
        assert!(!s.has_unsynced());
        let crashed = s.crash();
        assert_eq!(crashed.get_meta("a").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(crashed.get_meta("b").unwrap().as_deref(), Some(&b"3"[..]));
    }
}
