//! Peer groups of `method: peers` rules: the same series on the pods of a group (the rule's
//! `by` labels), each member's latest value and when it came. A pod is judged when its
//! scrape arrives, against its peers' values of the same round (no older than two scrape
//! intervals: pods are scraped at their own instants within a round).

use crate::config::Rule;
use crate::store::{SeriesId, SeriesIdentity};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Labels that tell one pod from another, left out when series are matched across pods
/// (discovery's target labels and the target itself); `by` may still name them.
const POD_LABELS: [&str; 5] = ["container", "namespace", "node", "pod", "workload"];

#[derive(Default)]
pub(crate) struct PeerGroups {
    /// (rule index, group) → member series → (value, when).
    groups: HashMap<(usize, u64), HashMap<SeriesId, (f64, i64)>>,
    /// (rule index, series) → its group, computed once.
    of: HashMap<(usize, SeriesId), u64>,
}

impl PeerGroups {
    /// The group of a series under `rule`: the `by` labels' values, the metric name and the
    /// series' labels but the pod's identity.
    fn key(rule: &Rule, identity: &SeriesIdentity) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for by in &rule.by {
            let v = if by == "target" {
                &*identity.target
            } else {
                identity
                    .labels()
                    .find(|(k, _)| k == by)
                    .map_or("", |(_, v)| v)
            };
            (by.as_str(), v).hash(&mut h);
        }
        identity.name().hash(&mut h);
        for (k, v) in identity.labels() {
            if !POD_LABELS.contains(&k) {
                (k, v).hash(&mut h);
            }
        }
        h.finish()
    }

    fn group_of(&mut self, ri: usize, rule: &Rule, id: SeriesId, identity: &SeriesIdentity) -> u64 {
        *self
            .of
            .entry((ri, id))
            .or_insert_with(|| Self::key(rule, identity))
    }

    /// The values of the other members of the series' group no older than `fresh_ms`.
    pub(crate) fn others(
        &mut self,
        ri: usize,
        rule: &Rule,
        id: SeriesId,
        identity: &SeriesIdentity,
        now: i64,
        fresh_ms: i64,
    ) -> Vec<f64> {
        let g = self.group_of(ri, rule, id, identity);
        self.groups.get(&(ri, g)).map_or_else(Vec::new, |members| {
            members
                .iter()
                .filter(|(m, (_, at))| **m != id && now - *at <= fresh_ms)
                .map(|(_, (x, _))| *x)
                .collect()
        })
    }

    /// The series' value of this round, for its peers to be judged against.
    pub(crate) fn set(&mut self, ri: usize, id: SeriesId, x: f64, at: i64) {
        if let Some(&g) = self.of.get(&(ri, id)) {
            self.groups.entry((ri, g)).or_default().insert(id, (x, at));
        }
    }

    /// A series that ended is nobody's peer any more (under rule `ri`).
    pub(super) fn forget(&mut self, ri: usize, id: SeriesId) {
        let Some(g) = self.of.remove(&(ri, id)) else {
            return;
        };
        if let Some(members) = self.groups.get_mut(&(ri, g)) {
            members.remove(&id);
            if members.is_empty() {
                self.groups.remove(&(ri, g));
            }
        }
    }

    /// Members not heard from since `cutoff` go (series that vanished without ending).
    pub(super) fn expire(&mut self, cutoff: i64) {
        let mut gone = Vec::new();
        self.groups.retain(|(ri, _), members| {
            members.retain(|id, (_, at)| {
                let keep = *at >= cutoff;
                if !keep {
                    gone.push((*ri, *id));
                }
                keep
            });
            !members.is_empty()
        });
        for k in gone {
            self.of.remove(&k);
        }
    }

    /// Rule indices change with the rules.
    pub(super) fn clear(&mut self) {
        self.groups.clear();
        self.of.clear();
    }
}
