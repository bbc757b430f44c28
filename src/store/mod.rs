//! Per-series sample windows: held in memory for evaluation, persisted in sled so a restart
//! evaluates its first scrape against the old history. Knows nothing of rules or detectors.
//!
//! Layout, so a scrape costs one append rather than a write per sample:
//! - `history/journal.log` (ours, `files.rs`): the changes since the last compaction as
//!   records (`journal.rs`): series defined, window capacities, a scrape's values (8 bytes
//!   a sample in the usual order), series removed; appended and synced per scrape;
//! - `history/windows.<k>.snap` (ours): every series' identity and window (capacity,
//!   values, timestamps shared by the series scraped together; `snapshot.rs`) in 8 files by
//!   series, each with the last journal seq it includes. A compaction, once the journal
//!   reaches half the windows' raw size (8 bytes a value), replaces them one by one (each
//!   atomically), then empties the journal;
//! - sled: seasonal profiles (tree `profiles`); the alert book's states and the receivers'
//!   outboxes share the database (`alert::book`, `notify::outbox`). It held identities and
//!   samples once; at 100k series its in-memory tree cost ~450 MB.
//!
//! Each scrape's writes are flushed before the next scrape is processed, so a kill -9 loses
//! at most the scrape being written; a restart loads the windows and replays the journal.

mod backfill;
mod codec;
mod compaction;
mod database;
mod decimal;
mod files;
mod identity;
mod journal;
mod profiles;
mod recovery;
mod ring;
mod snapshot;
mod xor;

pub use identity::SeriesIdentity;
pub use ring::SampleRing;

pub use database::{apply_ops, Database, TreeOp};

use files::HistoryFiles;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Stable id of a series: FNV-1a over target, name and labels (stable across versions,
/// unlike std's hasher, since it is persisted).
pub type SeriesId = u64;

/// Hashes a `SeriesId` by one multiplication: ids are already FNV-1a hashes, and SipHash
/// over every sample's lookup was a measurable share of a scrape at 100k series.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A series' place in the store: entries live in a dense list, so the pipeline keeps its own
/// per-series state in lists indexed alike, and a scrape that walks its series in the order
/// they were admitted walks memory in order (hash-map probes at random were a cache miss
/// each, most of the pipeline's time at 100k series).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u32);

impl Slot {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A map keyed by series id.
pub type IdMap<V> = HashMap<SeriesId, V, std::hash::BuildHasherDefault<IdHasher>>;
/// A set of series ids.
pub type IdSet = std::collections::HashSet<SeriesId, std::hash::BuildHasherDefault<IdHasher>>;

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

/// What `Store::append` hands back: the series, whose samples now end with the new one, and
/// the database, for rule states built at this sample (their stored profiles).
pub struct Appended<'a> {
    pub entry: &'a SeriesEntry,
    db: &'a Database,
}

/// A series and its recent samples (timestamp ms, value), oldest first.
#[derive(Debug)]
pub struct SeriesEntry {
    pub id: SeriesId,
    pub identity: Arc<SeriesIdentity>,
    /// The identity's, here too: every sample's transform asks, and the identity is
    /// elsewhere in memory.
    pub counter_like: bool,
    samples: SampleRing,
    /// Most samples kept (the longest window of its rules); 0 until the first append.
    capacity: usize,
    last_seen_ms: i64,
    /// Its number in the journal since the last compaction (`journal::NO_ORDINAL`: none yet).
    ordinal: u32,
    /// The last compaction did not keep its values XOR-compressed (noisy values, or decimals
    /// that were smaller): the next ones try XOR only now and then.
    values_raw: bool,
}

impl SeriesEntry {
    fn new(id: SeriesId, identity: SeriesIdentity) -> Self {
        Self {
            id,
            counter_like: identity.counter_like,
            identity: Arc::new(identity),
            samples: SampleRing::default(),
            capacity: 0,
            last_seen_ms: 0,
            ordinal: journal::NO_ORDINAL,
            values_raw: false,
        }
    }

    /// The samples held, oldest first.
    pub fn samples(&self) -> &SampleRing {
        &self.samples
    }
}

/// Trees of earlier layouts (a record per sample; identities in sled); dropped at open.
const OLD_TREES: [&str; 3] = ["samples", "series", "capacity"];
/// The journal is compacted no sooner than this, however small the windows.
const MIN_COMPACTION_BYTES: u64 = 1 << 20;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {dir}: {source} (is another anomaly-sidecar using this --data-dir?)")]
    Open { dir: String, source: sled::Error },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("store holds a corrupt record: {0}")]
    Corrupt(String),
    #[error("history files: {0}")]
    History(#[from] std::io::Error),
}

