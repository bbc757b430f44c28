//! The history window of one (rule, series): the previous `capacity` values with running
//! statistics, so a new sample costs O(1) (plus an O(window) memmove for the sorted copy
//! that only IQR rules ask for).
//!
//! A window either owns its values or, when they are the caller's already (a rule on the raw
//! values of a series whose store keeps them), only counts them: then the caller hands over
//! the value that leaves on each push, and the values themselves when an exact recompute is
//! due. At 100k series that saves the 48 MB a second copy of every window cost.

use std::collections::VecDeque;

/// The previous values of one series under one rule's transform, oldest first.
#[derive(Debug, Clone)]
pub struct Window {
    capacity: u32,
    /// The values, when owned; empty for a shared window.
    values: VecDeque<f64>,
    shared: bool,
    /// Number of values in the window.
    count: u32,
    /// Running sums of `v - shift`; shifting keeps the variance numerically stable when
    /// values are large and close together (e.g. a byte counter near 1e12).
    shift: f64,
    sum: f64,
    sum_sq: f64,
    /// Pushes since the sums were last recomputed exactly; bounds rounding drift.
    pushes_since_exact: u32,
    /// Sorted copy of the values, kept only when a detector needs quantiles.
    sorted: Option<Vec<f64>>,
}

impl Window {
    /// An empty window keeping at most `capacity` values; `sorted` keeps a sorted copy.
    pub fn new(capacity: usize, sorted: bool) -> Self {
        // Rules cap windows at 1e6; u32 counters keep a window (one per rule and series) small.
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Self {
            capacity: capacity as u32,
            values: VecDeque::with_capacity(capacity),
            shared: false,
            count: 0,
            shift: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            pushes_since_exact: 0,
            sorted: sorted.then(|| Vec::with_capacity(capacity)),
        }
    }

    /// A window over values the caller keeps (see the module doc), holding the last
    /// `capacity` of `history` (oldest first, finite). Push with `push_shared`.
    pub fn shared(capacity: usize, sorted: bool, history: impl Iterator<Item = f64>) -> Self {
        let mut w = Self::new(capacity, sorted);
        w.values = VecDeque::new();
        w.shared = true;
        let all: Vec<f64> = history.filter(|v| v.is_finite()).collect();
        w.recompute_from(&all[all.len().saturating_sub(w.capacity as usize)..]);
        w
    }

