//! rules.yaml: raw serde structs (`deny_unknown_fields`, every value with its location), then
//! a validated `RuleSet` built in one pass that collects every error with file:line:column and
//! the rule's name. Nothing after this module reads YAML.

mod guard;
mod raw;
mod validate;
mod zone;

use super::glob::Glob;
use super::selector::Selector;
use super::template::Template;
use crate::detect::Method;
use raw::{LenientFile, RawFile};
use std::collections::BTreeMap;
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
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
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
    /// How long a firing alert stays firing after its condition cleared.
    pub keep_firing_for: Duration,
    /// The condition: at least `.0` anomalous verdicts among the last `.1` (1 of 1 unless
    /// set).
    pub min_anomalous: (u32, u32),
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, Template>,
    /// peers: the labels (target or series) whose values make a group of pods judged against
    /// each other; empty: every target of the rule is one group.
    pub by: Vec<String>,
    /// Name plus a hash of what the detector learns with (method, transform, window,
    /// min_samples): stored seasonal profiles belong to it, so an annotation edit keeps them
    /// and a detector change starts them afresh. Alerts belong to the name alone.
    pub profile_key: String,
    /// Side, minimum deviation, hysteresis and relearning, the same for every method.
    pub guard: crate::detect::Guard,
    /// `for`, `keep_firing_for` and `min_anomalous` as the alert state machine takes them,
    /// computed once at load (every evaluation asks).
    pub policy: crate::alert::Policy,
}

impl Rule {
    /// A string that changes whenever anything about the rule changes: alert state of a rule
    /// whose fingerprint survives a reload is kept.
    pub fn fingerprint(&self) -> String {
        format!("{self:?}")
    }

    /// A string that changes whenever what the detector learns from changes.
    pub fn detector_fingerprint(&self) -> String {
        let method = match &self.method {
            // As written before seasons had zones, so a profile learnt in UTC days is kept.
            Method::Seasonal {
                season,
                buckets,
                z_threshold,
                memory,
            } if season.epoch_aligned() => format!(
                "Seasonal {{ season_ms: {}, buckets: {buckets}, z_threshold: {z_threshold:?}, memory: {memory} }}",
                season.ms()
            ),
            m => format!("{m:?}"),
        };
        format!(
            "{method}|{:?}|{}|{}",
            self.transform, self.window, self.min_samples
        )
    }

    /// How the rule's verdicts become an alert.
    pub fn policy(&self) -> crate::alert::Policy {
        self.policy
    }

    /// The policy of `for`, `keep_firing_for` and `min_anomalous`.
    pub fn policy_of(
        for_duration: Duration,
        keep_firing_for: Duration,
        min_anomalous: (u32, u32),
    ) -> crate::alert::Policy {
        crate::alert::Policy {
            for_ms: for_duration.as_millis().min(i64::MAX as u128) as i64,
            keep_firing_for_ms: keep_firing_for.as_millis().min(i64::MAX as u128) as i64,
            count: min_anomalous.0,
            of: min_anomalous.1,
        }
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
    let raw: RawFile = super::yaml::decode(text)
        .map_err(|e| one(e.line, e.column, rule_at_line(text, e.line), e.message))?;
    let mut v = validate::Validator {
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

/// The name of the rule whose mapping starts last at or before `line`.
fn rule_at_line(text: &str, line: u64) -> Option<String> {
    let lenient: LenientFile = serde_saphyr::from_str(text).ok()?;
    lenient
        .rules
        .iter()
        .rfind(|r| r.referenced.line() <= line)
        .and_then(|r| r.value.name.clone())
}

#[cfg(test)]
mod tests;
