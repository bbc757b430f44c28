//! Baselines that survive pod churn: a new series of a discovered pod (one with a `workload`
//! target label) starts from the history of the same series on another pod of its workload
//! (the pod it replaces, still in the store until `--retention`, or a running sibling)
//! instead of from nothing, so a rolling restart does not blind every rule for
//! `min_samples` scrapes. A gauge's samples are put before its own in the store (without
//! the compaction a warm start's backfill forces: a thousand new pods were a thousand
//! compactions of the whole store); a counter's cannot be (another pod's count is not this
//! one's), so its rules' windows start from the donor's rates. Seasonal profiles come along.

use super::Pipeline;
use crate::store::{SeriesId, Slot};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Labels that differ between two pods of one workload running the same series.
const POD_IDENTITY: [&str; 2] = ["node", "pod"];

/// Per workload series (its labels but the pod's identity): the series a new pod's copy
/// starts from.
#[derive(Default)]
pub(super) struct Siblings {
    donors: HashMap<u64, SeriesId>,
}

/// A seasonal profile's stored buckets.
type Profile = Vec<(u32, Vec<u8>)>;

/// What a new series starts from: the donor's raw samples before now, for its rules'
/// windows, and its stored seasonal profiles by rule index.
pub(super) struct Seed {
    pub(super) samples: Vec<(i64, f64)>,
    pub(super) profiles: Vec<(usize, Profile)>,
}

impl Siblings {
    /// The workload-wide identity of a series, if it belongs to a discovered workload.
    fn key(name: &str, labels: &[(String, String)]) -> Option<u64> {
        if !labels.iter().any(|(k, _)| k == "workload") {
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        for (k, v) in labels {
            if !POD_IDENTITY.contains(&k.as_str()) {
                (k, v).hash(&mut h);
            }
        }
        Some(h.finish())
    }

    /// The donor of a new series `id`; `id` becomes the donor of later ones once the old
    /// donor is gone from the store (`alive`).
    fn donor(
        &mut self,
        name: &str,
        labels: &[(String, String)],
        id: SeriesId,
        alive: impl Fn(SeriesId) -> bool,
    ) -> Option<SeriesId> {
        let key = Self::key(name, labels)?;
        match self.donors.get(&key) {
            Some(&d) if d != id && alive(d) => Some(d),
            _ => {
                self.donors.insert(key, id);
                None
            }
        }
    }

    /// Series gone from the store (`gone`) are nobody's donor any more.
    pub(super) fn forget(&mut self, gone: &[(SeriesId, Slot)]) {
        if self.donors.is_empty() || gone.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<SeriesId> = gone.iter().map(|g| g.0).collect();
        self.donors.retain(|_, d| !gone.contains(d));
    }
}

impl Pipeline {
    /// A series seen for the first time since start, with a history of its own (restored
    /// from the store, or read from Prometheus): its workload's donor if that has none, so
    /// that a pod replaced after a restart starts from it too.
    pub(super) fn offer_as_donor(&mut self, id: SeriesId, sample: &crate::scrape::Sample) {
        let store = &self.store;
        let _ = self
            .siblings
            .donor(&sample.name, &sample.labels, id, |d| store.get(d).is_some());
    }

    /// A series just admitted in `slot`: seeded from a sibling pod's copy if it has one. A
    /// gauge's history goes into its own; the seed is returned for its rules' states.
    pub(super) fn seed_from_sibling(
        &mut self,
        slot: Slot,
        id: SeriesId,
        sample: &crate::scrape::Sample,
        rules: &[usize],
        now: i64,
    ) -> Option<Seed> {
        let store = &self.store;
        let donor = self
            .siblings
            .donor(&sample.name, &sample.labels, id, |d| store.get(d).is_some())?;
        let entry = self.store.get(donor)?;
        let samples: Vec<(i64, f64)> = entry
            .samples()
            .iter()
            .filter(|(t, v)| *t < now && v.is_finite())
            .collect();
        if samples.is_empty() {
            return None;
        }
        let profiles = rules
            .iter()
            .filter_map(|&ri| {
                let rule = &self.rules.rules[ri];
                let p = super::rule_series::stored_profile(rule, || {
                    self.store.profile(donor, &rule.profile_key)
                });
                (!p.is_empty()).then_some((ri, p))
            })
            .collect();
        if !sample.counter_like {
            self.store.backfill(slot, &samples);
        }
        self.exporter.metrics.seeded_series_total.inc();
        Some(Seed { samples, profiles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pod: &str, workload: Option<&str>) -> Vec<(String, String)> {
        let mut l = vec![("handler".to_string(), "/cart".to_string())];
        l.push(("pod".to_string(), pod.to_string()));
        if let Some(w) = workload {
            l.push(("workload".to_string(), w.to_string()));
        }
        l
    }

    #[test]
    fn a_new_pod_finds_the_series_of_its_workload() {
        let mut s = Siblings::default();
        let (a, b, c): (SeriesId, SeriesId, SeriesId) = (1, 2, 3);
        // The first pod of a workload has no donor and becomes one.
        assert_eq!(
            s.donor("g", &labels("api-1", Some("api")), a, |_| true),
            None
        );
        // Its replacement starts from it, and so does the next.
        assert_eq!(
            s.donor("g", &labels("api-2", Some("api")), b, |_| true),
            Some(a)
        );
        assert_eq!(
            s.donor("g", &labels("api-3", Some("api")), c, |_| true),
            Some(a)
        );
        // Another workload, or a pod without one (a static target), has none.
        assert_eq!(
            s.donor("g", &labels("web-1", Some("web")), c, |_| true),
            None
        );
        assert_eq!(s.donor("g", &labels("x", None), c, |_| true), None);
        // Once the donor left the store, the next new pod becomes the donor.
        assert_eq!(
            s.donor("g", &labels("api-4", Some("api")), c, |d| d != a),
            None
        );
        assert_eq!(
            s.donor("g", &labels("api-5", Some("api")), b, |_| true),
            Some(c)
        );
    }
}
