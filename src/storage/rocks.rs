//! RocksDB-backed [`Store`]: one column family per [`Space`].
//!
//! A `RocksStore` is a cheap handle (an `Arc` around the database): the driver's storage thread
//! writes through one, the node core reads through another. A batch is one RocksDB
//! `WriteBatch`; with `sync` its WAL is fsynced before [`Store::write`] returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions, DB,
};

use super::{Entries, Page, ReadStore, Space, Store, StoreError, WriteBatch, WriteOp};

/// A node's RocksDB database.
#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path) -> Result<RocksStore, StoreError> {
        RocksStore::open_with_files(path, None)
    }

    /// [`RocksStore::open`], keeping at most `max_open_files` table files open at once (the
    /// node's share of its open-file limit; `None`: RocksDB's default, all of them).
    pub fn open_with_files(
        path: &Path,
        max_open_files: Option<u64>,
    ) -> Result<RocksStore, StoreError> {
        let mut opts = Options::default();
        if let Some(n) = max_open_files {
            opts.set_max_open_files(i32::try_from(n).unwrap_or(i32::MAX));
        }
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Two cores: one flush and one compaction at a time keep foreground latency steady.
        opts.set_max_background_jobs(2);
        let cfs = Space::ALL
            .iter()
            .map(|s| {
                let mut o = Options::default();
                if *s == Space::Data {
                    o.set_compression_type(DBCompressionType::Lz4);
                    o.set_bottommost_compression_type(DBCompressionType::Zstd);
                }
                ColumnFamilyDescriptor::new(s.name(), o)
            })
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| engine(path, e))?;
        Ok(RocksStore {
            db: Arc::new(db),
            path: Arc::new(path.to_path_buf()),
        })
    }

    fn cf(&self, space: Space) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Engine {
                path: self.path.display().to_string(),
                message: format!("column family {} missing", space.name()),
            })
    }
}

fn engine(path: &Path, e: rocksdb::Error) -> StoreError {
    StoreError::Engine {
        path: path.display().to_string(),
        message: e.into_string(),
    }
}

impl ReadStore for RocksStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(space)?, key)
            .map_err(|e| engine(&self.path, e))
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut ro = ReadOptions::default();
        if !to.is_empty() {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        let cf = self.cf(space)?;
        let iter = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| engine(&self.path, e))?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn scan_page(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<Page, StoreError> {
        let mut ro = ReadOptions::default();
        if !to.is_empty() {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        let cf = self.cf(space)?;
        let mut iter =
            self.db
                .iterator_cf_opt(cf, ro, IteratorMode::From(from, Direction::Forward));
        let (limit, mut bytes) = (limit.max(1), 0usize);
        let mut entries = Vec::new();
        // Stop reading once the page is full, by count or by bytes (an entry past the byte
        // budget is read, to know the range holds more, but not kept).
        let complete = loop {
            let Some(item) = iter.next() else {
                break true;
            };
            let (k, v) = item.map_err(|e| engine(&self.path, e))?;
            let size = k.len() + v.len();
            if entries.len() >= limit || (!entries.is_empty() && bytes + size > bytes_max) {
                break false;
            }
            bytes += size;
            entries.push((k.into_vec(), v.into_vec()));
        };
        Ok(Page { entries, complete })
    }
}

impl Store for RocksStore {
    fn write(&mut self, batch: &WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                WriteOp::Put { space, key, value } => wb.put_cf(self.cf(*space)?, key, value),
                WriteOp::Delete { space, key } => wb.delete_cf(self.cf(*space)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| engine(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::PartitionId;
    use crate::storage::{data_key, partition_range};

    #[test]
    fn bounded_scans_stop_at_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStore::open(&dir.path().join("db")).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..10 {
            b.put(Space::Data, format!("k{i}").into_bytes(), vec![7; 100]);
        }
        s.write(&b, true).unwrap();
        crate::storage::tests::check_scan_pages(&s);
    }

    #[test]
    fn metadata_and_data_survive_reopen_and_scans_stay_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let p = PartitionId::new(9);
        {
            let mut s = RocksStore::open(&path).unwrap();
            s.put_meta("generation", b"7").unwrap();
            let mut b = WriteBatch::new();
            b.put(Space::Data, data_key(p, b"k1"), b"v1".to_vec());
            b.put(Space::Data, data_key(p, b"k2"), b"v2".to_vec());
            b.put(
                Space::Data,
                data_key(PartitionId::new(10), b"x"),
                b"x".to_vec(),
            );
            b.put(Space::Hints, b"h".to_vec(), b"hint".to_vec());
            s.write(&b, true).unwrap();
            let mut b = WriteBatch::new();
            b.delete(Space::Data, data_key(p, b"k2"));
            s.write(&b, true).unwrap();
        }
        let s = RocksStore::open(&path).unwrap();
        assert_eq!(
            s.get_meta("generation").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        let (from, to) = partition_range(p);
        let got = s.scan(Space::Data, &from, &to, 100).unwrap();
        assert_eq!(got, vec![(data_key(p, b"k1"), b"v1".to_vec())]);
        assert_eq!(s.scan(Space::Hints, &[], &[], 100).unwrap().len(), 1);
        assert_eq!(
            s.get(Space::Meta, b"h").unwrap(),
            None,
            "spaces are separate"
        );
    }
}
