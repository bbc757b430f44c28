//! The alert book: the one owner of every pending and firing alert once evaluation has
//! judged it, as Prometheus' rules manager is. The pipeline tells it what happened (pending,
//! cancelled, fired, resolved, or ended because its series, rule or target went away); the
//! book persists the alert's state, announces its events, stages them in the receivers'
//! outboxes, and every `--resend-delay` hands the notifier all firing alerts at once.
//!
//! Identity is the rule's name and the series (its label set): an annotation, the severity
//! or a detector parameter changing never makes a new incident.
//!
//! Crash ordering: an alert's state and its outbox records are written in one sled
//! transaction (`Commit::apply`, made durable by the scrape's one flush), and events are delivered only after it is on disk. A kill
//! at any point leaves either neither (the next evaluation decides again) or both (the event
//! is delivered after the restart, and the restored state never fires it twice).

use super::{AlertEvent, AlertState};
use crate::store::{Database, SeriesId, StoreError, TreeOp as Op};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Where the book's events go: the receivers (`notify::Notifier`). The book decides what to
/// send and when; the outlet queues, delivers and re-sends.
pub trait Outlet: Send + Sync {
    /// The sled tree the outlet's queues live in: staged writes go to it in the book's
    /// transaction.
    fn tree(&self) -> &'static str;
    /// Queues an event, invisible to delivery until `publish`; the writes that make it
    /// durable.
    fn stage(&self, ev: &AlertEvent) -> Vec<Op>;
    /// The staged events may go out (`durable`: their writes reached the disk).
    fn publish(&self, durable: bool);
    /// How often every firing alert is to be handed over again (None: nobody wants them).
    fn resend_delay(&self) -> Option<Duration>;
    /// Every firing alert, now.
    fn resend(&self, alerts: &[AlertEvent]);
    /// Rewrites the queues from memory after a failed write (blocking).
    fn resync(&self) -> Result<(), StoreError>;
}

/// The sled tree of alert states.
const TREE: &str = "alerts";
/// First byte of a record of this layout (the one before was 8 bytes: a firing time).
const VERSION: u8 = 1;

/// Where an active alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Firing,
}

/// One pending or firing alert.
#[derive(Debug, Clone)]
pub struct Active {
    pub phase: Phase,
    /// When its condition started holding (pending) or it fired.
    pub since_ms: i64,
    /// The firing event, for re-sends and for a resolution sent when the rule or series is
    /// gone. None while pending (and for a record of the earlier layout, until the pipeline
    /// supplies it).
    pub event: Option<AlertEvent>,
}

/// Why an alert ended other than by its condition clearing, as its `reason` annotation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The rule was removed or renamed.
    RuleRemoved,
    /// The rule no longer selects the series.
    RuleChanged,
    /// The series left its target's scrapes.
    SeriesGone,
    /// The target's scrapes failed for longer than the grace.
    TargetDown,
    /// Discovery no longer finds the target (its pod went while it was being watched, or
    /// before a restart).
    TargetGone,
    /// Another `--shard` scrapes the target now (the number of shards changed).
    TargetMoved,
    /// Restored from before a restart for a target that discovery could not confirm within
    /// the grace (its API or DNS did not answer): nothing evaluates it any more.
    DiscoveryUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RuleRemoved => "rule_removed",
            Reason::RuleChanged => "rule_changed",
            Reason::SeriesGone => "series_gone",
            Reason::TargetDown => "target_down",
            Reason::TargetGone => "target_gone",
            Reason::TargetMoved => "target_moved",
            Reason::DiscoveryUnavailable => "discovery_unavailable",
        }
    }
}

type Key = (SeriesId, String);

/// Every active alert, its persistence and its notifications.
pub struct AlertBook {
    db: Database,
    active: HashMap<Key, Active>,
    /// Writes to the alerts tree since the last commit (in order).
    staged: Vec<Op>,
    /// Outbox writes of the events announced since the last commit.
    outbox: Vec<Op>,
    notifier: Option<Arc<dyn Outlet>>,
    events: broadcast::Sender<AlertEvent>,
    last_resend_ms: i64,
    /// A commit failed: the tree no longer mirrors memory until `resync`.
    dirty: bool,
}

/// What one commit writes; applied off the async runtime.
pub struct Commit {
    db: Database,
    alerts: Vec<Op>,
    /// The outlet's tree and its writes.
    outbox: Vec<Op>,
    outbox_tree: Option<&'static str>,
}

impl Commit {
    /// Whether it carries any event.
    pub fn has_events(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.outbox.is_empty()
    }

    /// `apply`, then a flush of its own (the pipeline flushes with the journal instead).
    #[cfg(test)]
    pub fn write(self) -> Result<(), StoreError> {
        let db = self.db.clone();
        if self.apply()? {
            db.flush()?;
        }
        Ok(())
    }

