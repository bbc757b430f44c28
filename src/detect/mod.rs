//! Pure anomaly detectors: a history window and the current value in, a verdict with what
//! explains it out. No I/O, no clock, no logging, so every rule is testable with worked numbers.
//!
//! Semantics follow the engine this project grew from (history = the previous `window`
//! values, current excluded):
//! - zscore: anomalous when |x − mean| / std > z_threshold (sample std, n − 1).
//! - iqr: q1 = s[n/4], q3 = s[3n/4] of the sorted history; anomalous outside q1 − k·iqr, q3 + k·iqr.
//! - threshold: x compared with a fixed value by gt | lt | gte | lte.
//! - trend: the last `trend_window` values strictly rising (falling), first > 0, and
//!   |last − first| / first · 100 ≥ deviation_pct.
//! - mad: median ± k · 1.4826 · MAD of the history (the modified z-score of Iglewicz and
//!   Hoaglin, k = mad_threshold, default 3.5): the median and MAD ignore the outliers the
//!   rule looks for, where a mean and a standard deviation are dragged by them. With MAD 0
//!   (over half the history one value) the scale is 1.2533 · mean absolute deviation.
//! - ewma: exponentially weighted mean and variance (weight `alpha` on the newest value),
//!   anomalous when |x − mean| / std > z_threshold: a baseline that follows a drift.
//! - seasonal: the zscore against the mean and std of the sample's bucket of the season
//!   (`seasonal.rs`) once that bucket holds min_samples values from two seasons, against the
//!   window before.
//!
//! `score` puts every method on one scale where ≥ 1 means past the rule's threshold:
//! zscore |z| / z_threshold; iqr distance beyond the nearer quartile / (k·iqr);
//! threshold 1 + signed distance past the threshold / max(|threshold|, 1) (0 when far inside);
//! trend (relative change in % / deviation_pct) when the run is monotone, else 0;
//! mad |x − median| / (k · scale); ewma |z| / z_threshold.
//!
//! - peers: not the series' history but the same series on the other pods of its group at
//!   the same round: median ± k · 1.4826 · MAD of the group's values, the series' own among
//!   them (Datadog's `outliers(..., 'MAD')`), given by the caller (`judge_peers_into`); at
//!   least `min_peers` values or no verdict. Score |x − median| / (k · scale), as mad.

pub mod auto;
pub mod calibrate;
pub mod guard;
mod robust;
pub mod season;
pub mod seasonal;
pub mod window;

pub use auto::{AutoSeasonal, Finished, Period};
pub use calibrate::Spot;
pub use guard::{Guard, Relearn, Side};
pub use robust::Ewma;
pub use season::{Season, Zone};
pub use seasonal::Seasonal;
pub use window::Window;

/// Below this the history is considered flat and z-scores are meaningless: a value off the
/// plateau is judged by `plateau` (and the rule's minimum deviation, `guard`).
const MIN_STDDEV: f64 = 1e-6;

/// Comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Lt,
    Gte,
    Lte,
}

/// A detection method with its validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    ZScore {
        z_threshold: f64,
    },
    Iqr {
        iqr_factor: f64,
    },
    Threshold {
        threshold: f64,
        op: Op,
    },
    Trend {
        trend_window: usize,
        deviation_pct: f64,
    },
    Mad {
        mad_threshold: f64,
    },
    Ewma {
        alpha: f64,
        z_threshold: f64,
    },
    Seasonal {
        season: Season,
        buckets: usize,
        z_threshold: f64,
        /// Values a bucket remembers (the rule's window).
        memory: u32,
    },
    /// `season: auto`: a daily or a weekly profile, or none, as the series' history shows
    /// (`auto.rs`); `buckets` a day.
    AutoSeasonal {
        day: Season,
        week: Season,
        buckets: usize,
        z_threshold: f64,
        memory: u32,
    },
    /// Judged against the same series on the other pods of its group (`judge_peers_into`).
    Peers {
        mad_threshold: f64,
        /// Values needed in the group, the series' own included.
        min_peers: usize,
    },
}

