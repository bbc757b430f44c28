//! The state of one rule on one series, and how it is described to the outside: the
//! transform that feeds its window, its export labels, and the events it announces.

use crate::alert::{AlertEvent, AlertState, Transition};
use crate::config::{Rule, Transform};
use crate::detect::{self, Verdict, Window};
use crate::export::{render_labels, RuleHead};
use crate::store::{SampleRing, SeriesIdentity};
use std::collections::BTreeMap;
use std::sync::Arc;

/// State of one rule on one series.
pub(crate) struct RuleSeries {
    pub(super) window: Window,
    pub(super) alert: AlertState,
    /// What only some need, in one box (every rule on every series has the field: at 100k
    /// series each 8 bytes here is 0.8 MB).
    extra: Option<Box<Extra>>,
    /// Whether the exporter holds this (rule, series)'s row with its labels.
    pub(super) exported: bool,
}

#[derive(Default)]
struct Extra {
    /// What the detector keeps beside the window (ewma, seasonal).
    detector: detect::State,
    /// The last verdicts, newest in bit 0 (`min_anomalous` rules).
    recent: u64,
    /// Consecutive samples kept out of the baseline (an incident), and when the first was.
    excluded: u32,
    excluded_since_ms: i64,
    /// Samples taken into an owned window since the last one kept out: a rule that shares
    /// the store's values goes back to sharing them once the window is all clean again.
    clean: u32,
    /// The tail of this series' scores (`threshold_mode: calibrated`).
    spot: Option<Box<detect::Spot>>,
}

// One per rule and series: at 100k series every 8 bytes is 0.8 MB of the 250 MB budget.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<RuleSeries>() <= 136);

/// The state of stateless detectors.
static NO_DETECTOR: detect::State = detect::State::None;

/// What one evaluation found, beside its verdict (which `step` writes in the caller's) and
/// the alert before it (the caller's to read first: small, so that it moves in registers).
pub(crate) struct Step {
    /// The value judged (after the transform).
    pub x: f64,
    pub transition: Option<Transition>,
    /// Profile records that are final (a seasonal bucket the series just left), to persist.
    pub finished: detect::Finished,
    /// The shift lasted `relearn_after`: the baseline was rebuilt from it and the alert
    /// ended (`reason=new_normal`).
    pub relearned: bool,
}

impl RuleSeries {
    /// Bucket `i` of a seasonal rule's profile, as persisted.
    pub(crate) fn profile_bucket(&self, i: u32) -> Option<[u8; detect::seasonal::BUCKET_BYTES]> {
        self.extra.as_deref()?.detector.encode(i)
    }

    /// Whether its alert is firing.
    pub(crate) fn is_firing(&self) -> bool {
        self.alert.is_firing()
    }

