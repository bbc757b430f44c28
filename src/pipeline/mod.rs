//! The evaluation pipeline: takes each scrape result, keeps the store's windows, runs every
//! matching rule's detector on every new sample, steps the alert state machines, and hands the
//! exporter its rows and the alert book what happened to each alert (the book alone persists
//! alerts and talks to the receivers). The one owner of store and rule state.

mod absence;
mod carry_over;
mod peers;
mod persist;
mod rule_series;
pub mod scan;
mod siblings;
mod slots;
mod targets;
mod warm;

use crate::alert::book::{AlertBook, Reason};
use crate::alert::{AlertEvent, AlertState, Transition};
use crate::config::{Rule, RuleSet};
use crate::detect::Verdict;
use crate::export::{
    AlertView, AnomalyRow, ExportChanges, Exporter, RowKey, RowUpdate, RowValues, RuleId,
};
use crate::scrape::manager::TargetChange;
use crate::scrape::{Sample, ScrapeResult, Target};
use crate::store::{series_id, IdMap, SeriesEntry, SeriesId, SeriesIdentity, Slot, Store};
pub(crate) use peers::PeerGroups;
use rule_series::{event, rule_names, seeded_state, shares_store_window, stored_profile};
pub(crate) use rule_series::{new_state, RuleSeries};
use scan::{NewSample, SeriesIndex};
use slots::SlotStates;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use targets::with_target_labels;
use tokio::sync::{mpsc, watch};

/// How many samples ahead of the one evaluated its series' memory is fetched.
const PREFETCH_AHEAD: usize = 8;

/// Rows handed to the exporter at a time while a scrape is evaluated.
const EXPORT_SLICE: usize = 4096;

/// Scrape results evaluated before one write of the store and the alert book covers them
/// (those already waiting; one alone is written at once).
const COALESCED_RESULTS: usize = 64;

/// What the pipeline needs besides its inputs.
pub struct PipelineSettings {
    pub max_series: usize,
    pub retention: Duration,
    /// Where to read the history of series the store lacks (`--warmup-from`).
    pub warmup: Option<Arc<crate::scrape::warmup::Warmup>>,
    /// How long a target's scrapes may fail before its alerts resolve (`reason=target_down`).
    pub target_down_grace: Duration,
    /// How often targets are scraped: a peers rule's round.
    pub scrape_interval: Duration,
}

/// Owns the store and all rule state; driven by `run`.
pub struct Pipeline {
    /// Per slot: the target scraped into it (None: free, its target gone).
    targets: Vec<Option<Target>>,
    /// Series with an alert restored at start whose target is not known yet (a discovered
    /// one): handed to the target when it comes, so they end if they do not come back.
    orphans: HashMap<String, Vec<(Slot, SeriesId)>>,
    settings: PipelineSettings,
    rules: Arc<RuleSet>,
    /// Per stored series: when it was last scraped, its rules' windows and alerts.
    states: SlotStates,
    /// Scrapes processed (numbers the scrapes for `SlotState::seen_in`).
    scrapes: u64,
    /// Rule names, parallel to `rules.rules`, shared by every row key (no allocation per sample).
    names: Vec<Arc<str>>,
    /// Rules' rendered export labels, parallel to `rules.rules`.
    heads: Vec<Arc<crate::export::RuleHead>>,
    /// Rules' numbers in the exporter's row keys, parallel to `rules.rules`.
    ids: Vec<RuleId>,
    /// Indices of the rules that select a series, cached until the rules change.
    matches: IdMap<Arc<[usize]>>,
    /// Distinct match lists, shared by every series with the same rules (most series share a
    /// handful), so the cache costs one pointer per series, not one allocation.
    match_lists: HashMap<Vec<usize>, Arc<[usize]>>,
    store: Store,
    /// Per target: series present in its last successful scrape, in its order.
    seen: Vec<Vec<(Slot, SeriesId)>>,
    /// Per target: the number of its last successful scrape.
    last_scrape: Vec<u64>,
    /// Per target: series text as the target writes it → series id.
    index: Vec<SeriesIndex>,
    /// Per target: last scrape outcome, so up/down is logged once per change.
    up: Vec<Option<bool>>,
    /// Per target: when its last scrape succeeded (the start, before the first).
    last_ok_ms: Vec<i64>,
    exporter: Arc<Exporter>,
    /// Every active alert's state, events and re-sends.
    book: AlertBook,
    /// The groups `method: peers` rules judge each pod against.
    peers: peers::PeerGroups,
    /// Where a new pod's series find their workload's history.
    siblings: siblings::Siblings,
    last_expiry_ms: i64,
    /// While the store is failing: when to try reopening it next, and the backoff.
    store_retry: Option<(std::time::Instant, std::time::Duration)>,
    /// Warm start, with `--warmup-from`; its background answers (late series', and parked
    /// first scrapes').
    warm: Option<warm::WarmStart>,
    warm_replies: Option<mpsc::UnboundedReceiver<warm::Reply>>,
    warm_firsts: Option<mpsc::UnboundedReceiver<warm::FirstReply>>,
}

