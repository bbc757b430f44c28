//! The target manager: the one owner of scrape loops. It holds the static targets and each
//! discovery config's latest set, keeps this replica's share (`--shard`), starts a loop for
//! every target that comes and stops the loop of every one that goes. The pipeline hears of a
//! target before its loop can send anything, and of its end when the loop is stopped; a result
//! still in flight from a stopped loop carries the old `epoch` and is dropped.

use super::{run_target, Limits, ScrapeResult, ScrapeSettings, Target};
use crate::config::targets::DiscoverySpec;
use crate::discover::{Discovered, Shard, Update};
use crate::export::self_metrics::SelfMetrics;
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the pipeline is told about its targets.
#[derive(Debug)]
pub enum TargetChange {
    /// A target to expect results of, in `slot`.
    Added(usize, Box<Target>),
    /// The target of `slot` and `epoch` is gone: its series retire.
    Removed(usize, u64),
    /// Every discovery config has answered once: a target with alerts from before the restart
    /// that is not here now will not come, and its alerts resolve. Named here: the targets
    /// another shard scrapes (moved, not gone).
    Settled(HashSet<String>),
}

/// A discovery config's scrape settings, applied to every address it finds.
pub struct Template {
    pub spec: DiscoverySpec,
    pub client: reqwest::Client,
    pub limits: Limits,
}

struct Running {
    slot: usize,
    epoch: u64,
    /// The target labels it was started with: a new pod at an old pod's address is a new
    /// target.
    labels: Vec<(String, String)>,
    loop_: JoinHandle<()>,
}

/// Owns every scrape loop; driven by `run`.
pub struct TargetManager {
    /// Static targets this replica owns, with their clients; in slots 0.. from the start.
    statics: Vec<(Target, reqwest::Client)>,
    templates: Vec<Template>,
    /// Per discovery config: its latest set.
    sets: Vec<Vec<Discovered>>,
    shard: Shard,
    /// Static targets left to other shards.
    static_others: HashSet<String>,
    /// Discovered targets left to other shards.
    others: HashSet<String>,
    running: HashMap<String, Running>,
    free: Vec<usize>,
    slots: usize,
    next_epoch: u64,
    settings: ScrapeSettings,
    results: mpsc::Sender<ScrapeResult>,
    changes: mpsc::UnboundedSender<TargetChange>,
    metrics: SelfMetrics,
}

