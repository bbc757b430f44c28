//! Warm start (`--warmup-from`): the recent history of series the store lacks, read from a
//! Prometheus that scrapes the same exporters, so a fresh pod judges its first scrape against
//! a full window instead of staying blind for `min_samples` scrapes.
//!
//! Prometheus labels the same series with its own target labels (`job`, `instance`, and with
//! Kubernetes service discovery `namespace`, `pod`…). A series of ours matches a Prometheus
//! series whose labels include all of ours with equal values and whose other labels are
//! target labels (present on every series of the answer). Our own target labels (a
//! discovered pod's `namespace`, `pod`, `workload`…) need only be equal where Prometheus has
//! them too (no relabelling gives it `workload`), and `namespace` and `pod` pin the query to
//! that pod's copy, as the usual Kubernetes relabelling names them. `--warmup-selector`
//! (e.g. `pod="$(POD_NAME)"`) pins every query; a series that still matches several
//! (replicas) is skipped and counted, never mixed.

use crate::promapi::{self, PromApiError};
use crate::store::SeriesId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Names asked per request (`{__name__=~"a|b|…"}`): few requests without an overlong query.
const NAMES_PER_QUERY: usize = 64;

/// Target labels of ours that pin a query to one pod's copy, where the target has them.
const PINS: [&str; 2] = ["namespace", "pod"];

/// A series whose window the store cannot fill.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub id: SeriesId,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// How far back its rules look.
    pub span_ms: i64,
}

/// History found for series, and what could not be had.
#[derive(Debug, Default)]
pub struct Fetched {
    pub history: Vec<(SeriesId, Vec<(i64, f64)>)>,
    /// Series several Prometheus series matched (skipped).
    pub ambiguous: usize,
    /// Series Prometheus has nothing for.
    pub missing: usize,
    pub error: Option<PromApiError>,
    /// Prometheus did not answer within the timeout (every series counted missing).
    pub timed_out: bool,
}

/// Where and how to read history.
pub struct Warmup {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    /// Extra matchers of every query, e.g. `pod="web-0"`.
    matchers: String,
    step_ms: i64,
    timeout: Duration,
}

impl Warmup {
    /// `selector` is a label matcher list (`pod="x",namespace="y"`, braces optional),
    /// checked by Prometheus on the first query; `step` the scrape interval.
    pub fn new(
        url: &str,
        selector: &str,
        step: Duration,
        timeout: Duration,
    ) -> Result<Self, PromApiError> {
        let matchers = selector
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim()
            .to_string();
        Ok(Self {
            client: promapi::client(timeout)?,
            endpoint: promapi::endpoint(url)?,
            matchers,
            step_ms: step.as_millis().clamp(1, i64::MAX as u128) as i64,
            timeout,
        })
    }

    /// The interval of the history asked (the scrape interval).
    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    /// The history before `now_ms` of every `wanted` series of one target whose own labels
    /// are `target` (none for a `url` target), by metric name in few queries, within the
    /// timeout.
    pub async fn fetch(
        &self,
        wanted: &[Wanted],
        target: &[(String, String)],
        now_ms: i64,
    ) -> Fetched {
        tokio::time::timeout(self.timeout, self.fetch_unbounded(wanted, target, now_ms))
            .await
            .unwrap_or_else(|_| Fetched {
                missing: wanted.len(),
                timed_out: true,
                ..Fetched::default()
            })
    }

