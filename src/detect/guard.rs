//! What a rule adds to any detector's verdict, the same for every method: the side it
//! watches (`direction`), the smallest deviation that matters (`min_delta`, `min_delta_pct`),
//! when a firing alert's condition counts as cleared (`resolve_below`), and after how long
//! a shift that lasts is taken as the new normal (`relearn_after`). Pure, like the detectors.

use super::{Direction, Verdict};

/// Which deviations a rule reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// Above the baseline only.
    Up,
    /// Below the baseline only.
    Down,
    #[default]
    Both,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Up => "up",
            Side::Down => "down",
            Side::Both => "both",
        }
    }
}

/// When a lasting shift stops being an incident and becomes the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relearn {
    /// Never: the alert fires until the value comes back.
    Never,
    /// After this many consecutive samples kept out of the baseline (the default: the
    /// rule's window, or a season's worth of samples; see `Guard::relearn_due`).
    Samples(u32),
    /// After this long kept out of the baseline (`relearn_after` in rules.yaml).
    After(i64),
}

/// A rule's judgement beside its detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    pub side: Side,
    /// Absolute deviation from the baseline below which nothing is anomalous.
    pub min_delta: f64,
    /// The same relative to |baseline|, in percent.
    pub min_delta_pct: f64,
    /// While an alert is firing its condition is score ≥ this (< 1: hysteresis).
    pub resolve_below: f64,
    pub relearn: Relearn,
    /// `threshold_mode: calibrated`: the threshold scales to where this series' own scores
    /// exceed it about this many times a day (`calibrate.rs`); None: the method's threshold.
    pub alerts_per_day: Option<f64>,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            side: Side::Both,
            min_delta: 0.0,
            min_delta_pct: 0.0,
            resolve_below: 1.0,
            relearn: Relearn::Never,
            alerts_per_day: None,
        }
    }
}

impl Guard {
    /// Applies side and minimum deviation to `v`, the verdict on `x`. The baseline is the
    /// middle of the verdict's band (the mean, the median, the quartiles' midpoint, a trend's
    /// first value), else its mean; a verdict without either (threshold) is left alone.
    /// Afterwards `score ≥ 1` still means anomalous: the score is capped at the deviation
    /// over the minimum, and the band widened to it.
    #[inline]
    pub fn apply(&self, v: &mut Verdict, x: f64) {
        if self.side == Side::Both && self.min_delta <= 0.0 && self.min_delta_pct <= 0.0 {
            // Nothing to apply (most rules): every sample passes here.
            return;
        }
        let center = match (v.lower_bound, v.upper_bound) {
            (Some(l), Some(u)) => (l + u) / 2.0,
            _ => match v.baseline_mean {
                Some(m) => m,
                None => return,
            },
        };
        let up = match v.direction {
            Some(d) => d == Direction::Rising,
            None => x >= center,
        };
        let wrong_side = match self.side {
            Side::Up => !up,
            Side::Down => up,
            Side::Both => false,
        };
        if wrong_side {
            v.anomalous = false;
            v.score = 0.0;
            return;
        }
        let need = self
            .min_delta
            .max(self.min_delta_pct / 100.0 * center.abs());
        if need > 0.0 {
            let off = (x - center).abs();
            v.score = v.score.min(off / need);
            v.anomalous &= off >= need;
            v.lower_bound = v.lower_bound.map(|l| l.min(center - need));
            v.upper_bound = v.upper_bound.map(|u| u.max(center + need));
        }
    }

    /// The alert condition: the verdict, or while an alert is firing (`open`), the score
    /// staying at or above `resolve_below`.
    #[inline]
    pub fn condition(&self, v: &Verdict, open: bool) -> bool {
        if open && self.resolve_below < 1.0 {
            v.anomalous || v.score >= self.resolve_below
        } else {
            v.anomalous
        }
    }

