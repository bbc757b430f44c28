//! Targets that come and go (discovery): a new one gets a slot and fresh per-target state; one
//! that goes retires its series (their alerts resolve with `reason=target_gone`, their gauges
//! go, the store keeps their history until `--retention`).

use super::{scan::SeriesIndex, Batch, Pipeline};
use crate::alert::book::Reason;
use crate::scrape::manager::TargetChange;
use crate::scrape::{ScrapeResult, Target};
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
            TargetChange::Removed(slot, epoch) => self.remove_target(slot, epoch),
            TargetChange::Settled(elsewhere) => self.retire_orphans(&elsewhere),
        }
    }

    /// Alerts restored for targets this replica no longer scrapes end: handed off to the
    /// shard that has them now (`elsewhere`), or resolved if no one does.
    fn retire_orphans(&mut self, elsewhere: &HashSet<String>) {
        if self.orphans.is_empty() {
            return;
        }
        let now = crate::util::now_ms();
        for (target, series) in std::mem::take(&mut self.orphans) {
            let mut batch = Batch {
                evaluations: vec![0; self.rules.rules.len()],
                ..Batch::default()
            };
            let reason = if elsewhere.contains(&target) {
                tracing::info!(target = %target, series = series.len(), "Target with alerts from before the restart is another shard's now: handed off (reason=target_moved; not resolved in Alertmanager)");
                Reason::TargetMoved
            } else {
                tracing::info!(target = %target, series = series.len(), "Target with alerts from before the restart is gone: they resolve (reason=target_gone)");
                Reason::TargetGone
            };
            for (s, id) in series {
                self.end_series(s, id, now, &mut batch, reason);
            }
            self.apply(&target, batch);
            let _ = self.exporter.metrics.series.remove_label_values(&[&target]);
        }
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

    fn remove_target(&mut self, slot: usize, epoch: u64) {
        let Some(target) = self.targets.get_mut(slot).and_then(|t| {
            if t.as_ref().is_some_and(|t| t.epoch == epoch) {
                t.take()
            } else {
                None
            }
        }) else {
            return;
        };
        let now = crate::util::now_ms();
        let mut batch = Batch {
            evaluations: vec![0; self.rules.rules.len()],
            ..Batch::default()
        };
        for (s, id) in std::mem::take(&mut self.seen[slot]) {
            self.end_series(s, id, now, &mut batch, Reason::TargetGone);
        }
        self.index[slot] = SeriesIndex::default();
        self.up[slot] = None;
        self.apply(&target.name, batch);
        let m = &self.exporter.metrics;
        for v in [&m.up, &m.scrape_samples, &m.series] {
            let _ = v.remove_label_values(&[&target.name]);
        }
        let _ = m
            .scrape_duration_seconds
            .remove_label_values(&[&target.name]);
        let _ = m.dropped_series_total.remove_label_values(&[&target.name]);
    }
}