    async fn fetch_unbounded(
        &self,
        wanted: &[Wanted],
        target: &[(String, String)],
        now_ms: i64,
    ) -> Fetched {
        let mut out = Fetched::default();
        let mut pins = String::new();
        for (k, v) in target.iter().filter(|(k, _)| PINS.contains(&k.as_str())) {
            crate::util::push_label(&mut pins, ",", k, v);
        }
        let mut by_name: BTreeMap<&str, Vec<&Wanted>> = BTreeMap::new();
        for w in wanted {
            by_name.entry(w.name.as_str()).or_default().push(w);
        }
        let names: Vec<&str> = by_name.keys().copied().collect();
        for chunk in names.chunks(NAMES_PER_QUERY) {
            let span = chunk
                .iter()
                .flat_map(|n| by_name[n].iter().map(|w| w.span_ms))
                .max()
                .unwrap_or(0);
            let alternatives: Vec<String> = chunk.iter().map(|n| regex::escape(n)).collect();
            let mut query = format!(
                "{{__name__=~\"{}\"",
                alternatives.join("|").replace('\\', "\\\\")
            );
            if !self.matchers.is_empty() {
                query.push(',');
                query.push_str(&self.matchers);
            }
            query.push_str(&pins);
            query.push('}');
            // Strictly before now: the scrape at `now_ms` is the sample to judge.
            let (start, end) = (now_ms - span, now_ms - 1);
            let series = match promapi::query_range(
                &self.client,
                &self.endpoint,
                &query,
                start,
                end,
                self.step_ms,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    out.missing += chunk.iter().map(|n| by_name[n].len()).sum::<usize>();
                    out.error = Some(e);
                    continue;
                }
            };
            let mut answered: HashMap<String, Vec<promapi::RangeSeries>> = HashMap::new();
            for s in series {
                let name = s.labels.get("__name__").cloned().unwrap_or_default();
                answered.entry(name).or_default().push(s);
            }
            for name in chunk {
                let got = Answer::new(answered.remove(*name).unwrap_or_default());
                for w in &by_name[name] {
                    match got.matching(w, target) {
                        Match::One(s) => {
                            let since = now_ms - w.span_ms;
                            let samples: Vec<(i64, f64)> = s
                                .samples
                                .iter()
                                .copied()
                                .filter(|(t, v)| *t >= since && v.is_finite())
                                .collect();
                            if samples.is_empty() {
                                out.missing += 1;
                            } else {
                                out.history.push((w.id, samples));
                            }
                        }
                        Match::None => out.missing += 1,
                        Match::Several => out.ambiguous += 1,
                    }
                }
            }
        }
        out
    }
}

enum Match<'a> {
    One(&'a promapi::RangeSeries),
    None,
    Several,
}

/// Label `k` of ours in Prometheus' copy `s`. An exporter's label that collided with one of
/// Prometheus' target labels (`instance`, `job`) is the series' own as `exported_<name>`
/// there (honor_labels false); a target label of ours (`target`) is looked up as it is.
fn own_label<'s>(s: &'s promapi::RangeSeries, k: &str, target: bool) -> Option<&'s String> {
    if target {
        return s.labels.get(k);
    }
    s.labels
        .get(&format!("exported_{k}"))
        .or_else(|| s.labels.get(k))
}

/// Prometheus' series of one metric name, and its target labels: those on every series of
/// the answer (a metric's own labels vary).
struct Answer {
    series: Vec<promapi::RangeSeries>,
    common: BTreeSet<String>,
}

impl Answer {
    fn new(series: Vec<promapi::RangeSeries>) -> Self {
        let mut common: BTreeSet<String> = series
            .first()
            .map(|s| s.labels.keys().cloned().collect())
            .unwrap_or_default();
        for s in series.iter().skip(1) {
            common.retain(|k| s.labels.contains_key(k));
        }
        Self { series, common }
    }

