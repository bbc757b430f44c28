//! Per-series sample windows: held in memory for evaluation, persisted in sled so a restart
//! evaluates its first scrape against the old history. Knows nothing of rules or detectors.
//!
//! Layout: tree `series`: id → identity (target, name, labels, counter flag), written once;
//! tree `samples`: id ‖ seq (big-endian) → timestamp ms ‖ value, one 16-byte insert per
//! sample and one remove of the sample that left the window. Each scrape's writes go in one
//! batch followed by a flush, so a kill -9 loses at most the scrape being written.

mod codec;
mod database;

pub use database::Database;

use codec::{
    decode_identity, decode_sample, decode_seq, encode_identity, encode_sample, sample_key,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

/// Stable id of a series: FNV-1a over target, name and labels (stable across versions,
/// unlike std's hasher, since it is persisted).
pub type SeriesId = u64;

/// Computes the id of a series.
pub fn series_id(target: &str, name: &str, labels: &[(String, String)]) -> SeriesId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator no label text contains, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(target.as_bytes());
    feed(name.as_bytes());
    for (k, v) in labels {
        feed(k.as_bytes());
        feed(v.as_bytes());
    }
    h
}

/// Who a series is.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesIdentity {
    pub target: Arc<str>,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub counter_like: bool,
}

/// A series and its recent samples (timestamp ms, value), oldest first.
#[derive(Debug)]
pub struct SeriesEntry {
    pub identity: Arc<SeriesIdentity>,
    samples: VecDeque<(i64, f64)>,
    /// Sequence number of the next sample; samples[i] has seq `next_seq - len + i`.
    next_seq: u64,
    last_seen_ms: i64,
}

impl SeriesEntry {
    /// The samples held, oldest first.
    pub fn samples(&self) -> &VecDeque<(i64, f64)> {
        &self.samples
    }
}

const SERIES: &str = "series";
const SAMPLES: &str = "samples";
const ALERTS: &str = "alerts";

fn alert_key(id: SeriesId, rule_key: &str) -> Vec<u8> {
    let mut key = id.to_be_bytes().to_vec();
    key.extend_from_slice(rule_key.as_bytes());
    key
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {dir}: {source} (is another anomaly-sidecar using this --data-dir?)")]
    Open { dir: String, source: sled::Error },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("store holds a corrupt record: {0}")]
    Corrupt(String),
}

/// Writes of one scrape, applied together.
#[derive(Default)]
pub struct WriteBatch {
    series: sled::Batch,
    samples: sled::Batch,
    alerts: sled::Batch,
    empty: bool,
}

/// A cheap handle that applies batches (blocking; run it off the async runtime).
#[derive(Clone)]
pub struct StoreWriter {
    db: Database,
}

impl StoreWriter {
    /// Applies a batch and flushes it to disk.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.empty {
            return Ok(());
        }
        self.db.tree(SERIES)?.apply_batch(batch.series)?;
        self.db.tree(SAMPLES)?.apply_batch(batch.samples)?;
        self.db.tree(ALERTS)?.apply_batch(batch.alerts)?;
        self.db.flush()?;
        Ok(())
    }
}

/// The in-memory windows and the sled handles behind them.
pub struct Store {
    writer: StoreWriter,
    series: HashMap<SeriesId, SeriesEntry>,
    /// Firing alerts: (series, rule key) → since when, so a restart neither forgets a firing
    /// alert (its resolution would never be sent) nor fires it a second time.
    firing: HashMap<(SeriesId, String), i64>,
    per_target: HashMap<Arc<str>, usize>,
    pending: WriteBatch,
}

/// Why a new series was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit;

