//! rules.yaml: raw serde structs (`deny_unknown_fields`, every value with its location), then
//! a validated `RuleSet` built in one pass that collects every error with file:line:column and
//! the rule's name. Nothing after this module reads YAML.

use super::glob::Glob;
use super::selector::Selector;
use super::template::Template;
use crate::detect::{Method, Op};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One problem found in a rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule:?}: ")?;
        }
        write!(f, "{}", self.message.replace('\n', " "))
    }
}

/// Every problem found while loading a rules file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Alert severity, as Alertmanager routes expect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a rule evaluates: the sample itself or its change since the previous scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// rate for counters, raw for everything else.
    Auto,
    Raw,
    /// Per-second increase, counter resets handled.
    Rate,
    /// Change since the previous sample.
    Delta,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub selector: Selector,
    pub source: Option<Glob>,
    pub transform: Transform,
    pub method: Method,
    /// Samples of history kept per series.
    pub window: usize,
    /// History needed before zscore and iqr judge anything.
    pub min_samples: usize,
    /// How long the condition must hold before the alert fires.
    pub for_duration: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, Template>,
}

impl Rule {
    /// A string that changes whenever anything about the rule changes: alert state of a rule
    /// whose fingerprint survives a reload is kept.
    pub fn fingerprint(&self) -> String {
        format!("{self:?}")
    }

    /// Whether this rule applies to a series of a target at `source` (host:port).
    pub fn selects(&self, source: &str, name: &str, labels: &[(String, String)]) -> bool {
        self.source.as_ref().is_none_or(|g| g.matches(source))
            && self.selector.matches(name, labels)
    }
}

/// The validated contents of a rules file.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: Option<RawDefaults>,
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    window: Option<Spanned<i64>>,
    min_samples: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    for_duration: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(rename = "match")]
    selector: Spanned<String>,
    source: Option<Spanned<String>>,
    transform: Option<Spanned<String>>,
    method: Spanned<String>,
    z_threshold: Option<Spanned<f64>>,
    iqr_factor: Option<Spanned<f64>>,
    threshold: Option<Spanned<f64>>,
    op: Option<Spanned<String>>,
    trend_window: Option<Spanned<i64>>,
    deviation_pct: Option<Spanned<f64>>,
    window: Option<Spanned<i64>>,
    min_samples: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    for_duration: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

/// Only what locates a structural error: each rule's start and name.
#[derive(Deserialize)]
struct LenientFile {
    #[serde(default)]
    rules: Vec<Spanned<LenientRule>>,
}

#[derive(Deserialize)]
struct LenientRule {
    name: Option<String>,
}

const DEFAULT_WINDOW: i64 = 60;
const DEFAULT_MIN_SAMPLES: i64 = 10;
/// Labels the sidecar sets itself on every anomaly series.
pub const RESERVED_LABELS: [&str; 5] = ["rule", "severity", "method", "target", "metric"];

/// Reads and validates a rules file.
pub fn load_file(path: &Path) -> Result<RuleSet, RuleErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        RuleErrors(vec![RuleError {
            file: file.clone(),
            line: 0,
            column: 0,
            rule: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&file, &text)
}

/// Validates rules text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<RuleSet, RuleErrors> {
    let one = |line, column, rule, message: String| {
        RuleErrors(vec![RuleError {
            file: file.to_string(),
            line,
            column,
            rule,
            message,
        }])
    };
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if !has_content {
        return Err(one(
            1,
            1,
            None,
            "file is empty: write `rules: []` to run no rules".into(),
        ));
    }
    let options = serde_saphyr::Options {
        with_snippet: false,
        ..Default::default()
    };
    let raw: RawFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let msg = e.to_string();
        let suffix = format!(" at line {line}, column {column}");
        let msg = msg.strip_suffix(&suffix).unwrap_or(&msg).to_string();
        // serde reports an unknown key at its mapping's start; point at the key itself.
        let (line, column) = unknown_key(&msg)
            .and_then(|key| find_key(text, key, line))
            .unwrap_or((line, column));
        one(line, column, rule_at_line(text, line), msg)
    })?;
    let mut v = Validator {
        file,
        errors: Vec::new(),
    };
    let rules = v.rules(raw);
    if v.errors.is_empty() {
        Ok(RuleSet { rules })
    } else {
        Err(RuleErrors(v.errors))
    }
}

fn unknown_key(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Line and column (1-based) of the first `key:` at or after `from_line`.
fn find_key(text: &str, key: &str, from_line: u64) -> Option<(u64, u64)> {
    for (i, line) in text
        .lines()
        .enumerate()
        .skip(from_line.saturating_sub(1) as usize)
    {
        let mut search = 0;
        while let Some(pos) = line[search..].find(key) {
            let at = search + pos;
            let before = line[..at].chars().next_back();
            let after = line[at + key.len()..].trim_start();
            let boundary = before.is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-');
            if boundary && after.starts_with(':') {
                return Some((i as u64 + 1, at as u64 + 1));
            }
            search = at + key.len();
        }
    }
    None
}

/// The name of the rule whose mapping starts last at or before `line`.
fn rule_at_line(text: &str, line: u64) -> Option<String> {
    let lenient: LenientFile = serde_saphyr::from_str(text).ok()?;
    lenient
        .rules
        .iter()
        .rfind(|r| r.referenced.line() <= line)
        .and_then(|r| r.value.name.clone())
}

struct Validator<'a> {
    file: &'a str,
    errors: Vec<RuleError>,
}

struct Defaults {
    window: i64,
    min_samples: i64,
    for_duration: Duration,
    severity: Severity,
}

