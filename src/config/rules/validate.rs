//! Turns the raw rules into validated `Rule`s, collecting every problem with its place.

use super::raw::{RawFile, RawMinAnomalous, RawRule};
use super::{Rule, RuleError, Severity, Transform};
use crate::config::glob::Glob;
use crate::config::selector::Selector;
use crate::config::template::Template;
use crate::detect::{Method, Op};
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

// Defaults a rule that names only its method gets. Chosen so that such a rule fires at most
// 7 times a week on incident-free noise at 15 s scrapes, white and AR(1) φ 0.9
// (`python3 bench/noise.py`; README "Detection defaults" has the figures): a 60-sample
// window underestimates the spread of autocorrelated series, and z > 3 on every sample paged
// 170 to 310 times a week.
const DEFAULT_WINDOW: i64 = 240;
const ZSCORE_THRESHOLD: f64 = 4.5;
const IQR_FACTOR: f64 = 3.0;
const MAD_THRESHOLD: f64 = 5.0;
/// A pod stands out from its peers past 5 robust standard deviations in 8 of the last 10
/// rounds unless the rule says otherwise. With 3 and 3 rounds in a row (Datadog's MAD
/// tolerance) a group of identical pods paged up to 316 times a pod-week on incident-free
/// noise (`cargo bench --bench peers_noise`: the MAD of a handful of pods is often tiny, and
/// a slowly wandering gauge stays off its peers for rounds); these stay under 4.
const PEERS_THRESHOLD: f64 = 5.0;
const PEERS_ROUNDS: (u32, u32) = (8, 10);
const MIN_PEERS: i64 = 3;
const EWMA_THRESHOLD: f64 = 5.0;
const SEASONAL_THRESHOLD: f64 = 5.5;
const TREND_WINDOW: usize = 7;
/// `season: auto` buckets a day: hours (the weekly profile then has 168, and both fit in
/// about 5 KB a series beside the 4 KB of hourly history).
const AUTO_BUCKETS: i64 = 24;
const DEFAULT_MIN_SAMPLES: i64 = 10;

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) errors: Vec<RuleError>,
}

struct Defaults {
    window: i64,
    min_samples: i64,
    for_duration: Duration,
    keep_firing_for: Duration,
    min_anomalous: (u32, u32),
    /// Whether `min_anomalous` was written (else a peers rule takes `PEERS_ROUNDS`).
    min_anomalous_set: bool,
    severity: Severity,
    guard: super::guard::GuardDefaults,
    /// The zone of seasonal rules that name none (None: UTC).
    timezone: Option<crate::detect::Zone>,
}

