//! Getting the store back: loading the snapshot and replaying the journal at open, and
//! writing memory back whole after the database was reopened (a full disk with space again).

use super::journal::{self, Change};
use super::snapshot::EntryReader;
use super::{files, SampleRing, SeriesEntry, SeriesId, SeriesIdentity, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

impl Store {
    pub(super) fn load(&mut self, history: files::Loaded) -> Result<(), StoreError> {
        for what in &history.repaired {
            tracing::warn!("History store repaired at open: {what}");
        }
        let mut targets: HashMap<String, Arc<str>> = HashMap::new();
        // Per series, the last journal seq its snapshot file includes: files can differ
        // after a compaction was interrupted between segments.
        let mut through: HashMap<SeriesId, u64> = HashMap::new();
        let mut last_through = None;
        for snapshot in history.snapshots {
            last_through = last_through.max(Some(snapshot.through));
            let mut reader = EntryReader::new(snapshot.format);
            for (id, entry) in snapshot.entries {
                let (identity, capacity, samples) = reader
                    .decode(&entry)
                    .ok_or_else(|| StoreError::Corrupt(format!("window of series {id:016x}")))?;
                self.define(id, identity, &mut targets);
                if let Some(e) = self.get_mut(id) {
                    e.capacity = capacity;
                    e.samples = SampleRing::from_samples(capacity.max(samples.len()), samples);
                }
                through.insert(id, snapshot.through);
            }
        }
        // The journal after the snapshot: what each series' file misses, in order. Every
        // record is decoded, since the ordinals it gives hold for the whole journal.
        let mut changes = Vec::new();
        let mut ordinals = journal::Ordinals::default();
        for (seq, record) in history.journal {
            self.next_seq = seq + 1;
            changes.clear();
            journal::decode(&record, &mut ordinals, &mut changes)
                .ok_or_else(|| StoreError::Corrupt(format!("journal record {seq}")))?;
            for change in changes.drain(..) {
                if through.get(&change.series()).is_none_or(|&t| seq > t) {
                    self.replay(change, &mut targets);
                }
            }
            self.journal_bytes += record.len() as u64;
        }
        if let Some(t) = last_through {
            self.next_seq = self.next_seq.max(t + 1);
        }
        // The journal goes on: its series keep their ordinals.
        for (ordinal, id) in ordinals.iter() {
            if let Some(e) = self.get_mut(id) {
                e.ordinal = ordinal;
            }
        }
        self.journal.resume(&ordinals);
        self.held_samples = 0;
        for e in self.entries.iter_mut().flatten() {
            e.last_seen_ms = e.samples.back().map_or(0, |s| s.0);
            self.held_samples += e.samples.len() as u64;
        }
        Ok(())
    }

    fn replay(&mut self, change: Change, targets: &mut HashMap<String, Arc<str>>) {
        match change {
            Change::Series(id, identity) => self.define(id, identity, targets),
            Change::Capacity(id, capacity) => {
                if let Some(e) = self.get_mut(id) {
                    e.capacity = capacity;
                }
            }
            Change::Sample(id, ts, v) => {
                if let Some(e) = self.get_mut(id) {
                    // Capacity is journalled before a series' first sample; without it, grow.
                    let capacity = if e.capacity > 0 {
                        e.capacity
                    } else {
                        e.samples.len() + 1
                    };
                    e.samples.push(capacity, ts, v);
                }
            }
            Change::Removed(id) => {
                if let Some(e) = self.take(id) {
                    if let Some(c) = self.per_target.get_mut(&e.identity.target) {
                        *c = c.saturating_sub(1);
                    }
                }
            }
        }
    }

    /// Adds a series found on disk (its target name shared with the target's other series).
    fn define(
        &mut self,
        id: SeriesId,
        mut identity: SeriesIdentity,
        targets: &mut HashMap<String, Arc<str>>,
    ) {
        if self.slots.contains_key(&id) {
            return;
        }
        identity.target = targets
            .entry(identity.target.to_string())
            .or_insert_with(|| identity.target.clone())
            .clone();
        *self.per_target.entry(identity.target.clone()).or_default() += 1;
        self.insert(SeriesEntry::new(id, identity));
    }

    /// After the database was reopened (blocking): writes every window and identity in a
    /// snapshot (which empties the journal). Pending changes are superseded by it.
    pub fn resync(&mut self) -> Result<(), StoreError> {
        self.journal.clear();
        self.pending = super::WriteBatch {
            empty: true,
            ..super::WriteBatch::default()
        };
        self.pending.empty = false;
        let (writer, batch) = self.take_batch();
        writer.write(batch)?;
        self.compact()
    }
}
