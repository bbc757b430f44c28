//! What survives a change: active alerts across a restart, and windows and alert state
//! across a reload. An alert belongs to its rule's name and its series, so editing a rule's
//! annotations, labels, severity or detector keeps its alerts; a rule removed or renamed
//! resolves them (`reason=rule_removed`), as does a rule that no longer selects the series
//! (`reason=rule_changed`).

use super::rule_series::{event, export_head, new_state, stored_profile};
use super::Pipeline;
use crate::alert::book::{Phase, Reason};
use crate::config::RuleSet;
use crate::detect::Verdict;
use crate::export::{AlertView, AnomalyRow, ExportChanges, RowUpdate, RowValues};
use crate::store::SeriesId;
use std::sync::Arc;

impl Pipeline {
    /// Alerts that were pending or firing when the sidecar stopped come back as they were,
    /// and their series count as seen: if the first scrape lacks one, it still ends
    /// properly. Alerts of rules that are gone resolve, with the event they fired with. A
    /// firing one is on /metrics and /api/v1/alerts at once, as the book re-sends it to
    /// Alertmanager at once: waiting for its target's next scrape hid it for the whole grace
    /// when the target was down, or not discovered yet.
    pub(super) fn restore_alerts(&mut self) {
        let now = crate::util::now_ms();
        let mut shown = ExportChanges::default();
        let restored: Vec<(SeriesId, String, bool)> = self
            .book
            .iter()
            .map(|(id, rule, a)| (id, rule.to_string(), a.event.is_some()))
            .collect();
        for (id, name, has_event) in restored {
            let Some(ri) = self.rules.rules.iter().position(|r| r.name == name) else {
                tracing::warn!(rule = %name, "A rule with active alerts before the restart is gone; they resolve");
                self.book.end(id, &name, now, None, Reason::RuleRemoved);
                continue;
            };
            let Some((slot, entry)) = self
                .store
                .slot(id)
                .and_then(|s| Some((s, self.store.at(s)?)))
            else {
                self.book.end(id, &name, now, None, Reason::SeriesGone);
                continue;
            };
            let rule = self.rules.rules[ri].clone();
            let identity = entry.identity.clone();
            if !rule.selects(&identity.target, identity.name(), &identity.labels_owned()) {
                self.book.end(id, &name, now, None, Reason::RuleChanged);
                continue;
            }
            let alert = self.book.state(id, &name);
            if !has_event && alert.is_firing() {
                // A record of the earlier layout: the event it fired with is rebuilt.
                let last = entry.samples().back().map_or(f64::NAN, |s| s.1);
                let since = alert.firing_since().unwrap_or(now);
                let ev = event(
                    &rule,
                    &identity,
                    true,
                    since,
                    since,
                    last,
                    Verdict::default(),
                );
                self.book.adopt(id, ev);
            }
            let profile = stored_profile(&rule, || self.store.profile(id, &rule.profile_key));
            let samples = entry.samples().iter();
            let mut state = new_state(&rule, &identity, samples, alert, &profile);
            let key = (self.ids[ri], id);
            if let Some(fired) = self.book.fired_event(id, &name) {
                let flags = (true, false);
                let values = RowValues::new(flags, fired.value, &fired.verdict);
                let row = AnomalyRow::new((self.heads[ri].clone(), identity.clone()), values);
                shown.upserts.push((key, RowUpdate::New(row)));
                let view = AlertView {
                    firing: true,
                    active_at_ms: alert.firing_since().unwrap_or(now),
                    event: fired.clone(),
                };
                shown.alerts.push((key, view));
                state.exported = true;
            }
            let at = self
                .targets
                .iter()
                .position(|t| t.as_ref().is_some_and(|t| *t.name == *identity.target));
            let seen = match at {
                Some(t) => &mut self.seen[t],
                None => self.orphans.entry(identity.target.to_string()).or_default(),
            };
            if !seen.contains(&(slot, id)) {
                seen.push((slot, id));
            }
            let rules = &mut self.states.at(slot, id).rules;
            if rules.get_mut(ri).is_none() {
                rules.insert(ri, state);
            }
        }
        let (pending, firing) = self
            .book
            .iter()
            .fold((0, 0), |(p, f), (_, _, a)| match a.phase {
                Phase::Pending => (p + 1, f),
                Phase::Firing => (p, f + 1),
            });
        if pending + firing > 0 {
            tracing::info!(pending, firing, "Alerts restored");
        }
        self.exporter.apply(&mut shown);
    }