/// Writes of one scrape, applied together.
#[derive(Default)]
pub struct WriteBatch {
    /// Seasonal buckets written, and series whose profiles go.
    profiles: sled::Batch,
    profiles_gone: Vec<SeriesId>,
    /// After a rule change: the rule keys whose profiles stay (the others go).
    profiles_keep: Option<std::collections::HashSet<String>>,
    /// Journal records and their seq.
    journal: Vec<(u64, Vec<u8>)>,
    empty: bool,
}

/// A cheap handle that applies batches (blocking; run it off the async runtime).
#[derive(Clone)]
pub struct StoreWriter {
    db: Database,
    files: Arc<Mutex<HistoryFiles>>,
}

impl StoreWriter {
    /// Applies a batch: the journal records (synced), then sled's changes (flushed). A kill -9
    /// anywhere loses at most this batch.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_then(batch, || Ok(false))
    }

    /// `write`, with `then` (other sled writes: the alert book's) applied after the journal
    /// is synced and made durable by the same flush. `then` says whether it wrote anything.
    pub fn write_then(
        &self,
        batch: WriteBatch,
        then: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if !batch.empty {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.append(&batch.journal)?;
            self.db
                .tree(profiles::PROFILES)?
                .apply_batch(batch.profiles)?;
            profiles::remove_series(&self.db, &batch.profiles_gone)?;
            if let Some(keep) = &batch.profiles_keep {
                profiles::retain_rules(&self.db, keep)?;
            }
        }
        let wrote = then()?;
        if !batch.empty || wrote {
            self.db.flush()?;
        }
        Ok(())
    }
}

/// The in-memory windows and the sled handles behind them.
pub struct Store {
    writer: StoreWriter,
    /// Indexed by slot; None where a series was removed (its slot is in `free`).
    entries: Vec<Option<SeriesEntry>>,
    slots: IdMap<Slot>,
    free: Vec<Slot>,
    per_target: HashMap<Arc<str>, usize>,
    pending: WriteBatch,
    /// Changes since the last batch, as journal records.
    journal: journal::Builder,
    next_seq: u64,
    /// Journal bytes since the last compaction.
    journal_bytes: u64,
    /// Samples in every window together (so the compaction check does not walk them all).
    held_samples: u64,
    /// Compactions since open (spreads the XOR retries of noisy series over them).
    compactions: u64,
    /// Bytes of the snapshot files, as the last compaction (or the open) left them.
    snapshot_bytes: u64,
}

/// Why a new series was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit;

impl Store {
    /// Opens (or creates) the store in `dir` and loads every series.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Database::open(dir, cache_bytes)?;
        let mut upgraded = false;
        for old in OLD_TREES {
            upgraded |= db.drop_tree(old)?;
        }
        if upgraded {
            tracing::warn!("Store upgraded to the journal layout; history before it is dropped");
        }
        let (files, loaded) = HistoryFiles::open(&dir.join("history"))?;
        let snapshot_bytes = files.snapshot_size();
        let mut store = Self {
            writer: StoreWriter {
                db,
                files: Arc::new(Mutex::new(files)),
            },
            entries: Vec::new(),
            slots: IdMap::default(),
            free: Vec::new(),
            per_target: HashMap::new(),
            pending: WriteBatch {
                empty: true,
                ..WriteBatch::default()
            },
            journal: journal::Builder::default(),
            next_seq: 0,
            journal_bytes: 0,
            held_samples: 0,
            compactions: 0,
            snapshot_bytes,
        };
        store.load(loaded)?;
        Ok(store)
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Series held for `target`.
    pub fn target_series(&self, target: &str) -> usize {
        self.per_target.get(target).copied().unwrap_or(0)
    }

    /// A series by id.
    pub fn get(&self, id: SeriesId) -> Option<&SeriesEntry> {
        self.at(*self.slots.get(&id)?)
    }

    /// A series by slot.
    pub fn at(&self, slot: Slot) -> Option<&SeriesEntry> {
        self.entries.get(slot.index())?.as_ref()
    }

    /// Starts fetching the memory the next `append_at(slot, ..)` writes (a hint: nothing
    /// happens if the slot is empty).
    pub fn prefetch(&self, slot: Slot) {
        if let Some(Some(e)) = self.entries.get(slot.index()) {
            e.samples.prefetch_next();
        }
    }

    /// The slot of a series.
    pub fn slot(&self, id: SeriesId) -> Option<Slot> {
        self.slots.get(&id).copied()
    }

    fn get_mut(&mut self, id: SeriesId) -> Option<&mut SeriesEntry> {
        let slot = *self.slots.get(&id)?;
        self.entries.get_mut(slot.index())?.as_mut()
    }

