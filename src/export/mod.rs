//! Renders /metrics: the anomaly gauges of every (rule, series) and the self-monitoring
//! registry.
//!
//! The anomaly families carry each series' own labels, so their label names differ from series
//! to series; the `prometheus` crate's vectors need fixed label names, so these families are
//! rendered here directly (escaping per the text format, checked by `promtool check metrics`
//! in the tests), and the fixed-label self metrics go through a `prometheus::Registry`.

pub mod self_metrics;

pub use self_metrics::SelfMetrics;

use crate::alert::AlertEvent;
use crate::detect::Verdict;
use crate::store::SeriesId;
use hyper::body::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

/// The exported state of one (rule, series).
#[derive(Debug, Clone)]
pub struct AnomalyRow {
    /// Rendered label set without braces: `rule="…",severity="…",…`.
    pub labels: Arc<str>,
    pub active: bool,
    pub pending: bool,
    pub value: f64,
    pub verdict: Verdict,
}

type RowKey = (Arc<str>, SeriesId);

/// A pending or firing alert, as `GET /api/v1/alerts` shows it.
#[derive(Debug, Clone)]
pub struct AlertView {
    pub firing: bool,
    /// Since when the condition has held (pending) or the alert has fired.
    pub active_at_ms: i64,
    pub event: AlertEvent,
}

/// Shared between the pipeline (the only writer) and the HTTP server (readers).
pub struct Exporter {
    rows: RwLock<HashMap<RowKey, AnomalyRow>>,
    alerts: RwLock<BTreeMap<RowKey, AlertView>>,
    /// Bumped on every change of `rows`; the rendered text is reused while it stands still.
    generation: AtomicU64,
    rendered: Mutex<Option<(u64, Bytes)>>,
    registry: prometheus::Registry,
    pub metrics: SelfMetrics,
}

/// Gauge families: name, help, how to read the value from a row.
type Getter = fn(&AnomalyRow) -> Option<f64>;
const FAMILIES: [(&str, &str, Getter); 9] = [
    (
        "anomaly_active",
        "1 while the rule's alert for the series is firing, else 0.",
        |r| Some(f64::from(u8::from(r.active))),
    ),
    (
        "anomaly_pending",
        "1 while the condition holds but the rule's `for` has not elapsed.",
        |r| Some(f64::from(u8::from(r.pending))),
    ),
    (
        "anomaly_score",
        "Distance from normal on a common scale: >= 1 means past the rule's threshold.",
        |r| Some(r.verdict.score),
    ),
    (
        "anomaly_value",
        "Last evaluated value (after the rule's transform).",
        |r| Some(r.value),
    ),
    (
        "anomaly_baseline_mean",
        "Mean of the history window.",
        |r| r.verdict.baseline_mean,
    ),
    (
        "anomaly_baseline_stddev",
        "Sample standard deviation of the history window.",
        |r| r.verdict.baseline_stddev,
    ),
    (
        "anomaly_lower_bound",
        "Lower edge of the normal band.",
        |r| r.verdict.lower_bound,
    ),
    (
        "anomaly_upper_bound",
        "Upper edge of the normal band.",
        |r| r.verdict.upper_bound,
    ),
    (
        "anomaly_zscore",
        "Signed z-score of the last value against the history window.",
        |r| r.verdict.zscore,
    ),
];

