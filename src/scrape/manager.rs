//! The target manager: the one owner of scrape loops. It holds the static targets and each
//! discovery config's latest set, keeps this replica's share (`--shard`, which may change
//! while it runs), starts a loop for every target that comes and stops the loop of every one
//! that goes. The pipeline hears of a
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
    /// The target of `slot` and `epoch` is no longer scraped here: its series retire. `moved`:
    /// another shard scrapes it now (its alerts are handed off, not resolved).
    Removed {
        slot: usize,
        epoch: u64,
        moved: bool,
    },
    /// Every discovery config has answered once (`complete`), or the grace for that ran out:
    /// a target with alerts from before the restart that is not here now will not come (or
    /// cannot be known), and its alerts end. Named here: the targets another shard scrapes
    /// (moved, not gone).
    Settled {
        elsewhere: HashSet<String>,
        complete: bool,
    },
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

/// Where a wanted target's settings come from.
#[derive(Clone, Copy)]
enum Source {
    Static(usize),
    Config(usize),
}

/// Owns every scrape loop; driven by `run`.
pub struct TargetManager {
    /// Every static target with its client; those the first shard owns take slots 0...
    statics: Vec<(Target, reqwest::Client)>,
    templates: Vec<Template>,
    /// Per discovery config: its latest set.
    sets: Vec<Vec<Discovered>>,
    shard: Shard,
    /// Targets (static or discovered) left to other shards.
    others: HashSet<String>,
    running: HashMap<String, Running>,
    free: Vec<usize>,
    slots: usize,
    next_epoch: u64,
    settings: ScrapeSettings,
    /// How long restored alerts wait for every discovery config's first answer.
    settle_grace: std::time::Duration,
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
        settle_grace: std::time::Duration,
        results: mpsc::Sender<ScrapeResult>,
        changes: mpsc::UnboundedSender<TargetChange>,
        metrics: SelfMetrics,
    ) -> Self {
        let others: HashSet<String> = statics
            .iter()
            .filter(|(t, _)| !shard.owns(t.address()))
            .map(|(t, _)| t.name.clone())
            .collect();
        metrics
            .targets
            .with_label_values(&["other_shard"])
            .set(others.len() as i64);
        metrics.shards.set(shard.count as i64);
        Self {
            slots: statics
                .iter()
                .filter(|(t, _)| shard.owns(t.address()))
                .count(),
            others,
            sets: vec![Vec::new(); templates.len()],
            statics,
            templates,
            shard,
            running: HashMap::new(),
            free: Vec::new(),
            next_epoch: 1,
            settings,
            settle_grace,
            results,
            changes,
            metrics,
        }
    }

    /// The static targets this shard owns, in order.
    fn owned_statics(&self) -> impl Iterator<Item = &(Target, reqwest::Client)> {
        self.statics
            .iter()
            .filter(|(t, _)| self.shard.owns(t.address()))
    }

    /// The targets the pipeline starts with: slot i is the i-th.
    pub fn initial(&self) -> Vec<Target> {
        self.owned_statics().map(|(t, _)| t.clone()).collect()
    }

    /// Starts the static targets' loops, then follows the discovery configs and the shard
    /// (`shards`, when it can change) until shutdown.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        mut shards: watch::Receiver<Shard>,
        shutdown: watch::Receiver<bool>,
    ) {
        let owned: Vec<_> = self.owned_statics().cloned().collect();
        for (slot, (target, client)) in owned.into_iter().enumerate() {
            tracing::info!(target = %target.name, url = %target.display_url(), "Scraping target");
            self.start(slot, target, client, &shutdown);
        }
        self.set_active_gauge();
        // Which configs have sent their first set; settled when all have.
        let mut heard = vec![false; self.templates.len()];
        let mut settled = false;
        if heard.is_empty() {
            settled = true;
            self.settle(true);
        }
        let grace = tokio::time::sleep(self.settle_grace);
        tokio::pin!(grace);
        let mut shutdown_rx = shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown_rx.changed() => break,
                () = &mut grace, if !settled => {
                    settled = true;
                    let silent: Vec<&str> = heard
                        .iter()
                        .zip(&self.templates)
                        .filter(|(h, _)| !**h)
                        .map(|(_, t)| t.spec.config.as_str())
                        .collect();
                    tracing::warn!(configs = ?silent, grace = ?self.settle_grace, "Discovery has not answered: alerts restored for targets it has not found end (reason=discovery_unavailable)");
                    self.settle(false);
                }
                // (Closed when N cannot change: the branch is off.)
                Ok(()) = shards.changed() => {
                    self.shard = *shards.borrow_and_update();
                    self.metrics.shards.set(self.shard.count as i64);
                    self.reconcile(&shutdown);
                }
                // (Closed when every discovery config has stopped, or there is none: the
                // loops run on until shutdown.)
                Some(u) = updates.recv() => {
                    if let Some(set) = self.sets.get_mut(u.provider) {
                        self.metrics
                            .sd_discovered_targets
                            .with_label_values(&[&self.templates[u.provider].spec.config])
                            .set(u.targets.len() as i64);
                        *set = u.targets;
                        heard[u.provider] = true;
                    }
                    self.reconcile(&shutdown);
                    if !settled && heard.iter().all(|&h| h) {
                        settled = true;
                        self.settle(true);
                    }
                }
            }
        }
        for (_, r) in self.running.drain() {
            let _ = r.loop_.await;
        }
    }

    fn settle(&self, complete: bool) {
        let _ = self.changes.send(TargetChange::Settled {
            elsewhere: self.others.clone(),
            complete,
        });
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

    /// The targets this replica owns now: static ones, then discovered ones in config order,
    /// the first one of a name; and the names other shards own.
    fn wanted(&self) -> (Vec<(Target, Source)>, HashSet<String>) {
        let mut seen: HashSet<String> = HashSet::new();
        let (mut out, mut others) = (Vec::new(), HashSet::new());
        for (i, (t, _)) in self.statics.iter().enumerate() {
            seen.insert(t.name.clone());
            if self.shard.owns(t.address()) {
                out.push((t.clone(), Source::Static(i)));
            } else {
                others.insert(t.name.clone());
            }
        }
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
                out.push((target, Source::Config(p)));
            }
        }
        (out, others)
    }

    /// Stops the loops of targets no longer wanted, then starts those of new ones.
    fn reconcile(&mut self, shutdown: &watch::Receiver<bool>) {
        let (wanted, others) = self.wanted();
        let names: HashMap<&str, &[(String, String)]> = wanted
            .iter()
            .map(|(t, _)| (t.name.as_str(), &t.labels[..]))
            .collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(n, r)| names.get(n.as_str()).is_none_or(|l| *l != r.labels))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                r.loop_.abort();
                let moved = others.contains(&name);
                if moved {
                    tracing::info!(target = %name, shard = %self.shard, "Target is another shard's now: its series retire here (alerts handed off, reason=target_moved)");
                } else {
                    tracing::info!(target = %name, "Target gone from discovery: its series retire (alerts resolve, reason=target_gone)");
                }
                let _ = self.changes.send(TargetChange::Removed {
                    slot: r.slot,
                    epoch: r.epoch,
                    moved,
                });
                self.free.push(r.slot);
            }
        }
        for (mut target, source) in wanted {
            if self.running.contains_key(&target.name) {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots += 1;
                self.slots - 1
            });
            target.epoch = self.next_epoch;
            self.next_epoch += 1;
            let client = match source {
                Source::Static(i) => {
                    tracing::info!(target = %target.name, url = %target.display_url(), shard = %self.shard, "Scraping target");
                    self.statics[i].1.clone()
                }
                Source::Config(p) => {
                    tracing::info!(target = %target.name, url = %target.display_url(), config = %self.templates[p].spec.config, "Scraping discovered target");
                    self.templates[p].client.clone()
                }
            };
            // Told before the loop exists, so the pipeline knows the slot at its first result.
            let _ = self
                .changes
                .send(TargetChange::Added(slot, Box::new(target.clone())));
            self.start(slot, target, client, shutdown);
        }
        self.metrics
            .targets
            .with_label_values(&["other_shard"])
            .set(others.len() as i64);
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
