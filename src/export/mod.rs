//! Renders /metrics: the anomaly gauges of every (rule, series) and the self-monitoring
//! registry.
//!
//! The anomaly families carry each series' own labels, so their label names differ from series
//! to series; the `prometheus` crate's vectors need fixed label names, so these families are
//! rendered here directly (escaping per the text format, checked by `promtool check metrics`
//! in the tests), and the fixed-label self metrics go through a `prometheus::Registry`.

pub mod render;
pub mod self_metrics;

pub use render::Rendering;
pub use self_metrics::SelfMetrics;

use crate::alert::AlertEvent;
use crate::detect::Verdict;
use crate::store::{SeriesId, SeriesIdentity};
use crate::util::{finite, push_label, rfc3339};
use hyper::body::Bytes;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// The exported state of one (rule, series): the value of each gauge family, compact (at 100k
/// series the table and a reader's snapshot of it are each ~10 MB). Its labels are rendered
/// when read, from the rule's part and the series' identity (shared, not copied: a rendered
/// label set per row cost ~20 MB at 100k series).
#[derive(Debug, Clone)]
pub struct AnomalyRow {
    /// The rule's part of the labels, shared by all its rows.
    head: Arc<RuleHead>,
    series: Arc<SeriesIdentity>,
    /// Indexed like `FAMILIES`.
    values: [f64; 9],
    /// Bit i set: family i has a value for this row.
    present: u16,
    /// Some series label needs renaming (`exported_*`): decided once per row, not per family
    /// at every read.
    renamed: bool,
}

/// The gauge values of one row, without its labels: what a scrape changes of a row that the
/// exporter already holds.
#[derive(Debug, Clone, Copy)]
pub struct RowValues {
    values: [f64; 9],
    present: u16,
}

impl RowValues {
    pub fn new((active, pending): (bool, bool), value: f64, v: &Verdict) -> Self {
        // Field by field, not through an array of options: every sample of every series
        // passes here, and the array was stored and read back on the stack.
        let mut present = 0b1111u16;
        let mut at = |i: u16, f: Option<f64>| {
            present |= u16::from(f.is_some()) << i;
            f.unwrap_or(0.0)
        };
        let values = [
            f64::from(u8::from(active)),
            f64::from(u8::from(pending)),
            v.score,
            value,
            at(4, v.baseline_mean),
            at(5, v.baseline_stddev),
            at(6, v.lower_bound),
            at(7, v.upper_bound),
            at(8, v.zscore),
        ];
        Self { values, present }
    }
}

/// The labels every gauge of a rule starts with, rendered once per rule (the series' part is
/// rendered when /metrics is read, from its identity), and the rule's own labels, which a
/// series label must not shadow.
#[derive(Debug)]
pub struct RuleHead {
    /// `rule="…",severity="…",method="…"` and the rule's labels.
    pub text: Box<str>,
    pub labels: BTreeMap<String, String>,
}

/// A change of one row.
#[derive(Debug, Clone)]
pub enum RowUpdate {
    /// The row with its labels (the first time, or to replace them).
    New(AnomalyRow),
    /// New values of a row the exporter holds.
    Values(RowValues),
    /// The row's alert ended without an evaluation (its target is down): `anomaly_active`
    /// and `anomaly_pending` go to 0, the last values stay.
    Ended,
}

impl AnomalyRow {
    pub fn new((head, series): (Arc<RuleHead>, Arc<SeriesIdentity>), values: RowValues) -> Self {
        let renamed = crate::alert::labels::any_taken(series.labels(), &head.labels);
        Self {
            head,
            series,
            values: values.values,
            present: values.present,
            renamed,
        }
    }

    fn set(&mut self, v: RowValues) {
        self.values = v.values;
        self.present = v.present;
    }

    /// Neither firing nor pending any more; the rest as it was.
    fn end(&mut self) {
        self.values[0] = 0.0;
        self.values[1] = 0.0;
    }

    /// The value of family `i`, if the row has one.
    fn get(&self, i: usize) -> Option<f64> {
        (self.present >> i & 1 == 1).then_some(self.values[i])
    }
}

/// A rule's number in the exporter, the same for its name across reloads. Rows are keyed by
/// it: every sample of a scrape copies a number instead of taking a reference on the rule's
/// name (each an atomic instruction, which waits for every memory access before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u32);

