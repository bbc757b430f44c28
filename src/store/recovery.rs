//! Getting the store back: loading windows and replaying the journal at open, and writing
//! memory back whole after the database was reopened (a full disk that has space again).

use super::codec::{decode_identity, decode_window, encode_identity, record_decode};
use super::{
    alert_key, files, SeriesEntry, Store, StoreError, WriteBatch, ALERTS, CAPACITY, SERIES,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

impl Store {
    pub(super) fn load(&mut self, history: files::Loaded) -> Result<(), StoreError> {
        for what in &history.repaired {
            tracing::warn!("History store repaired at open: {what}");
        }
        let db = &self.writer.db;
        let (series, alerts) = (db.tree(SERIES)?, db.tree(ALERTS)?);
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
            *self.per_target.entry(identity.target.clone()).or_default() += 1;
            self.series.insert(
                id,
                SeriesEntry {
                    identity: Arc::new(identity),
                    samples: VecDeque::new(),
                    capacity: 0,
                    last_seen_ms: 0,
                },
            );
        }
        for item in db.tree(CAPACITY)?.iter() {
            let (key, value) = item?;
            let id = key.as_ref().try_into().map(u64::from_be_bytes);
            let c = value.as_ref().try_into().map(u32::from_le_bytes);
            if let (Ok(id), Ok(c)) = (id, c) {
                if let Some(e) = self.series.get_mut(&id) {
                    e.capacity = c as usize;
                }
            }
        }
        let mut through = None;
        if let Some((t, windows)) = history.snapshot {
            through = Some(t);
            for (id, window) in windows {
                let Some(entry) = self.series.get_mut(&id) else {
                    continue; // a series removed since
                };
                let (capacity, samples) = decode_window(&window)
                    .ok_or_else(|| StoreError::Corrupt("series window".into()))?;
                if entry.capacity == 0 {
                    entry.capacity = capacity;
                }
                entry.samples = samples;
            }
        }
        // The journal after the snapshot: what it misses, in order.
        for (seq, record) in history.journal {
            self.next_seq = seq + 1;
            if through.is_some_and(|t| seq <= t) {
                continue;
            }
            let (ts, pairs) = record_decode(&record)
                .ok_or_else(|| StoreError::Corrupt("journal record".into()))?;
            for (id, v) in pairs {
                if let Some(e) = self.series.get_mut(&id) {
                    e.samples.push_back((ts, v));
                    while e.capacity > 0 && e.samples.len() > e.capacity {
                        e.samples.pop_front();
                    }
                }
            }
            self.journal_bytes += record.len() as u64;
        }
        if let Some(t) = through {
            self.next_seq = self.next_seq.max(t + 1);
        }
        for e in self.series.values_mut() {
            e.last_seen_ms = e.samples.back().map_or(0, |s| s.0);
        }
        Ok(())
    }

    /// After the database was reopened (blocking): writes every held series' identity and
    /// window and every firing alert again, drops the journal (the windows now include all of
    /// it) and removes what failed writes left behind. Pending writes are superseded.
    pub fn resync(&mut self) -> Result<(), StoreError> {
        self.record = None;
        self.pending = WriteBatch {
            empty: true,
            ..WriteBatch::default()
        };
        let db = self.writer.db.clone();
        let (series, alerts) = (db.tree(SERIES)?, db.tree(ALERTS)?);
        let mut gone = sled::Batch::default();
        for item in series.iter() {
            let (k, _) = item?;
            let held = k.as_ref().try_into().ok().map(u64::from_be_bytes);
            if !held.is_some_and(|id| self.series.contains_key(&id)) {
                gone.remove(k);
            }
        }
        series.apply_batch(gone.clone())?;
        db.tree(CAPACITY)?.apply_batch(gone)?;
        for (id, e) in &self.series {
            let key = id.to_be_bytes();
            self.pending
                .series
                .insert(&key, encode_identity(&e.identity));
            let c = e.capacity.min(u32::MAX as usize) as u32;
            self.pending.capacity.insert(&key, &c.to_le_bytes()[..]);
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
        self.pending.alerts = firing;
        // Everything the journal holds is in memory: a compaction through the newest seq
        // writes it all and deletes the journal.
        self.compact_into_pending();
        let (writer, batch) = self.take_batch();
        writer.write(batch)
    }
}