    /// Applies the writes atomically without flushing (blocking): the caller's flush makes
    /// them durable. True if there was anything to write.
    pub fn apply(self) -> Result<bool, StoreError> {
        use sled::Transactional;
        if self.alerts.is_empty() && self.outbox.is_empty() {
            return Ok(false);
        }
        let alerts = self.db.tree(TREE)?;
        if self.outbox.is_empty() {
            // No event: the alerts tree alone, in one batch (cheaper than a transaction).
            crate::store::apply_ops(&alerts, self.alerts)?;
            return Ok(true);
        }
        // Without an outlet nothing is staged there; the alerts tree stands in.
        let outbox = self.db.tree(self.outbox_tree.unwrap_or(TREE))?;
        (&alerts, &outbox)
            .transaction(|(a, o)| {
                for (tree, ops) in [(a, &self.alerts), (o, &self.outbox)] {
                    for (k, v) in ops {
                        match v {
                            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
                            None => tree.remove(k.as_slice())?,
                        };
                    }
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Io(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Corrupt("alert transaction aborted".into())
                }
            })?;
        Ok(true)
    }
}

fn key(id: SeriesId, rule: &str) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(rule.as_bytes());
    k
}

fn encode(a: &Active) -> Vec<u8> {
    let mut v = vec![VERSION, u8::from(a.phase == Phase::Firing)];
    v.extend_from_slice(&a.since_ms.to_be_bytes());
    if let Some(ev) = &a.event {
        // An event is plain data; serialising it cannot fail.
        v.extend(serde_json::to_vec(ev).unwrap_or_default());
    }
    v
}

/// A record: the rule name it belongs to and its state. Records of the earlier layout were
/// keyed by `name@hash-of-definition` and held a firing time.
fn decode(k: &[u8], v: &[u8]) -> Option<(Key, Active)> {
    let id = SeriesId::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let rule = std::str::from_utf8(k.get(8..)?).ok()?;
    if v.len() == 8 {
        let name = rule.split('@').next()?.to_string();
        let since_ms = i64::from_be_bytes(v.try_into().ok()?);
        let active = Active {
            phase: Phase::Firing,
            since_ms,
            event: None,
        };
        return Some(((id, name), active));
    }
    let (&version, rest) = v.split_first()?;
    if version != VERSION {
        return None;
    }
    let phase = match rest.first()? {
        0 => Phase::Pending,
        _ => Phase::Firing,
    };
    let since_ms = i64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
    let json = rest.get(9..)?;
    let event = if json.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(json).ok()?)
    };
    Some((
        (id, rule.to_string()),
        Active {
            phase,
            since_ms,
            event,
        },
    ))
}

impl AlertBook {
    /// Loads every persisted alert (blocking). Records of the earlier layout are rewritten
    /// at the first commit; undecodable ones are dropped with an error.
    pub fn open(
        db: &Database,
        notifier: Option<Arc<dyn Outlet>>,
        events: broadcast::Sender<AlertEvent>,
    ) -> Result<Self, StoreError> {
        let mut book = Self {
            db: db.clone(),
            active: HashMap::new(),
            staged: Vec::new(),
            outbox: Vec::new(),
            notifier,
            events,
            last_resend_ms: 0,
            dirty: false,
        };
        for item in db.tree(TREE)?.iter() {
            let (k, v) = item?;
            match decode(&k, &v) {
                Some(((id, rule), a)) => {
                    let new_key = key(id, &rule);
                    if *k != *new_key || v.len() == 8 {
                        book.staged.push((k.to_vec(), None));
                        book.staged.push((new_key, Some(encode(&a))));
                    }
                    book.active.insert((id, rule), a);
                }
                None => {
                    tracing::error!("Dropping an undecodable alert record");
                    book.staged.push((k.to_vec(), None));
                }
            }
        }
        Ok(book)
    }