impl Method {
    /// The name used in rules.yaml and in the `method` label.
    pub fn name(&self) -> &'static str {
        match self {
            Method::ZScore { .. } => "zscore",
            Method::Iqr { .. } => "iqr",
            Method::Threshold { .. } => "threshold",
            Method::Trend { .. } => "trend",
            Method::Mad { .. } => "mad",
            Method::Ewma { .. } => "ewma",
            Method::Seasonal { .. } | Method::AutoSeasonal { .. } => "seasonal",
            Method::Peers { .. } => "peers",
        }
    }

    /// Whether the method keeps a profile in the store (seasonal).
    pub fn keeps_profile(&self) -> bool {
        matches!(self, Method::Seasonal { .. } | Method::AutoSeasonal { .. })
    }

    /// Whether the window must keep a sorted copy for this method.
    pub fn needs_sorted(&self) -> bool {
        matches!(self, Method::Iqr { .. } | Method::Mad { .. })
    }

    /// The state this method keeps beside the window, empty.
    pub fn new_state(&self) -> State {
        match self {
            Method::Ewma { .. } => State::Ewma(Box::default()),
            Method::Seasonal { buckets, .. } => State::Seasonal(Box::new(Seasonal::new(*buckets))),
            Method::AutoSeasonal { buckets, .. } => {
                State::Auto(Box::new(AutoSeasonal::new(*buckets)))
            }
            _ => State::None,
        }
    }
}

/// What a detector keeps of the history beside the window (boxed: most methods keep none,
/// and every series under a rule carries the field).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    None,
    Ewma(Box<Ewma>),
    Seasonal(Box<Seasonal>),
    Auto(Box<AutoSeasonal>),
}

impl State {
    /// Stored record `i` of a profile (a seasonal bucket, an hour of `season: auto`).
    pub fn encode(&self, i: u32) -> Option<[u8; seasonal::BUCKET_BYTES]> {
        match self {
            State::Seasonal(p) => p.encode(i),
            State::Auto(a) => a.encode(i),
            _ => None,
        }
    }

    /// Restores a profile from its stored records; false when none fitted.
    pub fn restore(&mut self, records: &[(u32, Vec<u8>)]) -> bool {
        let mut restored = false;
        match self {
            State::Seasonal(p) => {
                for (i, bytes) in records {
                    restored |= p.restore(*i, bytes);
                }
            }
            State::Auto(a) => {
                for (i, bytes) in records {
                    restored |= a.restore(*i, bytes);
                }
                a.settle();
            }
            _ => {}
        }
        restored
    }
}

/// Folds `x` at `ts_ms` (just judged) into the method's state. Returns the profile records
/// that are final (a seasonal bucket the series just left), for the caller to persist.
pub fn update(method: &Method, state: &mut State, ts_ms: i64, x: f64) -> Finished {
    let bucket = match (method, &*state) {
        (Method::Seasonal { season, .. }, State::Seasonal(p)) => Some(p.bucket_of(season, ts_ms)),
        _ => None,
    };
    learn(method, state, ts_ms, bucket, x)
}

/// `update` for a value `judge` just judged, with the bucket it found (none computed twice).
pub fn learn(
    method: &Method,
    state: &mut State,
    ts_ms: i64,
    bucket: Option<u32>,
    x: f64,
) -> Finished {
    if !x.is_finite() {
        return Finished::default();
    }
    match (method, state, bucket) {
        (Method::Ewma { alpha, .. }, State::Ewma(e), _) => {
            e.push(*alpha, x);
            Finished::default()
        }
        (Method::Seasonal { memory, .. }, State::Seasonal(p), Some(i)) => {
            Finished::one(p.push(i, x, *memory))
        }
        (
            Method::AutoSeasonal {
                day, week, memory, ..
            },
            State::Auto(a),
            _,
        ) => a.push(day, week, ts_ms, x, *memory),
        _ => Finished::default(),
    }
}

/// What a sample kept out of the baseline (an incident) still teaches: `season: auto`'s
/// hourly history and the profile that is not judging (see `AutoSeasonal::push_aside`).
pub fn learn_aside(method: &Method, state: &mut State, ts_ms: i64, x: f64) -> Finished {
    match (method, state) {
        (
            Method::AutoSeasonal {
                day, week, memory, ..
            },
            State::Auto(a),
        ) if x.is_finite() => a.push_aside(day, week, ts_ms, x, *memory),
        _ => Finished::default(),
    }
}