    /// Most values held.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Whether the values live with the caller.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values, oldest first; none for a shared window (they are the caller's).
    pub fn values(&self) -> impl DoubleEndedIterator<Item = f64> + ExactSizeIterator + '_ {
        self.values.iter().copied()
    }

    /// Values sorted ascending, when the window was built with `sorted`.
    pub fn sorted(&self) -> Option<&[f64]> {
        self.sorted.as_deref()
    }

    /// Appends a finite value, evicting the oldest when full. Non-finite values are ignored:
    /// NaN and ±Inf carry no statistical information and would poison the sums.
    pub fn push(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.shared {
            // Misuse: a shared window cannot evict what it does not hold. Own from now on.
            self.shared = false;
            self.count = 0;
            self.values.clear();
            if let Some(s) = &mut self.sorted {
                s.clear();
            }
        }
        let evicted = if self.values.len() == self.capacity as usize {
            self.values.pop_front()
        } else {
            None
        };
        self.values.push_back(value);
        if self.absorb(value, evicted) {
            let exact = exact_sums(self.values.make_contiguous());
            self.set_exact(exact);
        }
    }

    /// Appends a finite value to a shared window. `evicted` is the value leaving it (the
    /// oldest, when it is full); `values` gives the window after the push, oldest first, and
    /// is called only when an exact recompute is due (or `evicted` is missing when needed).
    pub fn push_shared<I: Iterator<Item = f64>>(
        &mut self,
        value: f64,
        evicted: Option<f64>,
        values: impl FnOnce() -> I,
    ) {
        if !value.is_finite() {
            return;
        }
        let missing = self.count == self.capacity && evicted.is_none();
        let due = self.absorb(value, evicted);
        if missing {
            // Out of step with the caller's values: rebuild everything from them.
            let all: Vec<f64> = values().filter(|v| v.is_finite()).collect();
            self.recompute_from(&all[all.len().saturating_sub(self.capacity as usize)..]);
        } else if due {
            // Only the sums drift; the count and the sorted copy are exact.
            let all: Vec<f64> = values().filter(|v| v.is_finite()).collect();
            self.set_exact(exact_sums(
                &all[all.len().saturating_sub(self.capacity as usize)..],
            ));
        }
    }

    /// Takes `value` (and `evicted`, when the window was full) into the count, the sums and
    /// the sorted copy; true when an exact recompute is due.
    fn absorb(&mut self, value: f64, evicted: Option<f64>) -> bool {
        if self.count == 0 {
            self.shift = value;
        }
        let mut dominated = false;
        if self.count == self.capacity {
            self.count -= 1;
            if let Some(old) = evicted {
                let d = old - self.shift;
                // An evicted value that dominated the sums takes their precision with it
                // (1e15 + 1 − 1e15 = 0): recompute exactly. Rare: an outlier leaving.
                dominated =
                    d * d > 0.5 * self.sum_sq || !(d * d).is_finite() || !self.sum_sq.is_finite();
                self.sum -= d;
                self.sum_sq -= d * d;
                if let Some(sorted) = &mut self.sorted {
                    if let Ok(i) = sorted.binary_search_by(|p| p.total_cmp(&old)) {
                        sorted.remove(i);
                    }
                }
            }
        }
        self.count += 1;
        let d = value - self.shift;
        self.sum += d;
        self.sum_sq += d * d;
        if let Some(sorted) = &mut self.sorted {
            let i = sorted.partition_point(|p| p.total_cmp(&value).is_lt());
            sorted.insert(i, value);
        }
        self.pushes_since_exact += 1;
        dominated || self.pushes_since_exact >= self.capacity || self.offset_dominates()
    }

    /// Whether the values moved so far from `shift` that the sums keep too few digits of
    /// their spread (sum² / n within 1e-9 of sum_sq), or overflowed: then re-centre.
    fn offset_dominates(&self) -> bool {
        if !self.sum.is_finite() || !self.sum_sq.is_finite() {
            return true;
        }
        let n = self.count as f64;
        self.sum_sq > 0.0 && self.sum_sq - self.sum * self.sum / n <= 1e-9 * self.sum_sq
    }

    /// A shared window's state rebuilt from `values` (the whole window): count, sums and
    /// sorted copy.
    fn recompute_from(&mut self, values: &[f64]) {
        self.count = values.len() as u32;
        if let Some(sorted) = &mut self.sorted {
            sorted.clear();
            sorted.extend_from_slice(values);
            sorted.sort_by(f64::total_cmp);
        }
        self.set_exact(exact_sums(values));
    }

    fn set_exact(&mut self, (shift, sum, sum_sq): (f64, f64, f64)) {
        self.pushes_since_exact = 0;
        self.shift = shift;
        self.sum = sum;
        self.sum_sq = sum_sq;
    }

    /// Arithmetic mean, None when empty.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count;
        (n > 0).then(|| self.shift + self.sum / n as f64)
    }

    /// Sample standard deviation (n − 1), None with fewer than two values.
    pub fn stddev(&self) -> Option<f64> {
        let n = self.count;
        if n < 2 {
            return None;
        }
        let nf = n as f64;
        let var = (self.sum_sq - self.sum * self.sum / nf) / (nf - 1.0);
        Some(var.max(0.0).sqrt())
    }
}