impl Pipeline {
    pub fn new(
        targets: Vec<Target>,
        settings: PipelineSettings,
        rules: Arc<RuleSet>,
        store: Store,
        exporter: Arc<Exporter>,
        book: AlertBook,
    ) -> Self {
        let n = targets.len();
        let (names, heads, ids) = rule_names(&rules, &exporter);
        let (warm, warm_replies, warm_firsts) = match settings.warmup.clone() {
            Some(w) => {
                let (warm, rx, firsts) = warm::WarmStart::new(w, n);
                (Some(warm), Some(rx), Some(firsts))
            }
            None => (None, None, None),
        };
        for t in &targets {
            exporter
                .metrics
                .series
                .with_label_values(&[&t.name])
                .set(store.target_series(&t.name) as i64);
        }
        let mut p = Self {
            targets: targets.into_iter().map(Some).collect(),
            orphans: HashMap::new(),
            settings,
            rules,
            states: SlotStates::default(),
            scrapes: 0,
            names,
            heads,
            ids,
            matches: IdMap::default(),
            match_lists: HashMap::new(),
            store,
            seen: vec![Vec::new(); n],
            last_scrape: vec![0; n],
            index: (0..n).map(|_| SeriesIndex::default()).collect(),
            up: vec![None; n],
            last_ok_ms: vec![crate::util::now_ms(); n],
            exporter,
            book,
            peers: peers::PeerGroups::default(),
            siblings: siblings::Siblings::default(),
            last_expiry_ms: 0,
            store_retry: None,
            warm,
            warm_replies,
            warm_firsts,
        };
        p.restore_alerts();
        // Profiles of rules that changed or went while the sidecar was stopped.
        let keep = p
            .rules
            .rules
            .iter()
            .map(|r| r.profile_key.clone())
            .collect();
        p.store.forget_profiles_except(keep);
        p
    }

