//! RocksDB-backed [`Store`].

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

use super::{Store, StoreError};

/// Column family for node metadata.
const CF_META: &str = "meta";

/// A node's RocksDB database.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path) -> Result<RocksStore, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = vec![ColumnFamilyDescriptor::new(CF_META, Options::default())];
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| engine(path, e))?;
        Ok(RocksStore {
            db,
            path: path.to_path_buf(),
        })
    }

    fn meta(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(CF_META)
            .ok_or_else(|| StoreError::Engine {
                path: self.path.display().to_string(),
                message: format!("column family {CF_META} missing"),
            })
    }
}

fn engine(path: &Path, e: rocksdb::Error) -> StoreError {
    StoreError::Engine {
        path: path.display().to_string(),
        message: e.into_string(),
    }
}

impl Store for RocksStore {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.meta()?, key)
            .map_err(|e| engine(&self.path, e))
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.meta()?, key, value, &wo)
            .map_err(|e| engine(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("chorus-rocks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = RocksStore::open(&dir).unwrap();
            s.put_meta("generation", b"7").unwrap();
        }
        let s = RocksStore::open(&dir).unwrap();
        assert_eq!(
            s.get_meta("generation").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
