//! What survives a change: firing alerts across a restart, and windows and alert state of
//! unchanged rules across a reload (removed or changed rules resolve and drop their gauges).

use super::rule_series::stored_profile;
use super::rule_series::{event, new_state, RuleSeries};
use super::Pipeline;
use crate::alert::Transition;
use crate::config::RuleSet;
use crate::detect::Verdict;
use crate::store::SeriesId;
use std::sync::Arc;

impl Pipeline {
    /// Alerts that were firing when the sidecar stopped come back as firing, and their series
    /// count as seen: if the first scrape lacks one, its resolution is still sent.
    pub(super) fn restore_firing(&mut self) {
        let firing: Vec<(SeriesId, String, i64)> = self.store.firing_alerts().collect();
        for (id, key, since) in firing {
            let Some(ri) = self.rules.rules.iter().position(|r| r.state_key == key) else {
                tracing::warn!(rule = %key, "A rule that was firing before the restart changed or is gone; its alert is dropped");
                self.store.set_firing(id, &key, None);
                continue;
            };
            let Some((slot, entry)) = self
                .store
                .slot(id)
                .and_then(|s| Some((s, self.store.at(s)?)))
            else {
                self.store.set_firing(id, &key, None);
                continue;
            };
            let rule = &self.rules.rules[ri];
            let profile = stored_profile(rule, || self.store.profile(id, &rule.state_key));
            let samples = entry.samples().iter();
            let state = new_state(rule, &entry.identity, samples, Some(since), &profile);
            if let Some(t) = self
                .targets
                .iter()
                .position(|t| *t.name == *entry.identity.target)
            {
                if !self.seen[t].contains(&(slot, id)) {
                    self.seen[t].push((slot, id));
                }
            }
            let rules = &mut self.states.at(slot, id).rules;
            if rules.get_mut(ri).is_none() {
                rules.insert(ri, state);
            }
        }
    }

    /// Swaps in new rules. Rules whose definition did not change keep their windows and alert
    /// state; removed or changed rules resolve their firing alerts and drop their gauges.
    pub fn set_rules(&mut self, new: Arc<RuleSet>) {
        let old_rules = std::mem::replace(&mut self.rules, new.clone());
        // Old rule index → new index, for the rules whose definition did not change.
        let kept: Vec<Option<usize>> = old_rules
            .rules
            .iter()
            .map(|old| {
                new.rules
                    .iter()
                    .position(|r| r.name == old.name && r.fingerprint() == old.fingerprint())
            })
            .collect();
        let now = crate::scrape::now_ms();
        let mut events = Vec::new();
        for series in self.states.iter_mut() {
            let id = series.id;
            let mut ended: Vec<(usize, RuleSeries)> = Vec::new();
            for (ri, state) in series.rules.take() {
                match kept.get(ri).copied().flatten() {
                    Some(to) => {
                        series.rules.insert(to, state);
                    }
                    None => ended.push((ri, state)),
                }
            }
            for (ri, mut state) in ended {
                let since = state.alert.firing_since().unwrap_or(now);
                if state.alert.end() != Some(Transition::Resolved) {
                    continue;
                }
                let rule = &old_rules.rules[ri];
                self.store.set_firing(id, &rule.state_key, None);
                if let Some(entry) = self.store.get(id) {
                    let value = entry.samples().back().map_or(f64::NAN, |s| s.1);
                    let verdict = Verdict::default();
                    events.push(event(
                        rule,
                        &entry.identity,
                        false,
                        now,
                        since,
                        value,
                        verdict,
                    ));
                }
            }
        }
        let unchanged = kept.iter().filter(|k| k.is_some()).count();
        for (rule, _) in old_rules
            .rules
            .iter()
            .zip(&kept)
            .filter(|(_, k)| k.is_none())
        {
            let name = &rule.name;
            self.exporter.remove_rule(name);
            if !new.rules.iter().any(|r| r.name == *name) {
                let _ = self
                    .exporter
                    .metrics
                    .rule_evaluations_total
                    .remove_label_values(&[name]);
                for to in ["pending", "inactive", "firing", "resolved"] {
                    let _ = self
                        .exporter
                        .metrics
                        .transitions_total
                        .remove_label_values(&[name, to]);
                }
            }
        }
        (self.names, self.heads, self.ids) = super::rule_series::rule_names(&new, &self.exporter);
        self.matches.clear();
        self.match_lists.clear();
        // Index entries carry rule indices of the old set.
        for index in &mut self.index {
            index.clear();
        }
        tracing::info!(rules = new.rules.len(), unchanged, "Rules applied");
        for ev in events {
            self.announce(ev);
        }
    }
}
