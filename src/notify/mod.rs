//! Sends every firing and resolution to its receivers at least once: each event is written to
//! a per-receiver outbox in sled before any attempt, delivered in order by one task per
//! receiver, and removed only after a 2xx (or a definitive 4xx rejection). Never decides what
//! is anomalous.

pub mod llm;
pub mod outbox;
pub mod payload;

use crate::alert::AlertEvent;
use crate::config::flags::WebhookFormat;
use crate::export::SelfMetrics;
use outbox::{Outbox, Record};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// One receiver: where it is, its queue, and what wakes its delivery task.
/// What a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Alertmanager's webhook payload, one event a request.
    Webhook,
    /// Alertmanager's API v2, with firing alerts re-sent.
    Alertmanager,
}

struct Receiver {
    /// Bounded label value; never the URL, which may carry a token (chat webhooks do).
    name: String,
    kind: Kind,
    url: reqwest::Url,
    outbox: Outbox,
    wake: Notify,
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
            let (prefix, target) = match kind {
                Kind::Webhook => ("webhook", raw.clone()),
                Kind::Alertmanager => (
                    "alertmanager",
                    format!("{}/api/v2/alerts", raw.trim_end_matches('/')),
                ),
            };
            let url = reqwest::Url::parse(&target)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| NotifyError::Url(redact(&raw)))?;
            let name = format!("{prefix}-{i}");
            let tree = format!("outbox-{:016x}", crate::store::series_id(prefix, &raw, &[]));
            let outbox = Outbox::open(db, &tree, s.outbox_max_events).map_err(|source| {
                NotifyError::Outbox {
                    receiver: name.clone(),
                    source,
                }
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

    /// Queues an event for every receiver (durable at the pipeline's next flush).
    pub fn enqueue(&self, ev: &AlertEvent) {
        self.push(ev, false);
    }

    /// How often the pipeline should call `resend` for each firing alert, when any
    /// Alertmanager is configured.
    pub fn resend_delay(&self) -> Option<Duration> {
        self.receivers
            .iter()
            .any(|r| r.kind == Kind::Alertmanager)
            .then_some(self.resend_delay)
    }

    /// Re-sends a still-firing alert to the Alertmanagers, pushing its endsAt ahead.
    pub fn resend(&self, ev: &AlertEvent) {
        self.push(ev, true);
    }

    fn push(&self, ev: &AlertEvent, alertmanagers_only: bool) {
        let id = payload::event_id(ev);
        // The event itself is queued and the body rendered at delivery, so an explanation
        // that arrives later (the optional LLM) can still join it.
        let event = match serde_json::to_vec(ev) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "Cannot serialise an event");
                return;
            }
        };
        for r in &self.receivers {
            if alertmanagers_only && r.kind != Kind::Alertmanager {
                continue;
            }
            // A re-send only refreshes endsAt; one still queued for a backlogged Alertmanager
            // would just crowd out events that matter (and the next re-send follows anyway).
            if alertmanagers_only && !r.outbox.is_empty() {
                continue;
            }
            let record = Record {
                id: id.clone(),
                body: event.clone(),
            };
            let (dropped, persisted) = r.outbox.push(&record);
            if dropped > 0 {
                self.metrics.outbox_dropped_total.inc_by(dropped);
                tracing::warn!(receiver = %r.name, dropped, "Outbox full: dropped the oldest events");
            }
            if let Err(e) = persisted {
                self.metrics
                    .store_errors_total
                    .with_label_values(&["outbox"])
                    .inc();
                tracing::debug!(receiver = %r.name, error = %e, "Event queued in memory only until the store is writable");
            }
            self.metrics
                .outbox_events
                .with_label_values(&[&r.name])
                .set(r.outbox.len() as i64);
        }
    }

    /// Rewrites every outbox tree that missed writes (blocking; after the store reopened).
    pub fn resync(&self) -> sled::Result<()> {
        for r in &self.receivers {
            r.outbox.resync()?;
        }
        Ok(())
    }

    /// Wakes every delivery task (after the queued events were flushed).
    pub fn wake(&self) {
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

    /// Delivers the receiver's outbox in order; a failing head is retried with backoff, so a
    /// resolution never overtakes its firing.
    async fn deliver(
        &self,
        r: Arc<Receiver>,
        client: reqwest::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut attempt: u32 = 0;
        let mut rng = Jitter::seeded();
        loop {
            let Some((seq, record)) = r.outbox.head() else {
                tokio::select! {
                    _ = r.wake.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let body = tokio::select! {
                b = self.render(&r, &record) => b,
                _ = shutdown.changed() => return,
            };
            let Some(body) = body else {
                let _ = r.outbox.remove(seq);
                continue;
            };
            let started = Instant::now();
            let outcome = tokio::select! {
                o = self.post(&client, &r, &record.id, body) => o,
                _ = shutdown.changed() => return,
            };
            self.metrics
                .notification_latency_seconds
                .observe(started.elapsed().as_secs_f64());
            let result = match outcome {
                Outcome::Delivered => "success",
                Outcome::Rejected(_) => "rejected",
                Outcome::Retry(_) => "failed",
            };
            self.metrics
                .notifications_total
                .with_label_values(&[&r.name, result])
                .inc();
            match outcome {
                Outcome::Delivered | Outcome::Rejected(_) => {
                    if let Outcome::Rejected(why) = outcome {
                        tracing::error!(receiver = %r.name, event = %record.id, reason = %why, "Receiver rejected the event; not retrying");
                    } else if attempt > 0 {
                        tracing::info!(receiver = %r.name, "Receiver is accepting events again");
                    }
                    attempt = 0;
                    if let Err(e) = r.outbox.remove_durably(seq).await {
                        tracing::debug!(receiver = %r.name, error = %e, "Delivered event removed in memory only until the store is writable");
                    }
                    self.metrics
                        .outbox_events
                        .with_label_values(&[&r.name])
                        .set(r.outbox.len() as i64);
                }
                Outcome::Retry(why) => {
                    let delay = backoff(attempt, self.max_retry_interval, rng.next());
                    if attempt == 0 {
                        tracing::warn!(receiver = %r.name, reason = %why, "Delivery failed; retrying with backoff");
                    }
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// The request body for a receiver, with the LLM's explanation for a firing event when
    /// one is configured and answers in time.
    async fn render(&self, r: &Receiver, record: &Record) -> Option<Vec<u8>> {
        let mut ev: AlertEvent = match serde_json::from_slice(&record.body) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(receiver = %r.name, error = %e, "Dropping an undecodable outbox event");
                return None;
            }
        };
        if let (Some(llm), true) = (&self.llm, ev.firing) {
            if let Some(extra) = llm.explain(&record.id, &ev).await {
                ev.annotations.extend(extra);
            }
        }
        let body = match r.kind {
            Kind::Alertmanager => payload::alertmanager_body(&ev, &self.external_url, self.hold),
            Kind::Webhook => match self.webhook_format {
                WebhookFormat::Alertmanager => {
                    payload::webhook_body(&ev, "anomaly-sidecar", &self.external_url)
                }
                WebhookFormat::Slack => payload::slack_body(&ev, &self.external_url),
                WebhookFormat::Json => payload::event_json(&ev, &record.id),
            },
        };
        Some(body.to_string().into_bytes())
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        r: &Receiver,
        id: &str,
        body: Vec<u8>,
    ) -> Outcome {
        let signature = self
            .secret
            .as_ref()
            .map(|key| format!("sha256={}", hex(ring::hmac::sign(key, &body).as_ref())));
        let mut req = client
            .post(r.url.clone())
            .timeout(Duration::from_secs(30))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Anomaly-Event-Id", id)
            .body(body);
        if let Some(sig) = signature {
            req = req.header("X-Anomaly-Signature", sig);
        }
        match req.send().await {
            Err(e) => {
                // Without the URL: a chat webhook's path is its token.
                let e = e.without_url();
                let mut why = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(c) = cur {
                    why.push_str(": ");
                    why.push_str(&c.to_string());
                    cur = c.source();
                }
                Outcome::Retry(why)
            }
            Ok(resp) => classify(resp.status().as_u16()),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    /// A definitive refusal: retrying would not change the answer.
    Rejected(String),
    Retry(String),
}

/// 2xx delivered; 408, 429 and everything else retried; other 4xx rejected for good.
fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 => Outcome::Retry(format!("HTTP {status}")),
        400..=499 => Outcome::Rejected(format!("HTTP {status}")),
        _ => Outcome::Retry(format!("HTTP {status}")),
    }
}

/// About 1s, doubling per attempt, capped at `max`, with ±20 % jitter so many sidecars
/// recovering together do not hit a receiver in lockstep. `unit` is uniform in [0, 1).
fn backoff(attempt: u32, max: Duration, unit: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(20));
    let base = base.min(max);
    base.mul_f64(0.8 + 0.4 * unit).min(max)
}

/// xorshift jitter; no need for a cryptographic RNG to spread retries.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let t = crate::scrape::now_ms() as u64;
        Self(t ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn classifier() {
        assert_eq!(classify(200), Outcome::Delivered);
        assert_eq!(classify(204), Outcome::Delivered);
        assert!(matches!(classify(400), Outcome::Rejected(_)));
        assert!(matches!(classify(404), Outcome::Rejected(_)));
        assert!(matches!(classify(408), Outcome::Retry(_)));
        assert!(matches!(classify(429), Outcome::Retry(_)));
        assert!(matches!(classify(500), Outcome::Retry(_)));
        assert!(matches!(classify(302), Outcome::Retry(_)));
    }

    #[test]
    fn an_hour_of_a_failing_receiver_costs_about_twenty_attempts() {
        // The delivery loop's schedule against a receiver that answers 500 for an hour, at the
        // default --max-retry-interval: 1, 2, 4 … 256 s, then every 5 min, all ±20 %.
        let max = Duration::from_secs(300);
        let mut rng = Jitter(0x1234_5678_9abc_def1);
        for _ in 0..100 {
            let (mut t, mut attempt) = (Duration::ZERO, 0u32);
            while t < Duration::from_secs(3600) {
                t += backoff(attempt, max, rng.next());
                attempt += 1;
            }
            assert!(
                (15..=25).contains(&attempt),
                "{attempt} attempts in an hour"
            );
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(300);
        let d0 = backoff(0, max, 0.5);
        assert_eq!(d0, Duration::from_secs(1));
        assert!(backoff(1, max, 0.0) >= Duration::from_millis(1600));
        assert!(backoff(3, max, 0.99) <= Duration::from_millis(9600));
        assert_eq!(backoff(30, max, 0.99), max);
        for u in [0.0, 0.5, 0.999] {
            assert!(backoff(0, max, u) >= Duration::from_millis(800));
            assert!(backoff(0, max, u) <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn redacts_tokens() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}