    /// Judges the newest sample of `ring` (a series' raw samples): transform, detector
    /// against the baseline, the rule's guard (side, minimum deviation, hysteresis), the
    /// alert, then the value into the baseline unless it belongs to an incident; the
    /// verdict goes into `verdict`. The live pipeline and `backtest` both run exactly this.
    /// None when there is nothing to judge (a rate's first sample, a non-finite value).
    #[inline]
    /// `peers`: for a peers rule, the values of the same series on the other pods of its
    /// group this round (None: judged alone, as `backtest` does, which finds nothing).
    pub(crate) fn step(
        &mut self,
        rule: &Rule,
        counter_like: bool,
        ring: &SampleRing,
        verdict: &mut Verdict,
        peers: Option<&[f64]>,
    ) -> Option<Step> {
        let (now, value) = ring.back()?;
        let prev = ring.len().checked_sub(2).and_then(|i| ring.get(i));
        let x = transform(rule.transform, counter_like, prev, (now, value))?;
        let detector = self.extra.as_deref().map_or(&NO_DETECTOR, |e| &e.detector);
        // A calibrated rule's threshold, scaled to where this series' scores lie (the
        // method's own until the tail is known).
        let scale = rule
            .guard
            .alerts_per_day
            .and_then(|per_day| self.extra.as_deref()?.spot.as_deref()?.level(per_day))
            .unwrap_or(1.0);
        let (ready, bucket) = match rule.method {
            // Judged against the group, not a baseline of its own: nothing to keep out. Too few
            // pods this round is no verdict, and so no condition.
            detect::Method::Peers {
                mad_threshold,
                min_peers,
            } => {
                let others = peers.unwrap_or(&[]);
                let _ = detect::judge_peers_into(verdict, x, others, mad_threshold, min_peers);
                (false, None)
            }
            _ => detect::judge_into(
                verdict,
                &rule.method,
                &self.window,
                detector,
                now,
                x,
                rule.min_samples,
                scale,
            )?,
        };
        // The score at the method's own threshold, for the calibration to learn.
        let judged_score = rule
            .guard
            .alerts_per_day
            .filter(|_| verdict.lower_bound.is_some() || verdict.upper_bound.is_some())
            .map(|_| verdict.score * scale);
        rule.guard.apply(verdict, x);
        let policy = &rule.policy;
        // Hysteresis holds a firing alert only: a pending one must see the whole condition for
        // all of `for` (else it fired at a value below the threshold, as a 1-hour run on
        // node_exporter showed: z 3.15 under a z 4 rule).
        let judged = rule.guard.condition(verdict, self.alert.is_firing());
        let condition = if policy.of <= 1 {
            judged
        } else {
            let extra = self.extra.get_or_insert_with(Box::default);
            policy.condition(&mut extra.recent, judged)
        };
        let before = self.alert;
        let mut transition = self.alert.step(condition, now, policy);
        let mut step = Step {
            x,
            transition: None,
            finished: detect::Finished::default(),
            relearned: false,
        };
        // A calibrated rule protects its baseline once its tail is fitted: until then the
        // method's own threshold judges, and what it would keep out (on a heavy tail, every
        // few samples) would make the window, and so the scores learnt, unlike later's.
        let calibrating = rule.guard.alerts_per_day.is_some()
            && !self
                .extra
                .as_deref()
                .and_then(|e| e.spot.as_deref())
                .is_some_and(detect::Spot::fitted);
        let incident =
            ready && !calibrating && (verdict.anomalous || self.alert != AlertState::Inactive);
        if incident {
            // (not on the evaluation that fires: the alert is announced first)
            let may_relearn = transition != Some(Transition::Firing);
            if self.keep_out(rule, counter_like, ring, may_relearn) {
                transition = self.alert.end();
                step.relearned = true;
            } else if let Some(e) = self.extra.as_deref_mut() {
                step.finished = detect::learn_aside(&rule.method, &mut e.detector, now, x);
            }
        } else {
            step.finished = self.learn(rule, counter_like, ring, x, bucket);
        }
        if let Some(score) = judged_score {
            self.observe_score(score, now, before == AlertState::Inactive);
        }
        step.transition = transition;
        Some(step)
    }

    /// A calibrated rule's score into its tail. Every score is learnt but those of an alert
    /// already open: an incident is not the series' tail (it would raise the level until
    /// the incident looked normal), while a spike of noise is (a tail fitted only below the
    /// level drifts down, the truncated peaks looking ever lighter).
    #[inline(never)]
    fn observe_score(&mut self, score: f64, now: i64, was_inactive: bool) {
        let e = self.extra.get_or_insert_with(Box::default);
        let spot = e.spot.get_or_insert_with(Box::default);
        if was_inactive || !spot.fitted() {
            spot.observe(score, now);
        }
    }

    /// The newest sample belongs to an incident: it stays out of the baseline, so the band
    /// the incident is judged against is the one from before it (a window that took it in
    /// widened until it looked normal). True when the shift has lasted `relearn_after` and
    /// the baseline was rebuilt from it (the caller ends the alert).
    // Out of the hot path: most samples of most series are no incident.
    #[cold]
    #[inline(never)]
    fn keep_out(
        &mut self,
        rule: &Rule,
        counter_like: bool,
        ring: &SampleRing,
        may_relearn: bool,
    ) -> bool {
        let Some((now, _)) = ring.back() else {
            return false;
        };
        let e = self.extra.get_or_insert_with(Box::default);
        if e.excluded == 0 {
            e.excluded_since_ms = now;
        }
        e.excluded = e.excluded.saturating_add(1);
        e.clean = 0;
        if may_relearn && rule.guard.relearn_due(e.excluded, e.excluded_since_ms, now) {
            self.relearn(rule, counter_like, ring);
            return true;
        }
        if self.window.is_shared() {
            // The store keeps every sample; the baseline must not: own the window.
            let before_x = ring.iter().take(ring.len().saturating_sub(1)).map(|s| s.1);
            self.window = owned_copy(&self.window, before_x);
        }
        false
    }

