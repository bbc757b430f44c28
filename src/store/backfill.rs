//! History from elsewhere (warm start, a sibling pod): samples older than a series' own, put
//! before them. The journal only appends in time order, so they reach the disk with the next
//! compaction that is due anyway. Forcing one per backfill made a thousand new pods a
//! thousand compactions of the whole store (10× the CPU of warming 1,000 pods from
//! Prometheus); killed before it, a series only has less history, and a warm start asks
//! Prometheus again at the next start (its stored window is short).

use super::{SampleRing, Slot, Store};

impl Store {
    /// Puts `samples` (oldest first) that are older than the series' oldest before its
    /// window, keeping its capacity; returns how many were added.
    pub fn backfill(&mut self, slot: Slot, samples: &[(i64, f64)]) -> usize {
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
