//! Targets that come and go (discovery, or a shard's share changing): a new one gets a slot
//! and fresh per-target state; one that goes retires its series (their alerts resolve with
//! `reason=target_gone`, or are handed off with `reason=target_moved` when another shard has
//! it now; their gauges go, the store keeps their history until `--retention`).

use super::{scan::SeriesIndex, Batch, Pipeline};
use crate::alert::book::Reason;
use crate::scrape::manager::TargetChange;
use crate::scrape::{Sample, ScrapeResult, Target};
use crate::store::{SeriesId, Slot};
use std::collections::HashSet;

impl Pipeline {
    /// The target `r` was scraped from, unless it has gone since.
    pub(super) fn live(&self, r: &ScrapeResult) -> Option<&Target> {
        self.targets
            .get(r.target)?
            .as_ref()
            .filter(|t| t.epoch == r.epoch)
    }

    pub(super) fn target_change(&mut self, change: TargetChange) {
        match change {
            TargetChange::Added(slot, target) => self.add_target(slot, *target),
            TargetChange::Removed { slot, epoch, moved } => {
                let reason = if moved {
                    Reason::TargetMoved
                } else {
                    Reason::TargetGone
                };
                self.remove_target(slot, epoch, reason)
            }
            TargetChange::Settled {
                elsewhere,
                complete,
            } => self.retire_orphans(&elsewhere, complete),
        }
    }

    /// Alerts restored for targets this replica does not scrape now end: handed off to the
    /// shard that has them (`elsewhere`), else resolved: as gone once every discovery config
    /// has answered (`complete`), as unknowable when the grace for that ran out.
    fn retire_orphans(&mut self, elsewhere: &HashSet<String>, complete: bool) {
        if self.orphans.is_empty() {
            return;
        }
        for (target, series) in std::mem::take(&mut self.orphans) {
            let reason = if elsewhere.contains(&target) {
                tracing::info!(target = %target, series = series.len(), "Target with alerts from before the restart is another shard's now: handed off (reason=target_moved; not resolved in Alertmanager)");
                Reason::TargetMoved
            } else if complete {
                tracing::info!(target = %target, series = series.len(), "Target with alerts from before the restart is gone: they resolve (reason=target_gone)");
                Reason::TargetGone
            } else {
                tracing::info!(target = %target, series = series.len(), "Target with alerts from before the restart not found while discovery is unavailable: they resolve (reason=discovery_unavailable)");
                Reason::DiscoveryUnavailable
            };
            self.retire(&target, series, reason);
        }
    }

    /// Ends the alerts and gauges of a target's `series` with `reason`, and drops the
    /// target's own gauges.
    fn retire(&mut self, target: &str, series: Vec<(Slot, SeriesId)>, reason: Reason) {
        let now = crate::util::now_ms();
        let mut batch = Batch {
            evaluations: vec![0; self.rules.rules.len()],
            ..Batch::default()
        };
        for (s, id) in series {
            self.end_series(s, id, now, &mut batch, reason);
        }
        self.apply(target, batch);
        let m = &self.exporter.metrics;
        for v in [&m.up, &m.scrape_samples, &m.series] {
            let _ = v.remove_label_values(&[target]);
        }
        let _ = m.scrape_duration_seconds.remove_label_values(&[target]);
        let _ = m.dropped_series_total.remove_label_values(&[target]);
    }

    fn add_target(&mut self, slot: usize, target: Target) {
        if slot >= self.targets.len() {
            let n = slot + 1;
            self.targets.resize_with(n, || None);
            self.seen.resize_with(n, Vec::new);
            self.last_scrape.resize(n, 0);
            self.index.resize_with(n, SeriesIndex::default);
            self.up.resize(n, None);
            self.last_ok_ms.resize(n, 0);
        }
        self.seen[slot] = self.orphans.remove(&target.name).unwrap_or_default();
        self.last_scrape[slot] = 0;
        self.index[slot] = SeriesIndex::default();
        self.up[slot] = None;
        // Down from now, not from the epoch: a target that never answers is down after the
        // grace, like a static one.
        self.last_ok_ms[slot] = crate::util::now_ms();
        if let Some(w) = &mut self.warm {
            w.new_target(slot);
        }
        self.exporter
            .metrics
            .series
            .with_label_values(&[&target.name])
            .set(self.store.target_series(&target.name) as i64);
        self.targets[slot] = Some(target);
    }

    fn remove_target(&mut self, slot: usize, epoch: u64, reason: Reason) {
        let Some(target) = self.targets.get_mut(slot).and_then(|t| {
            if t.as_ref().is_some_and(|t| t.epoch == epoch) {
                t.take()
            } else {
                None
            }
        }) else {
            return;
        };
        let series = std::mem::take(&mut self.seen[slot]);
        self.index[slot] = SeriesIndex::default();
        self.up[slot] = None;
        self.retire(&target.name, series, reason);
    }
}

/// `sample` with its target's labels: a label of its own of the same name is kept as
/// `exported_<name>` (as Prometheus does without `honor_labels`), prefixed again while that
/// name is taken too.
pub(super) fn with_target_labels(mut sample: Sample, labels: &[(String, String)]) -> Sample {
    if labels.is_empty() {
        return sample;
    }
    for (k, v) in labels {
        if let Some(i) = sample.labels.iter().position(|(n, _)| n == k) {
            let mut renamed = format!("exported_{k}");
            while sample.labels.iter().any(|(n, _)| *n == renamed) {
                renamed.insert_str(0, "exported_");
            }
            sample.labels[i].0 = renamed;
        }
        sample.labels.push((k.clone(), v.clone()));
    }
    sample.labels.sort_by(|a, b| a.0.cmp(&b.0));
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)]) -> Sample {
        Sample {
            name: "http_requests_total".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: 1.0,
            timestamp_ms: None,
            counter_like: true,
        }
    }

    #[test]
    fn target_labels_join_and_collisions_are_exported() {
        let target = [
            ("namespace".to_string(), "shop".to_string()),
            ("pod".to_string(), "api-1".to_string()),
        ];
        let s = with_target_labels(
            sample(&[("code", "200"), ("pod", "x"), ("exported_pod", "y")]),
            &target,
        );
        let got: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("code", "200"),
                ("exported_exported_pod", "x"),
                ("exported_pod", "y"),
                ("namespace", "shop"),
                ("pod", "api-1"),
            ]
        );
        let plain = sample(&[("code", "200")]);
        assert_eq!(with_target_labels(plain.clone(), &[]), plain);
    }
}