/// Whether `history` and `state` are a baseline worth protecting (`bucket`: the sample's
/// seasonal bucket): once it holds `min_samples` values (for a seasonal rule: once the
/// sample's own bucket does, from two seasons), samples that belong to an incident stay out
/// of it. Before that everything is learnt: a pattern seen for the first time (a daily
/// square wave's first rise) would otherwise be judged an incident forever, never learnt.
fn baseline_ready(
    method: &Method,
    history: &Window,
    state: &State,
    profile: Option<(&Seasonal, u32)>,
    min_samples: usize,
) -> bool {
    let min = min_samples.max(2);
    match (method, state, profile) {
        (Method::Threshold { .. } | Method::Trend { .. } | Method::Peers { .. }, _, _) => false,
        (Method::Ewma { .. }, State::Ewma(e), _) => e.count() >= min as u64,
        (Method::Seasonal { .. } | Method::AutoSeasonal { .. }, _, Some((p, i))) => {
            p.seasoned(i, min)
        }
        _ => history.len() >= min,
    }
}

/// A verdict with what the caller needs to learn the value afterwards.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Whether the baseline is warm enough to protect from an incident (`baseline_ready`).
    pub ready: bool,
    /// The sample's seasonal bucket, for `learn`.
    pub bucket: Option<u32>,
}

/// Direction of a trend, or of a deviation from the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    Rising,
    Falling,
}

impl Direction {
    /// Upper-case name as the reference engine reported it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Rising => "RISING",
            Direction::Falling => "FALLING",
        }
    }
}

/// The outcome of evaluating one value, with what explains it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub anomalous: bool,
    /// ≥ 1 means past the rule's threshold; see the module doc for each method.
    #[serde(deserialize_with = "nan_if_null")]
    pub score: f64,
    pub baseline_mean: Option<f64>,
    pub baseline_stddev: Option<f64>,
    pub zscore: Option<f64>,
    pub lower_bound: Option<f64>,
    pub upper_bound: Option<f64>,
    pub direction: Option<Direction>,
}

/// JSON has no NaN: serde_json writes it as null; read null back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Evaluates `x` against `history` (which does not yet contain `x`), for methods that keep
/// no state of their own (see `evaluate_with`).
pub fn evaluate(method: &Method, history: &Window, x: f64, min_samples: usize) -> Option<Verdict> {
    evaluate_with(method, history, &State::None, 0, x, min_samples)
}

/// `judge`'s verdict alone, at the method's own threshold.
pub fn evaluate_with(
    method: &Method,
    history: &Window,
    state: &State,
    ts_ms: i64,
    x: f64,
    min_samples: usize,
) -> Option<Verdict> {
    judge(method, history, state, ts_ms, x, min_samples, 1.0).map(|j| j.verdict)
}

/// Evaluates `x`, sampled at `ts_ms`, against `history` and the method's `state` (neither
/// contains `x` yet), with the method's threshold times `scale` (1, or a calibration's
/// level: `calibrate.rs`; a threshold rule's line is the operator's and never scales).
/// Returns None for a non-finite `x`: NaN and ±Inf are skipped, never judged.
pub fn judge(
    method: &Method,
    history: &Window,
    state: &State,
    ts_ms: i64,
    x: f64,
    min_samples: usize,
    scale: f64,
) -> Option<Judgement> {
    let mut verdict = Verdict::default();
    let (ready, bucket) = judge_into(
        &mut verdict,
        method,
        history,
        state,
        ts_ms,
        x,
        min_samples,
        scale,
    )?;
    Some(Judgement {
        verdict,
        ready,
        bucket,
    })
}

