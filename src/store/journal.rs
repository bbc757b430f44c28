//! Journal records: what changed in the store since the last compaction, in replay order —
//! series defined (identity), window capacities, samples, series removed. Each record holds
//! one kind and is at most ~64 KiB; `Builder` orders them so a replay never meets a sample
//! before its series.
//!
//! Samples are written as runs: each series gets a journal number (its ordinal) the first
//! time it samples after a compaction, and a scrape's samples are (first ordinal, count,
//! values…). A target writes its series in the same order every scrape, so a scrape is one
//! run of 8 bytes a sample: half the 16 of (id, value), so compactions (which rewrite every
//! window) come half as often for the same journal size on disk.

use super::codec::{decode_identity, encode_identity};
use super::{SeriesId, SeriesIdentity};

const SAMPLES: u8 = 0;
const SERIES: u8 = 1;
const CAPACITY: u8 = 2;
const REMOVED: u8 = 3;
/// Ordinals given: (ordinal u32, series id u64)…
const ORDINALS: u8 = 4;
/// Timestamp, then runs of (first ordinal u32, count u32, values f64…).
const RUNS: u8 = 5;
/// A series without an ordinal in the current journal.
pub const NO_ORDINAL: u32 = u32::MAX;
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

impl Change {
    /// The series changed.
    pub fn series(&self) -> SeriesId {
        match *self {
            Change::Series(id, _)
            | Change::Capacity(id, _)
            | Change::Sample(id, ..)
            | Change::Removed(id) => id,
        }
    }
}

/// Records being built for the next batch, and the ordinals given since the last compaction.
#[derive(Default)]
pub struct Builder {
    finished: Vec<Vec<u8>>,
    series: Option<Vec<u8>>,
    capacity: Option<Vec<u8>>,
    ordinals: Option<Vec<u8>>,
    samples: Option<Vec<u8>>,
    removed: Option<Vec<u8>>,
    /// In the open samples record: where the last run's count is, and the ordinal that
    /// would continue it.
    run: Option<(usize, u32)>,
    next_ordinal: u32,
}

/// The ordinals of the journal being replayed: ordinal → series.
#[derive(Default)]
pub struct Ordinals(Vec<Option<SeriesId>>);

impl Ordinals {
    /// Every ordinal given, with its series.
    pub fn iter(&self) -> impl Iterator<Item = (u32, SeriesId)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(o, id)| Some((o as u32, (*id)?)))
    }

    /// One past the highest ordinal given.
    pub fn next(&self) -> u32 {
        self.0.len() as u32
    }
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

    /// Gives series `id` the next ordinal (it has none since the last compaction).
    pub fn ordinal(&mut self, id: SeriesId) -> u32 {
        let ordinal = self.next_ordinal;
        self.next_ordinal = self.next_ordinal.saturating_add(1).min(NO_ORDINAL - 1);
        let r = open(&mut self.ordinals, ORDINALS);
        r.extend_from_slice(&ordinal.to_le_bytes());
        r.extend_from_slice(&id.to_le_bytes());
        if r.len() >= RECORD_BYTES {
            self.finish_definitions();
        }
        ordinal
    }

    /// A sample of the series numbered `ordinal` (see `ordinal`).
    #[inline]
    pub fn sample(&mut self, ordinal: u32, ts_ms: i64, value: f64) {
        let same_scrape = self
            .samples
            .as_ref()
            .is_some_and(|r| r[1..9] == ts_ms.to_le_bytes());
        if !same_scrape {
            self.finish_samples();
        }
        let r = self.samples.get_or_insert_with(|| {
            let mut r = Vec::with_capacity(RECORD_BYTES + 64);
            r.push(RUNS);
            r.extend_from_slice(&ts_ms.to_le_bytes());
            r
        });
        match &mut self.run {
            Some((count_at, next)) if *next == ordinal => {
                let count =
                    u32::from_le_bytes(r[*count_at..*count_at + 4].try_into().unwrap_or_default());
                r[*count_at..*count_at + 4].copy_from_slice(&(count + 1).to_le_bytes());
                *next = ordinal.wrapping_add(1);
            }
            run => {
                r.extend_from_slice(&ordinal.to_le_bytes());
                *run = Some((r.len(), ordinal.wrapping_add(1)));
                r.extend_from_slice(&1u32.to_le_bytes());
            }
        }
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
        self.finished.extend(self.ordinals.take());
    }

    fn finish_samples(&mut self) {
        self.finish_definitions();
        self.finished.extend(self.samples.take());
        self.run = None;
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

    /// Drops everything not yet taken (superseded by a full snapshot), ordinals included:
    /// the owner forgets the ones it holds too.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Continues a journal replayed at open: its ordinals stay given.
    pub fn resume(&mut self, ordinals: &Ordinals) {
        self.next_ordinal = ordinals.next();
    }
}