/// A row: the rule and the series.
pub type RowKey = (RuleId, SeriesId);

/// Hashes row keys cheaply: every sample of a scrape updates a row, and SipHash over the rule
/// name was a visible share of the pipeline's time at 100k series. The series id is already a
/// uniform hash, so one multiply per word mixes enough (keys are ours, not an attacker's).
#[derive(Default)]
struct RowHasher(u64);

impl std::hash::Hasher for RowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type RowMap<V> = HashMap<RowKey, V, std::hash::BuildHasherDefault<RowHasher>>;

/// A pending or firing alert, as `GET /api/v1/alerts` shows it.
#[derive(Debug, Clone)]
pub struct AlertView {
    pub firing: bool,
    /// Since when the condition has held (pending) or the alert has fired.
    pub active_at_ms: i64,
    pub event: AlertEvent,
}

/// Rows in a dense list (a snapshot is one copy of it) with an index by key.
///
/// The pipeline updates rows in the order a target writes its series, the order they were
/// first inserted in, so an update first tries the row after the last one updated: a scrape
/// walks the list in order instead of probing the index at random (a cache miss per row at
/// 100k series).
#[derive(Default)]
struct Rows {
    index: RowMap<usize>,
    keys: Vec<RowKey>,
    list: Vec<AnomalyRow>,
    /// Where the next update probably goes.
    next: usize,
}

impl Rows {
    fn upsert(&mut self, key: RowKey, update: RowUpdate) {
        let next = self.next;
        let predicted = self.keys.get(next).is_some_and(|k| *k == key);
        let at = if predicted {
            next
        } else {
            match self.index.entry(key) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(_) if matches!(update, RowUpdate::Ended) => return,
                Entry::Vacant(e) => {
                    let RowUpdate::New(row) = update else {
                        // The pipeline sends labels until a row exists: never here.
                        debug_assert!(false, "values for a row the exporter does not hold");
                        return;
                    };
                    self.keys.push(*e.key());
                    e.insert(self.list.len());
                    self.list.push(row);
                    self.next = self.list.len();
                    return;
                }
            }
        };
        match update {
            RowUpdate::New(row) => self.list[at] = row,
            RowUpdate::Values(v) => self.list[at].set(v),
            RowUpdate::Ended => self.list[at].end(),
        }
        self.next = at + 1;
    }

    fn remove(&mut self, key: &RowKey) {
        let Some(i) = self.index.remove(key) else {
            return;
        };
        self.keys.swap_remove(i);
        self.list.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.index.insert(*moved, i);
        }
    }

    fn remove_rule(&mut self, rule: RuleId) {
        let doomed: Vec<RowKey> = self
            .keys
            .iter()
            .filter(|(r, _)| *r == rule)
            .copied()
            .collect();
        for k in &doomed {
            self.remove(k);
        }
    }
}

/// Shared between the pipeline (the only writer) and the HTTP server (readers).
pub struct Exporter {
    rows: RwLock<Rows>,
    alerts: RwLock<BTreeMap<RowKey, AlertView>>,
    /// Rule name → its number in row keys.
    rule_ids: Mutex<HashMap<String, RuleId>>,
    /// Bumped on every change of `rows`; readers at the same generation share one snapshot.
    generation: AtomicU64,
    snapshot: Mutex<(u64, Weak<[AnomalyRow]>)>,
    registry: prometheus::Registry,
    pub metrics: SelfMetrics,
}

/// Gauge families: name, help, index into `AnomalyRow::values`.
const FAMILIES: [(&str, &str, usize); 9] = [
    (
        "anomaly_active",
        "1 while the rule's alert for the series is firing, else 0.",
        0,
    ),
    (
        "anomaly_pending",
        "1 while the condition holds but the rule's `for` has not elapsed.",
        1,
    ),
    (
        "anomaly_score",
        "Distance from normal on a common scale: >= 1 means past the rule's threshold.",
        2,
    ),
    (
        "anomaly_value",
        "Last evaluated value (after the rule's transform).",
        3,
    ),
    ("anomaly_baseline_mean", "Mean of the history window.", 4),
    (
        "anomaly_baseline_stddev",
        "Sample standard deviation of the history window.",
        5,
    ),
    ("anomaly_lower_bound", "Lower edge of the normal band.", 6),
    ("anomaly_upper_bound", "Upper edge of the normal band.", 7),
    (
        "anomaly_zscore",
        "Signed z-score of the last value against the history window.",
        8,
    ),
];

