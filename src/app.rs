//! The one place that spawns tasks: the target manager (which owns the scrape loops), the
//! discovery configs, the pipeline, the rules reloader and the HTTP server, and that owns
//! shutdown (SIGTERM/SIGINT → stop scraping, finish the write, flush sled).

use crate::alert::book::AlertBook;
use crate::alert::AlertEvent;
use crate::config::flags::RunArgs;
use crate::config::{rules, RuleSet};
use crate::export::Exporter;
use crate::notify::llm::LlmSettings;
use crate::notify::{Notifier, NotifyError, NotifySettings};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::scrape::{self, ScrapeSettings};
use crate::server::{self, ReloadRequest, ServerState, WebGuard};
use crate::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // Not #[from]: the errors are the message, and a source would print them twice.
    #[error("invalid rules:\n{0}")]
    Rules(rules::RuleErrors),
    #[error(transparent)]
    Target(#[from] scrape::TargetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid --targets-file: {0}")]
    TargetsFile(crate::config::targets::TargetsFileError),
    #[error("{0}")]
    Shard(String),
    #[error("invalid --targets-file: {0}")]
    Discovery(String),
    #[error("no targets: give --target URL or --targets-file")]
    NoTargets,
    #[error("invalid --web.config.file: {0}")]
    WebConfig(server::web::WebError),
    #[error("cannot set up: {0}")]
    Setup(String),
    #[error("invalid --warmup-from: {0}")]
    Warmup(crate::promapi::PromApiError),
}

/// A started sidecar; `wait` runs it until `shutdown` resolves.
pub struct App {
    pub listen_addr: std::net::SocketAddr,
    pub events: broadcast::Sender<AlertEvent>,
    shutdown_tx: watch::Sender<bool>,
    pipeline: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready: Arc<AtomicBool>,
}

/// A target's alerts stay active this many scrape intervals after its last successful scrape
/// before they resolve with `reason=target_down`: one or two failed scrapes are a blip, not
/// an outage. They are re-sent meanwhile, so Alertmanager never resolves them first.
const TARGET_DOWN_INTERVALS: u32 = 3;

