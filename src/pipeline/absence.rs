//! When data goes away: a target whose scrapes fail (its alerts resolve after the grace),
//! a series that leaves its target's scrapes, and series past `--retention`. Each ends the
//! alerts it held through the book, with the reason, and drops their gauges.

use super::{rule_series, Batch, Pipeline};
use crate::alert::book::Reason;
use crate::alert::Transition;
use crate::export::RowUpdate;
use crate::store::{SeriesId, Slot};

impl Pipeline {
    /// A failed scrape: the target is down (logged once per change) and nothing is applied.
    /// Its alerts stay active (and re-sent) for the grace; then they resolve as Prometheus'
    /// stale series do, unless `keep_firing_for` holds them longer.
    pub(super) fn scrape_failed(&mut self, t: usize, e: &crate::scrape::ScrapeError, now: i64) {
        let Some(target) = self.targets[t].as_ref() else {
            return;
        };
        self.exporter
            .metrics
            .up
            .with_label_values(&[&target.name])
            .set(0);
        if self.up[t] != Some(false) {
            tracing::warn!(target = %target.name, url = %target.display_url(), error = %e, "Scrape failed");
        }
        self.up[t] = Some(false);
        let down_for = now - self.last_ok_ms[t];
        let grace = self.settings.target_down_grace.as_millis() as i64;
        if down_for >= grace {
            self.target_down(t, now, down_for, grace);
        }
    }

    /// Ends the alerts of a target whose scrapes have failed for `down_for`: pending ones at
    /// once, firing ones once `down_for` also covers their rule's `keep_firing_for`. Their
    /// gauges stay with their last values, `anomaly_active` and `anomaly_pending` at 0.
    fn target_down(&mut self, t: usize, now: i64, down_for: i64, grace: i64) {
        let mut changes = crate::export::ExportChanges::default();
        let mut ended = 0;
        for &(slot, id) in &self.seen[t] {
            let Some(series) = self.states.get_mut(slot, id) else {
                continue;
            };
            for (ri, state) in series.rules.iter_mut() {
                let rule = &self.rules.rules[ri];
                let hold = grace.max(rule.policy.keep_firing_for_ms);
                if state.alert.is_firing() && down_for < hold {
                    continue;
                }
                let Some(tr) = state.alert.end() else {
                    continue;
                };
                super::count(&self.exporter, &rule.name, tr);
                if tr == Transition::Resolved {
                    ended += 1;
                }
                self.book.end(id, &rule.name, now, None, Reason::TargetDown);
                // The gauges stay (a failing target keeps its last values, as `up` says
                // why) but say the alert is over, as Alertmanager and /api/v1/alerts do.
                if state.exported {
                    changes.upserts.push(((self.ids[ri], id), RowUpdate::Ended));
                }
                changes.alerts_over.push((self.ids[ri], id));
            }
        }
        self.exporter.apply(&mut changes);
        if ended > 0 {
            let target = self.targets[t].as_ref().map_or("", |t| &t.name);
            tracing::warn!(target = %target, alerts = ended, down_for_s = down_for / 1000, "Target down past the grace: its alerts resolve (reason=target_down)");
        }
    }

    /// A series left its target (or its target went): its alerts resolve with `reason` and
    /// its gauges go.
    pub(super) fn end_series(
        &mut self,
        slot: Slot,
        id: SeriesId,
        now: i64,
        b: &mut Batch,
        reason: Reason,
    ) {
        let Some(series) = self.states.get_mut(slot, id) else {
            return;
        };
        for (ri, state) in series.rules.iter_mut() {
            let rule = &self.rules.rules[ri];
            self.peers.forget(ri, id);
            if let Some(tr) = state.alert.end() {
                super::count(&self.exporter, &rule.name, tr);
                let value = self
                    .store
                    .get(id)
                    .and_then(|e| rule_series::last_value(rule, e));
                self.book.end(id, &rule.name, now, value, reason);
            }
            b.export.removals.push((self.ids[ri], id));
            state.exported = false;
        }
    }

    pub(super) fn expire(&mut self, now: i64, b: &mut Batch) {
        self.last_expiry_ms = now;
        self.exporter
            .metrics
            .store_size_bytes
            .set(self.store.size_on_disk() as i64);
        let cutoff = now - self.settings.retention.as_millis() as i64;
        let gone = self.store.expire(cutoff);
        self.peers.expire(cutoff);
        self.siblings.forget(&gone);
        for &(id, slot) in &gone {
            self.end_series(slot, id, now, b, Reason::SeriesGone);
            self.states.clear(slot);
            self.matches.remove(&id);
        }
        let gone: crate::store::IdSet = gone.into_iter().map(|(id, _)| id).collect();
        for index in &mut self.index {
            index.forget(&gone);
        }
        for t in self.targets.iter().flatten() {
            self.exporter
                .metrics
                .series
                .with_label_values(&[&t.name])
                .set(self.store.target_series(&t.name) as i64);
        }
    }
}
