//! What survives a change: firing alerts across a restart, and windows and alert state of
//! unchanged rules across a reload (removed or changed rules resolve and drop their gauges).

use super::rule_series::{event, new_state, RuleSeries};
use super::{firing_since, Pipeline};
use crate::alert::Transition;
use crate::config::RuleSet;
use crate::detect::Verdict;
use crate::store::IdMap;
use crate::store::SeriesId;
use std::collections::HashMap;
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
            let Some(entry) = self.store.get(id) else {
                self.store.set_firing(id, &key, None);
                continue;
            };
            let rule = &self.rules.rules[ri];
            let state = new_state(rule, &entry.identity, entry.samples().iter(), Some(since));
            if let Some(t) = self
                .targets
                .iter()
                .position(|t| *t.name == *entry.identity.target)
            {
                self.seen[t].insert(id);
            }
            self.states[ri].insert(id, state);
        }
    }

    /// Swaps in new rules. Rules whose definition did not change keep their windows and alert
    /// state; removed or changed rules resolve their firing alerts and drop their gauges.
    pub fn set_rules(&mut self, new: Arc<RuleSet>) {
        let mut old: HashMap<String, (String, IdMap<RuleSeries>)> = HashMap::new();
        let old_rules = std::mem::replace(&mut self.rules, new.clone());
        for (rule, states) in old_rules.rules.iter().zip(std::mem::take(&mut self.states)) {
            old.insert(rule.name.clone(), (rule.fingerprint(), states));
        }
        let mut kept = 0;
        self.states = new
            .rules
            .iter()
            .map(|rule| match old.remove(&rule.name) {
                Some((fp, states)) if fp == rule.fingerprint() => {
                    kept += 1;
                    states
                }
                Some(other) => {
                    old.insert(rule.name.clone(), other);
                    IdMap::default()
                }
                None => IdMap::default(),
            })
            .collect();
        let now = crate::scrape::now_ms();
        let mut events = Vec::new();
        for (name, (_, states)) in old {
            let rule = old_rules.rules.iter().find(|r| r.name == name).cloned();
            for (id, mut state) in states {
                let since = firing_since(state.alert, now);
                if state.alert.end() != Some(Transition::Resolved) {
                    continue;
                }
                let Some(rule) = &rule else { continue };
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
            self.exporter.remove_rule(&name);
            if !new.rules.iter().any(|r| r.name == name) {
                let _ = self
                    .exporter
                    .metrics
                    .rule_evaluations_total
                    .remove_label_values(&[&name]);
                for to in ["pending", "inactive", "firing", "resolved"] {
                    let _ = self
                        .exporter
                        .metrics
                        .transitions_total
                        .remove_label_values(&[&name, to]);
                }
            }
        }
        (self.names, self.heads) = super::rule_series::rule_names(&new);
        self.matches.clear();
        self.match_lists.clear();
        // Index entries carry rule indices of the old set.
        for index in &mut self.index {
            index.clear();
        }
        tracing::info!(rules = new.rules.len(), unchanged = kept, "Rules applied");
        for ev in events {
            self.announce(ev);
        }
    }
}