impl Validator<'_> {
    fn err(&mut self, at: &Location, rule: Option<&str>, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            rule: rule.map(str::to_string),
            message: message.into(),
        });
    }

    fn rules(&mut self, raw: RawFile) -> Vec<Arc<Rule>> {
        let d = raw.defaults.unwrap_or_default();
        let defaults = Defaults {
            window: d
                .window
                .map_or(DEFAULT_WINDOW, |w| self.positive(&w, None, "window")),
            min_samples: d.min_samples.map_or(DEFAULT_MIN_SAMPLES, |m| {
                self.positive(&m, None, "min_samples")
            }),
            for_duration: d
                .for_duration
                .map_or(Duration::ZERO, |f| self.duration(&f, None)),
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
            let rule = self.rule(r, &defaults);
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
            .map_or(Transform::Auto, |t| match t.value.as_str() {
                "auto" => Transform::Auto,
                "raw" => Transform::Raw,
                "rate" => Transform::Rate,
                "delta" => Transform::Delta,
                other => {
                    self.err(
                        &t.referenced,
                        n,
                        format!("unknown transform {other:?}: use auto, raw, rate or delta"),
                    );
                    Transform::Auto
                }
            });
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
        let method = self.method(&r, n, window);
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
            .map_or(d.for_duration, |f| self.duration(&f, n));
        let severity = r.severity.map_or(d.severity, |s| self.severity(&s, n));
        let mut labels = BTreeMap::new();
        for (k, v) in r.labels {
            if !valid_name(&k) || k.starts_with("__") {
                self.err(&v.referenced, n, format!("bad label name {k:?}"));
            } else if RESERVED_LABELS.contains(&k.as_str()) || k == "alertname" {
                self.err(
                    &v.referenced,
                    n,
                    format!("label {k:?} is set by the sidecar and cannot be overridden"),
                );
            }
            labels.insert(k, v.value);
        }
        let mut annotations = BTreeMap::new();
        for (k, v) in r.annotations {
            match Template::parse(&v.value) {
                Ok(t) => {
                    annotations.insert(k, t);
                }
                Err(e) => self.err(&v.referenced, n, e),
            }
        }
        Rule {
            name,
            selector: selector.unwrap_or_else(|| Selector::parse("x").expect("literal selector")),
            source,
            transform,
            method,
            window: window as usize,
            min_samples: min_samples as usize,
            for_duration,
            severity,
            labels,
            annotations,
        }
    }

    fn method(&mut self, r: &RawRule, n: Option<&str>, window: i64) -> Method {
        let m = r.method.value.as_str();
        let at = r.method.referenced;
        // Parameters of another method are mistakes, not silently ignored values.
        let params: [(&str, Option<Location>, &[&str]); 6] = [
            (
                "z_threshold",
                r.z_threshold.as_ref().map(|s| s.referenced),
                &["zscore"],
            ),
            (
                "iqr_factor",
                r.iqr_factor.as_ref().map(|s| s.referenced),
                &["iqr"],
            ),
            (
                "threshold",
                r.threshold.as_ref().map(|s| s.referenced),
                &["threshold"],
            ),
            ("op", r.op.as_ref().map(|s| s.referenced), &["threshold"]),
            (
                "trend_window",
                r.trend_window.as_ref().map(|s| s.referenced),
                &["trend"],
            ),
            (
                "deviation_pct",
                r.deviation_pct.as_ref().map(|s| s.referenced),
                &["trend"],
            ),
        ];
        let known = ["zscore", "iqr", "threshold", "trend"];
        if known.contains(&m) {
            for (key, loc, methods) in params {
                if let Some(loc) = loc {
                    if !methods.contains(&m) {
                        self.err(&loc, n, format!("{key} does not apply to method {m}"));
                    }
                }
            }
        }
        match m {
            "zscore" => Method::ZScore {
                z_threshold: self.pos_f64(&r.z_threshold, 3.0, n, "z_threshold"),
            },
            "iqr" => Method::Iqr {
                iqr_factor: self.pos_f64(&r.iqr_factor, 1.5, n, "iqr_factor"),
            },
            "threshold" => {
                let threshold = match &r.threshold {
                    Some(t) if t.value.is_finite() => t.value,
                    Some(t) => {
                        self.err(&t.referenced, n, "threshold must be a finite number");
                        0.0
                    }
                    None => {
                        self.err(&at, n, "method threshold needs `threshold`");
                        0.0
                    }
                };
                let op = r.op.as_ref().map_or(Op::Gt, |o| match o.value.as_str() {
                    "gt" => Op::Gt,
                    "lt" => Op::Lt,
                    "gte" => Op::Gte,
                    "lte" => Op::Lte,
                    other => {
                        self.err(
                            &o.referenced,
                            n,
                            format!("unknown op {other:?}: use gt, lt, gte or lte"),
                        );
                        Op::Gt
                    }
                });
                Method::Threshold { threshold, op }
            }
            "trend" => {
                let trend_window = r.trend_window.as_ref().map_or(5, |t| {
                    if t.value < 2 || t.value > window + 1 {
                        self.err(
                            &t.referenced,
                            n,
                            format!(
                                "trend_window must be between 2 and window + 1 ({})",
                                window + 1
                            ),
                        );
                    }
                    t.value.max(2) as usize
                });
                Method::Trend {
                    trend_window,
                    deviation_pct: self.pos_f64(&r.deviation_pct, 20.0, n, "deviation_pct"),
                }
            }
            other => {
                self.err(
                    &at,
                    n,
                    format!("unknown method {other:?}: use zscore, iqr, threshold or trend"),
                );
                Method::ZScore { z_threshold: 3.0 }
            }
        }
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

#[cfg(test)]
mod tests;
