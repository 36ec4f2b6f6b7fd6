//! Storage: the [`Store`] trait and its implementations.
//!
//! The node core never writes to a disk: it stages [`WriteBatch`]es and its driver commits them
//! (in groups, one sync for many batches) and reports when they are durable. The core may read
//! through a [`ReadStore`] handle synchronously (reads are served from memory in the common
//! case). Two implementations: [`MemoryStore`] (simulator and tests; a crash drops every write
//! that was not synced) and, with the `server` feature, [`RocksStore`] (RocksDB, for real
//! nodes).
//!
//! A store has three key spaces ([`Space`]), column families in RocksDB: `meta` (node id,
//! generation, ring state), `data` (one replicated object per key, keyed by [`data_key`]) and
//! `hints` (writes held for a down replica, keyed by [`hint_key`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::id::NodeId;
use crate::ring::PartitionId;

pub mod meta;
#[cfg(feature = "server")]
mod rocks;

#[cfg(feature = "server")]
pub use rocks::RocksStore;

/// Why a storage operation failed. A failed write may or may not have reached the disk.
#[derive(Debug, Clone, thiserror::Error)]
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

/// A key space of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Node metadata (id, generation, ring state).
    Meta,
    /// Replicated objects, one per key, keyed by [`data_key`].
    Data,
    /// Hints held for down replicas, keyed by [`hint_key`].
    Hints,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 3] = [Space::Meta, Space::Data, Space::Hints];

    /// The column family name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Data => "data",
            Space::Hints => "hints",
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// The key space.
        space: Space,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key space.
        space: Space,
        /// The key.
        key: Vec<u8>,
    },
}

/// Writes applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { space, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { space, key });
    }

    /// Appends every write of `other`.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// The writes, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values in the batch.
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
            })
            .sum()
    }
}

/// The storage key of user key `key` in partition `p`: the partition (2 bytes, big-endian) then
/// the key, so a partition's keys are one contiguous range.
pub fn data_key(p: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&p.get().to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The range of storage keys of partition `p`: `[start, end)` (`end` empty: to the end).
pub fn partition_range(p: PartitionId) -> (Vec<u8>, Vec<u8>) {
    let start = p.get().to_be_bytes().to_vec();
    let end = match p.get().checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => Vec::new(),
    };
    (start, end)
}

/// Splits a storage key into its partition and user key.
pub fn split_data_key(k: &[u8]) -> Option<(PartitionId, &[u8])> {
    let (p, key) = k.split_first_chunk::<2>()?;
    Some((PartitionId::new(u16::from_be_bytes(*p)), key))
}

/// The storage key of hint number `seq` held for node `target`.
pub fn hint_key(target: NodeId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&target.get().to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a hint's storage key into its target and number.
pub fn split_hint_key(k: &[u8]) -> Option<(NodeId, u64)> {
    let (t, s) = k.split_first_chunk::<8>()?;
    let s: [u8; 8] = s.try_into().ok()?;
    Some((NodeId::new(u64::from_be_bytes(*t)), u64::from_be_bytes(s)))
}

/// Entries of a scan: (key, value) pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Most bytes (keys and values) one bounded scan of the core returns: with 1 MiB values a
/// page of thousands of keys would otherwise be gigabytes read on the node's core task.
pub const SCAN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A bounded scan's answer ([`ReadStore::scan_page`]).
#[derive(Debug, Default)]
pub struct Page {
    /// Entries in key order: at most the scan's limit, and no more bytes than its budget
    /// (but always the first entry, however large).
    pub entries: Entries,
    /// Whether the range holds nothing past these entries.
    pub complete: bool,
}

impl Page {
    /// The storage key just past the last entry (where the next page starts), if the range
    /// holds more.
    pub fn next_from(&self) -> Option<Vec<u8>> {
        if self.complete {
            return None;
        }
        self.entries.last().map(|(k, _)| {
            let mut next = k.clone();
            next.push(0);
            next
        })
    }
}

/// Cuts `entries` (which the caller read with one entry beyond `limit`) to at most `limit`
/// entries and `bytes_max` bytes, keeping the first; says whether nothing was cut.
fn cut(entries: &mut Entries, limit: usize, bytes_max: usize) -> bool {
    let mut bytes = 0usize;
    let keep = entries
        .iter()
        .position(|(k, v)| {
            bytes += k.len() + v.len();
            bytes > bytes_max
        })
        .map_or(entries.len(), |i| i.max(1))
        .min(limit.max(1));
    let complete = keep == entries.len();
    entries.truncate(keep);
    complete
}

/// Read access to a store, for the node core. Reads see every write handed to the store, durable
/// or not.
pub trait ReadStore: Send {
    /// The value of `key` in `space`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries of `space` with keys in `[from, to)` (`to` empty: no upper bound),
    /// in key order.
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError>;

    /// Like [`ReadStore::scan`], but also bounded by `bytes_max` bytes of keys and values (the
    /// first entry always comes, however large), saying whether the range holds more. What
    /// the core scans on its own task goes through this. Stores that read from disk should
    /// stop reading at the budget; the default reads one entry past `limit` and cuts.
    fn scan_page(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<Page, StoreError> {
        let mut entries = self.scan(space, from, to, limit.max(1).saturating_add(1))?;
        let complete = cut(&mut entries, limit, bytes_max);
        Ok(Page { entries, complete })
    }
}

/// Durable storage for one node: what drivers write through.
pub trait Store: ReadStore {
    /// Reads a metadata value.
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Space::Meta, key.as_bytes())
    }

    /// Writes a metadata value and syncs it to stable storage before returning.
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut b = WriteBatch::new();
        b.put(Space::Meta, key.as_bytes().to_vec(), value.to_vec());
        self.write(&b, true)
    }

    /// Applies `batch` atomically; with `sync`, it is on stable storage when this returns.
    fn write(&mut self, batch: &WriteBatch, sync: bool) -> Result<(), StoreError>;
}

