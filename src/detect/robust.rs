//! The detectors that judge against something other than the window's mean and standard
//! deviation: the median and MAD (robust to the outliers in the history), and an
//! exponentially weighted mean and variance (follows a drifting baseline).

use super::{Direction, Verdict, Window, MIN_STDDEV};

/// Scales the MAD to a standard deviation for normal data (1 / Φ⁻¹(3/4)).
const MAD_SCALE: f64 = 1.4826;
/// Scales the mean absolute deviation to a standard deviation for normal data (√(π/2)).
const MEAN_AD_SCALE: f64 = 1.253314;

pub(super) fn mad(v: &mut Verdict, history: &Window, x: f64, min_samples: usize, k: f64) {
    if history.len() < min_samples {
        return;
    }
    let Some(s) = history.sorted().filter(|s| !s.is_empty()) else {
        return;
    };
    mad_of_sorted(v, s, x, k);
}

/// `x` against the median and MAD of the sorted values `s` (a window's, or a peer group's).
pub(super) fn mad_of_sorted(v: &mut Verdict, s: &[f64], x: f64, k: f64) {
    let median = median_of(s);
    let mut scale = MAD_SCALE * median_deviation(s, median);
    if scale <= 0.0 {
        scale = MEAN_AD_SCALE * s.iter().map(|v| (v - median).abs()).sum::<f64>() / s.len() as f64;
    }
    let off = (x - median).abs();
    if scale > 0.0 && scale.is_finite() {
        v.lower_bound = Some(median - k * scale);
        v.upper_bound = Some(median + k * scale);
        v.score = off / (k * scale);
        v.anomalous = v.score > 1.0;
    } else {
        // Every value of the history the same: any other value is off the plateau; the score
        // stays monotone in the distance.
        v.lower_bound = Some(median);
        v.upper_bound = Some(median);
        v.anomalous = off > 0.0;
        v.score = if v.anomalous {
            1.0 + off / median.abs().max(1.0)
        } else {
            0.0
        };
    }
    if off > 0.0 {
        v.direction = Some(if x > median {
            Direction::Rising
        } else {
            Direction::Falling
        });
    }
}

pub(super) fn median_of(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The median of |s_i − m| over sorted `s`, without sorting the deviations: they rise to the
/// left and to the right of `m`, so the two runs are merged up to the middle, O(n / 2).
fn median_deviation(s: &[f64], m: f64) -> f64 {
    let n = s.len();
    let split = s.partition_point(|v| *v < m);
    let (mut left, mut right) = (split, split);
    let mut next = || {
        let l = left.checked_sub(1).map(|i| m - s[i]);
        let r = s.get(right).map(|v| v - m);
        match (l, r) {
            (Some(l), Some(r)) if l <= r => {
                left -= 1;
                l
            }
            (Some(l), None) => {
                left -= 1;
                l
            }
            (_, Some(r)) => {
                right += 1;
                r
            }
            (None, None) => 0.0,
        }
    };
    // The (n / 2)th smallest deviation, and the one before it for an even n.
    let (mut before, mut middle) = (0.0, 0.0);
    for _ in 0..=n / 2 {
        before = middle;
        middle = next();
    }
    if n % 2 == 1 {
        middle
    } else {
        (before + middle) / 2.0
    }
}

/// An exponentially weighted mean and variance of a series' values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ewma {
    mean: f64,
    var: f64,
    /// Values folded in.
    n: u64,
}

impl Ewma {
    /// Folds in `x` with weight `alpha` (the incremental form of West, 1979).
    pub fn push(&mut self, alpha: f64, x: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            let step = alpha * d;
            self.mean += step;
            self.var = (1.0 - alpha) * (self.var + d * step);
        }
        self.n += 1;
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Values folded in.
    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn stddev(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// `full`: the rule's window is full, so a flat history is one (see `plateau`).
pub(super) fn ewma(
    v: &mut Verdict,
    e: &Ewma,
    x: f64,
    min_samples: usize,
    z_threshold: f64,
    full: bool,
) {
    if e.n < min_samples.max(2) as u64 {
        return;
    }
    let (mean, std) = (e.mean(), e.stddev());
    v.baseline_mean = Some(mean);
    v.baseline_stddev = Some(std);
    v.lower_bound = Some(mean - z_threshold * std);
    v.upper_bound = Some(mean + z_threshold * std);
    if std.is_nan() || std < MIN_STDDEV {
        v.zscore = None;
        if full {
            super::plateau(v, mean, x);
        }
        return;
    }
    let z = (x - mean) / std;
    v.zscore = Some(z);
    v.score = z.abs() / z_threshold;
    v.anomalous = z.abs() > z_threshold;
    v.direction = Some(if z >= 0.0 {
        Direction::Rising
    } else {
        Direction::Falling
    });
}
