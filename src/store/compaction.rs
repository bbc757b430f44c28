//! Compaction: when the journal has grown enough, every window written into a new snapshot,
//! segment by segment, and the journal emptied.

use super::{files, journal, snapshot, SeriesEntry, Store, StoreError, MIN_COMPACTION_BYTES};

impl Store {
    /// Whether the journal has grown enough to compact (after a batch is written). Disk peaks
    /// during a compaction at the snapshot, the journal and one new segment, so the journal
    /// may grow until they would reach 1.5× the windows' raw size (8 bytes a value), but
    /// stays between half and all of it: windows that compress well are compacted less often.
    /// (1.5, not 2: under churn the store also holds the series that left, until retention,
    /// ~20 % more than are scraped, and sled's files hold alerts and outboxes beside these.)
    pub fn compaction_due(&self) -> bool {
        let raw = self.held_samples * 8;
        let snapshot = self.snapshot_bytes + self.snapshot_bytes / files::SEGMENTS as u64;
        let room = (raw * 3 / 2).saturating_sub(snapshot);
        let threshold = room.clamp(raw / 2, raw).max(MIN_COMPACTION_BYTES);
        self.journal_bytes >= threshold
    }

    /// Writes every identity and window into a new snapshot, segment by segment, streamed to
    /// the files (no copy of them in memory), and empties the journal (blocking). Call after
    /// the pending batch was written: the snapshot includes every record numbered so far.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        self.finish_records();
        // Seq 0 stays unused, so "through 0" never hides a record.
        self.next_seq = self.next_seq.max(1);
        let through = self.next_seq - 1;
        let mut files = self.writer.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut segments: [Vec<u32>; files::SEGMENTS] = Default::default();
        for (slot, e) in self.entries.iter().enumerate() {
            if let Some(e) = e {
                segments[files::segment(e.id)].push(slot as u32);
            }
        }
        let compaction = self.compactions;
        self.compactions += 1;
        let written = segments.iter().enumerate().try_for_each(|(k, slots)| {
            let entries = &mut self.entries;
            files.write_segment(k, through, slots.len() as u64, |out| {
                let mut writer = snapshot::EntryWriter::default();
                let mut out = files::Entries::new(out);
                for (i, &slot) in slots.iter().enumerate() {
                    Self::prefetch_for_compaction(entries, slots, i);
                    let Some(Some(e)) = entries.get_mut(slot as usize) else {
                        continue;
                    };
                    // Noisy values rarely compress; retry each such series every 8th time.
                    let try_xor = !e.values_raw || (compaction + e.id).is_multiple_of(8);
                    let mut xor = false;
                    out.push(e.id, |entry| {
                        let (identity, samples) = (&e.identity, e.samples.iter());
                        xor = writer.encode(entry, identity, e.capacity, samples, try_xor);
                    })?;
                    if try_xor {
                        e.values_raw = !xor;
                    }
                }
                out.finish()
            })
        });
        // From the files, whichever segments were replaced: a compaction that failed half-way
        // (a full disk) leaves old and new ones, and the journal's room depends on their sum.
        self.snapshot_bytes = files.snapshot_size();
        written?;
        files.finish_compaction()?;
        self.journal_bytes = 0;
        // A new journal: series get new ordinals as they sample.
        self.journal.clear();
        for e in self.entries.iter_mut().flatten() {
            e.ordinal = journal::NO_ORDINAL;
        }
        Ok(())
    }

    /// The memory a compaction reads is one series' identity and window, each elsewhere and
    /// a cache miss away: it asks for them a series or two ahead (a series takes ~1 µs), the
    /// identity's text once its header has arrived.
    fn prefetch_for_compaction(entries: &[Option<SeriesEntry>], slots: &[u32], i: usize) {
        let at = |ahead: usize| {
            let slot = *slots.get(i + ahead)? as usize;
            entries.get(slot)?.as_ref()
        };
        if let Some(e) = at(3) {
            crate::prefetch::prefetch(&*e.identity);
        }
        if let Some(e) = at(1) {
            e.identity.prefetch();
            e.samples.prefetch_all();
        }
    }
}