type Synced = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

/// An in-memory store with crash semantics: writes are visible at once, and
/// [`MemoryStore::crash`] keeps only what was synced.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    synced: Synced,
    /// Writes since the last sync, in order (`None`: a delete).
    unsynced: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a metadata value without syncing it: it is visible at once, but a crash before
    /// the next [`MemoryStore::sync`] loses it (what a driver's write-then-fsync goes through).
    pub fn put_meta_unsynced(&mut self, key: &str, value: &[u8]) {
        self.unsynced
            .insert((Space::Meta, key.as_bytes().to_vec()), Some(value.to_vec()));
    }

    /// Applies a batch without syncing it.
    pub fn write_unsynced(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                WriteOp::Put { space, key, value } => {
                    self.unsynced
                        .insert((*space, key.clone()), Some(value.clone()));
                }
                WriteOp::Delete { space, key } => {
                    self.unsynced.insert((*space, key.clone()), None);
                }
            }
        }
    }

    /// Makes every unsynced write durable (an fsync).
    pub fn sync(&mut self) {
        for (k, v) in std::mem::take(&mut self.unsynced) {
            match v {
                Some(v) => {
                    self.synced.insert(k, v);
                }
                None => {
                    self.synced.remove(&k);
                }
            }
        }
    }

    /// Whether some write would be lost by a crash now.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// The value of `key` in `space` that a crash now would keep (what is synced), for
    /// checkers that judge what a node acknowledged.
    pub fn get_durable(&self, space: Space, key: &[u8]) -> Option<&[u8]> {
        self.synced.get(&(space, key.to_vec())).map(Vec::as_slice)
    }

    /// The synced entries of `space` whose keys start with `prefix` (see
    /// [`MemoryStore::get_durable`]).
    pub fn durable_with_prefix<'a>(
        &'a self,
        space: Space,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.synced
            .range((space, prefix.to_vec())..)
            .take_while(move |((s, k), _)| *s == space && k.starts_with(prefix))
            .map(|((_, k), v)| (k.as_slice(), v.as_slice()))
    }

    /// What survives a crash: the synced state, with every unsynced write lost.
    pub fn crash(&self) -> MemoryStore {
        MemoryStore {
            synced: self.synced.clone(),
            unsynced: BTreeMap::new(),
        }
    }

    /// Number of keys in `space` (durable or not).
    pub fn count(&self, space: Space) -> usize {
        self.scan(space, &[], &[], usize::MAX)
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

impl ReadStore for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = (space, key.to_vec());
        Ok(match self.unsynced.get(&k) {
            Some(v) => v.clone(),
            None => self.synced.get(&k).cloned(),
        })
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        use std::ops::Bound;
        if !to.is_empty() && from >= to {
            // An empty range, as RocksDB answers it.
            return Ok(Vec::new());
        }
        let lo = Bound::Included((space, from.to_vec()));
        let hi = if to.is_empty() {
            match Space::ALL.iter().position(|&s| s == space) {
                Some(i) if i + 1 < Space::ALL.len() => {
                    Bound::Excluded((Space::ALL[i + 1], Vec::new()))
                }
                _ => Bound::Unbounded,
            }
        } else {
            Bound::Excluded((space, to.to_vec()))
        };
        let mut merged: BTreeMap<&[u8], Option<&Vec<u8>>> = BTreeMap::new();
        for ((_, k), v) in self.synced.range((lo.clone(), hi.clone())) {
            merged.insert(k, Some(v));
        }
        for ((_, k), v) in self.unsynced.range((lo, hi)) {
            merged.insert(k, v.as_ref());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_vec(), v.clone())))
            .take(limit)
            .collect())
    }
}

impl Store for MemoryStore {
    fn write(&mut self, batch: &WriteBatch, sync: bool) -> Result<(), StoreError> {
        self.write_unsynced(batch);
        if sync {
            self.sync();
        }
        Ok(())
    }
}

