//! Seasonal profiles in sled (tree `profiles`): one record per (series, rule, bucket), written
//! when a series leaves a bucket (every season / buckets, e.g. 5 minutes, not every sample),
//! read when a seasonal rule's state is built, removed with the series. A kill -9 loses at
//! most the updates of each series' current bucket.

use super::{Appended, Database, SeriesId, Store, StoreError};

pub(super) const PROFILES: &str = "profiles";

/// Series id, rule key, a 0 byte (rule keys hold none), bucket: a prefix scan per series,
/// and per (series, rule).
fn prefix(id: SeriesId, rule_key: &str) -> Vec<u8> {
    let mut key = id.to_be_bytes().to_vec();
    key.extend_from_slice(rule_key.as_bytes());
    key.push(0);
    key
}

/// Every stored bucket of (series, rule): bucket number and bytes.
pub(super) fn read(
    db: &Database,
    id: SeriesId,
    rule_key: &str,
) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
    let p = prefix(id, rule_key);
    let mut out = Vec::new();
    for item in db.tree(PROFILES)?.scan_prefix(&p) {
        let (k, v) = item?;
        let bucket = k
            .get(p.len()..)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("profile record".into()))?;
        out.push((bucket, v.to_vec()));
    }
    Ok(out)
}

/// Removes every profile of the series `ids` (blocking).
pub(super) fn remove_series(db: &Database, ids: &[SeriesId]) -> Result<(), sled::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let tree = db.tree(PROFILES)?;
    let mut batch = sled::Batch::default();
    for id in ids {
        for item in tree.scan_prefix(id.to_be_bytes()) {
            batch.remove(item?.0);
        }
    }
    tree.apply_batch(batch)
}

/// Removes every profile whose rule key is not in `keep` (blocking; after a reload or at
/// open, so a removed or changed rule's profiles do not stay on disk forever).
pub(super) fn retain_rules(
    db: &Database,
    keep: &std::collections::HashSet<String>,
) -> Result<(), sled::Error> {
    let tree = db.tree(PROFILES)?;
    let mut batch = sled::Batch::default();
    let mut doomed = 0usize;
    for item in tree.iter() {
        let (k, _) = item?;
        // Series id (8), rule key, 0, bucket (4).
        let rule = k
            .len()
            .checked_sub(5)
            .and_then(|end| k.get(8..end))
            .and_then(|r| std::str::from_utf8(r).ok());
        if rule.is_none_or(|r| !keep.contains(r)) {
            batch.remove(k);
            doomed += 1;
        }
    }
    if doomed > 0 {
        tracing::info!(
            records = doomed,
            "Removing seasonal profiles of rules that changed or are gone"
        );
        tree.apply_batch(batch)?;
    }
    Ok(())
}

impl Store {
    /// With the next batch, removes the profiles of every rule key but `keep`.
    pub fn forget_profiles_except(&mut self, keep: std::collections::HashSet<String>) {
        self.pending.profiles_keep = Some(keep);
        self.pending.empty = false;
    }

    /// The stored profile of series `id` under `rule_key` (a blocking sled read).
    pub fn profile(&self, id: SeriesId, rule_key: &str) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        read(&self.writer.db, id, rule_key)
    }

    /// Records the statistics of a bucket of a series' profile under a rule, with the next
    /// batch.
    pub fn set_profile_bucket(&mut self, id: SeriesId, rule_key: &str, bucket: u32, bytes: &[u8]) {
        let mut key = prefix(id, rule_key);
        key.extend_from_slice(&bucket.to_be_bytes());
        self.pending.profiles.insert(key, bytes);
        self.pending.empty = false;
    }
}

impl Appended<'_> {
    /// The stored profile of this series under `rule_key` (a blocking sled read, done only
    /// when a seasonal rule's state is built).
    pub fn profile(&self, rule_key: &str) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        read(self.db, self.entry.id, rule_key)
    }
}
