//! One task per receiver delivers its outbox in order, then (Alertmanagers) the newest
//! re-send batch: the request, its outcome (delivered, rejected, retried: failed or a
//! redirect a POST must not follow) and the backoff between failures.

use super::{payload, Kind, Notifier, Receiver, MAX_BATCH};
use crate::alert::AlertEvent;
use crate::config::flags::WebhookFormat;
use crate::notify::outbox::Record;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long one request to a receiver may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Notifier {
    /// Delivers the receiver's outbox in order, then (Alertmanagers) the waiting re-send
    /// batch; a failing head is retried with backoff, so a resolution never overtakes its
    /// firing, and an event never waits behind a re-send.
    pub(super) async fn deliver(
        &self,
        r: Arc<Receiver>,
        client: reqwest::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut failing = Failing::default();
        let mut rng = Jitter::seeded();
        loop {
            let outcome = if let Some((seq, record)) = r.outbox.head() {
                let body = tokio::select! {
                    b = self.render(&r, &record) => b,
                    _ = shutdown.changed() => return,
                };
                let Some(body) = body else {
                    let _ = r.outbox.remove(seq);
                    continue;
                };
                let outcome = tokio::select! {
                    o = self.attempt(&client, &r, &record.id, body) => o,
                    _ = shutdown.changed() => return,
                };
                if let Outcome::Rejected(why) = &outcome {
                    tracing::error!(receiver = %r.name, event = %record.id, reason = %why, "Receiver rejected the event; not retrying");
                }
                if matches!(outcome, Outcome::Delivered | Outcome::Rejected(_)) {
                    crate::failpoint::hit("after_delivery");
                    if let Err(e) = r.outbox.remove_durably(seq).await {
                        tracing::debug!(receiver = %r.name, error = %e, "Delivered event removed in memory only until the store is writable");
                    }
                    self.metrics
                        .outbox_events
                        .with_label_values(&[&r.name])
                        .set(r.outbox.len() as i64);
                }
                outcome
            } else if let Some((generation, alerts)) = self.next_batch(&r) {
                let body = payload::alertmanager_batch(&alerts, &self.external_url, self.hold);
                let id = format!("resend-{generation}");
                let outcome = tokio::select! {
                    o = self.attempt(&client, &r, &id, body.to_string().into_bytes()) => o,
                    _ = shutdown.changed() => return,
                };
                if let Outcome::Retry(_) = outcome {
                    // Back in front, unless a newer batch took its place meanwhile.
                    let mut b = r.batch();
                    if b.generation == generation {
                        for a in alerts.into_iter().rev() {
                            b.alerts.push_front(a);
                        }
                    }
                } else if let Outcome::Rejected(why) = &outcome {
                    tracing::error!(receiver = %r.name, alerts = alerts.len(), reason = %why, "Alertmanager rejected a re-send batch");
                }
                outcome
            } else {
                tokio::select! {
                    _ = r.wake.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            match outcome {
                Outcome::Delivered | Outcome::Rejected(_) => failing.recovered(&r),
                Outcome::Retry(why) => {
                    let delay = failing.next(&r, &why, self.max_retry_interval, rng.next());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Up to `MAX_BATCH` alerts of the receiver's waiting re-send batch, with its generation.
    fn next_batch(&self, r: &Receiver) -> Option<(u64, Vec<AlertEvent>)> {
        let mut b = r.batch();
        if b.alerts.is_empty() {
            return None;
        }
        let n = b.alerts.len().min(MAX_BATCH);
        let alerts = b.alerts.drain(..n).collect();
        Some((b.generation, alerts))
    }

    /// One request, timed and counted by result.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        r: &Receiver,
        id: &str,
        body: Vec<u8>,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = self.post(client, r, id, body).await;
        self.metrics
            .notification_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        let result = match outcome {
            Outcome::Delivered => "success",
            Outcome::Rejected(_) => "rejected",
            Outcome::Retry(Retry::Redirect(_)) => "redirect",
            Outcome::Retry(_) => "failed",
        };
        self.metrics
            .notifications_total
            .with_label_values(&[&r.name, result])
            .inc();
        outcome
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
            .timeout(REQUEST_TIMEOUT)
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
                Outcome::Retry(Retry::Failed(why))
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
    Retry(Retry),
}

/// Why an attempt is to be retried.
#[derive(Debug, PartialEq)]
enum Retry {
    Failed(String),
    /// A 301, 302 or 303 to a POST: following it would turn the POST into a GET without the
    /// body (as browsers do), so the event stays queued until the URL is fixed.
    Redirect(u16),
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retry::Failed(why) => f.write_str(why),
            Retry::Redirect(status) => write!(
                f,
                "HTTP {status} redirect, not followed for a POST: fix the receiver URL"
            ),
        }
    }
}

/// 2xx delivered; 3xx (307 and 308 are followed before this, so what is left are redirects
/// a POST must not follow), 408, 429 and 5xx retried; other 4xx rejected for good.
fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        300..=399 => Outcome::Retry(Retry::Redirect(status)),
        408 | 429 => Outcome::Retry(Retry::Failed(format!("HTTP {status}"))),
        400..=499 => Outcome::Rejected(format!("HTTP {status}")),
        _ => Outcome::Retry(Retry::Failed(format!("HTTP {status}"))),
    }
}

/// The HTTP client for receivers: 307 and 308 are followed with the body (they promise the
/// same method), 301/302/303 are not (reqwest would turn the POST into a bodiless GET).
pub fn client() -> reqwest::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(attempt.status().as_u16(), 307 | 308);
        if keeps_body && attempt.previous().len() < 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("anomaly-sidecar/", env!("CARGO_PKG_VERSION")))
        .redirect(policy)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
}

/// A receiver's run of failed attempts: logged once when it starts (and again when its
/// reason changes), with the backoff growing until one succeeds.
#[derive(Default)]
struct Failing {
    attempt: u32,
    last: Option<String>,
}

impl Failing {
    fn next(&mut self, r: &Receiver, why: &Retry, max: Duration, unit: f64) -> Duration {
        let text = why.to_string();
        if self.last.as_deref() != Some(text.as_str()) {
            tracing::warn!(receiver = %r.name, reason = %text, "Delivery failed; retrying with backoff");
            self.last = Some(text);
        }
        let delay = backoff(self.attempt, max, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    fn recovered(&mut self, r: &Receiver) {
        if self.attempt > 0 {
            tracing::info!(receiver = %r.name, "Receiver is accepting events again");
        }
        *self = Self::default();
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
        let t = crate::util::now_ms() as u64;
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
        assert_eq!(classify(302), Outcome::Retry(Retry::Redirect(302)));
        assert_eq!(classify(301), Outcome::Retry(Retry::Redirect(301)));
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
}
