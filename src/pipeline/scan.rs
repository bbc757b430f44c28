//! The first pass over a scrape body: every sample line resolved to a series before any is
//! applied (a malformed line fails the scrape whole). Lines whose series text was seen before
//! skip label parsing through a per-target index from the raw text to the series id, so a
//! steady-state scrape allocates nothing per sample.

use crate::scrape::parse::{self, ParseError};
use crate::scrape::{Limits, Sample, ScrapeError};
use crate::store::{IdMap, IdSet, SeriesId, Slot};
use std::borrow::Cow;
use std::sync::Arc;

/// A sample line whose series the index resolved from its text.
pub struct KnownSample {
    pub id: SeriesId,
    /// The store's slot of the series, if it is stored.
    pub slot: Option<Slot>,
    pub value: f64,
    /// The index entry: `SeriesIndex::rules` tells the rules that select the series (no
    /// reference counted per sample).
    pub entry: u32,
}

/// A checked scrape body: its known samples, and how many lines are new series. New lines
/// are not kept (a scrape of a million new series must not hold a million samples at once):
/// `new_samples` walks the body again and parses them one at a time.
pub struct Scan<'a> {
    body: &'a str,
    pub known: Vec<KnownSample>,
    /// Lines that need a full parse.
    pub new_lines: usize,
    /// False after a TYPE change: every line is new.
    use_index: bool,
}

/// A sample parsed in full, with its series text as written (for `SeriesIndex::learn`).
pub struct NewSample<'a> {
    pub sample: Sample,
    pub text: &'a str,
}

impl Scan<'_> {
    /// Every sample line.
    pub fn len(&self) -> usize {
        self.known.len() + self.new_lines
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Scan<'a> {
    /// The lines the index did not resolve, in order, parsed one at a time (`index` as it was
    /// at the scan: learn the new series after the walk).
    pub fn new_samples<'s>(
        &self,
        index: &'s SeriesIndex,
    ) -> impl Iterator<Item = NewSample<'a>> + 's
    where
        'a: 's,
    {
        let mut walk = parse::samples(self.body);
        let use_index = self.use_index;
        let mut cursor = Cursor::new(index);
        // The index has not changed since the scan: exactly its new lines come out.
        let mut left = self.new_lines;
        std::iter::from_fn(move || loop {
            if left == 0 {
                return None;
            }
            let (_, line) = walk.next_line()?.ok()?;
            if use_index && cursor.resolve(line).is_some() {
                continue;
            }
            left -= 1;
            // Checked by the scan: a failure here cannot happen; skip rather than panic.
            let Ok((mut sample, text)) = parse::parse_sample_line(line) else {
                continue;
            };
            sample.counter_like = walk.counter_like(&sample.name);
            return Some(NewSample { sample, text });
        })
    }
}

/// What the index knows of a series text.
struct Known {
    /// `parse::text_hash` of the text.
    hash: u64,
    /// Length of the text: guards the hash a little more.
    len: u32,
    /// The store's slot of the series (None: no rule selects it, it is not stored).
    slot: Option<Slot>,
    /// Where the series' line was in the last scrape that relaid the entries out.
    rank: u32,
    id: SeriesId,
    /// Indices of the rules selecting the series (empty: none does, it is not stored).
    rules: Arc<[usize]>,
}

/// One target's raw series text → series, learnt from fully parsed lines. The owner keeps it
/// true: it learns only series it has stored (or that no rule selects), forgets the ones it
/// drops, and clears it when the rules change.
///
/// Entries are kept in the order the target writes its lines, and each lookup first tries the
/// entry after the previous hit: a target writes its series in the same order every scrape,
/// so a steady-state scan walks the entries front to back instead of probing a hash table at
/// random (at 100k series that probe was a cache miss per line, a fifth of the pipeline).
#[derive(Default)]
pub struct SeriesIndex {
    /// Keyed by `parse::text_hash` of the text: the entry's position.
    by_text: IdMap<u32>,
    entries: Vec<Known>,
    /// The TYPE lines the entries were learnt under: their kind (counter or not) holds only
    /// while the body declares the same types.
    types: u64,
}

/// A lookup that follows the body's order through the entries.
struct Cursor<'i> {
    index: &'i SeriesIndex,
    next: usize,
    /// Lookups the order did not predict (found through the hash table).
    misses: usize,
}

impl<'i> Cursor<'i> {
    fn new(index: &'i SeriesIndex) -> Self {
        Self {
            index,
            next: 0,
            misses: 0,
        }
    }

    /// The entry of the sample line `line` and its value, if its series is known.
    fn resolve(&mut self, line: &str) -> Option<(usize, &'i Known, f64)> {
        let index = self.index;
        let next = self.next;
        let found = parse::split_known(line, |hash, text| {
            if let Some(k) = index.entries.get(next) {
                if k.hash == hash && k.len as usize == text.len() {
                    return Some(next);
                }
            }
            index.position(hash, text)
        });
        let (at, value) = found?;
        self.misses += usize::from(at != next);
        self.next = at + 1;
        Some((at, &index.entries[at], value))
    }
}