/// Shift (the mean) and the sums of `v - shift` and its square, computed exactly.
fn exact_sums(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let shift = values.iter().sum::<f64>() / values.len() as f64;
    let (mut s, mut s2) = (0.0, 0.0);
    for v in values {
        let d = v - shift;
        s += d;
        s2 += d * d;
    }
    (shift, s, s2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_outlier_leaving_the_window_leaves_exact_statistics() {
        // Found by the detector fuzz target: after 1e15 (or 1e300) is evicted, the running
        // sums had lost the small values' contribution until the periodic recompute.
        for outlier in [1e15, 1e300, -1e300, -6.8e124] {
            let mut w = Window::new(3, false);
            for v in [outlier, 1.0, 2.0, 3.0] {
                w.push(v);
            }
            assert_eq!(w.mean(), Some(2.0), "after {outlier}");
            assert_eq!(w.stddev(), Some(1.0), "after {outlier}");
        }
        // Two nearly equal huge values, then small ones: the shift stays far from them.
        let mut w = Window::new(5, false);
        for v in [
            -6.835577954926025e124,
            -6.835577954925989e124,
            1.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ] {
            w.push(v);
        }
        assert_eq!(w.mean(), Some(1.0));
        assert_eq!(w.stddev(), Some(0.0));
    }

    fn naive(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn evicts_oldest() {
        let mut w = Window::new(3, true);
        for v in [1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.values().collect::<Vec<_>>(), vec![2.0, 3.0, 4.0]);
        assert_eq!(w.sorted().unwrap(), &[2.0, 3.0, 4.0]);
        assert_eq!(w.mean(), Some(3.0));
        assert_eq!(w.stddev(), Some(1.0));
    }

    #[test]
    fn ignores_non_finite() {
        let mut w = Window::new(3, false);
        w.push(f64::NAN);
        w.push(f64::INFINITY);
        w.push(1.0);
        assert_eq!(w.len(), 1);
    }

    proptest! {
        /// A shared window fed from the caller's copy (kept one longer, like the store's ring)
        /// is the owned window, step by step, to the bit.
        #[test]
        fn shared_is_owned(
            values in prop::collection::vec(-1e6f64..1e6, 1..300),
            offset in prop::sample::select(vec![0.0, 1e12]),
            cap in 1usize..80,
            sorted in any::<bool>(),
        ) {
            let mut own = Window::new(cap, sorted);
            let mut shared = Window::shared(cap, sorted, std::iter::empty());
            let mut kept: VecDeque<f64> = VecDeque::new();
            for v in values.iter().map(|v| v + offset) {
                let evicted = (shared.len() == cap).then(|| kept[kept.len() - cap]);
                kept.push_back(v);
                if kept.len() > cap + 1 {
                    kept.pop_front();
                }
                let tail = || kept.iter().copied().skip(kept.len().saturating_sub(cap));
                shared.push_shared(v, evicted, tail);
                own.push(v);
                prop_assert!(shared.is_shared());
                prop_assert_eq!(shared.len(), own.len());
                prop_assert_eq!(shared.mean(), own.mean());
                prop_assert_eq!(shared.stddev(), own.stddev());
                prop_assert_eq!(shared.sorted(), own.sorted());
            }
            // Built from history, it equals the owned window fed the same values.
            let rebuilt = Window::shared(cap, sorted, kept.iter().copied());
            prop_assert_eq!(rebuilt.len(), own.len());
            prop_assert_eq!(rebuilt.sorted(), own.sorted());
        }

        /// Incremental statistics agree with the naive formula over the same window.
        #[test]
        fn incremental_matches_naive(
            values in prop::collection::vec(-1e6f64..1e6, 2..300),
            offset in prop::sample::select(vec![0.0, 1e9, -1e9, 1e12]),
            cap in 2usize..80,
        ) {
            let mut w = Window::new(cap, true);
            let shifted: Vec<f64> = values.iter().map(|v| v + offset).collect();
            for (i, v) in shifted.iter().enumerate() {
                w.push(*v);
                let start = (i + 1).saturating_sub(cap);
                let slice = &shifted[start..=i];
                if slice.len() >= 2 {
                    let (mean, std) = naive(slice);
                    let tol = 1e-6 * (1.0 + mean.abs());
                    prop_assert!((w.mean().unwrap() - mean).abs() <= tol);
                    prop_assert!((w.stddev().unwrap() - std).abs() <= 1e-6 * (1.0 + std) + 1e-9 * offset.abs());
                    let mut sorted = slice.to_vec();
                    sorted.sort_by(f64::total_cmp);
                    prop_assert_eq!(w.sorted().unwrap(), &sorted[..]);
                }
            }
        }
    }
}