impl Exporter {
    /// A new exporter with its self metrics registered.
    pub fn new() -> prometheus::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = SelfMetrics::register(&registry)?;
        Ok(Self {
            rows: RwLock::new(Rows::default()),
            alerts: RwLock::new(BTreeMap::new()),
            rule_ids: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            snapshot: Mutex::new((u64::MAX, Weak::<[AnomalyRow; 0]>::new())),
            registry,
            metrics,
        })
    }

    /// Applies a part of the pipeline's changes, one write lock per map. `removals` drop
    /// both the gauges and the alert of a (rule, series); `alerts_over` only the alert.
    /// Empties `changes` but keeps their buffers: a scrape's slices reuse them (allocated
    /// anew, each slice's grew by doubling, ~2 % of the CPU at 100k series).
    pub fn apply(&self, changes: &mut ExportChanges) {
        if changes.rows() > 0 || !changes.removals.is_empty() {
            let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
            for k in &changes.removals {
                rows.remove(k);
            }
            // A key is in at most one of the two lists in a batch (its first evaluation
            // sends labels, later ones values).
            for (k, row) in changes.upserts.drain(..) {
                rows.upsert(k, row);
            }
            for (k, v) in changes.values.drain(..) {
                rows.upsert(k, RowUpdate::Values(v));
            }
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
            alerts.extend(changes.alerts.drain(..));
        }
        changes.removals.clear();
        changes.alerts_over.clear();
    }

    /// The number of the rule named `name` in row keys (the same for the same name).
    pub fn rule_id(&self, name: &str) -> RuleId {
        let mut ids = self.rule_ids.lock().unwrap_or_else(|p| p.into_inner());
        let next = RuleId(u32::try_from(ids.len()).unwrap_or(u32::MAX));
        *ids.entry(name.to_string()).or_insert(next)
    }

    /// Drops every row of a rule (the rule was removed or changed).
    pub fn remove_rule(&self, rule: &str) {
        let id = self.rule_id(rule);
        let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
        rows.remove_rule(id);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut alerts = self.alerts.write().unwrap_or_else(|p| p.into_inner());
        alerts.retain(|(r, _), _| *r != id);
    }
    /// Pending and firing alerts with what explains them, in the shape of Prometheus'
    /// `/api/v1/alerts` plus an `explanation` object.
    pub fn alerts_json(&self) -> String {
        let alerts = self.alerts.read().unwrap_or_else(|p| p.into_inner());
        let mut sorted: Vec<&AlertView> = alerts.values().collect();
        // By rule name (keys order by the rules' numbers), then series.
        sorted.sort_by(|a, b| a.event.rule.cmp(&b.event.rule));
        let list: Vec<serde_json::Value> = sorted
            .into_iter()
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

    /// The /metrics body: the anomaly families from a snapshot of the rows (shared by the
    /// readers of one generation), rendered chunk by chunk as the reader takes them, then
    /// the self metrics as of now.
    pub fn render(&self) -> Rendering {
        let rows = self.snapshot();
        let encoder = prometheus::TextEncoder::new();
        let own = match encoder.encode_to_string(&self.registry.gather()) {
            Ok(text) => Bytes::from(text),
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode self metrics");
                Bytes::new()
            }
        };
        Rendering::new(rows, own)
    }

    /// The whole /metrics body as one string (tests and small tools).
    pub fn render_to_string(&self) -> String {
        self.render()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    fn snapshot(&self) -> Arc<[AnomalyRow]> {
        let mut cache = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(Ordering::Acquire);
        if cache.0 == generation {
            if let Some(rows) = cache.1.upgrade() {
                return rows;
            }
        }
        let rows: Arc<[AnomalyRow]> = {
            let table = self.rows.read().unwrap_or_else(|p| p.into_inner());
            Arc::from(table.list.as_slice())
        };
        // Weak: the snapshot lives only as long as a reader walks it.
        *cache = (generation, Arc::downgrade(&rows));
        rows
    }
}