impl Validator<'_> {
    pub(super) fn err(&mut self, at: &Location, rule: Option<&str>, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            rule: rule.map(str::to_string),
            message: message.into(),
        });
    }

    pub(super) fn rules(&mut self, raw: RawFile) -> Vec<Arc<Rule>> {
        let d = raw.defaults.unwrap_or_default();
        let guard = self.guard_defaults(&d);
        let timezone = d.timezone.as_ref().and_then(|t| self.zone(t, None));
        let defaults = Defaults {
            guard,
            timezone,
            window: d
                .window
                .map_or(DEFAULT_WINDOW, |w| self.positive(&w, None, "window")),
            min_samples: d.min_samples.map_or(DEFAULT_MIN_SAMPLES, |m| {
                self.positive(&m, None, "min_samples")
            }),
            for_duration: d
                .for_duration
                .map_or(Duration::ZERO, |f| self.duration(&f, None)),
            keep_firing_for: d
                .keep_firing_for
                .map_or(Duration::ZERO, |f| self.duration(&f, None)),
            min_anomalous_set: d.min_anomalous.is_some(),
            min_anomalous: d
                .min_anomalous
                .map_or((1, 1), |m| self.min_anomalous(&m, None)),
            severity: d
                .severity
                .map_or(Severity::Warning, |s| self.severity(&s, None)),
        };
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for r in raw.rules {
            let name = r.value.name.value.clone();
            if !names.insert(name.clone()) {
                let at = r.value.name.referenced;
                self.err(&at, Some(&name), "duplicate rule name");
            }
            let before = self.errors.len();
            let mut rule = self.rule(r, &defaults);
            let hash = crate::store::series_id("rule", &rule.detector_fingerprint(), &[]);
            rule.profile_key = format!("{}@{hash:016x}", rule.name);
            if self.errors.len() == before {
                out.push(Arc::new(rule));
            }
        }
        out
    }

    fn rule(&mut self, spanned: Spanned<RawRule>, d: &Defaults) -> Rule {
        let mut r = spanned.value;
        let name = r.name.value.clone();
        let n = Some(name.as_str());
        if !valid_name(&name) {
            self.err(
                &r.name.referenced,
                n,
                "name must match [a-zA-Z_][a-zA-Z0-9_]*",
            );
        }
        let selector = match Selector::parse(&r.selector.value) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(
                    &r.selector.referenced,
                    n,
                    format!("bad match selector: {e}"),
                );
                None
            }
        };
        let source = r.source.take().and_then(|s| match Glob::new(&s.value) {
            Ok(g) => Some(g),
            Err(e) => {
                self.err(&s.referenced, n, e);
                None
            }
        });
        let transform = r
            .transform
            .take()
            .map_or(Transform::Auto, |t| self.transform(&t, n));
        let window = r
            .window
            .take()
            .map_or(d.window, |w| self.positive(&w, n, "window"));
        let min_samples = r
            .min_samples
            .take()
            .map_or(d.min_samples, |m| self.positive(&m, n, "min_samples"));
        if min_samples > window {
            let at = spanned.referenced;
            self.err(&at, n, format!("min_samples ({min_samples}) is larger than window ({window}): the rule could never judge"));
        }
        let method = self.method(&r, n, window, d);
        if matches!(method, Method::ZScore { .. }) && min_samples < 2 {
            let at = spanned.referenced;
            self.err(
                &at,
                n,
                "zscore needs min_samples >= 2 (a standard deviation needs two values)",
            );
        }
        let for_duration = r
            .for_duration
            .as_ref()
            .map_or(d.for_duration, |f| self.duration(f, n));
        let guard = self.guard(&r, &d.guard, &method, window as usize, for_duration);
        let keep_firing_for = r
            .keep_firing_for
            .map_or(d.keep_firing_for, |f| self.duration(&f, n));
        let peers = matches!(method, Method::Peers { .. });
        let min_anomalous = match r.min_anomalous {
            Some(m) => self.min_anomalous(&m, n),
            None if peers && !d.min_anomalous_set => PEERS_ROUNDS,
            None => d.min_anomalous,
        };
        let by = self.by(r.by.take(), n);
        let severity = r.severity.map_or(d.severity, |s| self.severity(&s, n));
        let labels = self.labels(r.labels, n);
        let annotations = self.annotations(r.annotations, n);
        Rule {
            name,
            selector: selector.unwrap_or_else(|| Selector::parse("x").expect("literal selector")),
            source,
            transform,
            method,
            window: window as usize,
            min_samples: min_samples as usize,
            for_duration,
            keep_firing_for,
            min_anomalous,
            severity,
            labels,
            annotations,
            by,
            profile_key: String::new(),
            guard,
            policy: Rule::policy_of(for_duration, keep_firing_for, min_anomalous),
        }
    }

    /// `by`: label names (checked as labels are), each once.
    fn by(&mut self, by: Option<Spanned<Vec<String>>>, n: Option<&str>) -> Vec<String> {
        let Some(by) = by else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for l in by.value {
            if !valid_name(&l) {
                self.err(&by.referenced, n, format!("by: {l:?} is not a label name"));
            } else if out.contains(&l) {
                self.err(&by.referenced, n, format!("by: {l:?} is named twice"));
            } else {
                out.push(l);
            }
        }
        out
    }

    fn transform(&mut self, t: &Spanned<String>, n: Option<&str>) -> Transform {
        match t.value.as_str() {
            "auto" => Transform::Auto,
            "raw" => Transform::Raw,
            "rate" => Transform::Rate,
            "delta" => Transform::Delta,
            other => {
                let msg = format!("unknown transform {other:?}: use auto, raw, rate or delta");
                self.err(&t.referenced, n, msg);
                Transform::Auto
            }
        }
    }

    fn labels(
        &mut self,
        raw: BTreeMap<String, Spanned<String>>,
        n: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for (k, v) in raw {
            if !valid_name(&k) || k.starts_with("__") {
                self.err(&v.referenced, n, format!("bad label name {k:?}"));
            } else if crate::alert::labels::SIDECAR_LABELS.contains(&k.as_str()) {
                let msg = format!("label {k:?} is set by the sidecar and cannot be overridden");
                self.err(&v.referenced, n, msg);
            }
            labels.insert(k, v.value);
        }
        labels
    }

    fn annotations(
        &mut self,
        raw: BTreeMap<String, Spanned<String>>,
        n: Option<&str>,
    ) -> BTreeMap<String, Template> {
        let mut annotations = BTreeMap::new();
        for (k, v) in raw {
            match Template::parse(&v.value) {
                Ok(t) => {
                    annotations.insert(k, t);
                }
                Err(e) => self.err(&v.referenced, n, e),
            }
        }
        annotations
    }

    fn method(&mut self, r: &RawRule, n: Option<&str>, window: i64, d: &Defaults) -> Method {
        let m = r.method.value.as_str();
        self.foreign_params(r, n);
        match m {
            "zscore" => Method::ZScore {
                z_threshold: self.pos_f64(&r.z_threshold, ZSCORE_THRESHOLD, n, "z_threshold"),
            },
            "iqr" => Method::Iqr {
                iqr_factor: self.pos_f64(&r.iqr_factor, IQR_FACTOR, n, "iqr_factor"),
            },
            "threshold" => self.threshold(r, n),
            "mad" => Method::Mad {
                mad_threshold: self.pos_f64(&r.mad_threshold, MAD_THRESHOLD, n, "mad_threshold"),
            },
            "peers" => Method::Peers {
                mad_threshold: self.pos_f64(&r.mad_threshold, PEERS_THRESHOLD, n, "mad_threshold"),
                min_peers: r.min_peers.as_ref().map_or(MIN_PEERS, |m| {
                    if m.value < 2 {
                        self.err(
                            &m.referenced,
                            n,
                            "min_peers must be at least 2: one pod has no peers",
                        );
                    }
                    m.value.max(2)
                }) as usize,
            },
            "ewma" => {
                let alpha = match &r.alpha {
                    Some(a) if !(a.value > 0.0 && a.value <= 1.0) => {
                        let msg = format!("alpha must be in (0, 1], got {}", a.value);
                        self.err(&a.referenced, n, msg);
                        0.1
                    }
                    a => a.as_ref().map_or(0.1, |a| a.value),
                };
                Method::Ewma {
                    alpha,
                    z_threshold: self.pos_f64(&r.z_threshold, EWMA_THRESHOLD, n, "z_threshold"),
                }
            }
            "seasonal" => self.seasonal(r, n, window, d),
            "trend" => {
                // (the default fits any window: a trend walks the window's values)
                let fits = TREND_WINDOW.min(window as usize + 1);
                let trend_window = r.trend_window.as_ref().map_or(fits, |t| {
                    if t.value < 2 || t.value > window + 1 {
                        let msg = format!(
                            "trend_window must be between 2 and window + 1 ({})",
                            window + 1
                        );
                        self.err(&t.referenced, n, msg);
                    }
                    t.value.max(2) as usize
                });
                Method::Trend {
                    trend_window,
                    deviation_pct: self.pos_f64(&r.deviation_pct, 20.0, n, "deviation_pct"),
                }
            }
            other => {
                let msg = format!(
                    "unknown method {other:?}: use zscore, iqr, threshold, trend, mad, ewma, seasonal or peers"
                );
                self.err(&r.method.referenced, n, msg);
                Method::ZScore { z_threshold: 3.0 }
            }
        }
    }

    /// Parameters of another method are mistakes, not silently ignored values.
    fn foreign_params(&mut self, r: &RawRule, n: Option<&str>) {
        let m = r.method.value.as_str();
        let params: [(&str, Option<Location>, &[&str]); 13] = [
            (
                "z_threshold",
                (r.z_threshold.as_ref().map(|s| s.referenced)),
                &["zscore", "ewma", "seasonal"],
            ),
            (
                "season",
                (r.season.as_ref().map(|s| s.referenced)),
                &["seasonal"],
            ),
            (
                "buckets",
                (r.buckets.as_ref().map(|s| s.referenced)),
                &["seasonal"],
            ),
            (
                "timezone",
                (r.timezone.as_ref().map(|s| s.referenced)),
                &["seasonal"],
            ),
            (
                "iqr_factor",
                (r.iqr_factor.as_ref().map(|s| s.referenced)),
                &["iqr"],
            ),
            (
                "threshold",
                (r.threshold.as_ref().map(|s| s.referenced)),
                &["threshold"],
            ),
            ("op", (r.op.as_ref().map(|s| s.referenced)), &["threshold"]),
            (
                "trend_window",
                (r.trend_window.as_ref().map(|s| s.referenced)),
                &["trend"],
            ),
            (
                "deviation_pct",
                (r.deviation_pct.as_ref().map(|s| s.referenced)),
                &["trend"],
            ),
            (
                "mad_threshold",
                (r.mad_threshold.as_ref().map(|s| s.referenced)),
                &["mad", "peers"],
            ),
            ("by", (r.by.as_ref().map(|s| s.referenced)), &["peers"]),
            (
                "min_peers",
                (r.min_peers.as_ref().map(|s| s.referenced)),
                &["peers"],
            ),
            ("alpha", (r.alpha.as_ref().map(|s| s.referenced)), &["ewma"]),
        ];
        if ![
            "zscore",
            "iqr",
            "threshold",
            "trend",
            "mad",
            "ewma",
            "seasonal",
            "peers",
        ]
        .contains(&m)
        {
            return; // the unknown method is the error to report
        }
        for (key, at, methods) in params {
            if let Some(at) = at.filter(|_| !methods.contains(&m)) {
                self.err(&at, n, format!("{key} does not apply to method {m}"));
            }
        }
    }

    /// The zone named by `t`, or an error at it.
    fn zone(&mut self, t: &Spanned<String>, n: Option<&str>) -> Option<crate::detect::Zone> {
        super::zone::zone(&t.value)
            .map_err(|e| self.err(&t.referenced, n, e))
            .ok()
    }

    /// `season` (default 24h) cut into `buckets` (default 288) of at least a second, in the
    /// rule's `timezone` (else the defaults', else UTC). `season: auto`: a day of `buckets`
    /// (default 24) and a week of seven times as many, the series' history choosing.
    fn seasonal(&mut self, r: &RawRule, n: Option<&str>, window: i64, d: &Defaults) -> Method {
        let before = self.errors.len();
        let auto = r.season.as_ref().is_some_and(|s| s.value == "auto");
        let season = match &r.season {
            Some(s) if !auto => self.duration(s, n),
            _ => Duration::from_secs(86_400),
        };
        let season_ms = season.as_millis().min(i64::MAX as u128) as i64;
        let buckets = r
            .buckets
            .as_ref()
            .map_or(if auto { AUTO_BUCKETS } else { 288 }, |b| {
                self.positive(b, n, "buckets")
            });
        if self.errors.len() == before && season_ms / buckets.max(1) < 1000 {
            let at = r
                .buckets
                .as_ref()
                .map_or(r.method.referenced, |b| b.referenced);
            let msg = format!("season {season:?} in {buckets} buckets is under a second a bucket");
            self.err(&at, n, msg);
        }
        let zone = match &r.timezone {
            Some(t) => self.zone(t, n),
            None => d.timezone.clone(),
        };
        let z_threshold = self.pos_f64(&r.z_threshold, SEASONAL_THRESHOLD, n, "z_threshold");
        let memory = window.clamp(2, u32::MAX as i64) as u32;
        if auto {
            return Method::AutoSeasonal {
                day: crate::detect::Season::new(season_ms, zone.clone()),
                week: crate::detect::Season::new(7 * season_ms, zone),
                buckets: buckets as usize,
                z_threshold,
                memory,
            };
        }
        Method::Seasonal {
            season: crate::detect::Season::new(season_ms, zone),
            buckets: buckets as usize,
            z_threshold,
            memory,
        }
    }

    fn min_anomalous(&mut self, v: &Spanned<RawMinAnomalous>, n: Option<&str>) -> (u32, u32) {
        let RawMinAnomalous { count, of } = v.value;
        if !(1..=64).contains(&of) || !(1..=of).contains(&count) {
            let msg =
                format!("min_anomalous needs 1 <= count <= of <= 64, got count {count} of {of}");
            self.err(&v.referenced, n, msg);
            return (1, 1);
        }
        (count as u32, of as u32)
    }

    fn threshold(&mut self, r: &RawRule, n: Option<&str>) -> Method {
        let threshold = match &r.threshold {
            Some(t) if t.value.is_finite() => t.value,
            Some(t) => {
                self.err(&t.referenced, n, "threshold must be a finite number");
                0.0
            }
            None => {
                self.err(
                    &r.method.referenced,
                    n,
                    "method threshold needs `threshold`",
                );
                0.0
            }
        };
        let op = r.op.as_ref().map_or(Op::Gt, |o| match o.value.as_str() {
            "gt" => Op::Gt,
            "lt" => Op::Lt,
            "gte" => Op::Gte,
            "lte" => Op::Lte,
            other => {
                let msg = format!("unknown op {other:?}: use gt, lt, gte or lte");
                self.err(&o.referenced, n, msg);
                Op::Gt
            }
        });
        Method::Threshold { threshold, op }
    }

    fn positive(&mut self, v: &Spanned<i64>, n: Option<&str>, what: &str) -> i64 {
        if v.value < 1 {
            self.err(
                &v.referenced,
                n,
                format!("{what} must be a positive integer, got {}", v.value),
            );
            return 1;
        }
        if v.value > 1_000_000 {
            self.err(
                &v.referenced,
                n,
                format!("{what} must be at most 1000000, got {}", v.value),
            );
            return 1;
        }
        v.value
    }

    fn pos_f64(
        &mut self,
        v: &Option<Spanned<f64>>,
        default: f64,
        n: Option<&str>,
        what: &str,
    ) -> f64 {
        match v {
            None => default,
            Some(s) if s.value.is_finite() && s.value > 0.0 => s.value,
            Some(s) => {
                self.err(
                    &s.referenced,
                    n,
                    format!("{what} must be a positive number, got {}", s.value),
                );
                default
            }
        }
    }

    fn duration(&mut self, v: &Spanned<String>, n: Option<&str>) -> Duration {
        let text = v.value.trim();
        if text == "0" {
            return Duration::ZERO;
        }
        humantime::parse_duration(text).unwrap_or_else(|e| {
            self.err(
                &v.referenced,
                n,
                format!("bad duration {text:?}: {e} (e.g. 0s, 30s, 5m)"),
            );
            Duration::ZERO
        })
    }

    fn severity(&mut self, v: &Spanned<String>, n: Option<&str>) -> Severity {
        match v.value.as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            other => {
                self.err(
                    &v.referenced,
                    n,
                    format!("unknown severity {other:?}: use info, warning or critical"),
                );
                Severity::Warning
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
