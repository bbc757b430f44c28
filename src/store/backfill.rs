//! History from elsewhere (warm start, a sibling pod): samples older than a series' own, put
//! before them. The journal only appends in time order, so a backfilled window reaches the
//! disk with the next compaction, which a backfill makes due at once; a seed waits for the
//! next one that is due anyway.

use super::{SampleRing, Slot, Store};

impl Store {
    /// Puts `samples` (oldest first) that are older than the series' oldest before its
    /// window, keeping its capacity; returns how many were added.
    pub fn backfill(&mut self, slot: Slot, samples: &[(i64, f64)]) -> usize {
        let added = self.put_before(slot, samples);
        if added > 0 {
            self.backfilled = true;
        }
        added
    }

    /// `backfill` without making a compaction due: another series' history that a new one
    /// starts from (a sibling pod's). Killed before the next compaction, the series only has
    /// less history; forcing one per new series made a thousand new pods a thousand
    /// compactions of the whole store.
    pub fn seed(&mut self, slot: Slot, samples: &[(i64, f64)]) -> usize {
        self.put_before(slot, samples)
    }

    fn put_before(&mut self, slot: Slot, samples: &[(i64, f64)]) -> usize {
        let Some(entry) = self.entries.get_mut(slot.index()).and_then(Option::as_mut) else {
            return 0;
        };
        let oldest = entry.samples.iter().next().map_or(i64::MAX, |s| s.0);
        let older: Vec<(i64, f64)> = samples
            .iter()
            .copied()
            .filter(|(t, v)| *t < oldest && v.is_finite())
            .collect();
        if older.is_empty() {
            return 0;
        }
        // Before its first sample a series has no capacity yet: keep them all, the first
        // append cuts to its rules' windows.
        let capacity = match entry.capacity {
            0 => entry.samples.len() + older.len(),
            c => c,
        };
        let before = entry.samples.len() as u64;
        let merged: Vec<(i64, f64)> = older.iter().copied().chain(entry.samples.iter()).collect();
        entry.samples = SampleRing::from_samples(capacity, merged);
        let added = entry.samples.len() as u64 - before.min(entry.samples.len() as u64);
        self.held_samples += added;
        self.pending.empty = false;
        added as usize
    }
}