impl Store {
    /// Opens (or creates) the store in `dir` and loads every series.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Database::open(dir, cache_bytes)?;
        let mut store = Self {
            writer: StoreWriter { db },
            series: HashMap::new(),
            firing: HashMap::new(),
            per_target: HashMap::new(),
            pending: WriteBatch {
                empty: true,
                ..WriteBatch::default()
            },
        };
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let db = &self.writer.db;
        let (series, samples_tree, alerts) =
            (db.tree(SERIES)?, db.tree(SAMPLES)?, db.tree(ALERTS)?);
        for item in alerts.iter() {
            let (k, v) = item?;
            let parsed = (|| {
                let id = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
                let rule = std::str::from_utf8(k.get(8..)?).ok()?.to_string();
                let since = i64::from_be_bytes(v.as_ref().try_into().ok()?);
                Some(((id, rule), since))
            })();
            let (key, since) = parsed.ok_or_else(|| StoreError::Corrupt("alert record".into()))?;
            self.firing.insert(key, since);
        }
        let mut targets: HashMap<String, Arc<str>> = HashMap::new();
        for item in series.iter() {
            let (key, value) = item?;
            let id = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("series key".into()))?,
            );
            let mut identity = decode_identity(&value)
                .ok_or_else(|| StoreError::Corrupt(format!("series {id:016x}")))?;
            let t = targets
                .entry(identity.target.to_string())
                .or_insert_with(|| identity.target.clone())
                .clone();
            identity.target = t;
            let mut samples = VecDeque::new();
            let mut next_seq = 0;
            for s in samples_tree.scan_prefix(id.to_be_bytes()) {
                let (k, v) = s?;
                let (Some(seq), Some(sample)) = (decode_seq(&k), decode_sample(&v)) else {
                    return Err(StoreError::Corrupt(format!("sample of series {id:016x}")));
                };
                samples.push_back(sample);
                next_seq = seq + 1;
            }
            let last_seen_ms = samples.back().map_or(0, |s| s.0);
            *self.per_target.entry(identity.target.clone()).or_default() += 1;
            self.series.insert(
                id,
                SeriesEntry {
                    identity: Arc::new(identity),
                    samples,
                    next_seq,
                    last_seen_ms,
                },
            );
        }
        Ok(())
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Series held for `target`.
    pub fn target_series(&self, target: &str) -> usize {
        self.per_target.get(target).copied().unwrap_or(0)
    }

    /// A series by id.
    pub fn get(&self, id: SeriesId) -> Option<&SeriesEntry> {
        self.series.get(&id)
    }

    /// Admits a series if it is new and its target is under `max_series`.
    pub fn admit(
        &mut self,
        id: SeriesId,
        identity: impl FnOnce() -> SeriesIdentity,
        max_series: usize,
    ) -> Result<(), OverLimit> {
        if !self.series.contains_key(&id) {
            let identity = identity();
            let count = self.per_target.entry(identity.target.clone()).or_default();
            if *count >= max_series {
                return Err(OverLimit);
            }
            *count += 1;
            self.pending
                .series
                .insert(&id.to_be_bytes(), encode_identity(&identity));
            self.pending.empty = false;
            self.series.insert(
                id,
                SeriesEntry {
                    identity: Arc::new(identity),
                    samples: VecDeque::new(),
                    next_seq: 0,
                    last_seen_ms: 0,
                },
            );
        }
        Ok(())
    }

    /// Appends a sample to an admitted series, keeping at most `capacity` samples.
    pub fn append(&mut self, id: SeriesId, ts_ms: i64, value: f64, capacity: usize) {
        let Some(entry) = self.series.get_mut(&id) else {
            return;
        };
        let seq = entry.next_seq;
        entry.next_seq += 1;
        entry.last_seen_ms = ts_ms;
        entry.samples.push_back((ts_ms, value));
        self.pending
            .samples
            .insert(&sample_key(id, seq), &encode_sample(ts_ms, value)[..]);
        while entry.samples.len() > capacity.max(1) {
            entry.samples.pop_front();
            let old = entry.next_seq - 1 - entry.samples.len() as u64;
            self.pending.samples.remove(&sample_key(id, old));
        }
        self.pending.empty = false;
    }

    /// Since when the alert of `rule_key` on series `id` has been firing, if it was.
    pub fn firing_since(&self, id: SeriesId, rule_key: &str) -> Option<i64> {
        self.firing.get(&(id, rule_key.to_string())).copied()
    }

    /// Every persisted firing alert: series, rule key, since when.
    pub fn firing_alerts(&self) -> impl Iterator<Item = (SeriesId, String, i64)> + '_ {
        self.firing
            .iter()
            .map(|((id, rule), since)| (*id, rule.clone(), *since))
    }

    /// Records that an alert started firing (`Some(since)`) or stopped (`None`).
    pub fn set_firing(&mut self, id: SeriesId, rule_key: &str, since: Option<i64>) {
        let key = alert_key(id, rule_key);
        match since {
            Some(t) => {
                self.firing.insert((id, rule_key.to_string()), t);
                self.pending.alerts.insert(key, &t.to_be_bytes()[..]);
            }
            None => {
                self.firing.remove(&(id, rule_key.to_string()));
                self.pending.alerts.remove(key);
            }
        }
        self.pending.empty = false;
    }

    /// Marks a series as seen without a usable sample (e.g. NaN), for retention.
    pub fn touch(&mut self, id: SeriesId, ts_ms: i64) {
        if let Some(e) = self.series.get_mut(&id) {
            e.last_seen_ms = ts_ms;
        }
    }

    /// Removes series not seen since `cutoff_ms`; returns their ids.
    pub fn expire(&mut self, cutoff_ms: i64) -> Vec<SeriesId> {
        let gone: Vec<SeriesId> = self
            .series
            .iter()
            .filter(|(_, e)| e.last_seen_ms < cutoff_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        gone
    }

    fn remove(&mut self, id: SeriesId) {
        let Some(entry) = self.series.remove(&id) else {
            return;
        };
        if let Some(c) = self.per_target.get_mut(&entry.identity.target) {
            *c = c.saturating_sub(1);
        }
        self.pending.series.remove(&id.to_be_bytes());
        let alerts: Vec<String> = self
            .firing
            .keys()
            .filter(|(sid, _)| *sid == id)
            .map(|(_, rule)| rule.clone())
            .collect();
        for rule in alerts {
            self.set_firing(id, &rule, None);
        }
        let first = entry.next_seq - entry.samples.len() as u64;
        for seq in first..entry.next_seq {
            self.pending.samples.remove(&sample_key(id, seq));
        }
        self.pending.empty = false;
    }

    /// Takes the writes accumulated since the last call, with a handle to apply them.
    pub fn take_batch(&mut self) -> (StoreWriter, WriteBatch) {
        let batch = std::mem::replace(
            &mut self.pending,
            WriteBatch {
                empty: true,
                ..WriteBatch::default()
            },
        );
        (self.writer.clone(), batch)
    }

    /// The database handle, for other trees that share its file and flushes (the outboxes).
    pub fn db(&self) -> Database {
        self.writer.db.clone()
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.writer.db.size_on_disk()
    }

    /// After the database was reopened (blocking): writes every held series' identity and
    /// window and every firing alert again, and removes what failed writes left behind, a
    /// thousand series per batch so memory stays small. Pending writes are superseded.
    pub fn resync(&mut self) -> Result<(), StoreError> {
        self.pending = WriteBatch {
            empty: true,
            ..WriteBatch::default()
        };
        let db = &self.writer.db;
        let (series, samples, alerts) = (db.tree(SERIES)?, db.tree(SAMPLES)?, db.tree(ALERTS)?);
        let (mut gone_series, mut gone_samples) = (sled::Batch::default(), sled::Batch::default());
        for item in series.iter() {
            let (k, _) = item?;
            let held = k.as_ref().try_into().ok().map(u64::from_be_bytes);
            if held.is_some_and(|id| self.series.contains_key(&id)) {
                continue;
            }
            for s in samples.scan_prefix(&k) {
                gone_samples.remove(s?.0);
            }
            gone_series.remove(k);
        }
        samples.apply_batch(gone_samples)?;
        series.apply_batch(gone_series)?;
        let ids: Vec<SeriesId> = self.series.keys().copied().collect();
        for chunk in ids.chunks(1000) {
            let (mut ser, mut sam) = (sled::Batch::default(), sled::Batch::default());
            for id in chunk {
                let Some(entry) = self.series.get(id) else {
                    continue;
                };
                ser.insert(&id.to_be_bytes(), encode_identity(&entry.identity));
                let first = entry.next_seq - entry.samples.len() as u64;
                for s in samples.scan_prefix(id.to_be_bytes()) {
                    let (k, _) = s?;
                    if decode_seq(&k).is_none_or(|seq| seq < first || seq >= entry.next_seq) {
                        sam.remove(k);
                    }
                }
                for (i, (ts, v)) in entry.samples.iter().enumerate() {
                    sam.insert(
                        &sample_key(*id, first + i as u64),
                        &encode_sample(*ts, *v)[..],
                    );
                }
            }
            series.apply_batch(ser)?;
            samples.apply_batch(sam)?;
        }
        let mut firing = sled::Batch::default();
        let live: HashSet<Vec<u8>> = self
            .firing
            .keys()
            .map(|(id, rule)| alert_key(*id, rule))
            .collect();
        for item in alerts.iter() {
            let (k, _) = item?;
            if !live.contains(k.as_ref()) {
                firing.remove(k);
            }
        }
        for ((id, rule), since) in &self.firing {
            firing.insert(alert_key(*id, rule), &since.to_be_bytes()[..]);
        }
        alerts.apply_batch(firing)?;
        db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's background threads may hold the file lock a moment after the last handle of the
    /// previous open is dropped; a real restart is a new process and never sees this.
    fn reopen(dir: &Path) -> Store {
        for _ in 0..100 {
            if let Ok(s) = Store::open(dir, 1 << 20) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Store::open(dir, 1 << 20).unwrap()
    }

    fn ident(target: &str, name: &str) -> SeriesIdentity {
        SeriesIdentity {
            target: target.into(),
            name: name.into(),
            labels: vec![("a".into(), "1".into())],
            counter_like: true,
        }
    }

    #[test]
    fn windows_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = series_id("t:1", "m", &[("a".into(), "1".into())]);
        {
            let mut s = Store::open(dir.path(), 1 << 20).unwrap();
            s.admit(id, || ident("t:1", "m"), 10).unwrap();
            s.set_firing(id, "rule@1", Some(42));
            for i in 0..10 {
                s.append(id, 1000 * i, i as f64, 4);
            }
            let (w, b) = s.take_batch();
            w.write(b).unwrap();
        }
        let s = reopen(dir.path());
        let e = s.get(id).unwrap();
        assert_eq!(*e.identity, ident("t:1", "m"));
        let vals: Vec<f64> = e.samples().iter().map(|x| x.1).collect();
        assert_eq!(vals, vec![6.0, 7.0, 8.0, 9.0]);
        assert_eq!(s.target_series("t:1"), 1);
        assert_eq!(s.firing_since(id, "rule@1"), Some(42));
        assert_eq!(s.firing_since(id, "rule@2"), None);
    }

    #[test]
    fn max_series_is_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(s.admit(1, || ident("a", "x"), 2).is_ok());
        assert!(s.admit(2, || ident("a", "y"), 2).is_ok());
        assert_eq!(s.admit(3, || ident("a", "z"), 2).unwrap_err(), OverLimit);
        assert!(s.admit(4, || ident("b", "x"), 2).is_ok());
        assert!(
            s.admit(1, || ident("a", "x"), 2).is_ok(),
            "known series stay"
        );
    }

    #[test]
    fn expiry_removes_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path(), 1 << 20).unwrap();
            s.admit(1, || ident("a", "x"), 10).unwrap();
            s.admit(2, || ident("a", "y"), 10).unwrap();
            s.append(1, 1_000, 1.0, 5);
            s.append(2, 9_000, 1.0, 5);
            assert_eq!(s.expire(5_000), vec![1]);
            let (w, b) = s.take_batch();
            w.write(b).unwrap();
        }
        let s = reopen(dir.path());
        assert!(s.get(1).is_none());
        assert!(s.get(2).is_some());
        assert_eq!(s.target_series("a"), 1);
    }

    #[test]
    fn ids_are_stable() {
        assert_eq!(series_id("t", "m", &[]), series_id("t", "m", &[]));
        assert_ne!(
            series_id("t", "m", &[("ab".into(), "c".into())]),
            series_id("t", "m", &[("a".into(), "bc".into())])
        );
    }
}