    /// The series that is `w` plus target labels: its labels but `target`'s (a discovered
    /// pod's, which Prometheus may lack) all there and equal (as `exported_<name>` where
    /// Prometheus renamed them), `target`'s equal where Prometheus has them, and no other
    /// label of the metric's own.
    fn matching(&self, w: &Wanted, target: &[(String, String)]) -> Match<'_> {
        let ours: BTreeMap<&str, &str> = w
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let optional = |k: &str| target.iter().any(|(t, _)| t == k);
        let renamed = |k: &str| {
            k.strip_prefix("exported_")
                .is_some_and(|o| ours.contains_key(o) && !optional(o))
        };
        let mut found = self.series.iter().filter(|s| {
            ours.iter()
                .all(|(k, v)| match own_label(s, k, optional(k)) {
                    Some(theirs) => theirs == v,
                    None => optional(k),
                })
                && s.labels.keys().all(|k| {
                    k == "__name__"
                        || ours.contains_key(k.as_str())
                        || self.common.contains(k)
                        || renamed(k)
                })
        });
        match (found.next(), found.next()) {
            (Some(s), None) => Match::One(s),
            (None, _) => Match::None,
            _ => Match::Several,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)]) -> promapi::RangeSeries {
        promapi::RangeSeries {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples: vec![(1, 1.0)],
        }
    }

    fn wanted(labels: &[(&str, &str)]) -> Wanted {
        Wanted {
            id: 1,
            name: "m".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            span_ms: 10,
        }
    }

    #[test]
    fn ours_plus_target_labels_match_and_replicas_do_not() {
        let got = vec![
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("instance", "a"),
                ("job", "j"),
            ]),
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("method", "GET"),
                ("instance", "a"),
                ("job", "j"),
            ]),
            series(&[
                ("__name__", "m"),
                ("code", "500"),
                ("instance", "a"),
                ("job", "j"),
            ]),
        ];
        // {code="200"} is the first: the second has `method`, a label of the metric's own.
        let got = Answer::new(got);
        assert!(
            matches!(got.matching(&wanted(&[("code", "200")]), &[]), Match::One(s) if s.labels.len() == 4)
        );
        assert!(matches!(
            got.matching(&wanted(&[("code", "404")]), &[]),
            Match::None
        ));
        let replicas = vec![
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("instance", "a"),
                ("job", "j"),
            ]),
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("instance", "b"),
                ("job", "j"),
            ]),
        ];
        assert!(matches!(
            Answer::new(replicas).matching(&wanted(&[("code", "200")]), &[]),
            Match::Several
        ));
    }

    #[test]
    fn a_discovered_pods_labels_match_where_prometheus_has_them() {
        // Ours: the exporter's `code` plus discovery's target labels; Prometheus relabels
        // `namespace`, `pod` and `container` but has no `workload` or `node`.
        let w = wanted(&[
            ("code", "200"),
            ("container", "api"),
            ("namespace", "shop"),
            ("node", "node-a"),
            ("pod", "api-1"),
            ("workload", "api"),
        ]);
        let target: Vec<(String, String)> = w.labels[1..].to_vec();
        let copy = |pod: &str| {
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("container", "api"),
                ("instance", "10.0.0.1:8080"),
                ("job", "pods"),
                ("namespace", "shop"),
                ("pod", pod),
            ])
        };
        let got = Answer::new(vec![copy("api-1"), copy("api-2")]);
        assert!(matches!(got.matching(&w, &target), Match::One(s) if s.labels["pod"] == "api-1"));
        // Without them as target labels, `workload` and `node` must be in Prometheus' copy.
        assert!(matches!(got.matching(&w, &[]), Match::None));
        // The exporter's own labels are never optional.
        let other_code = vec![series(&[
            ("__name__", "m"),
            ("code", "500"),
            ("pod", "api-1"),
        ])];
        assert!(matches!(
            Answer::new(other_code).matching(&w, &target),
            Match::None
        ));
        // Where Prometheus names the pod otherwise, every pod's copy matches: skipped.
        let renamed = |pod: &str| {
            series(&[
                ("__name__", "m"),
                ("code", "200"),
                ("kubernetes_pod_name", pod),
            ])
        };
        assert!(matches!(
            Answer::new(vec![renamed("api-1"), renamed("api-2")]).matching(&w, &target),
            Match::Several
        ));
    }

    #[test]
    fn a_label_prometheus_renamed_exported_is_the_series_own() {
        // The exporter says instance="10.0.0.9:9100"; Prometheus' own target label took the
        // name and kept the exporter's as exported_instance.
        let w = wanted(&[("instance", "10.0.0.9:9100"), ("mode", "idle")]);
        let copy = |exported: &str, instance: &str| {
            series(&[
                ("__name__", "m"),
                ("exported_instance", exported),
                ("instance", instance),
                ("job", "j"),
                ("mode", "idle"),
            ])
        };
        let got = vec![
            copy("10.0.0.9:9100", "10.1.0.1:8080"),
            copy("10.0.0.8:9100", "10.1.0.1:8080"),
        ];
        assert!(
            matches!(Answer::new(got).matching(&w, &[]), Match::One(s) if s.labels["exported_instance"] == "10.0.0.9:9100")
        );
        // Without a collision the name is kept, as before.
        let plain = vec![series(&[
            ("__name__", "m"),
            ("instance", "10.0.0.9:9100"),
            ("job", "j"),
            ("mode", "idle"),
        ])];
        assert!(matches!(
            Answer::new(plain).matching(&w, &[]),
            Match::One(_)
        ));
        // A target label of ours is never looked up under exported_: that is the exporter's.
        let w = wanted(&[("exported_pod", "x"), ("pod", "api-1")]);
        let target = vec![("pod".to_string(), "api-1".to_string())];
        let both = vec![series(&[
            ("__name__", "m"),
            ("exported_pod", "x"),
            ("pod", "api-1"),
        ])];
        assert!(matches!(
            Answer::new(both).matching(&w, &target),
            Match::One(_)
        ));
    }
}