    /// Every active alert: series, rule name, state.
    pub fn iter(&self) -> impl Iterator<Item = (SeriesId, &str, &Active)> + '_ {
        self.active.iter().map(|((id, r), a)| (*id, r.as_str(), a))
    }

    /// Alerts held.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The state a rule's alert on a series starts from (after a restart, a reload, or a
    /// series coming back).
    pub fn state(&self, id: SeriesId, rule: &str) -> AlertState {
        match self.active.get(&(id, rule.to_string())) {
            Some(a) if a.phase == Phase::Firing => AlertState::Firing {
                since_ms: a.since_ms,
            },
            Some(a) => AlertState::Pending {
                since_ms: a.since_ms,
            },
            None => AlertState::Inactive,
        }
    }

    fn put(&mut self, id: SeriesId, rule: &str, a: Active) {
        self.staged.push((key(id, rule), Some(encode(&a))));
        self.active.insert((id, rule.to_string()), a);
    }

    fn take(&mut self, id: SeriesId, rule: &str) -> Option<Active> {
        let a = self.active.remove(&(id, rule.to_string()))?;
        self.staged.push((key(id, rule), None));
        Some(a)
    }

    /// The condition started holding; `for` is counting (persisted, so a restart neither
    /// restarts nor skips the countdown).
    pub fn pending(&mut self, id: SeriesId, rule: &str, since_ms: i64) {
        let a = Active {
            phase: Phase::Pending,
            since_ms,
            event: None,
        };
        self.put(id, rule, a);
    }

    /// The condition cleared before `for` elapsed.
    pub fn cancelled(&mut self, id: SeriesId, rule: &str) {
        self.take(id, rule);
    }

    /// The alert fired: persisted and announced.
    pub fn fired(&mut self, id: SeriesId, ev: AlertEvent) {
        let a = Active {
            phase: Phase::Firing,
            since_ms: ev.fired_at_ms,
            event: Some(ev.clone()),
        };
        let rule = ev.rule.clone();
        self.put(id, &rule, a);
        self.announce(ev);
    }

    /// The alert's condition cleared: its resolution, announced under the labels it fired
    /// with (a rule's severity or labels edited meanwhile must not make Alertmanager see a
    /// resolution of an alert it never had).
    pub fn resolved(&mut self, id: SeriesId, mut ev: AlertEvent) {
        if let Some(fired) = self.take(id, &ev.rule).and_then(|a| a.event) {
            ev.severity = fired.severity;
            ev.rule_labels = fired.rule_labels;
            ev.fired_at_ms = fired.fired_at_ms;
        }
        self.announce(ev);
    }

    /// Gives `ev` the severity and rule labels its alert fired with, if the book holds it (a
    /// rule edited while its alert fires keeps that alert's labels until it resolves).
    pub fn fired_labels(&self, id: SeriesId, ev: &mut AlertEvent) {
        let fired = self
            .active
            .get(&(id, ev.rule.clone()))
            .and_then(|a| a.event.as_ref());
        if let Some(fired) = fired {
            if fired.severity != ev.severity || fired.rule_labels != ev.rule_labels {
                ev.severity = fired.severity.clone();
                ev.rule_labels = fired.rule_labels.clone();
            }
        }
    }

    /// The event a firing alert fired with.
    pub fn fired_event(&self, id: SeriesId, rule: &str) -> Option<&AlertEvent> {
        let a = self.active.get(&(id, rule.to_string()))?;
        a.event.as_ref().filter(|_| a.phase == Phase::Firing)
    }

    /// Supplies the firing event of an alert restored without one (a record of the earlier
    /// layout), so it can be re-sent and resolved like any other.
    pub fn adopt(&mut self, id: SeriesId, ev: AlertEvent) {
        let k = (id, ev.rule.clone());
        if let Some(a) = self.active.get_mut(&k) {
            if a.phase == Phase::Firing && a.event.is_none() {
                a.event = Some(ev);
                let a = a.clone();
                self.put(id, &k.1, a);
            }
        }
    }

    /// Ends an alert whose series, rule or target went away: a pending one is dropped, a
    /// firing one resolves with `reason` (and `value`, when known, as its last value).
    /// Returns whether a firing alert resolved.
    pub fn end(
        &mut self,
        id: SeriesId,
        rule: &str,
        now_ms: i64,
        value: Option<f64>,
        reason: Reason,
    ) -> bool {
        let Some(a) = self.take(id, rule) else {
            return false;
        };
        let Some(mut ev) = a.event.filter(|_| a.phase == Phase::Firing) else {
            if a.phase == Phase::Firing {
                tracing::warn!(
                    rule,
                    reason = reason.as_str(),
                    "A restored alert without its event ended; no resolution can be sent for it"
                );
            }
            return false;
        };
        ev.firing = false;
        ev.at_ms = now_ms;
        if let Some(v) = value {
            ev.value = v;
        }
        ev.annotations
            .insert("reason".to_string(), reason.as_str().to_string());
        self.announce(ev);
        true
    }

    /// Logs an event, stages it for every receiver, and tells subscribers.
    fn announce(&mut self, ev: AlertEvent) {
        tracing::info!("{}", ev.line());
        if let Some(n) = &self.notifier {
            self.outbox.extend(n.stage(&ev));
        }
        // No subscriber is fine: events go to logs regardless.
        let _ = self.events.send(ev);
    }

    /// Every `--resend-delay`, all firing alerts go to the Alertmanagers in one batch (as
    /// Prometheus sends them every evaluation), so their endsAt stays ahead and an
    /// Alertmanager that restarted relearns them. Called after every scrape result's commit
    /// (failed scrapes too), so a batch never carries an alert whose state is not yet on disk.
    pub fn tick(&mut self, now_ms: i64) {
        let Some(n) = &self.notifier else {
            return;
        };
        let Some(every) = n.resend_delay() else {
            return;
        };
        if now_ms - self.last_resend_ms < every.as_millis() as i64 {
            return;
        }
        self.last_resend_ms = now_ms;
        let mut alerts: Vec<AlertEvent> = self
            .active
            .values()
            .filter(|a| a.phase == Phase::Firing)
            .filter_map(|a| a.event.clone())
            .map(|mut ev| {
                ev.at_ms = now_ms;
                ev
            })
            .collect();
        if alerts.is_empty() {
            return;
        }
        alerts.sort_by(|a, b| (&a.rule, a.fired_at_ms).cmp(&(&b.rule, b.fired_at_ms)));
        n.resend(&alerts);
    }

    /// The writes since the last commit, to apply off the runtime (`Commit::apply`), then
    /// report with `committed`.
    pub fn take_commit(&mut self) -> Commit {
        Commit {
            db: self.db.clone(),
            alerts: std::mem::take(&mut self.staged),
            outbox: std::mem::take(&mut self.outbox),
            outbox_tree: self.notifier.as_ref().map(|n| n.tree()),
        }
    }

    /// After a commit with events: they become deliverable (from memory only if it failed,
    /// and the tree is rewritten at `resync`).
    pub fn committed(&mut self, durable: bool, had_events: bool) {
        self.dirty |= !durable;
        if let (Some(n), true) = (&self.notifier, had_events) {
            n.publish(durable);
        }
    }

    /// Rewrites the alerts tree from memory if a commit failed (blocking; after the store
    /// reopened).
    pub fn resync(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        let tree = self.db.tree(TREE)?;
        let mut batch = sled::Batch::default();
        for item in tree.iter() {
            batch.remove(item?.0);
        }
        for ((id, rule), a) in &self.active {
            batch.insert(key(*id, rule), encode(a));
        }
        tree.apply_batch(batch)?;
        if let Some(n) = &self.notifier {
            n.resync()?;
        }
        self.staged.clear();
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Verdict;

    fn event(rule: &str, firing: bool, at: i64) -> AlertEvent {
        AlertEvent {
            firing,
            at_ms: at,
            fired_at_ms: 100,
            rule: rule.into(),
            severity: "warning".into(),
            method: "threshold".into(),
            target: "h:1".into(),
            metric: "g".into(),
            series_labels: vec![],
            rule_labels: Default::default(),
            annotations: Default::default(),
            value: 5.0,
            verdict: Verdict::default(),
        }
    }

    fn open(db: &Database) -> AlertBook {
        AlertBook::open(db, None, broadcast::channel(16).0).unwrap()
    }

    #[test]
    fn pending_and_firing_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let mut b = open(&db);
        b.pending(1, "slow", 50);
        b.fired(2, event("fast", true, 100));
        b.take_commit().write().unwrap();
        b.committed(true, true);
        let b = open(&db);
        assert_eq!(b.state(1, "slow"), AlertState::Pending { since_ms: 50 });
        assert_eq!(b.state(2, "fast"), AlertState::Firing { since_ms: 100 });
        assert_eq!(b.state(2, "slow"), AlertState::Inactive);
    }

    #[test]
    fn an_ended_alert_resolves_from_its_stored_event_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let (tx, mut rx) = broadcast::channel(16);
        let mut b = AlertBook::open(&db, None, tx).unwrap();
        b.fired(2, event("fast", true, 100));
        let _ = rx.try_recv();
        assert!(b.end(2, "fast", 900, None, Reason::RuleRemoved));
        let ev = rx.try_recv().unwrap();
        assert!(!ev.firing);
        assert_eq!(ev.at_ms, 900);
        assert_eq!(ev.fired_at_ms, 100);
        assert_eq!(ev.annotations["reason"], "rule_removed");
        assert!(!b.end(2, "fast", 901, None, Reason::RuleRemoved), "once");
        b.take_commit().write().unwrap();
        assert!(open(&db).is_empty());
    }

    #[test]
    fn records_of_the_earlier_layout_are_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let mut old = 7u64.to_be_bytes().to_vec();
        old.extend_from_slice(b"too_high@00000000deadbeef");
        db.tree(TREE)
            .unwrap()
            .insert(old, &1234i64.to_be_bytes())
            .unwrap();
        let mut b = open(&db);
        assert_eq!(
            b.state(7, "too_high"),
            AlertState::Firing { since_ms: 1234 }
        );
        b.take_commit().write().unwrap();
        let keys: Vec<Vec<u8>> = db
            .tree(TREE)
            .unwrap()
            .iter()
            .map(|i| i.unwrap().0.to_vec())
            .collect();
        assert_eq!(keys, [key(7, "too_high")]);
        assert_eq!(
            open(&db).state(7, "too_high"),
            AlertState::Firing { since_ms: 1234 }
        );
    }
}