impl TargetManager {
    /// A manager whose static targets (those `shard` owns) take slots 0.. in order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        statics: Vec<(Target, reqwest::Client)>,
        templates: Vec<Template>,
        shard: Shard,
        settings: ScrapeSettings,
        results: mpsc::Sender<ScrapeResult>,
        changes: mpsc::UnboundedSender<TargetChange>,
        metrics: SelfMetrics,
    ) -> Self {
        let (statics, elsewhere): (Vec<_>, Vec<_>) = statics
            .into_iter()
            .partition(|(t, _)| shard.owns(t.address()));
        let static_others: HashSet<String> = elsewhere.into_iter().map(|(t, _)| t.name).collect();
        metrics
            .targets
            .with_label_values(&["other_shard"])
            .set(static_others.len() as i64);
        Self {
            static_others,
            others: HashSet::new(),
            sets: vec![Vec::new(); templates.len()],
            slots: statics.len(),
            statics,
            templates,
            shard,
            running: HashMap::new(),
            free: Vec::new(),
            next_epoch: 1,
            settings,
            results,
            changes,
            metrics,
        }
    }

    /// The targets the pipeline starts with: slot i is the i-th.
    pub fn initial(&self) -> Vec<Target> {
        self.statics.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Starts the static targets' loops, then follows the discovery configs until shutdown.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        shutdown: watch::Receiver<bool>,
    ) {
        let statics = std::mem::take(&mut self.statics);
        for (slot, (target, client)) in statics.iter().enumerate() {
            tracing::info!(target = %target.name, url = %target.display_url(), "Scraping target");
            self.start(slot, target.clone(), client.clone(), &shutdown);
        }
        let static_names: HashSet<String> = statics.iter().map(|(t, _)| t.name.clone()).collect();
        self.set_active_gauge();
        // Which configs have sent their first set; settled when all have.
        let mut heard = vec![false; self.templates.len()];
        let mut settled = false;
        if heard.is_empty() {
            settled = true;
            self.settle();
        }
        let mut shutdown_rx = shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown_rx.changed() => break,
                u = updates.recv() => match u {
                    Some(u) => {
                        if let Some(set) = self.sets.get_mut(u.provider) {
                            self.metrics
                                .sd_discovered_targets
                                .with_label_values(&[&self.templates[u.provider].spec.config])
                                .set(u.targets.len() as i64);
                            *set = u.targets;
                            heard[u.provider] = true;
                        }
                        self.reconcile(&static_names, &shutdown);
                        if !settled && heard.iter().all(|&h| h) {
                            settled = true;
                            self.settle();
                        }
                    }
                    // Every discovery config has stopped: the loops run on until shutdown.
                    None => {
                        let _ = shutdown_rx.changed().await;
                        break;
                    }
                },
            }
        }
        for (_, r) in self.running.drain() {
            let _ = r.loop_.await;
        }
    }

    fn settle(&self) {
        let elsewhere = self.static_others.union(&self.others).cloned().collect();
        let _ = self.changes.send(TargetChange::Settled(elsewhere));
    }

    /// Starts the scrape loop of `target` in `slot`.
    fn start(
        &mut self,
        slot: usize,
        target: Target,
        client: reqwest::Client,
        shutdown: &watch::Receiver<bool>,
    ) {
        let (name, epoch, labels) = (target.name.clone(), target.epoch, target.labels.clone());
        let loop_ = tokio::spawn(run_target(
            slot,
            target,
            client,
            self.settings.clone(),
            self.results.clone(),
            shutdown.clone(),
        ));
        let running = Running {
            slot,
            epoch,
            labels,
            loop_,
        };
        self.running.insert(name, running);
    }

    /// The discovered targets this replica owns now, in config order, first one of a name.
    fn wanted(&self, statics: &HashSet<String>) -> (Vec<(Target, usize)>, HashSet<String>) {
        let mut seen: HashSet<String> = statics.clone();
        let (mut out, mut others) = (Vec::new(), HashSet::new());
        for (p, set) in self.sets.iter().enumerate() {
            let t = &self.templates[p];
            for d in set {
                let scheme = d.scheme.as_deref().unwrap_or(&t.spec.scheme);
                let path = d.path.as_deref().unwrap_or(&t.spec.path);
                let url = format!("{scheme}://{}{path}", d.address);
                let mut target = match Target::parse(&url) {
                    Ok(target) => target,
                    Err(e) => {
                        tracing::warn!(config = %t.spec.config, address = %d.address, error = %e, "Discovered address cannot be scraped; skipped");
                        continue;
                    }
                };
                if !seen.insert(target.name.clone()) {
                    continue;
                }
                if !self.shard.owns(target.address()) {
                    others.insert(target.name);
                    continue;
                }
                target.auth = t.spec.settings.auth.clone();
                target.tls = t.spec.settings.tls.clone();
                target.limits = t.limits;
                target.labels.clone_from(&d.labels);
                out.push((target, p));
            }
        }
        (out, others)
    }

    /// Stops the loops of targets no longer wanted, then starts those of new ones.
    fn reconcile(&mut self, statics: &HashSet<String>, shutdown: &watch::Receiver<bool>) {
        let (wanted, others) = self.wanted(statics);
        let names: HashMap<&str, &[(String, String)]> = wanted
            .iter()
            .map(|(t, _)| (t.name.as_str(), &t.labels[..]))
            .collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(n, r)| {
                !statics.contains(*n) && names.get(n.as_str()).is_none_or(|l| *l != r.labels)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                r.loop_.abort();
                tracing::info!(target = %name, "Target gone from discovery: its series retire (alerts resolve, reason=target_gone)");
                let _ = self.changes.send(TargetChange::Removed(r.slot, r.epoch));
                self.free.push(r.slot);
            }
        }
        for (mut target, p) in wanted {
            if self.running.contains_key(&target.name) {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots += 1;
                self.slots - 1
            });
            target.epoch = self.next_epoch;
            self.next_epoch += 1;
            tracing::info!(target = %target.name, url = %target.display_url(), config = %self.templates[p].spec.config, "Scraping discovered target");
            // Told before the loop exists, so the pipeline knows the slot at its first result.
            let _ = self
                .changes
                .send(TargetChange::Added(slot, Box::new(target.clone())));
            let client = self.templates[p].client.clone();
            self.start(slot, target, client, shutdown);
        }
        self.metrics
            .targets
            .with_label_values(&["other_shard"])
            .set((others.len() + self.static_others.len()) as i64);
        self.others = others;
        self.set_active_gauge();
    }

    fn set_active_gauge(&self) {
        self.metrics
            .targets
            .with_label_values(&["active"])
            .set(self.running.len() as i64);
    }
}
