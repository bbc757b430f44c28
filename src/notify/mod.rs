//! Sends every firing and resolution to its receivers at least once: each event is written to
//! a per-receiver outbox in sled before any attempt (with the alert state that produced it,
//! by the alert book), delivered in order by one task per receiver, and removed only after a
//! 2xx (or a definitive 4xx rejection). Alertmanagers also get the book's batch of every
//! firing alert each `--resend-delay`, as Prometheus' notifier does: one request per batch of
//! up to `MAX_BATCH` alerts, and a backlogged Alertmanager gets the newest batch only. Never
//! decides what is anomalous.

mod deliver;
pub mod llm;
pub mod outbox;
pub mod payload;

pub use deliver::client;

use crate::alert::AlertEvent;
use crate::config::flags::WebhookFormat;
use crate::export::SelfMetrics;
use outbox::{Op, Outbox, Record};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Receiver settings from the command line.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhooks: Vec<String>,
    pub webhook_format: WebhookFormat,
    /// Alertmanager base URLs; alerts go to `<base>/api/v2/alerts`.
    pub alertmanagers: Vec<String>,
    /// How often firing alerts are re-sent to Alertmanager.
    pub resend_delay: Duration,
    /// The scrape interval: firing alerts are held four evaluations (or resends) ahead.
    pub eval_interval: Duration,
    pub secret_file: Option<PathBuf>,
    pub max_retry_interval: Duration,
    pub outbox_max_events: usize,
    pub external_url: String,
    /// The optional local LLM that explains firing events.
    pub llm: Option<llm::LlmSettings>,
}

/// Why receivers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("bad --webhook or --alertmanager URL (scheme must be http or https): {0}")]
    Url(String),
    #[error("cannot read --webhook-secret-file {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the outbox of {receiver}: {source}")]
    Outbox {
        receiver: String,
        source: sled::Error,
    },
}

/// Alerts per request to Alertmanager (Prometheus' `maxBatchSize` is 256).
pub const MAX_BATCH: usize = 256;

/// What a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Alertmanager's webhook payload, one event a request.
    Webhook,
    /// Alertmanager's API v2, with firing alerts re-sent.
    Alertmanager,
}

/// One receiver: where it is, its queue, and what wakes its delivery task.
struct Receiver {
    /// Bounded label value; never the URL, which may carry a token (chat webhooks do).
    name: String,
    kind: Kind,
    url: reqwest::Url,
    outbox: Outbox,
    /// Alertmanagers: what is left to send of the newest re-send batch.
    batch: Mutex<Batch>,
    wake: Notify,
}

/// The re-send batch waiting for one Alertmanager. A newer batch replaces it whole.
#[derive(Default)]
struct Batch {
    /// Bumped by every new batch, so alerts taken from an older one are not put back.
    generation: u64,
    alerts: VecDeque<AlertEvent>,
}