    /// Whether a shift kept out of the baseline for `samples` samples since `since_ms` is,
    /// at `now_ms`, the new normal.
    pub fn relearn_due(&self, samples: u32, since_ms: i64, now_ms: i64) -> bool {
        match self.relearn {
            Relearn::Never => false,
            Relearn::Samples(n) => samples >= n.max(1),
            Relearn::After(ms) => now_ms - since_ms >= ms.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(mean: f64, half: f64, score: f64, dir: Direction) -> Verdict {
        Verdict {
            anomalous: score > 1.0,
            score,
            baseline_mean: Some(mean),
            baseline_stddev: Some(half / 3.0),
            lower_bound: Some(mean - half),
            upper_bound: Some(mean + half),
            direction: Some(dir),
            ..Verdict::default()
        }
    }

    #[test]
    fn a_tiny_spread_does_not_make_a_trivial_change_anomalous() {
        // node_load1 near idle: mean 0.01, std 0.005; 0.07 is z = 12, yet 0.06 above.
        let g = Guard {
            min_delta: 0.5,
            ..Guard::default()
        };
        let mut v = band(0.01, 0.015, 4.0, Direction::Rising);
        g.apply(&mut v, 0.07);
        assert!(!v.anomalous);
        assert!((v.score - 0.12).abs() < 1e-12, "{}", v.score);
        assert_eq!(v.upper_bound, Some(0.51));
        // 2.0 is past both.
        let mut v = band(0.01, 0.015, 130.0, Direction::Rising);
        g.apply(&mut v, 2.0);
        assert!(v.anomalous);
        assert!((v.score - 1.99 / 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_relative_minimum_scales_with_the_baseline() {
        let g = Guard {
            min_delta_pct: 10.0,
            ..Guard::default()
        };
        // Baseline 200: 10 % is 20; a move of 15 is not enough, 25 is.
        let mut v = band(200.0, 3.0, 5.0, Direction::Rising);
        g.apply(&mut v, 215.0);
        assert!(!v.anomalous);
        assert!((v.score - 0.75).abs() < 1e-12);
        let mut v = band(200.0, 3.0, 8.0, Direction::Falling);
        g.apply(&mut v, 175.0);
        assert!(v.anomalous);
        assert_eq!(v.lower_bound, Some(180.0));
    }

    #[test]
    fn a_one_sided_rule_ignores_the_other_side() {
        let up = Guard {
            side: Side::Up,
            ..Guard::default()
        };
        let mut v = band(10.0, 3.0, 5.0, Direction::Falling);
        up.apply(&mut v, 0.0);
        assert!(!v.anomalous);
        assert_eq!(v.score, 0.0);
        let mut v = band(10.0, 3.0, 5.0, Direction::Rising);
        up.apply(&mut v, 25.0);
        assert!(v.anomalous);
        let down = Guard {
            side: Side::Down,
            ..Guard::default()
        };
        let mut v = band(10.0, 3.0, 5.0, Direction::Rising);
        down.apply(&mut v, 25.0);
        assert!(!v.anomalous);
    }

    #[test]
    fn a_threshold_verdict_is_left_alone() {
        let g = Guard {
            min_delta: 100.0,
            side: Side::Down,
            ..Guard::default()
        };
        let mut v = Verdict {
            anomalous: true,
            score: 1.5,
            upper_bound: Some(10.0),
            direction: Some(Direction::Rising),
            ..Verdict::default()
        };
        let before = v.clone();
        g.apply(&mut v, 15.0);
        assert_eq!(v, before);
    }

    #[test]
    fn hysteresis_holds_an_open_alert_until_the_score_falls_below() {
        let g = Guard {
            resolve_below: 0.7,
            ..Guard::default()
        };
        let v = |score: f64| Verdict {
            anomalous: score > 1.0,
            score,
            ..Verdict::default()
        };
        assert!(
            !g.condition(&v(0.8), false),
            "opens only past the threshold"
        );
        assert!(g.condition(&v(1.2), false));
        assert!(g.condition(&v(0.8), true), "stays open above resolve_below");
        assert!(g.condition(&v(0.7), true));
        assert!(!g.condition(&v(0.69), true));
    }

    #[test]
    fn relearning_counts_samples_or_time() {
        let by_samples = Guard {
            relearn: Relearn::Samples(60),
            ..Guard::default()
        };
        assert!(!by_samples.relearn_due(59, 0, i64::MAX));
        assert!(by_samples.relearn_due(60, 0, 0));
        let by_time = Guard {
            relearn: Relearn::After(600_000),
            ..Guard::default()
        };
        assert!(!by_time.relearn_due(1000, 1_000, 600_999));
        assert!(by_time.relearn_due(1, 1_000, 601_000));
        assert!(!Guard::default().relearn_due(u32::MAX, 0, i64::MAX));
    }
}