    /// Swaps in new rules. A rule keeps its alerts under the same name; its windows too
    /// unless its detector changed (then they are rebuilt from the stored samples). Removed
    /// rules resolve their alerts and drop their gauges.
    pub fn set_rules(&mut self, new: Arc<RuleSet>) {
        let old_rules = std::mem::replace(&mut self.rules, new.clone());
        // Old rule index → new index under the same name, and whether its windows carry over.
        let moved: Vec<Option<(usize, bool)>> = old_rules
            .rules
            .iter()
            .map(|old| {
                let to = new.rules.iter().position(|r| r.name == old.name)?;
                Some((to, new.rules[to].profile_key == old.profile_key))
            })
            .collect();
        // Rules whose gauges keep their labels keep their rows; the others' go and come back
        // whole at the next evaluation.
        let same_rows: Vec<bool> = old_rules
            .rules
            .iter()
            .zip(&moved)
            .map(|(old, m)| {
                m.is_some_and(|(to, _)| export_head(old).text == export_head(&new.rules[to]).text)
            })
            .collect();
        let now = crate::util::now_ms();
        for series in self.states.iter_mut() {
            let id = series.id;
            let identity = self.store.get(id).map(|e| e.identity.clone());
            for (ri, mut state) in series.rules.take() {
                let old = &old_rules.rules[ri];
                let (reason, carried) = match moved.get(ri).copied().flatten() {
                    None => (Some(Reason::RuleRemoved), None),
                    Some((to, windows)) => {
                        let still = identity.as_ref().is_some_and(|i| {
                            new.rules[to].selects(&i.target, i.name(), &i.labels_owned())
                        });
                        if still {
                            (None, windows.then_some(to))
                        } else {
                            (Some(Reason::RuleChanged), None)
                        }
                    }
                };
                if let Some(reason) = reason {
                    if let Some(tr) = state.alert.end() {
                        super::count(&self.exporter, &old.name, tr);
                        let value = self
                            .store
                            .get(id)
                            .and_then(|e| super::rule_series::last_value(old, e));
                        self.book.end(id, &old.name, now, value, reason);
                    }
                    continue;
                }
                if !same_rows[ri] {
                    state.exported = false;
                }
                if let Some(to) = carried {
                    series.rules.insert(to, state);
                }
                // Otherwise the state is rebuilt at the series' next sample, with the alert
                // as the book holds it.
            }
        }
        let gone: Vec<(SeriesId, String)> = self
            .book
            .iter()
            .filter(|(_, rule, _)| !new.rules.iter().any(|r| r.name == *rule))
            .map(|(id, rule, _)| (id, rule.to_string()))
            .collect();
        for (id, rule) in gone {
            self.book.end(id, &rule, now, None, Reason::RuleRemoved);
        }
        for (rule, _) in old_rules.rules.iter().zip(&same_rows).filter(|(_, s)| !**s) {
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
        let unchanged = old_rules
            .rules
            .iter()
            .filter(|o| new.rules.iter().any(|r| r.fingerprint() == o.fingerprint()))
            .count();
        (self.names, self.heads, self.ids) = super::rule_series::rule_names(&new, &self.exporter);
        self.matches.clear();
        self.match_lists.clear();
        self.peers.clear();
        // Index entries carry rule indices of the old set.
        for index in &mut self.index {
            index.clear();
        }
        self.store
            .forget_profiles_except(new.rules.iter().map(|r| r.profile_key.clone()).collect());
        tracing::info!(rules = new.rules.len(), unchanged, "Rules applied");
    }
}