impl Receiver {
    fn batch(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All receivers.
pub struct Notifier {
    receivers: Vec<Arc<Receiver>>,
    secret: Option<ring::hmac::Key>,
    external_url: String,
    webhook_format: WebhookFormat,
    llm: Option<llm::Llm>,
    max_retry_interval: Duration,
    resend_delay: Duration,
    /// How far ahead a firing alert's endsAt lies.
    hold: Duration,
    metrics: SelfMetrics,
}

/// Checks every receiver URL (before anything is opened or bound: a bad one is a startup
/// error that names it, without its path).
pub fn check_urls(webhooks: &[String], alertmanagers: &[String]) -> Result<(), NotifyError> {
    for raw in webhooks {
        receiver_url(Kind::Webhook, raw)?;
    }
    for raw in alertmanagers {
        receiver_url(Kind::Alertmanager, raw)?;
    }
    Ok(())
}

/// A receiver's metric-name prefix and the URL its requests go to.
fn receiver_url(kind: Kind, raw: &str) -> Result<(&'static str, reqwest::Url), NotifyError> {
    let (prefix, target) = match kind {
        Kind::Webhook => ("webhook", raw.to_string()),
        Kind::Alertmanager => (
            "alertmanager",
            format!("{}/api/v2/alerts", raw.trim_end_matches('/')),
        ),
    };
    let url = reqwest::Url::parse(&target)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| NotifyError::Url(redact(raw)))?;
    Ok((prefix, url))
}

impl Notifier {
    /// Opens each receiver's outbox in `db`. Outboxes are named after the URL, so a restart
    /// with the same receivers resumes their queues.
    pub fn open(
        db: &crate::store::Database,
        s: &NotifySettings,
        client: &reqwest::Client,
        metrics: SelfMetrics,
    ) -> Result<Self, NotifyError> {
        let secret = match &s.secret_file {
            None => None,
            Some(p) => {
                let text = std::fs::read(p).map_err(|source| NotifyError::Secret {
                    path: p.display().to_string(),
                    source,
                })?;
                // A trailing newline from `echo secret > file` is not part of the secret.
                let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, trimmed))
            }
        };
        let mut receivers = Vec::new();
        let webhooks = s
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, u)| (Kind::Webhook, i, u.clone()));
        let managers = s
            .alertmanagers
            .iter()
            .enumerate()
            .map(|(i, u)| (Kind::Alertmanager, i, u.clone()));
        for (kind, i, raw) in webhooks.chain(managers) {
            let (prefix, url) = receiver_url(kind, &raw)?;
            let name = format!("{prefix}-{i}");
            let hash = crate::store::series_id(prefix, &raw, &[]);
            let legacy = format!("outbox-{hash:016x}");
            let outbox = Outbox::open(db, hash.to_be_bytes(), &legacy, s.outbox_max_events)
                .map_err(|source| NotifyError::Outbox {
                    receiver: name.clone(),
                    source,
                })?;
            tracing::info!(receiver = %name, host = url.host_str().unwrap_or(""), queued = outbox.len(), "Receiver");
            metrics
                .outbox_events
                .with_label_values(&[&name])
                .set(outbox.len() as i64);
            receivers.push(Arc::new(Receiver {
                name,
                kind,
                url,
                outbox,
                batch: Mutex::new(Batch::default()),
                wake: Notify::new(),
            }));
        }
        Ok(Self {
            receivers,
            secret,
            external_url: s.external_url.trim_end_matches('/').to_string(),
            webhook_format: s.webhook_format,
            llm: s
                .llm
                .clone()
                .map(|cfg| llm::Llm::new(cfg, client.clone(), metrics.clone())),
            max_retry_interval: s.max_retry_interval,
            resend_delay: s.resend_delay,
            hold: 4 * s.resend_delay.max(s.eval_interval),
            metrics,
        })
    }

    /// Stages an event for every receiver: the outbox writes that make it durable, for the
    /// caller's transaction; delivered once `publish`ed. A resolution also leaves the
    /// Alertmanagers' waiting re-send batches, so a stale batch never reopens it. A hand-off
    /// to another shard is not sent to Alertmanagers: a resolution from here would close
    /// the alert the new owner keeps firing (Alertmanager keeps the one it got last).
    pub fn stage(&self, ev: &AlertEvent) -> Vec<Op> {
        let id = payload::event_id(ev);
        // The event itself is queued and the body rendered at delivery, so an explanation
        // that arrives later (the optional LLM) can still join it.
        let event = match serde_json::to_vec(ev) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "Cannot serialise an event");
                return Vec::new();
            }
        };
        let labels = (!ev.firing).then(|| ev.labels());
        let mut ops = Vec::new();
        for r in &self.receivers {
            if let Some(labels) = &labels {
                r.batch().alerts.retain(|a| a.labels() != *labels);
            }
            if r.kind == Kind::Alertmanager && ev.handed_off() {
                continue;
            }
            let record = Record {
                id: id.clone(),
                body: event.clone(),
            };
            let (written, dropped) = r.outbox.stage(&record);
            ops.extend(written);
            if dropped > 0 {
                self.metrics.outbox_dropped_total.inc_by(dropped);
                tracing::warn!(receiver = %r.name, dropped, "Outbox full: dropped the oldest events");
            }
            self.metrics
                .outbox_events
                .with_label_values(&[&r.name])
                .set(r.outbox.len() as i64);
        }
        ops
    }

    /// Makes the staged events deliverable and wakes the delivery tasks. `durable`: their
    /// writes reached the disk (if not, they are delivered from memory and rewritten later).
    pub fn publish(&self, durable: bool) {
        if !durable {
            self.metrics
                .store_errors_total
                .with_label_values(&["outbox"])
                .inc();
        }
        for r in &self.receivers {
            r.outbox.publish(durable);
        }
        self.wake();
    }

    /// How often the alert book should hand over its firing alerts, when any Alertmanager
    /// is configured.
    pub fn resend_delay(&self) -> Option<Duration> {
        self.receivers
            .iter()
            .any(|r| r.kind == Kind::Alertmanager)
            .then_some(self.resend_delay)
    }

    /// Every firing alert, for the Alertmanagers: replaces any batch not yet sent, so a
    /// backlogged Alertmanager gets the newest state, not a queue of stale ones.
    pub fn resend(&self, alerts: &[AlertEvent]) {
        for r in &self.receivers {
            if r.kind != Kind::Alertmanager {
                continue;
            }
            let mut b = r.batch();
            b.generation += 1;
            b.alerts = alerts.iter().cloned().collect();
            drop(b);
            r.wake.notify_one();
        }
    }

    /// Rewrites every outbox tree that missed writes (blocking; after the store reopened).
    pub fn resync(&self) -> sled::Result<()> {
        for r in &self.receivers {
            r.outbox.resync()?;
        }
        Ok(())
    }

    /// Wakes every delivery task.
    fn wake(&self) {
        for r in &self.receivers {
            r.wake.notify_one();
        }
    }

    /// Starts one delivery task per receiver.
    pub fn spawn(
        self: &Arc<Self>,
        client: reqwest::Client,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.receivers
            .iter()
            .map(|r| {
                let (me, r, client, shutdown) =
                    (self.clone(), r.clone(), client.clone(), shutdown.clone());
                tokio::spawn(async move { me.deliver(r, client, shutdown).await })
            })
            .collect()
    }
}

impl crate::alert::book::Outlet for Notifier {
    fn tree(&self) -> &'static str {
        outbox::TREE
    }

    fn stage(&self, ev: &AlertEvent) -> Vec<Op> {
        Notifier::stage(self, ev)
    }

    fn publish(&self, durable: bool) {
        Notifier::publish(self, durable);
    }

    fn resend_delay(&self) -> Option<Duration> {
        Notifier::resend_delay(self)
    }

    fn resend(&self, alerts: &[AlertEvent]) {
        Notifier::resend(self, alerts);
    }

    fn resync(&self) -> Result<(), crate::store::StoreError> {
        Notifier::resync(self).map_err(crate::store::StoreError::Io)
    }
}

/// A URL with its path and query hidden: chat webhooks carry their token there.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => url.split('/').take(3).collect::<Vec<_>>().join("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_tokens() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}