/// At least this long (else `TARGET_DOWN_INTERVALS` intervals) alerts restored for discovered
/// targets wait for discovery's first answer before they end as `discovery_unavailable`: a
/// large cluster's first pod list takes seconds.
const SETTLE_GRACE_MIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Loads config, opens the store and binds the port (all before any task runs), then spawns.
pub async fn start(args: &RunArgs) -> Result<App, StartError> {
    let file = match &args.targets_file {
        Some(path) => crate::config::targets::load_file(path).map_err(StartError::TargetsFile)?,
        None => Default::default(),
    };
    let targets = scrape::parse_targets(&args.targets, &file.statics, args.limits())?;
    if targets.is_empty() && file.discovery.is_empty() {
        return Err(StartError::NoTargets);
    }
    let shard_spec =
        crate::discover::ShardSpec::parse(&args.shard, &pod_name()).map_err(StartError::Shard)?;
    let client = scrape::client().map_err(|e| StartError::Setup(e.to_string()))?;
    // TLS files of targets are read here, before the store is opened or the port bound, so
    // a missing CA is what the error says (not a busy port).
    let statics = targets
        .into_iter()
        .map(|t| {
            let c = scrape::client_for(&t, &client)?;
            Ok((t, c))
        })
        .collect::<Result<Vec<_>, scrape::TargetError>>()?;
    let templates = file
        .discovery
        .iter()
        .map(|spec| {
            let probe = scrape::Target {
                name: spec.config.clone(),
                tls: spec.settings.tls.clone(),
                ..scrape::Target::parse(&format!("{}://discovered{}", spec.scheme, spec.path))?
            };
            Ok(scrape::manager::Template {
                spec: spec.clone(),
                client: scrape::client_for(&probe, &client)?,
                limits: args.limits().with(&spec.settings.limits),
            })
        })
        .collect::<Result<Vec<_>, scrape::TargetError>>()?;
    let mut providers = Vec::with_capacity(file.discovery.len());
    for spec in &file.discovery {
        let p = crate::discover::Provider::prepare(spec)
            .await
            .map_err(|e| StartError::Discovery(format!("{}: {e}", spec.config)))?;
        providers.push(p);
    }
    let (shard, replicas) = match shard_spec {
        crate::discover::ShardSpec::Fixed(shard) => (shard, None),
        crate::discover::ShardSpec::Follow { index, set } => {
            let (r, shard) = crate::discover::kubernetes::replicas::Replicas::start(index, &set)
                .await
                .map_err(|e| StartError::Shard(format!("--shard auto: {e}")))?;
            (shard, Some(r))
        }
    };
    let rules = Arc::new(rules::load_file(&args.rules).map_err(StartError::Rules)?);
    crate::notify::check_urls(&args.webhooks, &args.alertmanagers)?;
    let web =
        Arc::new(WebGuard::load(args.web_config_file.as_deref()).map_err(StartError::WebConfig)?);
    let warmup = match &args.warmup_from {
        Some(url) => {
            let w = crate::scrape::warmup::Warmup::new(
                url,
                &args.warmup_selector,
                args.scrape_interval,
                args.warmup_timeout,
            )
            .map_err(StartError::Warmup)?;
            tracing::info!(url = %crate::util::redact_url(url), "Warm start from Prometheus");
            Some(Arc::new(w))
        }
        None => None,
    };
    let exporter = Arc::new(Exporter::new().map_err(|e| StartError::Setup(e.to_string()))?);
    set_reload_metrics(&exporter, true);
    let dir = args.data_dir.clone();
    let cache = args.store_cache_bytes;
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, cache))
        .await
        .map_err(|e| StartError::Setup(e.to_string()))??;
    tracing::info!(series = store.len(), dir = %args.data_dir.display(), "Store opened");
    exporter.metrics.store_last_write_successful.set(1);
    exporter
        .metrics
        .store_size_bytes
        .set(store.size_on_disk() as i64);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen.to_string(),
            source,
        })?;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let external_url = args.web_external_url.clone().unwrap_or_else(|| {
        let scheme = if web.tls() { "https" } else { "http" };
        format!("{scheme}://{}:{}", hostname(), listen_addr.port())
    });
    let notify_client = crate::notify::client().map_err(|e| StartError::Setup(e.to_string()))?;
    let notifier = if args.webhooks.is_empty() && args.alertmanagers.is_empty() {
        None
    } else {
        let settings = NotifySettings {
            webhooks: args.webhooks.clone(),
            webhook_format: args.webhook_format,
            alertmanagers: args.alertmanagers.clone(),
            resend_delay: args.resend_delay,
            eval_interval: args.scrape_interval,
            secret_file: args.webhook_secret_file.clone(),
            max_retry_interval: args.max_retry_interval,
            outbox_max_events: args.outbox_max_events,
            external_url,
            llm: args.llm_url.clone().map(|url| LlmSettings {
                url,
                model: args.llm_model.clone(),
                timeout: args.llm_timeout,
            }),
        };
        Some(Arc::new(Notifier::open(
            &store.db(),
            &settings,
            &notify_client,
            exporter.metrics.clone(),
        )?))
    };
    let (events, _) = broadcast::channel(1024);
    let book = {
        let outlet = notifier
            .clone()
            .map(|n| n as Arc<dyn crate::alert::book::Outlet>);
        let (db, notifier, events) = (store.db(), outlet, events.clone());
        tokio::task::spawn_blocking(move || AlertBook::open(&db, notifier, events))
            .await
            .map_err(|e| StartError::Setup(e.to_string()))??
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (results_tx, results_rx) = mpsc::channel(statics.len().max(64) * 2);
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let (updates_tx, updates_rx) = mpsc::channel(16);
    let (rules_tx, rules_rx) = watch::channel(rules.clone());
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let ready = Arc::new(AtomicBool::new(false));

    let settings = ScrapeSettings {
        interval: args.scrape_interval,
        timeout: args.effective_scrape_timeout(),
        max_bytes: args.max_scrape_bytes,
    };
    if shard.count > 1 {
        tracing::info!(shard = %shard, "Scraping this shard's share of the targets");
    }
    let manager = scrape::manager::TargetManager::new(
        statics,
        templates,
        shard,
        settings,
        (TARGET_DOWN_INTERVALS * args.scrape_interval).max(SETTLE_GRACE_MIN),
        results_tx,
        changes_tx,
        exporter.metrics.clone(),
    );
    let initial = manager.initial();
    // Without a StatefulSet to follow the sender goes: N stays.
    let (shards_tx, shards_rx) = watch::channel(shard);
    let mut tasks = vec![tokio::spawn(manager.run(
        updates_rx,
        shards_rx,
        shutdown_rx.clone(),
    ))];
    if let Some(r) = replicas {
        tasks.push(tokio::spawn(r.follow(shards_tx, shutdown_rx.clone())));
    }
    for (i, (spec, provider)) in file.discovery.into_iter().zip(providers).enumerate() {
        tasks.push(tokio::spawn(provider.run(
            i,
            spec.config,
            updates_tx.clone(),
            exporter.metrics.clone(),
            shutdown_rx.clone(),
        )));
    }
    drop(updates_tx);
    let pipeline = Pipeline::new(
        initial,
        PipelineSettings {
            max_series: args.max_series,
            retention: args.retention,
            warmup,
            target_down_grace: TARGET_DOWN_INTERVALS * args.scrape_interval,
            scrape_interval: args.scrape_interval,
        },
        rules,
        store,
        exporter.clone(),
        book,
    );
    let pipeline =
        tokio::spawn(pipeline.run(changes_rx, results_rx, rules_rx, shutdown_rx.clone()));
    if let Some(n) = &notifier {
        tasks.extend(n.spawn(notify_client, shutdown_rx.clone()));
    }
    let reloader = Reloader {
        path: args.rules.clone(),
        exporter: exporter.clone(),
        rules: rules_tx,
        check_interval: args.rules_check_interval,
    };
    tasks.push(tokio::spawn(reloader.run(reload_rx, shutdown_rx.clone())));
    let state = Arc::new(ServerState {
        exporter,
        ready: ready.clone(),
        reload: args.web_enable_lifecycle.then_some(reload_tx),
        metrics_permits: Arc::new(tokio::sync::Semaphore::new(server::METRICS_IN_FLIGHT)),
        write_timeout: args.web_write_timeout,
    });
    let tls = web.tls();
    tasks.push(tokio::spawn(server::serve(
        listener,
        state,
        web,
        shutdown_rx,
    )));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(listen = %listen_addr, tls, "Serving /metrics");
    Ok(App {
        listen_addr,
        events,
        shutdown_tx,
        pipeline,
        tasks,
        ready,
    })
}

