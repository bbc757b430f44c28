//! The sled database under --data-dir, shared by the store and the outboxes, and reopened
//! after an I/O error: sled refuses every write after one (a full disk, say) until it is
//! opened again. Users take tree handles per operation, so a reopen can release the file.

use super::StoreError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One write to a tree: key, and the value (None: remove). Stages that write to the same
/// transaction hand these to its owner.
pub type TreeOp = (Vec<u8>, Option<Vec<u8>>);

/// Applies tree writes as one batch (atomic for the tree).
pub fn apply_ops(tree: &sled::Tree, ops: Vec<TreeOp>) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    for (k, v) in ops {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    tree.apply_batch(batch)
}

/// A shared handle to the current sled database.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cache_bytes: u64,
    /// None between dropping a failed database and opening it again.
    db: RwLock<Option<sled::Db>>,
}

fn unavailable() -> sled::Error {
    sled::Error::Io(std::io::Error::other(
        "history store is being reopened after an I/O error",
    ))
}

impl Database {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = open(dir, cache_bytes).map_err(|source| StoreError::Open {
            dir: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                cache_bytes,
                db: RwLock::new(Some(db)),
            }),
        })
    }

    fn current(&self) -> Result<sled::Db, sled::Error> {
        let guard = self.inner.db.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(unavailable)
    }

    /// A tree of the current database; hold it only for the operation at hand.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, sled::Error> {
        self.current()?.open_tree(name)
    }

    /// Removes a tree; true if it existed.
    pub fn drop_tree(&self, name: &str) -> Result<bool, sled::Error> {
        self.current()?.drop_tree(name)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.current()?.flush().map(|_| ())
    }

    pub async fn flush_async(&self) -> Result<(), sled::Error> {
        self.current()?.flush_async().await.map(|_| ())
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.current().and_then(|db| db.size_on_disk()).unwrap_or(0)
    }

    /// Drops the current database and opens the directory again (blocking). A tree handle
    /// still in use elsewhere keeps the old one and its file lock alive for a moment, so the
    /// open is retried briefly; on failure the caller tries again later.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        drop(guard.take());
        let mut last = unavailable();
        for _ in 0..40 {
            match open(&self.inner.dir, self.inner.cache_bytes) {
                Ok(db) => {
                    *guard = Some(db);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(StoreError::Io(last))
    }
}

fn open(dir: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        // We flush after every scrape batch ourselves; no background timer needed.
        .flush_every_ms(None)
        .open()
}