    /// The newest sample (`x` after the transform) into the baseline; returns the profile
    /// records that are final. A window owned since an incident goes back to sharing
    /// the store's values once it holds nothing but them again.
    #[inline]
    fn learn(
        &mut self,
        rule: &Rule,
        counter_like: bool,
        ring: &SampleRing,
        x: f64,
        bucket: Option<u32>,
    ) -> detect::Finished {
        push_to_window(&mut self.window, x, ring);
        let (Some(e), Some((now, _))) = (self.extra.as_deref_mut(), ring.back()) else {
            return detect::Finished::default();
        };
        let finished = detect::learn(&rule.method, &mut e.detector, now, bucket, x);
        e.excluded = 0;
        if !self.window.is_shared() && shares_store_window(rule, counter_like) {
            e.clean = e.clean.saturating_add(1);
            if e.clean as usize >= self.window.capacity() {
                let values = ring.iter().map(|s| s.1);
                let sorted = rule.method.needs_sorted();
                self.window = Window::shared(self.window.capacity(), sorted, values);
                e.clean = 0;
            }
        }
        finished
    }

    /// The baseline rebuilt from the samples the store holds (the shift that lasted), as a
    /// fresh start would build it; the alert is the caller's to end.
    #[cold]
    fn relearn(&mut self, rule: &Rule, counter_like: bool, ring: &SampleRing) {
        let samples: Vec<(i64, f64)> = ring.iter().collect();
        let (window, detector) = baseline(rule, counter_like, &samples, &[], false);
        self.window = window;
        let e = self.extra.get_or_insert_with(Box::default);
        e.detector = detector;
        e.recent = 0;
        e.excluded = 0;
        e.clean = 0;
    }
}

/// An owned window holding what the shared `w` holds (the last `w.len()` of `values`).
fn owned_copy(w: &Window, values: impl Iterator<Item = f64>) -> Window {
    let values: Vec<f64> = values.collect();
    let mut owned = Window::new(w.capacity(), w.sorted().is_some());
    values[values.len().saturating_sub(w.len())..]
        .iter()
        .for_each(|v| owned.push(*v));
    owned
}

/// Appends `x` to a rule's window. A shared window's values are the raw samples in `ring`
/// (whose newest is `x`): the value leaving is the one `capacity` samples before it.
fn push_to_window(window: &mut Window, x: f64, ring: &SampleRing) {
    if !window.is_shared() {
        return window.push(x);
    }
    let (len, held, capacity) = (ring.len(), window.len(), window.capacity());
    let evicted = if held == capacity {
        len.checked_sub(1 + held)
            .and_then(|i| ring.get(i))
            .map(|s| s.1)
    } else {
        None
    };
    let tail = || ring.iter().skip(len.saturating_sub(capacity)).map(|s| s.1);
    window.push_shared(x, evicted, tail);
}

/// Builds a rule's state from stored raw samples (so a restart or a new rule starts warm),
/// and a seasonal rule's profile from its stored buckets (`profile`; when there are none,
/// from the samples).
pub(crate) fn new_state(
    rule: &Rule,
    identity: &SeriesIdentity,
    samples: impl Iterator<Item = (i64, f64)>,
    alert: AlertState,
    profile: &[(u32, Vec<u8>)],
) -> RuleSeries {
    let samples: Vec<(i64, f64)> = samples.collect();
    let (window, detector) = baseline(rule, identity.counter_like, &samples, profile, false);
    RuleSeries {
        window,
        alert,
        extra: (detector != detect::State::None).then(|| {
            Box::new(Extra {
                detector,
                ..Extra::default()
            })
        }),
        exported: false,
    }
}

