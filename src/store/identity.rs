//! Who a series is, in two allocations: the metric name and every label name and value back
//! to back in one string, with their end offsets (at 100k series the former String per name,
//! label name and value cost ~20 MB more).

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct SeriesIdentity {
    pub target: Arc<str>,
    /// The metric name, then each label name and value.
    text: Box<str>,
    /// End offset in `text` of the name and of each label name and value.
    ends: Box<[u32]>,
    pub counter_like: bool,
}

impl SeriesIdentity {
    /// A series of `target` named `name` with `labels` (sorted by name, as parsed).
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        target: Arc<str>,
        name: &str,
        labels: &[(K, V)],
        counter_like: bool,
    ) -> Self {
        let parts =
            std::iter::once(name).chain(labels.iter().flat_map(|(k, v)| [k.as_ref(), v.as_ref()]));
        let mut text = String::with_capacity(parts.clone().map(str::len).sum());
        let mut ends = Vec::with_capacity(1 + 2 * labels.len());
        for p in parts {
            text.push_str(p);
            // Scrape bodies are bounded far below 4 GiB, so an offset always fits.
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        Self {
            target,
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            counter_like,
        }
    }

    /// Starts fetching the name and label text (a compaction walks every series' in turn).
    pub fn prefetch(&self) {
        if let Some(first) = self.ends.first() {
            crate::prefetch::prefetch(first);
        }
        if let Some(first) = self.text.as_bytes().first() {
            crate::prefetch::prefetch(first);
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        let end = self.ends.get(i).map_or(start, |e| *e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        self.part(0)
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        (0..self.ends.len().saturating_sub(1) / 2)
            .map(|i| (self.part(1 + 2 * i), self.part(2 + 2 * i)))
    }

    /// The labels as owned pairs (for events).
    pub fn labels_owned(&self) -> Vec<(String, String)> {
        self.labels()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let labels = [("a", ""), ("b", "x\"y"), ("c", "ü")];
        let id = SeriesIdentity::new("t".into(), "up", &labels, true);
        assert_eq!(id.name(), "up");
        assert_eq!(id.labels().collect::<Vec<_>>(), labels);
        let bare = SeriesIdentity::new::<&str, &str>("t".into(), "up", &[], false);
        assert_eq!((bare.name(), bare.labels().len()), ("up", 0));
    }
}