/// Appends the changes in `record` to `out`, the ordinals it gives to `ordinals`; None when
/// it is malformed (or samples a series by an ordinal never given).
pub fn decode(record: &[u8], ordinals: &mut Ordinals, out: &mut Vec<Change>) -> Option<()> {
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
        ORDINALS => {
            if rest.len() % 12 != 0 {
                return None;
            }
            for c in rest.chunks_exact(12) {
                let ordinal = u32_at(c)? as usize;
                // Ordinals are given densely from 0 in record order, so one further than the
                // next is corruption, and must not size a table of billions of entries.
                if ordinal >= NO_ORDINAL as usize || ordinal > ordinals.0.len() {
                    return None;
                }
                if ordinals.0.len() <= ordinal {
                    ordinals.0.resize(ordinal + 1, None);
                }
                ordinals.0[ordinal] = Some(u64_at(&c[4..])?);
            }
        }
        RUNS => {
            let ts = u64_at(rest)? as i64;
            rest = &rest[8..];
            while !rest.is_empty() {
                let first = u32_at(rest)? as usize;
                let count = u32_at(rest.get(4..)?)? as usize;
                let values = rest.get(8..8usize.checked_add(count.checked_mul(8)?)?)?;
                for (k, v) in values.chunks_exact(8).enumerate() {
                    let id = (*ordinals.0.get(first.checked_add(k)?)?)?;
                    out.push(Change::Sample(id, ts, f64::from_bits(u64_at(v)?)));
                }
                rest = &rest[8 + values.len()..];
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

    #[test]
    fn a_scrape_in_the_usual_order_is_one_run_of_8_bytes_a_sample() {
        let mut b = Builder::default();
        let ordinals: Vec<u32> = (0..1000).map(|id| b.ordinal(id)).collect();
        b.take();
        for scrape in 1..=3i64 {
            for (i, &o) in ordinals.iter().enumerate() {
                // One series out of order: a run of its own.
                let o = if i == 500 {
                    ordinals[999]
                } else if i == 999 {
                    ordinals[500]
                } else {
                    o
                };
                b.sample(o, scrape * 1000, scrape as f64 + i as f64);
            }
        }
        let records = b.take();
        let bytes: usize = records.iter().map(Vec::len).sum();
        assert!(bytes < 3 * (1000 * 8 + 9 + 4 * 8 * 2 + 8), "{bytes} bytes");
        let (mut given, mut changes) = (Ordinals::default(), Vec::new());
        for id in 0..1000u64 {
            given.0.push(Some(id));
        }
        for r in &records {
            decode(r, &mut given, &mut changes).unwrap();
        }
        assert_eq!(changes.len(), 3000);
        assert_eq!(changes[500], Change::Sample(999, 1000, 501.0));
        assert_eq!(changes[1001], Change::Sample(1, 2000, 3.0));
        // A run naming an ordinal never given is corrupt, not a panic.
        assert!(decode(&records[0], &mut Ordinals::default(), &mut Vec::new()).is_none());
    }

    fn ident(name: &str) -> SeriesIdentity {
        SeriesIdentity::new("t:1".into(), name, &[("a", "b")], false)
    }

    /// Decodes every record in order, as a replay does.
    fn replay(records: &[Vec<u8>]) -> Vec<Change> {
        let (mut ordinals, mut changes) = (Ordinals::default(), Vec::new());
        for r in records {
            decode(r, &mut ordinals, &mut changes).unwrap();
        }
        changes
    }

    #[test]
    fn replay_order_puts_definitions_before_samples_and_removals_last() {
        let mut b = Builder::default();
        let one = b.ordinal(1);
        b.sample(one, 10, 1.0);
        b.series(2, &ident("m"));
        b.capacity(2, 60);
        let two = b.ordinal(2);
        b.sample(two, 10, 2.0);
        b.removed(1);
        b.sample(two, 20, 3.0);
        let changes = replay(&b.take());
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
            let ordinal = b.ordinal(id);
            b.sample(ordinal, 5, id as f64);
        }
        let records = b.take();
        assert!(records.iter().all(|r| r.len() < RECORD_BYTES + 128));
        let changes = replay(&records);
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

    /// A corrupt ordinal is rejected, not used to size the table (CI once aborted on a
    /// 64 GB allocation from a proptest case like this).
    #[test]
    fn an_ordinal_past_the_next_one_is_corrupt() {
        let mut record = vec![ORDINALS];
        record.extend_from_slice(&4_000_000_000u32.to_le_bytes());
        record.extend_from_slice(&7u64.to_le_bytes());
        let mut ordinals = Ordinals::default();
        assert!(decode(&record, &mut ordinals, &mut Vec::new()).is_none());
        assert_eq!(ordinals.next(), 0);
        // The next ordinal, and one already given, are fine.
        let mut ok = vec![ORDINALS];
        for (o, id) in [(0u32, 7u64), (1, 8), (1, 9)] {
            ok.extend_from_slice(&o.to_le_bytes());
            ok.extend_from_slice(&id.to_le_bytes());
        }
        assert!(decode(&ok, &mut ordinals, &mut Vec::new()).is_some());
        assert_eq!(ordinals.next(), 2);
    }
}