    /// Processes target changes, scrape results and rule changes until shutdown, then
    /// flushes the store.
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<TargetChange>,
        mut results: mpsc::Receiver<ScrapeResult>,
        mut rules: watch::Receiver<Arc<RuleSet>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Without warm start, channels that never yield.
        let (_never, idle) = mpsc::unbounded_channel();
        let (_never_first, idle_first) = mpsc::unbounded_channel();
        let mut warm_replies = self.warm_replies.take().unwrap_or(idle);
        let mut warm_firsts = self.warm_firsts.take().unwrap_or(idle_first);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                // Before results: a target is known before its first result is read.
                Some(change) = changes.recv() => {
                    self.target_change(change);
                    self.persist().await;
                }
                Ok(()) = rules.changed() => {
                    let new = rules.borrow_and_update().clone();
                    self.set_rules(new);
                }
                Some((target, asked, fetched)) = warm_replies.recv() => {
                    self.take_history(&target, asked, fetched, false);
                }
                Some(reply) = warm_firsts.recv() => {
                    if let Some(r) = self.first_history(reply) {
                        self.handle(r).await;
                    }
                }
                r = results.recv() => match r {
                    Some(r) => {
                        self.take(r);
                        // Results already waiting are evaluated before one write covers
                        // them all: a thousand pods scraped in the same instant were a
                        // thousand journal writes and flushes. A target is still known
                        // before its first result.
                        for _ in 1..COALESCED_RESULTS {
                            while let Ok(change) = changes.try_recv() {
                                self.target_change(change);
                            }
                            match results.try_recv() {
                                Ok(r) => self.take(r),
                                Err(_) => break,
                            }
                        }
                        self.persist().await;
                    }
                    None => break,
                },
            }
        }
        self.persist().await;
        tracing::info!("Pipeline stopped; store flushed");
    }

    /// A scrape result off the channel: evaluated unless its target has gone (or it waits
    /// for its warm start); not written yet.
    fn take(&mut self, r: ScrapeResult) {
        if self.live(&r).is_none() {
            return;
        }
        if let Some(r) = self.warm_first_scrape(r) {
            self.evaluate(r);
        }
    }

    /// One scrape result, evaluated and written.
    async fn handle(&mut self, r: ScrapeResult) {
        self.evaluate(r);
        // Alert states and their events reach the disk together, before any delivery
        // attempt.
        self.persist().await;
    }

    /// One scrape result, evaluated (its changes staged for the next write).
    fn evaluate(&mut self, r: ScrapeResult) {
        let started_ms = r.at_ms;
        let (target, at_ms) = (r.target, r.at_ms);
        self.process(r);
        self.warm_late(target, at_ms);
        let took = crate::util::now_ms().saturating_sub(started_ms);
        self.exporter
            .metrics
            .scrape_to_export_seconds
            .observe(took as f64 / 1000.0);
    }

    /// Evaluates one scrape.
    pub fn process(&mut self, result: ScrapeResult) {
        let t = result.target;
        let Some(target) = self.live(&result).cloned() else {
            return;
        };
        let m = self.exporter.metrics.clone();
        m.scrape_duration_seconds
            .with_label_values(&[&target.name])
            .set(result.duration.as_secs_f64());
        let body = match result.outcome {
            Err(e) => return self.scrape_failed(t, &e, result.at_ms),
            Ok(s) => s,
        };
        let mut index = std::mem::take(&mut self.index[t]);
        let scanned = index.scan(&body.text, &target.limits);
        let mut scanned = match scanned {
            Err(e) => {
                self.index[t] = index;
                return self.scrape_failed(t, &e, result.at_ms);
            }
            Ok(scan) => scan,
        };
        m.up.with_label_values(&[&target.name]).set(1);
        if self.up[t] == Some(false) {
            tracing::info!(target = %target.name, "Scrape recovered");
        }
        self.up[t] = Some(true);
        self.last_ok_ms[t] = result.at_ms;
        m.scrape_samples
            .with_label_values(&[&target.name])
            .set(scanned.len() as i64);
        let now = result.at_ms;
        let target_name: Arc<str> = target.name.as_str().into();
        self.scrapes += 1;
        let mut batch = Batch {
            evaluations: vec![0; self.rules.rules.len()],
            previous_scrape: std::mem::replace(&mut self.last_scrape[t], self.scrapes),
            ..Batch::default()
        };
        let mut current = Vec::with_capacity(self.seen[t].len());
        let known = std::mem::take(&mut scanned.known);
        for (i, k) in known.iter().enumerate() {
            // The ring each sample writes is a cache miss: ask for it a few samples ahead.
            if let Some(slot) = known.get(i + PREFETCH_AHEAD).and_then(|k| k.slot) {
                self.store.prefetch(slot);
                self.states.prefetch(slot);
            }
            let source = Source::Known(index.rules(k), k.slot);
            let (id, value) = (k.id, k.value);
            self.sample(
                &target_name,
                id,
                value,
                source,
                now,
                &mut current,
                &mut batch,
            );
            self.export_slice(&mut batch);
        }
        let mut learnt = Vec::new();
        for new in scanned.new_samples(&index) {
            let NewSample { sample, text } = new;
            let sample = &with_target_labels(sample, &target.labels);
            let id = series_id(&target_name, &sample.name, &sample.labels);
            let source = Source::Parsed(sample);
            self.sample(
                &target_name,
                id,
                sample.value,
                source,
                now,
                &mut current,
                &mut batch,
            );
            // Learnt once its rules are cached and, if any selects it, it is stored.
            if let Some(rules) = self.matches.get(&id) {
                let slot = self.store.slot(id);
                if rules.is_empty() || slot.is_some() {
                    learnt.push((text, id, slot, rules.clone()));
                }
            }
            self.export_slice(&mut batch);
        }
        for (text, id, slot, rules) in learnt {
            index.learn(text, id, slot, rules);
        }
        drop(body);
        self.index[t] = index;
        let previous = std::mem::replace(&mut self.seen[t], current);
        // The rule-match cache also holds series that were never admitted (no rule, or over
        // --max-series); under churn that would grow without bound, so keep it near the store.
        if self.matches.len() > 2 * self.store.len() + 100_000 {
            let store = &self.store;
            self.matches.retain(|id, _| store.get(*id).is_some());
            let matches = &self.matches;
            for index in &mut self.index {
                index.retain(|id| matches.contains_key(&id));
            }
        }
        self.end_absent(previous, now, &mut batch);
        self.apply(&target.name, batch);
    }

    /// Series of the target's previous scrape that this one lacks end, and (now and then)
    /// series past the retention expire.
    fn end_absent(&mut self, previous: Vec<(Slot, SeriesId)>, now: i64, batch: &mut Batch) {
        let scrape = self.scrapes;
        // Usually every series of the last scrape is back: then none is gone.
        let gone: Vec<(Slot, SeriesId)> = if batch.reseen == previous.len() {
            Vec::new()
        } else {
            previous
                .into_iter()
                .filter(|&(slot, id)| !self.states.seen_in(slot, id, scrape))
                .collect()
        };
        for (slot, id) in gone {
            self.end_series(slot, id, now, batch, Reason::SeriesGone);
        }
        // Expire at most once a minute, but often enough that a series outlives the retention
        // by a tenth of it at most (by half, vanished series held ~1.5 retentions of churn on
        // disk).
        let every = (self.settings.retention.as_millis() as i64 / 10).clamp(100, 60_000);
        if now - self.last_expiry_ms >= every {
            self.expire(now, batch);
        }
    }

    /// Hands a scrape's results on: counters, profiles to the store, rows to the exporter,
    /// alert changes to the book.
    fn apply(&mut self, target: &str, mut batch: Batch) {
        let m = self.exporter.metrics.clone();
        for (ri, &n) in batch.evaluations.iter().enumerate() {
            if n > 0 {
                m.rule_evaluations_total
                    .with_label_values(&[&self.names[ri]])
                    .inc_by(n);
            }
        }
        if batch.dropped > 0 {
            m.dropped_series_total
                .with_label_values(&[target])
                .inc_by(batch.dropped);
        }
        // The others' counts change only when series expire (`expire` sets them).
        m.series
            .with_label_values(&[target])
            .set(self.store.target_series(target) as i64);
        for (id, key, bucket, bytes) in batch.profiles.drain(..) {
            self.store.set_profile_bucket(id, &key, bucket, &bytes);
        }
        for ri in batch.relearned.drain(..) {
            m.relearned_total
                .with_label_values(&[&self.names[ri]])
                .inc();
        }
        for (rule, tr) in batch.transitions.drain(..) {
            m.transitions_total
                .with_label_values(&[&rule, tr.as_str()])
                .inc();
        }
        // A firing alert is shown with the labels it fired with, as Alertmanager has it.
        for ((_, id), view) in batch.export.alerts.iter_mut().filter(|(_, v)| v.firing) {
            self.book.fired_labels(*id, &mut view.event);
        }
        self.exporter.apply(&mut batch.export);
        for (id, change) in batch.alerts {
            match change {
                Change::Pending(rule, since) => self.book.pending(id, &rule, since),
                Change::Cancelled(rule) => self.book.cancelled(id, &rule),
                Change::Fired(ev) => self.book.fired(id, ev),
                Change::Resolved(ev) => self.book.resolved(id, ev),
            }
        }
    }

    /// Rows go out in slices: a whole scrape's worth at 100k series would be tens of MB held
    /// only to be copied. Readers may see part of a scrape; each row is whole.
    fn export_slice(&self, batch: &mut Batch) {
        if batch.export.rows() >= EXPORT_SLICE {
            self.exporter.apply(&mut batch.export);
        }
    }

    fn rules_for(&mut self, id: SeriesId, target: &str, s: &Sample) -> Arc<[usize]> {
        if let Some(r) = self.matches.get(&id) {
            return r.clone();
        }
        let list: Vec<usize> = self
            .rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.selects(target, &s.name, &s.labels))
            .map(|(i, _)| i)
            .collect();
        let r = self
            .match_lists
            .entry(list)
            .or_insert_with_key(|l| Arc::from(l.as_slice()))
            .clone();
        // A target at --max-series gets no new cache entries: a cardinality bomb would
        // otherwise cost an entry per dropped series until the next prune.
        if self.store.target_series(target) < self.settings.max_series {
            self.matches.insert(id, r.clone());
        }
        r
    }

    /// Evaluates one sample of series `id`.
    #[allow(clippy::too_many_arguments)] // one sample's inputs and the scrape's accumulators
    fn sample(
        &mut self,
        target: &Arc<str>,
        id: SeriesId,
        value: f64,
        source: Source,
        now: i64,
        current: &mut Vec<(Slot, SeriesId)>,
        b: &mut Batch,
    ) {
        let parsed_rules;
        // A new series of a discovered pod: its workload's history to start from.
        let mut seed = None;
        let (rules, slot, fresh) = match source {
            Source::Known(rules, slot) => (rules, slot, None),
            Source::Parsed(s) => {
                parsed_rules = self.rules_for(id, target, s);
                (&*parsed_rules, None, Some(s))
            }
        };
        if rules.is_empty() {
            // Not selected by any rule.
            return;
        }
        let slot = match (slot, fresh) {
            (Some(slot), _) => slot,
            // NaN and ±Inf carry no statistics: not a reason to store a new series.
            (None, Some(_)) if !value.is_finite() => return,
            (None, Some(s)) => {
                let identity =
                    || SeriesIdentity::new(target.clone(), &s.name, &s.labels, s.counter_like);
                match self.store.admit(id, identity, self.settings.max_series) {
                    Ok(slot) => {
                        // Nothing stored: Prometheus' history of the series itself first
                        // (--warmup-from), else its workload's. One with a history
                        // (restored, or Prometheus') is there for its workload's next pods.
                        let empty = self.store.at(slot).is_some_and(|e| e.samples().is_empty());
                        if empty && !self.admitted(slot, id, s, rules) {
                            seed = self.seed_from_sibling(slot, id, s, rules, now);
                        } else {
                            self.offer_as_donor(id, s);
                        }
                        slot
                    }
                    Err(_) => {
                        b.dropped += 1;
                        return;
                    }
                }
            }
            (None, None) => return,
        };
        let series = self.states.at(slot, id);
        if series.seen_in == self.scrapes {
            // A duplicate series in one scrape: the first one wins.
            return;
        }
        // (0: the target's first scrape, whose `previous` are restored alerts' series.)
        if b.previous_scrape != 0 && series.seen_in == b.previous_scrape {
            b.reseen += 1;
        }
        series.seen_in = self.scrapes;
        current.push((slot, id));
        if !value.is_finite() {
            // NaN and ±Inf carry no statistics; the series is still present.
            self.store.touch(slot, now);
            return;
        }
        let capacity = rules
            .iter()
            .map(|&ri| self.rules.rules[ri].window + 1)
            .max()
            .unwrap_or(1);
        let Some(appended) = self.store.append_at(slot, now, value, capacity) else {
            return;
        };
        let (identity, ring) = (&appended.entry.identity, appended.entry.samples());
        for &ri in rules.iter() {
            let rule = &self.rules.rules[ri];
            let state = match series.rules.get_mut(ri) {
                Some(state) => state,
                None => {
                    // Warm from the history before this sample (a restart, or a new rule),
                    // and from the alert's state if the book holds one.
                    let alert = self.book.state(id, &rule.name);
                    let before = ring.iter().take(ring.len().saturating_sub(1));
                    let mut profile = stored_profile(rule, || appended.profile(&rule.profile_key));
                    let seed = seed.as_ref();
                    if let Some((_, p)) = seed
                        .and_then(|s| s.profiles.iter().find(|(r, _)| *r == ri))
                        .filter(|_| profile.is_empty())
                    {
                        profile.clone_from(p);
                    }
                    // A counter's rules start from the donor's rates (its count is not this
                    // pod's); a gauge's history is in its own store already.
                    let from_donor =
                        seed.filter(|_| identity.counter_like && !shares_store_window(rule, true));
                    let state = match from_donor {
                        Some(s) => seeded_state(rule, identity, &s.samples, alert, &profile),
                        None => new_state(rule, identity, before, alert, &profile),
                    };
                    series.rules.insert(ri, state)
                }
            };
            let key = (self.ids[ri], id);
            // A peers rule: its peers' values of this round; then its own, for theirs.
            let is_peers = matches!(rule.method, crate::detect::Method::Peers { .. });
            let fresh = 2 * self.settings.scrape_interval.as_millis() as i64;
            let others = is_peers.then(|| self.peers.others(ri, rule, id, identity, now, fresh));
            let head = &self.heads[ri];
            let x = evaluate_rule(
                rule,
                ri,
                state,
                head,
                key,
                appended.entry,
                b,
                others.as_deref(),
            );
            if let (true, Some(x)) = (is_peers, x) {
                self.peers.set(ri, id, x, now);
            }
        }
    }
}

