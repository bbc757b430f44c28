//! Warm start in the pipeline (`scrape::warmup` reads the history): at a target's first
//! scrape, the series its rules select and the store cannot fill are asked of Prometheus in
//! the background, and that scrape is parked (up to `--warmup-timeout`) until the answer is
//! in, so it is judged against a full window, while other targets' scrapes, rule reloads and
//! shutdown go on. Series that appear later are asked in the background; their
//! rule states are rebuilt from the history when it arrives (from their next scrape on).
//! An unreachable Prometheus is a warning: the series start from scratch.

use super::targets::with_target_labels;
use super::Pipeline;
use crate::scrape::warmup::{Fetched, Wanted, Warmup};
use crate::scrape::{Sample, ScrapeBody, ScrapeResult};
use crate::store::{series_id, IdMap, SeriesId, Slot};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the pipeline keeps for warm start.
pub(super) struct WarmStart {
    pub(super) warmup: Arc<Warmup>,
    /// Per target: whether its first scrape was warmed.
    warmed: Vec<bool>,
    /// History of series not admitted yet (the first scrape's), applied at admission.
    pending: IdMap<Vec<(i64, f64)>>,
    /// Series admitted in the current scrape, to ask for in the background.
    late: Vec<Wanted>,
    /// The current scrape is its target's first, whose history was asked already.
    first_scrape: bool,
    replies: mpsc::UnboundedSender<Reply>,
    firsts: mpsc::UnboundedSender<FirstReply>,
}

/// History fetched in the background: the target, how many series were asked, the answer.
pub(super) type Reply = (String, usize, Fetched);

/// A parked first scrape with the history fetched for it: the scrape, how many series were
/// asked, the answer.
pub(super) type FirstReply = (ScrapeResult, usize, Fetched);

impl WarmStart {
    #[allow(clippy::type_complexity)]
    pub(super) fn new(
        warmup: Arc<Warmup>,
        targets: usize,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<Reply>,
        mpsc::UnboundedReceiver<FirstReply>,
    ) {
        let (replies, rx) = mpsc::unbounded_channel();
        let (firsts, first_rx) = mpsc::unbounded_channel();
        let w = Self {
            warmup,
            warmed: vec![false; targets],
            pending: IdMap::default(),
            late: Vec::new(),
            first_scrape: false,
            replies,
            firsts,
        };
        (w, rx, first_rx)
    }
}

impl WarmStart {
    /// A target came into `slot`: its first scrape asks for history.
    pub(super) fn new_target(&mut self, slot: usize) {
        if self.warmed.len() <= slot {
            self.warmed.resize(slot + 1, false);
        }
        self.warmed[slot] = false;
    }
}

impl Pipeline {
    /// Before `result` is processed: at its target's first scrape, ask for the history its
    /// series lack in the background and park the scrape with the request (None: it comes
    /// back through `first_history`); any other scrape is processed now (Some).
    pub(super) fn warm_first_scrape(&mut self, result: ScrapeResult) -> Option<ScrapeResult> {
        let t = result.target;
        let Some(warm) = &mut self.warm else {
            return Some(result);
        };
        if warm.warmed.get(t).copied().unwrap_or(true) {
            return Some(result);
        }
        let Ok(body) = &result.outcome else {
            return Some(result);
        };
        warm.warmed[t] = true;
        let wanted = self.wanted_in(t, body);
        let Some(warm) = &mut self.warm else {
            return Some(result);
        };
        if wanted.is_empty() {
            // Nothing to ask: judged now, as a first scrape.
            warm.first_scrape = true;
            return Some(result);
        }
        let (warmup, firsts) = (warm.warmup.clone(), warm.firsts.clone());
        let labels = self.target_labels(t);
        // The scrape holds its target's one body in flight: the target waits, nothing else.
        tokio::spawn(async move {
            let fetched = warmup.fetch(&wanted, &labels, result.at_ms).await;
            let _ = firsts.send((result, wanted.len(), fetched));
        });
        None
    }

    /// A parked first scrape's history arrived: taken in, and the scrape is due now.
    /// (None: its target went meanwhile.)
    pub(super) fn first_history(&mut self, reply: FirstReply) -> Option<ScrapeResult> {
        let (result, asked, fetched) = reply;
        let target = self.live(&result)?.name.clone();
        self.take_history(&target, asked, fetched, true);
        if let Some(w) = &mut self.warm {
            w.first_scrape = true;
        }
        Some(result)
    }

    /// The labels target `t` adds to its series (discovery's), none once it has gone.
    fn target_labels(&self, t: usize) -> Vec<(String, String)> {
        self.targets
            .get(t)
            .and_then(|t| t.as_ref())
            .map(|t| t.labels.clone())
            .unwrap_or_default()
    }

