//! The raw shape of rules.yaml: serde structs that refuse unknown keys and keep the
//! location of every value, for the validator to point at.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) defaults: Option<RawDefaults>,
    pub(super) rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) window: Option<Spanned<i64>>,
    pub(super) min_samples: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    pub(super) for_duration: Option<Spanned<String>>,
    pub(super) keep_firing_for: Option<Spanned<String>>,
    pub(super) min_anomalous: Option<Spanned<RawMinAnomalous>>,
    pub(super) severity: Option<Spanned<String>>,
    // What every method shares beside its detector (see `detect::guard`).
    pub(super) direction: Option<Spanned<String>>,
    pub(super) min_delta: Option<Spanned<f64>>,
    pub(super) min_delta_pct: Option<Spanned<f64>>,
    pub(super) resolve_below: Option<Spanned<f64>>,
    pub(super) relearn_after: Option<Spanned<String>>,
    /// Seasonal rules' buckets in this zone's local time.
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) threshold_mode: Option<Spanned<String>>,
    pub(super) alerts_per_day: Option<Spanned<f64>>,
}

/// `min_anomalous: {count: k, of: n}`.
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMinAnomalous {
    pub(super) count: i64,
    pub(super) of: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    #[serde(rename = "match")]
    pub(super) selector: Spanned<String>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) transform: Option<Spanned<String>>,
    pub(super) method: Spanned<String>,
    pub(super) z_threshold: Option<Spanned<f64>>,
    pub(super) iqr_factor: Option<Spanned<f64>>,
    pub(super) threshold: Option<Spanned<f64>>,
    pub(super) op: Option<Spanned<String>>,
    pub(super) trend_window: Option<Spanned<i64>>,
    pub(super) deviation_pct: Option<Spanned<f64>>,
    pub(super) mad_threshold: Option<Spanned<f64>>,
    /// peers: the labels whose values make a group (empty: one group).
    pub(super) by: Option<Spanned<Vec<String>>>,
    pub(super) min_peers: Option<Spanned<i64>>,
    pub(super) alpha: Option<Spanned<f64>>,
    pub(super) season: Option<Spanned<String>>,
    pub(super) buckets: Option<Spanned<i64>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) window: Option<Spanned<i64>>,
    pub(super) min_samples: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    pub(super) for_duration: Option<Spanned<String>>,
    pub(super) keep_firing_for: Option<Spanned<String>>,
    pub(super) min_anomalous: Option<Spanned<RawMinAnomalous>>,
    pub(super) severity: Option<Spanned<String>>,
    // What every method shares beside its detector (see `detect::guard`).
    pub(super) direction: Option<Spanned<String>>,
    pub(super) min_delta: Option<Spanned<f64>>,
    pub(super) min_delta_pct: Option<Spanned<f64>>,
    pub(super) resolve_below: Option<Spanned<f64>>,
    pub(super) relearn_after: Option<Spanned<String>>,
    pub(super) threshold_mode: Option<Spanned<String>>,
    pub(super) alerts_per_day: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, Spanned<String>>,
}

/// Only what locates a structural error: each rule's start and name.
#[derive(Deserialize)]
pub(super) struct LenientFile {
    #[serde(default)]
    pub(super) rules: Vec<Spanned<LenientRule>>,
}

#[derive(Deserialize)]
pub(super) struct LenientRule {
    pub(super) name: Option<String>,
}