    /// Puts a new series in a free slot (the most recently freed: its neighbours are likely
    /// the series that churned with it).
    fn insert(&mut self, entry: SeriesEntry) -> Slot {
        let id = entry.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot.index()] = Some(entry);
                slot
            }
            None => {
                // More than 4 billion series never fit in memory anyway.
                let slot = Slot(u32::try_from(self.entries.len()).unwrap_or(u32::MAX));
                self.entries.push(Some(entry));
                slot
            }
        };
        self.slots.insert(id, slot);
        slot
    }

    fn take(&mut self, id: SeriesId) -> Option<SeriesEntry> {
        let slot = self.slots.remove(&id)?;
        let entry = self.entries.get_mut(slot.index())?.take();
        self.free.push(slot);
        entry
    }

    /// Admits a series if it is new and its target is under `max_series`; its slot.
    pub fn admit(
        &mut self,
        id: SeriesId,
        identity: impl FnOnce() -> SeriesIdentity,
        max_series: usize,
    ) -> Result<Slot, OverLimit> {
        if let Some(&slot) = self.slots.get(&id) {
            return Ok(slot);
        }
        let identity = identity();
        let count = self.per_target.entry(identity.target.clone()).or_default();
        if *count >= max_series {
            return Err(OverLimit);
        }
        *count += 1;
        self.journal.series(id, &identity);
        self.pending.empty = false;
        Ok(self.insert(SeriesEntry::new(id, identity)))
    }

    /// Appends a sample to an admitted series, keeping at most `capacity` samples.
    pub fn append(
        &mut self,
        id: SeriesId,
        ts_ms: i64,
        value: f64,
        capacity: usize,
    ) -> Option<Appended<'_>> {
        let slot = self.slot(id)?;
        self.append_at(slot, ts_ms, value, capacity)
    }

    /// `append` to the series in `slot`.
    #[inline]
    pub fn append_at(
        &mut self,
        slot: Slot,
        ts_ms: i64,
        value: f64,
        capacity: usize,
    ) -> Option<Appended<'_>> {
        let Self {
            entries,
            journal,
            pending,
            held_samples,
            writer,
            ..
        } = self;
        let entry = entries.get_mut(slot.index())?.as_mut()?;
        let id = entry.id;
        entry.last_seen_ms = ts_ms;
        if entry.capacity != capacity.max(1) {
            entry.capacity = capacity.max(1);
            journal.capacity(id, entry.capacity);
        }
        let before = entry.samples.len() as u64;
        entry.samples.push(entry.capacity, ts_ms, value);
        *held_samples = (*held_samples + entry.samples.len() as u64).saturating_sub(before);
        if entry.ordinal == journal::NO_ORDINAL {
            entry.ordinal = journal.ordinal(id);
        }
        journal.sample(entry.ordinal, ts_ms, value);
        pending.empty = false;
        Some(Appended {
            entry,
            db: &writer.db,
        })
    }

    /// Moves the journal records built so far into the pending batch, numbered.
    fn finish_records(&mut self) {
        for record in self.journal.take() {
            self.journal_bytes += record.len() as u64;
            self.pending.journal.push((self.next_seq, record));
            self.next_seq += 1;
        }
    }

    /// Marks a series as seen without a usable sample (e.g. NaN), for retention.
    pub fn touch(&mut self, slot: Slot, ts_ms: i64) {
        if let Some(Some(e)) = self.entries.get_mut(slot.index()) {
            e.last_seen_ms = ts_ms;
        }
    }

    /// Removes series not seen since `cutoff_ms`; returns their ids and the slots they held.
    pub fn expire(&mut self, cutoff_ms: i64) -> Vec<(SeriesId, Slot)> {
        let gone: Vec<(SeriesId, Slot)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let e = e.as_ref()?;
                (e.last_seen_ms < cutoff_ms).then_some((e.id, Slot(i as u32)))
            })
            .collect();
        for (id, _) in &gone {
            self.remove(*id);
        }
        gone
    }

    fn remove(&mut self, id: SeriesId) {
        let Some(entry) = self.take(id) else {
            return;
        };
        self.held_samples = self.held_samples.saturating_sub(entry.samples.len() as u64);
        if let Some(c) = self.per_target.get_mut(&entry.identity.target) {
            *c = c.saturating_sub(1);
        }
        self.journal.removed(id);
        self.pending.profiles_gone.push(id);
        self.pending.empty = false;
    }

    /// Takes the writes accumulated since the last call, with a handle to apply them.
    pub fn take_batch(&mut self) -> (StoreWriter, WriteBatch) {
        self.finish_records();
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

    /// Bytes on disk: sled's and the history files'.
    pub fn size_on_disk(&self) -> u64 {
        let files = self.writer.files.lock().map_or(0, |f| f.size());
        self.writer.db.size_on_disk() + files
    }
}

#[cfg(test)]
mod tests;