    /// The series of `body` that a rule selects and whose stored window is short, with
    /// their target's labels as they are stored and judged.
    fn wanted_in(&mut self, t: usize, body: &ScrapeBody) -> Vec<Wanted> {
        let Some(target) = self.targets[t].as_ref().map(|t| t.name.clone()) else {
            return Vec::new();
        };
        let Some(step) = self.warm.as_ref().map(|w| w.warmup.step_ms()) else {
            return Vec::new();
        };
        let labels = self.target_labels(t);
        let mut wanted = Vec::new();
        for sample in crate::scrape::parse::samples(&body.text).flatten() {
            let sample = with_target_labels(sample, &labels);
            let id = series_id(&target, &sample.name, &sample.labels);
            let rules = self.rules_for(id, &target, &sample);
            let needed = rules
                .iter()
                .map(|&ri| self.rules.rules[ri].window + 1)
                .max();
            let Some(needed) = needed else {
                continue;
            };
            let held = self.store.get(id).map_or(0, |e| e.samples().len());
            if held < needed {
                wanted.push(Wanted {
                    id,
                    name: sample.name,
                    labels: sample.labels,
                    span_ms: needed as i64 * step,
                });
            }
        }
        wanted
    }

    /// History that arrived: into the store for admitted series (their rule states rebuilt
    /// from it at their next sample), kept for the others until they are admitted.
    pub(super) fn take_history(
        &mut self,
        target: &str,
        asked: usize,
        fetched: Fetched,
        first: bool,
    ) {
        if let Some(e) = &fetched.error {
            tracing::warn!(target = %target, "Warm start failed, the series start from scratch: {e}");
        }
        if fetched.timed_out {
            tracing::warn!(target = %target, "Warm start timed out, the series start from scratch");
        }
        let got = fetched.history.len();
        for (id, history) in fetched.history {
            match self.store.slot(id) {
                Some(slot) => self.backfill(slot, id, &history),
                None => {
                    if let Some(w) = &mut self.warm {
                        w.pending.insert(id, history);
                    }
                }
            }
        }
        let (missing, ambiguous) = (fetched.missing, fetched.ambiguous);
        if first {
            tracing::info!(
                target = %target,
                "Warm start: history for {got} of {asked} series \
                 ({missing} missing, {ambiguous} matched several series)"
            );
        } else {
            tracing::debug!(target = %target, got, asked, missing, ambiguous, "Warm start of new series");
        }
    }

    fn backfill(&mut self, slot: Slot, id: SeriesId, history: &[(i64, f64)]) {
        if self.store.backfill(slot, history) > 0 {
            if let Some(state) = self.states.get_mut(slot, id) {
                drop(state.rules.take());
            }
        }
    }

    /// A series just admitted with nothing stored: the history fetched for it, if any; else,
    /// after its target's first scrape, ask for it in the background. False when warm start
    /// has nothing for it (off, or asked already at the first scrape and Prometheus had
    /// nothing: a new pod's name), so that its workload's history may seed it.
    pub(super) fn admitted(
        &mut self,
        slot: Slot,
        id: SeriesId,
        sample: &Sample,
        rules: &[usize],
    ) -> bool {
        let Some(w) = &mut self.warm else {
            return false;
        };
        if let Some(history) = w.pending.remove(&id) {
            self.store.backfill(slot, &history);
            return true;
        }
        if w.first_scrape {
            return false;
        }
        let window = rules
            .iter()
            .map(|&ri| self.rules.rules[ri].window)
            .max()
            .unwrap_or(0);
        let span_ms = (window as i64 + 1) * w.warmup.step_ms();
        w.late.push(Wanted {
            id,
            name: sample.name.clone(),
            labels: sample.labels.clone(),
            span_ms,
        });
        true
    }

    /// After a scrape: ask for the late series' history in the background, and drop the
    /// first scrape's history of series that were not admitted.
    pub(super) fn warm_late(&mut self, target: usize, now_ms: i64) {
        let Some(w) = &mut self.warm else {
            return;
        };
        w.pending.clear();
        w.first_scrape = false;
        if w.late.is_empty() || !w.warmed.get(target).copied().unwrap_or(false) {
            w.late.clear();
            return;
        }
        let wanted = std::mem::take(&mut w.late);
        let (warmup, replies) = (w.warmup.clone(), w.replies.clone());
        let name = self
            .targets
            .get(target)
            .and_then(|t| t.as_ref())
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let labels = self.target_labels(target);
        tokio::spawn(async move {
            let fetched = warmup.fetch(&wanted, &labels, now_ms).await;
            let _ = replies.send((name, wanted.len(), fetched));
        });
    }
}