impl SeriesIndex {
    pub fn learn(&mut self, text: &str, id: SeriesId, slot: Option<Slot>, rules: Arc<[usize]>) {
        let (Ok(len), Ok(at)) = (u32::try_from(text.len()), u32::try_from(self.entries.len()))
        else {
            return;
        };
        let hash = parse::text_hash(text);
        let known = Known {
            hash,
            len,
            slot,
            rank: u32::MAX,
            id,
            rules,
        };
        match self.by_text.entry(hash) {
            // The same text again (a repeated line): the first one stays.
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(at);
                self.entries.push(known);
            }
        }
    }

    /// Forgets the series in `gone` (they left the store).
    pub fn forget(&mut self, gone: &IdSet) {
        if !gone.is_empty() {
            self.retain(|id| !gone.contains(&id));
        }
    }

    /// Keeps the series for which `keep(id)` holds.
    pub fn retain(&mut self, keep: impl Fn(SeriesId) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|k| keep(k.id));
        if self.entries.len() != before {
            self.reindex();
        }
    }

    /// Indices of the rules that select the series of a known sample.
    pub fn rules(&self, sample: &KnownSample) -> &[usize] {
        self.entries
            .get(sample.entry as usize)
            .map_or(&[], |k| &k.rules)
    }

    pub fn clear(&mut self) {
        self.by_text.clear();
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, hash: u64, text: &str) -> Option<usize> {
        let at = *self.by_text.get(&hash)? as usize;
        let k = self.entries.get(at)?;
        (k.len as usize == text.len()).then_some(at)
    }

    fn reindex(&mut self) {
        self.by_text.clear();
        for (at, k) in self.entries.iter().enumerate() {
            self.by_text.insert(k.hash, at as u32);
        }
    }

    /// Checks every sample line of `body` (its syntax, and the target's `limits`) and
    /// resolves the known ones. A TYPE change makes every line new. Series the index knows
    /// were checked against the same limits when they were new.
    pub fn scan<'a>(&mut self, body: &'a str, limits: &Limits) -> Result<Scan<'a>, ScrapeError> {
        let (scan, types, ranks) = self.scan_once(body, true, limits)?;
        let scan = if types == self.types || self.entries.is_empty() {
            self.types = types;
            if let Some(ranks) = ranks {
                self.relayout(&ranks);
            }
            scan
        } else {
            // The body declares other types than the entries were learnt under.
            self.clear();
            self.types = types;
            self.scan_once(body, false, limits)?.0
        };
        let n = scan.len();
        if limits.sample_limit > 0 && n > limits.sample_limit {
            return Err(ScrapeError::Limit(format!(
                "{n} samples, more than sample_limit {}",
                limits.sample_limit
            )));
        }
        Ok(scan)
    }

    /// Puts the entries in the order this scrape's lines resolved them (`ranks`: entry
    /// positions in line order), the entries it did not see after them.
    fn relayout(&mut self, order: &[u32]) {
        for k in &mut self.entries {
            k.rank = u32::MAX;
        }
        for (line, &at) in order.iter().enumerate() {
            if let Some(k) = self.entries.get_mut(at as usize) {
                k.rank = k.rank.min(line as u32);
            }
        }
        self.entries.sort_by_key(|k| k.rank);
        self.reindex();
    }

    /// The scan, its TYPE fingerprint, and the order its lines resolved the entries in when
    /// that order differed enough from the entries' to be worth a relayout.
    #[allow(clippy::type_complexity)]
    fn scan_once<'a>(
        &self,
        body: &'a str,
        use_index: bool,
        limits: &Limits,
    ) -> Result<(Scan<'a>, u64, Option<Vec<u32>>), ScrapeError> {
        let mut walk = parse::samples(body);
        let mut scan = Scan {
            body,
            known: Vec::with_capacity(self.entries.len()),
            new_lines: 0,
            use_index,
        };
        let mut labels: Vec<(&str, Cow<str>)> = Vec::new();
        let mut cursor = Cursor::new(self);
        // Positions are kept only once the order has drifted (most scans never).
        let mut order: Option<Vec<u32>> = None;
        while let Some(next) = walk.next_line() {
            let (i, line) = next.map_err(ScrapeError::Parse)?;
            if use_index {
                if let Some((at, k, value)) = cursor.resolve(line) {
                    scan.known.push(KnownSample {
                        id: k.id,
                        slot: k.slot,
                        value,
                        entry: at as u32,
                    });
                    if order.is_none() && cursor.misses > 0 {
                        // Every hit before the first miss was predicted: entries 0, 1, 2, ...
                        order = Some((0..scan.known.len() as u32 - 1).collect());
                    }
                    if let Some(order) = &mut order {
                        order.push(at as u32);
                    }
                    continue;
                }
            }
            parse::check_sample_line(line, &mut labels)
                .map_err(|message| ScrapeError::Parse(ParseError { line: i, message }))?;
            limits
                .check_labels(labels.iter().map(|(k, v)| (*k, v.as_ref())))
                .map_err(|why| ScrapeError::Limit(format!("line {i}: {why}")))?;
            scan.new_lines += 1;
        }
        let drifted = cursor.misses > 16 + self.entries.len() / 32;
        let order = order.filter(|_| drifted);
        Ok((scan, walk.types_fingerprint(), order))
    }
}
