//! Validation of what every method shares beside its detector (`detect::Guard`): `direction`,
//! `min_delta`, `min_delta_pct`, `resolve_below`, `relearn_after`, `threshold_mode` and
//! `alerts_per_day`, in a rule or in `defaults`, with the defaults each method gets when
//! neither says.

use super::raw::{RawDefaults, RawRule};
use super::validate::Validator;
use crate::detect::{Guard, Method, Relearn, Side};
use serde_saphyr::Spanned;
use std::time::Duration;

/// `resolve_below` unless set: an open alert's condition holds while its score stays at
/// 0.7 of the threshold or above (README "Detection defaults" has the measurements).
pub(super) const DEFAULT_RESOLVE_BELOW: f64 = 0.7;

/// `alerts_per_day` of a calibrated rule unless set: one exceedance a day per series.
const DEFAULT_ALERTS_PER_DAY: f64 = 1.0;

/// The guard settings of `defaults:`, each unset unless written.
#[derive(Default)]
pub(super) struct GuardDefaults {
    side: Option<Side>,
    min_delta: Option<f64>,
    min_delta_pct: Option<f64>,
    resolve_below: Option<f64>,
    relearn: Option<Relearn>,
    calibrated: Option<bool>,
    alerts_per_day: Option<f64>,
}