/// `judge`, writing the verdict into `v` (the caller's) and returning the readiness and
/// the bucket: the live path's form. A verdict returned by value was copied three times
/// a sample on its way to the exporter, each copy reading back as 16-byte words what had
/// just been written as 8-byte fields (a store-forwarding stall): 7 % of the load bench.
#[allow(clippy::too_many_arguments)]
pub fn judge_into(
    v: &mut Verdict,
    method: &Method,
    history: &Window,
    state: &State,
    ts_ms: i64,
    x: f64,
    min_samples: usize,
    scale: f64,
) -> Option<(bool, Option<u32>)> {
    if !x.is_finite() {
        return None;
    }
    // The profile a seasonal rule judges against, with the sample's bucket in it.
    let profile: Option<(&Seasonal, u32)> = match (method, state) {
        (Method::Seasonal { season, .. }, State::Seasonal(p)) => {
            Some((p, p.bucket_of(season, ts_ms)))
        }
        (Method::AutoSeasonal { day, week, .. }, State::Auto(a)) => a.judging(day, week, ts_ms),
        _ => None,
    };
    let mean = history.mean();
    let std = history.stddev();
    *v = Verdict {
        baseline_mean: mean,
        baseline_stddev: std,
        zscore: match (mean, std) {
            (Some(m), Some(s)) if s >= MIN_STDDEV => Some((x - m) / s),
            _ => None,
        },
        ..Verdict::default()
    };
    let k = scale;
    match *method {
        Method::ZScore { z_threshold } => zscore(v, history, x, min_samples, z_threshold * k),
        Method::Iqr { iqr_factor } => iqr(v, history, x, min_samples, iqr_factor * k),
        Method::Threshold { threshold, op } => threshold_cmp(v, x, threshold, op),
        Method::Trend {
            trend_window,
            deviation_pct,
        } => trend(v, history, x, trend_window, deviation_pct * k),
        Method::Mad { mad_threshold } => robust::mad(v, history, x, min_samples, mad_threshold * k),
        Method::Ewma { z_threshold, .. } => {
            if let State::Ewma(e) = state {
                let full = history.len() >= history.capacity();
                robust::ewma(v, e, x, min_samples, z_threshold * k, full);
            }
        }
        Method::Seasonal { z_threshold, .. } | Method::AutoSeasonal { z_threshold, .. } => {
            let z_threshold = z_threshold * k;
            let stats = profile.and_then(|(p, i)| {
                p.stats(i)
                    .filter(|(_, std, _)| p.seasoned(i, min_samples) && *std >= MIN_STDDEV)
            });
            match stats {
                Some((mean, std, _)) => {
                    v.baseline_mean = Some(mean);
                    v.baseline_stddev = Some(std);
                    v.zscore = Some((x - mean) / std);
                    zscore(v, history, x, 0, z_threshold);
                }
                // Until the bucket knows its time of day (or without a rhythm): the window's.
                None => zscore(v, history, x, min_samples, z_threshold),
            }
        }
        // Alone, a series has no peers to be judged against (`judge_peers_into`).
        Method::Peers { .. } => *v = Verdict::default(),
    }
    Some((
        baseline_ready(method, history, state, profile, min_samples),
        match method {
            Method::Seasonal { .. } => profile.map(|(_, i)| i),
            _ => None,
        },
    ))
}

/// A peers rule's verdict on `x` against `others`, the same series' values on the other pods
/// of its group at this round: the group (x among them) is judged as mad judges a window.
/// None: fewer than `min_peers` values in all, nothing to judge.
pub fn judge_peers_into(
    v: &mut Verdict,
    x: f64,
    others: &[f64],
    mad_threshold: f64,
    min_peers: usize,
) -> Option<()> {
    *v = Verdict::default();
    if !x.is_finite() || others.len() + 1 < min_peers.max(2) {
        return None;
    }
    let mut group: Vec<f64> = others.iter().copied().filter(|v| v.is_finite()).collect();
    group.push(x);
    if group.len() < min_peers.max(2) {
        return None;
    }
    group.sort_by(f64::total_cmp);
    robust::mad_of_sorted(v, &group, x, mad_threshold);
    let median = robust::median_of(&group);
    v.baseline_mean = Some(median);
    // How far the pod stands out, in robust standard deviations of its group.
    if let (Some(lo), Some(hi)) = (v.lower_bound, v.upper_bound) {
        let scale = (hi - lo) / (2.0 * mad_threshold);
        if scale > 0.0 {
            v.baseline_stddev = Some(scale);
            v.zscore = Some((x - median) / scale);
        }
    }
    Some(())
}

fn zscore(v: &mut Verdict, history: &Window, x: f64, min_samples: usize, z_threshold: f64) {
    if history.len() < min_samples {
        return;
    }
    let (Some(mean), Some(std)) = (v.baseline_mean, v.baseline_stddev) else {
        return;
    };
    v.lower_bound = Some(mean - z_threshold * std);
    v.upper_bound = Some(mean + z_threshold * std);
    if std < MIN_STDDEV {
        if history.len() >= history.capacity() {
            plateau(v, mean, x);
        }
        return;
    }
    // (the signed z is already there: one division less a sample)
    let z = v.zscore.map_or_else(|| (x - mean).abs() / std, f64::abs);
    v.score = z / z_threshold;
    v.anomalous = z > z_threshold;
    v.direction = Some(if x >= mean {
        Direction::Rising
    } else {
        Direction::Falling
    });
}

