//! An alert's firing or resolution as one value: what every output (logs, webhooks,
//! Alertmanager, the outbox) is built from, with its labels from `labels::alert_labels`.

use crate::detect::Verdict;
use std::collections::BTreeMap;

/// A firing or a resolution, as announced on stdout/logs and stored in receivers' outboxes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertEvent {
    pub firing: bool,
    pub at_ms: i64,
    /// Since when the alert fired (equals `at_ms` on a firing event).
    pub fired_at_ms: i64,
    pub rule: String,
    pub severity: String,
    pub method: String,
    pub target: String,
    pub metric: String,
    /// The series' own labels.
    pub series_labels: Vec<(String, String)>,
    /// The rule's extra labels.
    pub rule_labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "crate::detect::nan_if_null")]
    pub value: f64,
    pub verdict: Verdict,
}

impl AlertEvent {
    /// A resolution that only says this replica stopped watching the series (its target went
    /// to another `--shard`): Alertmanager is not told, so the new owner's alert continues
    /// it there (or it expires at its endsAt).
    pub fn handed_off(&self) -> bool {
        !self.firing
            && self.annotations.get("reason").map(String::as_str)
                == Some(super::book::Reason::TargetMoved.as_str())
    }

    /// Labels of the alert (`labels::alert_labels`): the same set in every output.
    pub fn labels(&self) -> BTreeMap<String, String> {
        super::labels::alert_labels(
            &self.rule,
            &self.severity,
            &self.rule_labels,
            &self.target,
            &self.metric,
            self.series_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Annotations: the rule's rendered templates plus what explains the verdict.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let ev = self;
        let mut a = ev.annotations.clone();
        let v = &ev.verdict;
        let mut put = |k: &str, x: Option<f64>| {
            if let Some(x) = x.filter(|x| x.is_finite()) {
                a.insert(k.to_string(), x.to_string());
            }
        };
        put("value", Some(ev.value));
        put("baseline_mean", v.baseline_mean);
        put("baseline_stddev", v.baseline_stddev);
        put("zscore", v.zscore);
        put("lower_bound", v.lower_bound);
        put("upper_bound", v.upper_bound);
        a.insert("method".into(), ev.method.to_string());
        if let Some(d) = v.direction {
            a.insert("direction".into(), d.as_str().to_string());
        }
        a
    }

    /// One human-readable line: what, where, how far off, and the summary.
    pub fn line(&self) -> String {
        use crate::util::format_value as f;
        let labels: Vec<String> = self
            .series_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let mut s = format!(
            "{} {} rule={} severity={} method={} target={} series={}{{{}}} value={}",
            crate::util::rfc3339(self.at_ms),
            if self.firing { "FIRING  " } else { "RESOLVED" },
            self.rule,
            self.severity,
            self.method,
            self.target,
            self.metric,
            labels.join(","),
            f(self.value),
        );
        let v = &self.verdict;
        if let Some(m) = v.baseline_mean {
            s.push_str(&format!(" mean={}", f(m)));
        }
        if let Some(z) = v.zscore {
            s.push_str(&format!(" z={}", f(z)));
        }
        if let (Some(lo), Some(hi)) = (v.lower_bound, v.upper_bound) {
            s.push_str(&format!(" band=[{}, {}]", f(lo), f(hi)));
        }
        if let Some(d) = v.direction {
            s.push_str(&format!(" direction={}", d.as_str()));
        }
        if !self.firing {
            let secs = (self.at_ms - self.fired_at_ms).max(0) / 1000;
            s.push_str(&format!(" fired_for={secs}s"));
            if let Some(reason) = self.annotations.get("reason") {
                s.push_str(&format!(" reason={reason}"));
            }
        }
        for (k, v) in &self.rule_labels {
            s.push_str(&format!(" {k}={v:?}"));
        }
        if let Some(summary) = self.annotations.get("summary") {
            s.push_str(&format!(" summary={summary:?}"));
        }
        s
    }
}