/// Counts a transition of a rule's alert (`anomaly_sidecar_transitions_total`).
fn count(exporter: &Exporter, rule: &str, tr: Transition) {
    exporter
        .metrics
        .transitions_total
        .with_label_values(&[rule, tr.as_str()])
        .inc();
}

/// Where a sample's series was resolved.
enum Source<'s> {
    /// From its text by the index, with its rules and its store slot.
    Known(&'s [usize], Option<Slot>),
    /// Its line was parsed: rules and identity come from the labels.
    Parsed(&'s Sample),
}

/// Runs one rule's detector on the newest sample of a series (the last of `ring`) and steps
/// its alert; `peers`: a peers rule's group values. The value judged (None: nothing was).
#[allow(clippy::too_many_arguments)]
fn evaluate_rule(
    rule: &Rule,
    ri: usize,
    state: &mut RuleSeries,
    head: &Arc<crate::export::RuleHead>,
    key: RowKey,
    series: &SeriesEntry,
    b: &mut Batch,
    peers: Option<&[f64]>,
) -> Option<f64> {
    let (identity, ring) = (&series.identity, series.samples());
    let mut verdict = Verdict::default();
    let before = state.alert;
    let step = state.step(rule, series.counter_like, ring, &mut verdict, peers)?;
    let (x, transition) = (step.x, step.transition);
    if step.relearned {
        b.relearned.push(ri);
    }
    for i in step.finished.iter() {
        if let Some(bytes) = state.profile_bucket(i) {
            b.profiles.push((key.1, rule.profile_key.clone(), i, bytes));
        }
    }
    let (now, _) = ring.back()?;
    b.evaluations[ri] += 1;
    let id = key.1;
    let since = state
        .alert
        .firing_since()
        .or(before.firing_since())
        .unwrap_or(now);
    match state.alert {
        AlertState::Firing { since_ms: at }
        | AlertState::Kept { since_ms: at, .. }
        | AlertState::Pending { since_ms: at } => {
            let view = AlertView {
                firing: state.alert.is_firing(),
                active_at_ms: at,
                event: event(rule, identity, true, now, since, x, verdict.clone()),
            };
            b.export.alerts.push((key, view));
        }
        AlertState::Inactive if before != AlertState::Inactive => b.export.alerts_over.push(key),
        AlertState::Inactive => {}
    }
    let flags = (state.alert.is_firing(), state.alert.is_pending());
    // The row's labels go to the exporter once; later updates carry the values alone (a
    // reference count taken and dropped on every series' identity per scrape was a cache
    // miss each).
    if state.exported {
        b.export.values(key, flags, x, &verdict);
    } else {
        state.exported = true;
        let values = RowValues::new(flags, x, &verdict);
        let row = AnomalyRow::new((head.clone(), identity.clone()), values);
        b.export.upserts.push((key, RowUpdate::New(row)));
    }
    if let Some(tr) = transition {
        announce(
            rule,
            identity,
            tr,
            (id, now, since),
            x,
            verdict,
            step.relearned,
            b,
        );
    }
    Some(x)
}

/// A transition of an alert, for the counters and the book (out of line: most evaluations
/// have none).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn announce(
    rule: &Rule,
    identity: &Arc<SeriesIdentity>,
    tr: Transition,
    (id, now, since): (SeriesId, i64, i64),
    x: f64,
    verdict: Verdict,
    relearned: bool,
    b: &mut Batch,
) {
    b.transitions.push((rule.name.clone(), tr));
    let change = match tr {
        Transition::Pending => Change::Pending(rule.name.clone(), now),
        Transition::Cancelled => Change::Cancelled(rule.name.clone()),
        Transition::Firing => Change::Fired(event(rule, identity, true, now, since, x, verdict)),
        Transition::Resolved => {
            let mut ev = event(rule, identity, false, now, since, x, verdict);
            if relearned {
                // The shift lasted relearn_after: resolved as the new normal, not because
                // the value came back.
                ev.annotations
                    .insert("reason".to_string(), "new_normal".to_string());
            }
            Change::Resolved(ev)
        }
    };
    b.alerts.push((id, change));
}

/// What happened to an alert in an evaluation, for the book.
enum Change {
    /// (rule, since when the condition holds)
    Pending(String, i64),
    Cancelled(String),
    Fired(AlertEvent),
    Resolved(AlertEvent),
}

#[derive(Default)]
struct Batch {
    export: ExportChanges,
    transitions: Vec<(String, Transition)>,
    /// Alerts that changed, for the book.
    alerts: Vec<(SeriesId, Change)>,
    /// Seasonal buckets the series left: (series, rule key, bucket, statistics).
    profiles: Vec<(
        SeriesId,
        String,
        u32,
        [u8; crate::detect::seasonal::BUCKET_BYTES],
    )>,
    /// Evaluations per rule index.
    evaluations: Vec<u64>,
    /// Rule indices, once per baseline relearned (`anomaly_sidecar_relearned_total`).
    relearned: Vec<usize>,
    /// The number of the target's previous scrape, and how many of its series came back.
    previous_scrape: u64,
    reseen: usize,
    dropped: u64,
}