impl Exporter {
    /// A new exporter with its self metrics registered.
    pub fn new() -> prometheus::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = SelfMetrics::register(&registry)?;
        Ok(Self {
            rows: RwLock::new(HashMap::new()),
            alerts: RwLock::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            rendered: Mutex::new(None),
            registry,
            metrics,
        })
    }

    /// Applies the pipeline's changes of one scrape, one write lock per map. `removals` drop
    /// both the gauges and the alert of a (rule, series); `alerts_over` only the alert.
    pub fn apply(&self, changes: ExportChanges) {
        if !changes.upserts.is_empty() || !changes.removals.is_empty() {
            let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
            for k in &changes.removals {
                rows.remove(k);
            }
            rows.extend(changes.upserts);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if !changes.alerts.is_empty()
            || !changes.alerts_over.is_empty()
            || !changes.removals.is_empty()
        {
            let mut alerts = self.alerts.write().unwrap_or_else(|p| p.into_inner());
            for k in changes.removals.iter().chain(&changes.alerts_over) {
                alerts.remove(k);
            }
            alerts.extend(changes.alerts);
        }
    }

    /// Drops every row of a rule (the rule was removed or changed).
    pub fn remove_rule(&self, rule: &str) {
        let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
        rows.retain(|(r, _), _| &**r != rule);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut alerts = self.alerts.write().unwrap_or_else(|p| p.into_inner());
        alerts.retain(|(r, _), _| &**r != rule);
    }

    /// Pending and firing alerts with what explains them, in the shape of Prometheus'
    /// `/api/v1/alerts` plus an `explanation` object.
    pub fn alerts_json(&self) -> String {
        let alerts = self.alerts.read().unwrap_or_else(|p| p.into_inner());
        let list: Vec<serde_json::Value> = alerts
            .values()
            .map(|a| {
                let ev = &a.event;
                let v = &ev.verdict;
                serde_json::json!({
                    "labels": ev.labels(),
                    "annotations": ev.annotations,
                    "state": if a.firing { "firing" } else { "pending" },
                    "activeAt": rfc3339(a.active_at_ms),
                    "value": format_float(ev.value),
                    "explanation": {
                        "method": ev.method,
                        "score": finite(v.score),
                        "baseline_mean": v.baseline_mean.and_then(finite),
                        "baseline_stddev": v.baseline_stddev.and_then(finite),
                        "zscore": v.zscore.and_then(finite),
                        "lower_bound": v.lower_bound.and_then(finite),
                        "upper_bound": v.upper_bound.and_then(finite),
                        "direction": v.direction.map(|d| d.as_str()),
                    },
                })
            })
            .collect();
        serde_json::json!({"status": "success", "data": {"alerts": list}}).to_string()
    }

    /// The /metrics body in two parts: the anomaly families, rendered once per change and
    /// shared by every reader (at 100k series they are tens of MB, and many concurrent
    /// readers must not each build their own), then the small self-metrics part, fresh.
    pub fn render(&self) -> [Bytes; 2] {
        let anomalies = {
            let mut cache = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
            let generation = self.generation.load(Ordering::Acquire);
            match &*cache {
                Some((g, text)) if *g == generation => text.clone(),
                _ => {
                    let text = Bytes::from(self.render_anomalies());
                    *cache = Some((generation, text.clone()));
                    text
                }
            }
        };
        let encoder = prometheus::TextEncoder::new();
        let own = match encoder.encode_to_string(&self.registry.gather()) {
            Ok(text) => Bytes::from(text),
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode self metrics");
                Bytes::new()
            }
        };
        [anomalies, own]
    }

    fn render_anomalies(&self) -> String {
        let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(rows.len() * 9 * 160);
        for (name, help, get) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for row in rows.values() {
                if let Some(v) = get(row) {
                    let _ = writeln!(out, "{name}{{{}}} {}", row.labels, format_float(v));
                }
            }
        }
        out
    }
}

/// Changes of one scrape for the exporter.
#[derive(Default)]
pub struct ExportChanges {
    pub upserts: Vec<(RowKey, AnomalyRow)>,
    pub removals: Vec<RowKey>,
    pub alerts: Vec<(RowKey, AlertView)>,
    pub alerts_over: Vec<RowKey>,
}

/// JSON has no NaN or infinity.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Renders a label set for the exposition format, escaping values.
pub fn render_labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// A float as the exposition format spells it.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Debug keeps full precision and uses exponents for extremes (1e-300, not 300 zeros).
        format!("{v:?}")
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_floats() {
        assert_eq!(render_labels(&[("a", "x\"y\\z\nw")]), r#"a="x\"y\\z\nw""#);
        assert_eq!(format_float(1.0), "1.0");
        assert_eq!(format_float(1e-300), "1e-300");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