/// A flat history (spread under `MIN_STDDEV`) over a whole window (a few equal values are
/// only a series that updates slower than it is scraped): any value off it is past every
/// z-threshold, so it is anomalous, with a score that grows with the distance (`1 + off / max(|mean|, 1)`,
/// as mad and iqr score a plateau). A rule's `min_delta` decides which steps matter.
pub(crate) fn plateau(v: &mut Verdict, mean: f64, x: f64) {
    let off = (x - mean).abs();
    v.anomalous = off >= MIN_STDDEV;
    v.score = if v.anomalous {
        1.0 + off / mean.abs().max(1.0)
    } else {
        0.0
    };
    if v.anomalous {
        v.direction = Some(if x > mean {
            Direction::Rising
        } else {
            Direction::Falling
        });
    }
}

fn iqr(v: &mut Verdict, history: &Window, x: f64, min_samples: usize, k: f64) {
    if history.len() < min_samples || history.is_empty() {
        return;
    }
    let Some(s) = history.sorted() else {
        return;
    };
    let n = s.len();
    if n == 0 {
        return;
    }
    let (q1, q3) = (s[n / 4], s[(3 * n / 4).min(n - 1)]);
    let spread = k * (q3 - q1);
    let (lower, upper) = (q1 - spread, q3 + spread);
    v.lower_bound = Some(lower);
    v.upper_bound = Some(upper);
    v.anomalous = x < lower || x > upper;
    let beyond = if x > q3 {
        x - q3
    } else if x < q1 {
        q1 - x
    } else {
        0.0
    };
    v.score = if spread > 0.0 {
        beyond / spread
    } else if v.anomalous {
        // Zero spread: any value off the plateau is past the fence; stay monotone in distance.
        1.0 + beyond / q1.abs().max(q3.abs()).max(1.0)
    } else {
        0.0
    };
    if v.anomalous {
        v.direction = Some(if x > upper {
            Direction::Rising
        } else {
            Direction::Falling
        });
    }
}

fn threshold_cmp(v: &mut Verdict, x: f64, t: f64, op: Op) {
    // Relative to the threshold, but never to less than 1: a threshold of 0.5 must not make
    // every unit past it count double.
    let scale = t.abs().max(1.0);
    let (anomalous, past) = match op {
        Op::Gt => (x > t, x - t),
        Op::Gte => (x >= t, x - t),
        Op::Lt => (x < t, t - x),
        Op::Lte => (x <= t, t - x),
    };
    match op {
        Op::Gt | Op::Gte => v.upper_bound = Some(t),
        Op::Lt | Op::Lte => v.lower_bound = Some(t),
    }
    v.anomalous = anomalous;
    v.score = (1.0 + past / scale).max(0.0);
    if anomalous {
        v.direction = Some(match op {
            Op::Gt | Op::Gte => Direction::Rising,
            Op::Lt | Op::Lte => Direction::Falling,
        });
    }
}

fn trend(v: &mut Verdict, history: &Window, x: f64, trend_window: usize, deviation_pct: f64) {
    let need = trend_window.saturating_sub(1);
    // The values themselves (a shared window holds none; trend rules never use one).
    let held = history.values().len();
    if trend_window < 2 || held < need {
        return;
    }
    // The last `need` values and x, walked without collecting them (no allocation a sample).
    let mut run = history.values().skip(held - need).chain(std::iter::once(x));
    let Some(first) = run.next() else {
        return;
    };
    let (mut rising, mut falling, mut prev) = (true, true, first);
    for v in run {
        rising &= v > prev;
        falling &= v < prev;
        prev = v;
    }
    if first > 0.0 {
        let band = first * deviation_pct / 100.0;
        v.lower_bound = Some(first - band);
        v.upper_bound = Some(first + band);
    }
    if !(rising || falling) || first <= 0.0 {
        return;
    }
    let change_pct = (x - first).abs() / first * 100.0;
    v.score = change_pct / deviation_pct;
    v.direction = Some(if rising {
        Direction::Rising
    } else {
        Direction::Falling
    });
    v.anomalous = change_pct >= deviation_pct;
}

#[cfg(test)]
mod tests;