impl Validator<'_> {
    pub(super) fn guard_defaults(&mut self, d: &RawDefaults) -> GuardDefaults {
        GuardDefaults {
            side: d.direction.as_ref().map(|s| self.side(s, None)),
            min_delta: d
                .min_delta
                .as_ref()
                .map(|v| self.non_negative(v, None, "min_delta")),
            min_delta_pct: d
                .min_delta_pct
                .as_ref()
                .map(|v| self.non_negative(v, None, "min_delta_pct")),
            resolve_below: d
                .resolve_below
                .as_ref()
                .map(|v| self.resolve_below(v, None)),
            relearn: d.relearn_after.as_ref().map(|v| self.relearn(v, None)),
            calibrated: d
                .threshold_mode
                .as_ref()
                .map(|v| self.threshold_mode(v, None)),
            alerts_per_day: d
                .alerts_per_day
                .as_ref()
                .map(|v| self.alerts_per_day(v, None)),
        }
    }

    /// A rule's guard: its own settings, else `defaults:`, else the method's.
    pub(super) fn guard(
        &mut self,
        r: &RawRule,
        d: &GuardDefaults,
        method: &Method,
        window: usize,
        for_duration: Duration,
    ) -> Guard {
        let n = Some(r.name.value.as_str());
        let threshold = matches!(method, Method::Threshold { .. });
        // A peers rule's baseline is its group at each round: nothing to relearn or calibrate.
        let peers = matches!(method, Method::Peers { .. });
        let baseline = !threshold && !peers && !matches!(method, Method::Trend { .. });
        let m = method.name();
        // A threshold's op is its side and its threshold the deviation; a trend has no
        // baseline to relearn.
        let foreign: [(&str, bool, Option<serde_saphyr::Location>); 6] = [
            (
                "direction",
                threshold,
                r.direction.as_ref().map(|s| s.referenced),
            ),
            (
                "min_delta",
                threshold,
                r.min_delta.as_ref().map(|s| s.referenced),
            ),
            (
                "min_delta_pct",
                threshold,
                r.min_delta_pct.as_ref().map(|s| s.referenced),
            ),
            (
                "relearn_after",
                !baseline,
                r.relearn_after.as_ref().map(|s| s.referenced),
            ),
            (
                "threshold_mode",
                threshold || peers,
                r.threshold_mode.as_ref().map(|s| s.referenced),
            ),
            (
                "alerts_per_day",
                threshold || peers,
                r.alerts_per_day.as_ref().map(|s| s.referenced),
            ),
        ];
        for (key, refused, at) in foreign {
            if let Some(at) = at.filter(|_| refused) {
                self.err(&at, n, format!("{key} does not apply to method {m}"));
            }
        }
        if threshold {
            let resolve_below = r
                .resolve_below
                .as_ref()
                .map_or(d.resolve_below.unwrap_or(1.0), |v| self.resolve_below(v, n));
            return Guard {
                resolve_below,
                ..Guard::default()
            };
        }
        let side = r
            .direction
            .as_ref()
            .map_or(d.side.unwrap_or_default(), |s| self.side(s, n));
        let min_delta = r
            .min_delta
            .as_ref()
            .map_or(d.min_delta.unwrap_or(0.0), |v| {
                self.non_negative(v, n, "min_delta")
            });
        let min_delta_pct = r
            .min_delta_pct
            .as_ref()
            .map_or(d.min_delta_pct.unwrap_or(0.0), |v| {
                self.non_negative(v, n, "min_delta_pct")
            });
        let resolve_below = r
            .resolve_below
            .as_ref()
            .map_or(d.resolve_below.unwrap_or(DEFAULT_RESOLVE_BELOW), |v| {
                self.resolve_below(v, n)
            });
        let relearn = if baseline {
            let relearn = r
                .relearn_after
                .as_ref()
                .map(|v| self.relearn(v, n))
                .or(d.relearn)
                .unwrap_or_else(|| default_relearn(method, window));
            if let (Relearn::After(ms), Some(at)) = (relearn, r.relearn_after.as_ref()) {
                if Duration::from_millis(ms as u64) <= for_duration {
                    let msg = format!(
                        "relearn_after ({}) must be longer than for ({}): the alert could never fire",
                        at.value.trim(),
                        humantime::format_duration(for_duration)
                    );
                    self.err(&at.referenced, n, msg);
                }
            }
            relearn
        } else {
            Relearn::Never
        };
        let calibrated = r
            .threshold_mode
            .as_ref()
            .map(|v| self.threshold_mode(v, n))
            .or(d.calibrated)
            .unwrap_or(false);
        let per_day = r.alerts_per_day.as_ref().map(|v| self.alerts_per_day(v, n));
        if let (false, Some(at)) = (calibrated, &r.alerts_per_day) {
            let msg = "alerts_per_day needs threshold_mode: calibrated";
            self.err(&at.referenced, n, msg);
        }
        Guard {
            side,
            min_delta,
            min_delta_pct,
            resolve_below,
            relearn,
            alerts_per_day: calibrated.then(|| {
                per_day
                    .or(d.alerts_per_day)
                    .unwrap_or(DEFAULT_ALERTS_PER_DAY)
            }),
        }
    }

    /// `threshold_mode`: true for `calibrated`.
    fn threshold_mode(&mut self, v: &Spanned<String>, n: Option<&str>) -> bool {
        match v.value.as_str() {
            "fixed" => false,
            "calibrated" => true,
            other => {
                let msg = format!("unknown threshold_mode {other:?}: use fixed or calibrated");
                self.err(&v.referenced, n, msg);
                false
            }
        }
    }

    fn alerts_per_day(&mut self, v: &Spanned<f64>, n: Option<&str>) -> f64 {
        // (above half the samples of a day, at 1 s scrapes, the tail says nothing)
        if v.value.is_finite() && v.value > 0.0 && v.value <= 43_200.0 {
            return v.value;
        }
        let msg = format!("alerts_per_day must be in (0, 43200], got {}", v.value);
        self.err(&v.referenced, n, msg);
        DEFAULT_ALERTS_PER_DAY
    }

    fn side(&mut self, v: &Spanned<String>, n: Option<&str>) -> Side {
        match v.value.as_str() {
            "up" => Side::Up,
            "down" => Side::Down,
            "both" => Side::Both,
            other => {
                let msg = format!("unknown direction {other:?}: use up, down or both");
                self.err(&v.referenced, n, msg);
                Side::Both
            }
        }
    }

    fn non_negative(&mut self, v: &Spanned<f64>, n: Option<&str>, what: &str) -> f64 {
        if v.value.is_finite() && v.value >= 0.0 {
            return v.value;
        }
        let msg = format!("{what} must be a number >= 0, got {}", v.value);
        self.err(&v.referenced, n, msg);
        0.0
    }

    fn resolve_below(&mut self, v: &Spanned<f64>, n: Option<&str>) -> f64 {
        if v.value > 0.0 && v.value <= 1.0 {
            return v.value;
        }
        let msg = format!(
            "resolve_below must be in (0, 1] (a share of the threshold's score), got {}",
            v.value
        );
        self.err(&v.referenced, n, msg);
        DEFAULT_RESOLVE_BELOW
    }

    fn relearn(&mut self, v: &Spanned<String>, n: Option<&str>) -> Relearn {
        let text = v.value.trim();
        if text == "never" {
            return Relearn::Never;
        }
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Relearn::After(d.as_millis().min(i64::MAX as u128) as i64),
            Ok(_) => {
                let msg = "relearn_after must be longer than 0 (write `never` to keep an alert firing until the value comes back)";
                self.err(&v.referenced, n, msg);
                Relearn::Never
            }
            Err(e) => {
                let msg = format!("bad relearn_after {text:?}: {e} (e.g. 30m, 6h, never)");
                self.err(&v.referenced, n, msg);
                Relearn::Never
            }
        }
    }
}

/// When a lasting shift becomes the baseline unless a rule says: once it has lasted a whole
/// window (the window is then the new level alone, so the rebuilt baseline is clean), for a
/// seasonal rule once it has lasted a whole season (each time of day has seen it).
fn default_relearn(method: &Method, window: usize) -> Relearn {
    match method {
        Method::Seasonal { season, .. } => Relearn::After(season.ms()),
        // (whichever profile judges, a day has shown the new level at every hour of it)
        Method::AutoSeasonal { day, .. } => Relearn::After(day.ms()),
        Method::Threshold { .. } | Method::Trend { .. } | Method::Peers { .. } => Relearn::Never,
        _ => Relearn::Samples(window.min(u32::MAX as usize) as u32),
    }
}