/// A rule's state on a new series from another series' raw samples (a sibling pod's
/// counter: see `siblings`), which are not in this series' store: its window is its own
/// until it holds only this series' values, then it shares the store's again if it can.
pub(crate) fn seeded_state(
    rule: &Rule,
    identity: &SeriesIdentity,
    donor: &[(i64, f64)],
    alert: AlertState,
    profile: &[(u32, Vec<u8>)],
) -> RuleSeries {
    let (window, detector) = baseline(rule, identity.counter_like, donor, profile, true);
    // (the count of own values that lets the window share again lives in `Extra`)
    let may_share = shares_store_window(rule, identity.counter_like);
    RuleSeries {
        window,
        alert,
        extra: (may_share || detector != detect::State::None).then(|| {
            Box::new(Extra {
                detector,
                ..Extra::default()
            })
        }),
        exported: false,
    }
}

/// A rule's window and detector state from raw `samples` (oldest first) and a seasonal
/// profile's stored buckets; `own`: a window of its own even where it could share the store's
/// (the samples are not the store's).
fn baseline(
    rule: &Rule,
    counter_like: bool,
    samples: &[(i64, f64)],
    profile: &[(u32, Vec<u8>)],
    own: bool,
) -> (Window, detect::State) {
    let sorted = rule.method.needs_sorted();
    let mut detector = rule.method.new_state();
    let restored = detector.restore(profile);
    let values = || {
        let mut prev = None;
        samples.iter().filter_map(move |&s| {
            let x = transform(rule.transform, counter_like, prev, s);
            prev = Some(s);
            x.map(|x| (s.0, x))
        })
    };
    let window = if !own && shares_store_window(rule, counter_like) {
        Window::shared(rule.window, sorted, samples.iter().map(|s| s.1))
    } else {
        let mut window = Window::new(rule.window, sorted);
        values().for_each(|(_, x)| window.push(x));
        window
    };
    if !restored {
        for (ts, x) in values() {
            detect::update(&rule.method, &mut detector, ts, x);
        }
    }
    (window, detector)
}

/// The stored profile a seasonal rule's state starts from (none for other methods); a
/// store that cannot be read starts the profile afresh, with a warning.
pub(super) fn stored_profile(
    rule: &Rule,
    read: impl FnOnce() -> Result<Vec<(u32, Vec<u8>)>, crate::store::StoreError>,
) -> Vec<(u32, Vec<u8>)> {
    if !rule.method.keeps_profile() {
        return Vec::new();
    }
    read().unwrap_or_else(|e| {
        tracing::warn!(rule = %rule.name, "Seasonal profile unreadable, starting afresh: {e}");
        Vec::new()
    })
}

/// Whether a rule's window can be a view of the store's samples instead of a copy: it judges
/// the raw values (every stored sample is one of its values, the store keeps one more than
/// the longest window), and its detector needs only the statistics (trend walks the values).
pub(super) fn shares_store_window(rule: &Rule, counter_like: bool) -> bool {
    let raw = matches!(
        (rule.transform, counter_like),
        (Transform::Raw, _) | (Transform::Auto, false)
    );
    raw && !matches!(rule.method, crate::detect::Method::Trend { .. })
}

/// The last value a rule judged on a series (after its transform: a counter's rate, not the
/// counter), for a resolution sent when the series or rule goes away.
pub(crate) fn last_value(rule: &Rule, entry: &crate::store::SeriesEntry) -> Option<f64> {
    let ring = entry.samples();
    let cur = ring.back()?;
    let prev = ring.len().checked_sub(2).and_then(|i| ring.get(i));
    transform(rule.transform, entry.counter_like, prev, cur)
}

/// The value a rule evaluates for sample `cur`, given the series' previous sample.
pub fn transform(
    t: Transform,
    counter_like: bool,
    prev: Option<(i64, f64)>,
    cur: (i64, f64),
) -> Option<f64> {
    let t = match t {
        Transform::Auto if counter_like => Transform::Rate,
        Transform::Auto => Transform::Raw,
        t => t,
    };
    // A decrease is a counter reset (it restarted from zero): always for `rate`, which only
    // means something for counters (as Prometheus' rate()), and for a counter's `delta`; a
    // gauge's `delta` is signed (as Prometheus' delta()).
    let increase = |pv: f64, resets: bool| {
        if resets && cur.1 < pv {
            cur.1
        } else {
            cur.1 - pv
        }
    };
    match t {
        Transform::Raw | Transform::Auto => Some(cur.1),
        Transform::Delta => prev.map(|(_, pv)| increase(pv, counter_like)),
        Transform::Rate => {
            let (pt, pv) = prev?;
            let dt = (cur.0 - pt) as f64 / 1000.0;
            (dt > 0.0).then(|| increase(pv, true) / dt)
        }
    }
}