/// A [`MemoryStore`] shared between a driver (which writes, syncs and crashes it) and the node
/// core (which reads it): the simulator's disk.
#[derive(Debug, Default, Clone)]
pub struct SharedMemoryStore {
    inner: Arc<Mutex<MemoryStore>>,
}

impl SharedMemoryStore {
    /// An empty shared store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store, locked (never contended: one driver thread uses it).
    pub fn lock(&self) -> MutexGuard<'_, MemoryStore> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadStore for SharedMemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.lock().get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.lock().scan(space, from, to, limit)
    }
}

impl Store for SharedMemoryStore {
    fn write(&mut self, batch: &WriteBatch, sync: bool) -> Result<(), StoreError> {
        self.lock().write(batch, sync)
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// The checks every store's bounded scan must pass: pages bounded by count and bytes,
    /// the first entry always, `complete` exactly when nothing is left, paging reaches all.
    pub(crate) fn check_scan_pages(s: &dyn ReadStore) {
        // Keys k0..k9 of 100-byte values were put in Space::Data by the caller.
        let p = s.scan_page(Space::Data, b"k", b"l", 3, usize::MAX).unwrap();
        assert_eq!((p.entries.len(), p.complete), (3, false));
        let p = s.scan_page(Space::Data, b"k", b"l", 100, 250).unwrap();
        assert_eq!(
            (p.entries.len(), p.complete),
            (2, false),
            "two of ~102 bytes fit 250"
        );
        let p = s.scan_page(Space::Data, b"k", b"l", 100, 1).unwrap();
        assert_eq!(
            (p.entries.len(), p.complete),
            (1, false),
            "the first always comes"
        );
        let p = s
            .scan_page(Space::Data, b"k", b"l", 10, usize::MAX)
            .unwrap();
        assert_eq!(
            (p.entries.len(), p.complete),
            (10, true),
            "exactly all: complete"
        );
        let p = s.scan_page(Space::Data, b"k9", b"l", 100, 1).unwrap();
        assert_eq!((p.entries.len(), p.complete), (1, true));
        // Paging by bytes visits every key once.
        let (mut from, mut seen) = (b"k".to_vec(), Vec::new());
        loop {
            let page = s.scan_page(Space::Data, &from, b"l", 100, 300).unwrap();
            seen.extend(page.entries.iter().map(|(k, _)| k.clone()));
            match page.next_from() {
                Some(n) => from = n,
                None => break,
            }
        }
        let want: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn bounded_scans_of_the_memory_store() {
        let mut s = MemoryStore::new();
        let mut b = WriteBatch::new();
        for i in 0..10 {
            b.put(Space::Data, format!("k{i}").into_bytes(), vec![7; 100]);
        }
        s.write(&b, true).unwrap();
        check_scan_pages(&s);
    }

    #[test]
    fn scans_see_unsynced_puts_and_deletes_within_their_space_and_range() {
        let mut s = MemoryStore::new();
        let p = PartitionId::new(3);
        let mut b = WriteBatch::new();
        for k in [&b"a"[..], b"b", b"c"] {
            b.put(Space::Data, data_key(p, k), k.to_vec());
        }
        b.put(
            Space::Data,
            data_key(PartitionId::new(4), b"z"),
            b"z".to_vec(),
        );
        b.put(Space::Hints, hint_key(NodeId::new(1), 1), b"h".to_vec());
        s.write(&b, true).unwrap();
        let mut b = WriteBatch::new();
        b.delete(Space::Data, data_key(p, b"b"));
        b.put(Space::Data, data_key(p, b"d"), b"d".to_vec());
        s.write_unsynced(&b);
        let (from, to) = partition_range(p);
        let keys: Vec<Vec<u8>> = s
            .scan(Space::Data, &from, &to, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| split_data_key(&k).unwrap().1.to_vec())
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(s.scan(Space::Data, &from, &to, 2).unwrap().len(), 2);
        assert_eq!(s.count(Space::Data), 4);
        assert_eq!(s.count(Space::Hints), 1);
        let crashed = s.crash();
        assert_eq!(crashed.count(Space::Data), 4, "a b c z");
        assert!(crashed
            .get(Space::Data, &data_key(p, b"d"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn keys_round_trip() {
        let p = PartitionId::new(0x1234);
        let k = data_key(p, b"hello");
        assert_eq!(split_data_key(&k), Some((p, &b"hello"[..])));
        let (from, to) = partition_range(p);
        assert!(from.as_slice() <= k.as_slice() && k.as_slice() < to.as_slice());
        assert_eq!(
            partition_range(PartitionId::new(u16::MAX)).1,
            Vec::<u8>::new()
        );
        let h = hint_key(NodeId::new(7), 9);
        assert_eq!(split_hint_key(&h), Some((NodeId::new(7), 9)));
        assert_eq!(split_hint_key(b"short"), None);
    }
}
