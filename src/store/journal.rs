//! Journal records: what changed in the store since the last compaction, in replay order —
//! series defined (identity), window capacities, samples, series removed. Each record holds
//! one kind and is at most ~64 KiB; `Builder` orders them so a replay never meets a sample
//! before its series.

use super::codec::{decode_identity, encode_identity};
use super::{SeriesId, SeriesIdentity};

const SAMPLES: u8 = 0;
const SERIES: u8 = 1;
const CAPACITY: u8 = 2;
const REMOVED: u8 = 3;
/// A record is closed past this size.
const RECORD_BYTES: usize = 64 << 10;

/// One change, as a replay applies it.
#[derive(Debug, PartialEq)]
pub enum Change {
    Series(SeriesId, SeriesIdentity),
    Capacity(SeriesId, usize),
    Sample(SeriesId, i64, f64),
    Removed(SeriesId),
}

/// Records being built for the next batch.
#[derive(Default)]
pub struct Builder {
    finished: Vec<Vec<u8>>,
    series: Option<Vec<u8>>,
    capacity: Option<Vec<u8>>,
    samples: Option<Vec<u8>>,
    removed: Option<Vec<u8>>,
}

fn open(slot: &mut Option<Vec<u8>>, kind: u8) -> &mut Vec<u8> {
    slot.get_or_insert_with(|| {
        let mut r = Vec::with_capacity(RECORD_BYTES + 64);
        r.push(kind);
        r
    })
}

impl Builder {
    pub fn series(&mut self, id: SeriesId, identity: &SeriesIdentity) {
        let ident = encode_identity(identity);
        let r = open(&mut self.series, SERIES);
        r.extend_from_slice(&id.to_le_bytes());
        r.extend_from_slice(&(ident.len() as u32).to_le_bytes());
        r.extend_from_slice(&ident);
        if r.len() >= RECORD_BYTES {
            self.finish_definitions();
        }
    }

    pub fn capacity(&mut self, id: SeriesId, capacity: usize) {
        let r = open(&mut self.capacity, CAPACITY);
        r.extend_from_slice(&id.to_le_bytes());
        r.extend_from_slice(&(capacity.min(u32::MAX as usize) as u32).to_le_bytes());
        if r.len() >= RECORD_BYTES {
            self.finish_definitions();
        }
    }

    pub fn sample(&mut self, id: SeriesId, ts_ms: i64, value: f64) {
        let same_scrape = self
            .samples
            .as_ref()
            .is_some_and(|r| r[1..9] == ts_ms.to_le_bytes());
        if !same_scrape {
            self.finish_samples();
        }
        let r = self.samples.get_or_insert_with(|| {
            let mut r = Vec::with_capacity(RECORD_BYTES + 64);
            r.push(SAMPLES);
            r.extend_from_slice(&ts_ms.to_le_bytes());
            r
        });
        r.extend_from_slice(&id.to_le_bytes());
        r.extend_from_slice(&value.to_bits().to_le_bytes());
        if r.len() >= RECORD_BYTES {
            self.finish_samples();
        }
    }

    pub fn removed(&mut self, id: SeriesId) {
        // Samples taken before the removal replay before it.
        self.finish_samples();
        let r = open(&mut self.removed, REMOVED);
        r.extend_from_slice(&id.to_le_bytes());
        if r.len() >= RECORD_BYTES {
            self.finish_removed();
        }
    }

    /// Definitions first: a sample or removal never precedes its series.
    fn finish_definitions(&mut self) {
        self.finished.extend(self.series.take());
        self.finished.extend(self.capacity.take());
    }

    fn finish_samples(&mut self) {
        self.finish_definitions();
        self.finished.extend(self.samples.take());
    }

    fn finish_removed(&mut self) {
        self.finish_samples();
        self.finished.extend(self.removed.take());
    }

    /// Every record, in replay order; the builder is empty afterwards.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.finish_removed();
        std::mem::take(&mut self.finished)
    }

    /// Drops everything not yet taken (superseded by a full snapshot).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Appends the changes in `record` to `out`; None when it is malformed.
pub fn decode(record: &[u8], out: &mut Vec<Change>) -> Option<()> {
    let (&kind, mut rest) = record.split_first()?;
    let u64_at = |b: &[u8]| {
        b.get(..8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
    };
    let u32_at = |b: &[u8]| {
        b.get(..4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
    };
    match kind {
        SAMPLES => {
            let ts = u64_at(rest)? as i64;
            rest = &rest[8..];
            if rest.len() % 16 != 0 {
                return None;
            }
            for c in rest.chunks_exact(16) {
                let v = f64::from_bits(u64_at(&c[8..])?);
                out.push(Change::Sample(u64_at(c)?, ts, v));
            }
        }
        SERIES => {
            while !rest.is_empty() {
                let id = u64_at(rest)?;
                let len = u32_at(rest.get(8..)?)? as usize;
                let identity = decode_identity(rest.get(12..12 + len)?)?;
                out.push(Change::Series(id, identity));
                rest = &rest[12 + len..];
            }
        }
        CAPACITY => {
            if rest.len() % 12 != 0 {
                return None;
            }
            for c in rest.chunks_exact(12) {
                out.push(Change::Capacity(u64_at(c)?, u32_at(&c[8..])? as usize));
            }
        }
        REMOVED => {
            if rest.len() % 8 != 0 {
                return None;
            }
            for c in rest.chunks_exact(8) {
                out.push(Change::Removed(u64_at(c)?));
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(name: &str) -> SeriesIdentity {
        SeriesIdentity::new("t:1".into(), name, &[("a", "b")], false)
    }

    #[test]
    fn replay_order_puts_definitions_before_samples_and_removals_last() {
        let mut b = Builder::default();
        b.sample(1, 10, 1.0);
        b.series(2, &ident("m"));
        b.capacity(2, 60);
        b.sample(2, 10, 2.0);
        b.removed(1);
        b.sample(2, 20, 3.0);
        let mut changes = Vec::new();
        for r in b.take() {
            decode(&r, &mut changes).unwrap();
        }
        assert_eq!(
            changes,
            vec![
                Change::Series(2, ident("m")),
                Change::Capacity(2, 60),
                Change::Sample(1, 10, 1.0),
                Change::Sample(2, 10, 2.0),
                Change::Sample(2, 20, 3.0),
                Change::Removed(1),
            ]
        );
    }

    #[test]
    fn large_batches_split_into_bounded_records() {
        let mut b = Builder::default();
        for id in 0..20_000 {
            b.series(id, &ident("m"));
            b.sample(id, 5, id as f64);
        }
        let records = b.take();
        assert!(records.iter().all(|r| r.len() < RECORD_BYTES + 128));
        let mut changes = Vec::new();
        for r in &records {
            decode(r, &mut changes).unwrap();
        }
        let first_sample = changes
            .iter()
            .position(|c| matches!(c, Change::Sample(..)))
            .unwrap();
        let series_ids: Vec<u64> = changes[..]
            .iter()
            .filter_map(|c| {
                if let Change::Series(id, _) = c {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(series_ids.len(), 20_000);
        // Every sample's series is defined before it.
        let mut defined = std::collections::HashSet::new();
        for c in &changes {
            match c {
                Change::Series(id, _) => {
                    defined.insert(*id);
                }
                Change::Sample(id, ..) => assert!(defined.contains(id)),
                _ => {}
            }
        }
        assert!(first_sample > 0);
    }
}