/// The labels an event's annotation templates see: the alert's, plus `rule`, `method` and
/// `instance` (templates written for Prometheus say `$labels.instance`; the target is ours).
fn template_labels(rule: &Rule, identity: &SeriesIdentity) -> BTreeMap<String, String> {
    let mut labels = crate::alert::labels::alert_labels(
        &rule.name,
        rule.severity.as_str(),
        &rule.labels,
        &identity.target,
        identity.name(),
        identity.labels(),
    );
    labels.insert("rule".to_string(), rule.name.clone());
    labels.insert("method".to_string(), rule.method.name().to_string());
    labels
        .entry("instance".to_string())
        .or_insert_with(|| identity.target.to_string());
    labels
}

/// Per rule of `set`: its name, its gauges' rendered head (shared by every row of the rule, no
/// allocation per sample) and its number in the exporter's row keys.
#[allow(clippy::type_complexity)]
pub(super) fn rule_names(
    set: &crate::config::RuleSet,
    exporter: &crate::export::Exporter,
) -> (
    Vec<Arc<str>>,
    Vec<Arc<RuleHead>>,
    Vec<crate::export::RuleId>,
) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for r in &set.rules {
        out.0.push(Arc::from(r.name.as_str()));
        out.1.push(export_head(r));
        out.2.push(exporter.rule_id(&r.name));
    }
    out
}

/// The labels every gauge of a rule starts with, rendered once per rule.
pub(super) fn export_head(rule: &Rule) -> Arc<RuleHead> {
    let mut pairs = vec![
        ("rule", rule.name.as_str()),
        ("severity", rule.severity.as_str()),
        ("method", rule.method.name()),
    ];
    pairs.extend(rule.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Arc::new(RuleHead {
        text: render_labels(&pairs).into(),
        labels: rule.labels.clone(),
    })
}

pub(super) fn event(
    rule: &Rule,
    identity: &SeriesIdentity,
    firing: bool,
    at_ms: i64,
    fired_at_ms: i64,
    value: f64,
    verdict: Verdict,
) -> AlertEvent {
    let labels = template_labels(rule, identity);
    let annotations = rule
        .annotations
        .iter()
        .map(|(k, t)| (k.clone(), t.render(&labels, value)))
        .collect();
    AlertEvent {
        firing,
        at_ms,
        fired_at_ms,
        rule: rule.name.clone(),
        severity: rule.severity.as_str().to_string(),
        method: rule.method.name().to_string(),
        target: identity.target.to_string(),
        metric: identity.name().to_string(),
        series_labels: identity.labels_owned(),
        rule_labels: rule.labels.clone(),
        annotations,
        value,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms() {
        assert_eq!(transform(Transform::Auto, false, None, (0, 5.0)), Some(5.0));
        assert_eq!(transform(Transform::Auto, true, None, (0, 5.0)), None);
        assert_eq!(
            transform(Transform::Auto, true, Some((0, 5.0)), (2000, 9.0)),
            Some(2.0)
        );
        // Counter reset: the new value is the increase since the restart.
        assert_eq!(
            transform(Transform::Rate, true, Some((0, 50.0)), (1000, 3.0)),
            Some(3.0)
        );
        assert_eq!(
            transform(Transform::Delta, false, Some((0, 5.0)), (1000, 3.0)),
            Some(-2.0)
        );
        // An explicit rate of a series without a counter TYPE: a decrease is still a reset.
        assert_eq!(
            transform(Transform::Rate, false, Some((0, 50.0)), (2000, 4.0)),
            Some(2.0)
        );
        assert_eq!(
            transform(Transform::Rate, false, Some((1000, 5.0)), (1000, 6.0)),
            None
        );
    }
}