/// Changes of one scrape for the exporter.
#[derive(Default)]
pub struct ExportChanges {
    pub upserts: Vec<(RowKey, RowUpdate)>,
    /// New values of rows the exporter holds (most of a scrape), apart from `upserts`: a
    /// plain value with no drop glue is written straight into the list, where an enum that
    /// may hold `Arc`s was built on the stack and copied in, read back as 16-byte words
    /// before its 8-byte fields were written out (a store-forwarding stall per sample).
    pub values: Vec<(RowKey, RowValues)>,
    pub removals: Vec<RowKey>,
    pub alerts: Vec<(RowKey, AlertView)>,
    pub alerts_over: Vec<RowKey>,
}

impl ExportChanges {
    /// New values of a row the exporter holds.
    #[inline]
    pub fn values(&mut self, key: RowKey, flags: (bool, bool), value: f64, v: &Verdict) {
        self.values.push((key, RowValues::new(flags, value, v)));
    }

    /// Rows changed (upserts and values).
    pub fn rows(&self) -> usize {
        self.upserts.len() + self.values.len()
    }
}

/// Renders a label set for the exposition format, escaping values.
pub fn render_labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_label(&mut out, "", k, v);
    }
    out
}

/// Appends a row's label set (without braces): the rule's part, target, metric, then the
/// series' own labels, named as in every other output (`alert::labels`).
fn push_row_labels(out: &mut String, row: &AnomalyRow) {
    use crate::alert::labels;
    out.push_str(&row.head.text);
    out.push(',');
    push_label(out, "", "target", &row.series.target);
    out.push(',');
    push_label(out, "", "metric", row.series.name());
    let rule_labels = &row.head.labels;
    if !row.renamed {
        for (k, v) in row.series.labels() {
            out.push(',');
            push_label(out, "", k, v);
        }
        return;
    }
    for (k, v) in labels::series_labels(row.series.labels(), rule_labels) {
        out.push(',');
        push_label(out, "", &k, v);
    }
}

/// A float as the exposition format spells it.
pub fn format_float(v: f64) -> String {
    let mut out = String::new();
    format_float_into(&mut out, v);
    out
}

/// Appends a float as the exposition format spells it: shortest round-trip digits, exponents
/// for extremes (1e-300, not 300 zeros).
pub fn format_float_into(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
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
    }

    #[test]
    fn values_sent_apart_from_labels_update_the_row_they_name() {
        let e = Exporter::new().unwrap();
        let head = Arc::new(RuleHead {
            text: r#"rule="r",severity="warning",method="zscore""#.into(),
            labels: BTreeMap::new(),
        });
        let labels = vec![("k".to_string(), "v".to_string())];
        let series = Arc::new(SeriesIdentity::new("t:1".into(), "m", &labels, false));
        let key = (e.rule_id("r"), 7);
        let v = Verdict {
            score: 0.5,
            baseline_mean: Some(10.0),
            zscore: Some(2.0),
            ..Verdict::default()
        };
        // Only the options that are set are present: 4 always, mean (4) and z (8).
        let values = RowValues::new((false, true), 12.0, &v);
        assert_eq!(values.present, 0b1_0001_1111);
        assert_eq!(values.values[..5], [0.0, 1.0, 0.5, 12.0, 10.0]);
        let mut changes = ExportChanges::default();
        let row = AnomalyRow::new((head, series), values);
        changes.upserts.push((key, RowUpdate::New(row)));
        e.apply(&mut changes);
        let v = Verdict {
            score: 3.0,
            baseline_mean: Some(11.0),
            ..Verdict::default()
        };
        changes.values(key, (true, false), 40.0, &v);
        assert_eq!(changes.rows(), 1);
        e.apply(&mut changes);
        assert_eq!(changes.rows(), 0, "apply empties both lists");
        let text = e.render_to_string();
        let line = |family: &str| {
            text.lines()
                .find(|l| l.starts_with(family) && l.contains("rule=\"r\""))
                .map(str::to_string)
        };
        assert!(
            line("anomaly_active{").is_some_and(|l| l.ends_with(" 1.0")),
            "{text}"
        );
        assert!(
            line("anomaly_value{").is_some_and(|l| l.ends_with(" 40.0")),
            "{text}"
        );
        // The z-score is absent from the new values: its gauge goes.
        assert_eq!(line("anomaly_zscore{"), None, "{text}");
    }
}