impl App {
    /// Runs until `stop` completes, then shuts down in order: no new scrapes, the pipeline
    /// finishes its write and flushes, the server stops. Bounded by a drain timeout.
    pub async fn wait(self, stop: impl std::future::Future<Output = ()>) {
        stop.await;
        tracing::info!("Shutting down");
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        let drain = async {
            let _ = self.pipeline.await;
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), drain)
            .await
            .is_err()
        {
            tracing::warn!("Shutdown drain timed out");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The pod's name, for `--shard auto`: `$POD_NAME` (the chart sets it from the downward
/// API; a pod on the host network has the node's hostname), else the hostname.
fn pod_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname)
}

/// The host's name for default URLs; Kubernetes sets it to the pod name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn set_reload_metrics(exporter: &Exporter, ok: bool) {
    let m = &exporter.metrics;
    m.rules_last_reload_successful.set(i64::from(ok));
    if ok {
        m.rules_last_reload_success_timestamp_seconds
            .set(crate::util::now_ms() as f64 / 1000.0);
    }
}

/// Reloads rules on SIGHUP, on POST /-/reload and when the file's content changes.
struct Reloader {
    path: PathBuf,
    exporter: Arc<Exporter>,
    rules: watch::Sender<Arc<RuleSet>>,
    check_interval: Duration,
}

impl Reloader {
    async fn run(
        self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last = std::fs::read(&self.path).ok();
        let mut ticker = tokio::time::interval(self.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<()>();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading rules");
                    last = std::fs::read(&self.path).ok();
                    let _ = self.reload();
                }
                Some(reply) = requests.recv() => {
                    last = std::fs::read(&self.path).ok();
                    let _ = reply.send(self.reload());
                }
                _ = ticker.tick() => {
                    // Reads through symlinks, so a ConfigMap's ..data swap shows as new content.
                    let now = std::fs::read(&self.path).ok();
                    if now.is_some() && now != last {
                        last = now;
                        tracing::info!(file = %self.path.display(), "Rules file changed: reloading");
                        let _ = self.reload();
                    }
                }
            }
        }
    }

    fn reload(&self) -> Result<usize, String> {
        match rules::load_file(&self.path) {
            Ok(set) => {
                let n = set.rules.len();
                let _ = self.rules.send(Arc::new(set));
                set_reload_metrics(&self.exporter, true);
                tracing::info!(rules = n, "Rules reloaded");
                Ok(n)
            }
            Err(e) => {
                set_reload_metrics(&self.exporter, false);
                tracing::error!(file = %self.path.display(), errors = %e, "Reload failed; keeping the last good rules");
                Err(e.to_string())
            }
        }
    }
}
