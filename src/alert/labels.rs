//! The label set of an alert and of a rule's gauges, built here for every output (/metrics,
//! `/api/v1/alerts`, webhooks, Alertmanager, fingerprints and event ids), so that two series
//! never become one alert in one output and two in another.
//!
//! The sidecar sets `alertname`, `rule`, `severity`, `method`, `target`, `metric` and the
//! rule's own labels. A series label with one of those names is kept as `exported_<name>`
//! (prefixed again while that name is taken too), which is what Prometheus does with a
//! scraped label that collides with a target label.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// Label names the sidecar sets on every alert or gauge.
pub const SIDECAR_LABELS: [&str; 6] = [
    "alertname",
    "rule",
    "severity",
    "method",
    "target",
    "metric",
];

/// Whether a series label named `name` collides with a label the sidecar or the rule sets.
pub fn is_taken(name: &str, rule_labels: &BTreeMap<String, String>) -> bool {
    SIDECAR_LABELS.contains(&name) || rule_labels.contains_key(name)
}

/// Whether any of the series' labels needs renaming (the common case is none, and /metrics
/// renders every row: the fast path allocates nothing).
pub fn any_taken<'a>(
    mut series: impl Iterator<Item = (&'a str, &'a str)>,
    rule_labels: &BTreeMap<String, String>,
) -> bool {
    series.any(|(k, _)| is_taken(k, rule_labels))
}

/// The series' labels as every output names them, in the series' order.
pub fn series_labels<'a>(
    series: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    rule_labels: &BTreeMap<String, String>,
) -> Vec<(Cow<'a, str>, &'a str)> {
    let mut used: BTreeSet<String> = SIDECAR_LABELS.iter().map(|s| s.to_string()).collect();
    used.extend(rule_labels.keys().cloned());
    used.extend(
        series
            .clone()
            .filter(|(k, _)| !is_taken(k, rule_labels))
            .map(|(k, _)| k.to_string()),
    );
    let mut out: Vec<(Cow<'a, str>, &'a str)> =
        series.map(|(k, v)| (Cow::Borrowed(k), v)).collect();
    // Shorter names first, as Prometheus resolves them, so `a` and `exported_a` colliding
    // together always end up the same way.
    let mut colliding: Vec<usize> = (0..out.len())
        .filter(|&i| is_taken(&out[i].0, rule_labels))
        .collect();
    colliding.sort_by_key(|&i| out[i].0.len());
    for i in colliding {
        let mut name = out[i].0.to_string();
        loop {
            name.insert_str(0, "exported_");
            if used.insert(name.clone()) {
                break;
            }
        }
        out[i].0 = Cow::Owned(name);
    }
    out
}

/// The labels of a rule's alert on a series: `alertname`, `severity`, the rule's labels,
/// `target`, `metric`, then the series' own (renamed where they collide).
pub fn alert_labels<'a>(
    rule: &str,
    severity: &str,
    rule_labels: &BTreeMap<String, String>,
    target: &str,
    metric: &str,
    series: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = rule_labels.clone();
    for (k, v) in series_labels(series, rule_labels) {
        l.insert(k.into_owned(), v.to_string());
    }
    l.insert("alertname".into(), rule.to_string());
    l.insert("severity".into(), severity.to_string());
    l.insert("target".into(), target.to_string());
    l.insert("metric".into(), metric.to_string());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_labels() -> BTreeMap<String, String> {
        [("team".to_string(), "infra".to_string())].into()
    }

    #[test]
    fn colliding_series_labels_are_exported() {
        let series = [("severity", "error"), ("team", "web"), ("path", "/")];
        let l = alert_labels(
            "r",
            "warning",
            &rule_labels(),
            "h:1",
            "log_rate",
            series.iter().copied(),
        );
        assert_eq!(l["severity"], "warning");
        assert_eq!(l["exported_severity"], "error");
        assert_eq!(l["team"], "infra");
        assert_eq!(l["exported_team"], "web");
        assert_eq!(l["path"], "/");
        assert_eq!(l["alertname"], "r");
    }

    #[test]
    fn series_differing_only_in_a_taken_label_stay_apart() {
        let a = [("severity", "error")];
        let b = [("severity", "warning")];
        let la = alert_labels(
            "r",
            "warning",
            &BTreeMap::new(),
            "t",
            "m",
            a.iter().copied(),
        );
        let lb = alert_labels(
            "r",
            "warning",
            &BTreeMap::new(),
            "t",
            "m",
            b.iter().copied(),
        );
        assert_ne!(la, lb);
        for name in ["alertname", "target", "metric", "rule", "method"] {
            let s = [(name, "x")];
            let l = alert_labels("r", "w", &BTreeMap::new(), "t", "m", s.iter().copied());
            assert_eq!(l[&format!("exported_{name}")], "x", "{name}");
        }
    }

    #[test]
    fn an_exported_name_already_used_is_prefixed_again() {
        let s = [("exported_target", "a"), ("target", "b")];
        let l = series_labels(s.iter().copied(), &BTreeMap::new());
        assert_eq!(
            l,
            [
                (Cow::Borrowed("exported_target"), "a"),
                (Cow::Owned("exported_exported_target".to_string()), "b")
            ]
        );
        assert!(!any_taken([("a", "b")].into_iter(), &BTreeMap::new()));
        assert!(any_taken([("metric", "b")].into_iter(), &BTreeMap::new()));
    }
}
