//! The first pass over a scrape body: every sample line resolved to a series before any is
//! applied (a malformed line fails the scrape whole). Lines whose series text was seen before
//! skip label parsing through a per-target index from the raw text to the series id, so a
//! steady-state scrape allocates nothing per sample.

use crate::scrape::parse::{self, ParseError};
use crate::scrape::Sample;
use crate::store::{IdMap, IdSet, SeriesId};
use std::borrow::Cow;
use std::sync::Arc;

/// A sample line whose series the index resolved from its text.
pub struct KnownSample {
    pub id: SeriesId,
    pub counter_like: bool,
    pub value: f64,
    /// Indices of the rules that select the series.
    pub rules: Arc<[usize]>,
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
    /// The lines the index did not resolve, in order, parsed one at a time. Lines learnt in
    /// the meantime are skipped too (a repeated series: the first one wins anyway).
    pub fn new_samples<'s>(
        &self,
        index: &'s SeriesIndex,
    ) -> impl Iterator<Item = NewSample<'a>> + 's
    where
        'a: 's,
    {
        let mut walk = parse::samples(self.body);
        let use_index = self.use_index;
        std::iter::from_fn(move || loop {
            let (_, line) = walk.next_line()?.ok()?;
            if use_index && parse::split_known(line, |h, t| index.get(h, t)).is_some() {
                continue;
            }
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
    /// Length of the text: guards the hash a little more.
    len: u32,
    id: SeriesId,
    counter_like: bool,
    /// Indices of the rules selecting the series (empty: none does, it is not stored).
    rules: Arc<[usize]>,
}

/// One target's raw series text → series, learnt from fully parsed lines. The owner keeps it
/// true: it learns only series it has stored (or that no rule selects), forgets the ones it
/// drops, and clears it when the rules change.
#[derive(Default)]
pub struct SeriesIndex {
    /// Keyed by `parse::text_hash` of the text.
    by_text: IdMap<Known>,
    /// The TYPE lines the entries were learnt under: their kind (counter or not) holds only
    /// while the body declares the same types.
    types: u64,
}

impl SeriesIndex {
    pub fn learn(&mut self, text: &str, id: SeriesId, counter_like: bool, rules: Arc<[usize]>) {
        let Ok(len) = u32::try_from(text.len()) else {
            return;
        };
        let known = Known {
            len,
            id,
            counter_like,
            rules,
        };
        self.by_text.insert(parse::text_hash(text), known);
    }

    /// Forgets the series in `gone` (they left the store).
    pub fn forget(&mut self, gone: &IdSet) {
        if !gone.is_empty() {
            self.retain(|id| !gone.contains(&id));
        }
    }

    /// Keeps the series for which `keep(id)` holds.
    pub fn retain(&mut self, keep: impl Fn(SeriesId) -> bool) {
        self.by_text.retain(|_, k| keep(k.id));
    }

    pub fn clear(&mut self) {
        self.by_text.clear();
    }

    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }

    fn get(&self, hash: u64, text: &str) -> Option<&Known> {
        let k = self.by_text.get(&hash)?;
        (k.len as usize == text.len()).then_some(k)
    }

    /// Checks every sample line of `body` and resolves the known ones. A TYPE change makes
    /// every line new.
    pub fn scan<'a>(&mut self, body: &'a str) -> Result<Scan<'a>, ParseError> {
        let (scan, types) = self.scan_once(body, true)?;
        if types == self.types || self.by_text.is_empty() {
            self.types = types;
            return Ok(scan);
        }
        // The body declares other types than the entries were learnt under.
        self.by_text.clear();
        self.types = types;
        Ok(self.scan_once(body, false)?.0)
    }

    fn scan_once<'a>(&self, body: &'a str, use_index: bool) -> Result<(Scan<'a>, u64), ParseError> {
        let mut walk = parse::samples(body);
        let mut scan = Scan {
            body,
            known: Vec::with_capacity(self.by_text.len()),
            new_lines: 0,
            use_index,
        };
        let mut labels: Vec<(&str, Cow<str>)> = Vec::new();
        while let Some(next) = walk.next_line() {
            let (i, line) = next?;
            if use_index {
                if let Some((k, value)) = parse::split_known(line, |h, t| self.get(h, t)) {
                    scan.known.push(KnownSample {
                        id: k.id,
                        counter_like: k.counter_like,
                        value,
                        rules: k.rules.clone(),
                    });
                    continue;
                }
            }
            parse::check_sample_line(line, &mut labels)
                .map_err(|message| ParseError { line: i, message })?;
            scan.new_lines += 1;
        }
        Ok((scan, walk.types_fingerprint()))
    }
}
