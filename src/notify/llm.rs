//! Optional explanation of a firing event by a local LLM (Ollama's `/api/generate`): cause,
//! impact, three actions and an urgency, added as `llm_*` annotations. It never holds an event
//! past `--llm-timeout` and never drops one: a slow, failing or nonsense answer means the event
//! goes out without them, and the failure is counted.

use crate::alert::AlertEvent;
use crate::export::SelfMetrics;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How to reach the model.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Base URL, e.g. http://ollama:11434.
    pub url: String,
    pub model: String,
    pub timeout: Duration,
}

type Answer = Option<BTreeMap<String, String>>;
/// One answer in the making, shared by everyone who asks for the same event.
type SharedAnswer = (Instant, Arc<OnceCell<Answer>>);

/// The client, with one answer per event shared by every receiver (and Alertmanager
/// re-sends) so the model is asked once per firing.
pub struct Llm {
    settings: LlmSettings,
    client: reqwest::Client,
    metrics: SelfMetrics,
    answers: Mutex<HashMap<String, SharedAnswer>>,
}

/// Answers are kept this long for re-sends of the same firing.
const KEEP_ANSWERS: Duration = Duration::from_secs(6 * 3600);

#[derive(Deserialize)]
struct GenerateResponse {
    response: String,
}

#[derive(Deserialize)]
struct Analysis {
    cause: String,
    impact: String,
    actions: Actions,
    urgency: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Actions {
    List(Vec<String>),
    One(String),
}

impl Llm {
    pub fn new(settings: LlmSettings, client: reqwest::Client, metrics: SelfMetrics) -> Self {
        Self {
            settings,
            client,
            metrics,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// The `llm_*` annotations for event `id`, asking the model at most once per event.
    pub async fn explain(&self, id: &str, ev: &AlertEvent) -> Answer {
        let cell = {
            let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            answers.retain(|_, (at, _)| at.elapsed() < KEEP_ANSWERS);
            answers
                .entry(id.to_string())
                .or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new())))
                .1
                .clone()
        };
        cell.get_or_init(|| async {
            let result = match tokio::time::timeout(self.settings.timeout, self.ask(ev)).await {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(("timeout", format!("no answer within {:?}", self.settings.timeout))),
            };
            match result {
                Ok(a) => {
                    self.metrics.llm_requests_total.with_label_values(&["success"]).inc();
                    Some(a)
                }
                Err((label, why)) => {
                    self.metrics.llm_requests_total.with_label_values(&[label]).inc();
                    tracing::warn!(rule = %ev.rule, reason = %why, "LLM explanation unavailable; sending the event without it");
                    None
                }
            }
        })
        .await
        .clone()
    }

    async fn ask(
        &self,
        ev: &AlertEvent,
    ) -> Result<BTreeMap<String, String>, (&'static str, String)> {
        let url = format!("{}/api/generate", self.settings.url.trim_end_matches('/'));
        let request = serde_json::json!({
            "model": self.settings.model,
            "prompt": prompt(ev),
            "stream": false,
            "format": "json",
        });
        let resp = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_string())
            .send()
            .await
            .map_err(|e| ("error", e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(("error", format!("HTTP {}", resp.status().as_u16())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ("error", e.without_url().to_string()))?;
        let outer: GenerateResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ("invalid", format!("not an Ollama response: {e}")))?;
        parse_analysis(&outer.response).map_err(|e| ("invalid", e))
    }
}

/// Validates the model's JSON; anything off is refused rather than half-used.
pub fn parse_analysis(text: &str) -> Result<BTreeMap<String, String>, String> {
    let a: Analysis = serde_json::from_str(text.trim())
        .map_err(|e| format!("answer is not the requested JSON: {e}"))?;
    let urgency = a.urgency.trim().to_ascii_uppercase();
    if !["HIGH", "MEDIUM", "LOW"].contains(&urgency.as_str()) {
        return Err(format!(
            "urgency {:?} is not HIGH, MEDIUM or LOW",
            a.urgency
        ));
    }
    let actions: Vec<String> = match a.actions {
        Actions::List(l) => l,
        Actions::One(s) => vec![s],
    }
    .into_iter()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
    .take(3)
    .collect();
    if a.cause.trim().is_empty() || a.impact.trim().is_empty() || actions.is_empty() {
        return Err("cause, impact and actions must not be empty".into());
    }
    let numbered: Vec<String> = actions
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. {s}", i + 1))
        .collect();
    Ok(BTreeMap::from([
        ("llm_cause".to_string(), a.cause.trim().to_string()),
        ("llm_impact".to_string(), a.impact.trim().to_string()),
        ("llm_actions".to_string(), numbered.join("\n")),
        ("llm_urgency".to_string(), urgency),
    ]))
}

/// What the model is told: the rule, the series, the value against its baseline, and the
/// exact JSON shape to answer in.
pub fn prompt(ev: &AlertEvent) -> String {
    use crate::util::format_value as f;
    let v = &ev.verdict;
    let opt = |x: Option<f64>| x.map_or("n/a".to_string(), f);
    let labels: Vec<String> = ev
        .series_labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!(
        "You are an SRE assistant. An anomaly detector fired on a Prometheus metric.\n\
         Rule: {rule} (method {method}, severity {severity})\n\
         Series: {metric}{{{labels}}} on target {target}\n\
         Value: {value}\n\
         Baseline mean: {mean}, standard deviation: {std}, z-score: {z}\n\
         Normal band: {lo} .. {hi}, direction: {dir}\n\
         Summary: {summary}\n\
         Answer only with JSON of this shape: {{\"cause\": \"likely cause, one sentence\", \
         \"impact\": \"likely impact, one sentence\", \"actions\": [\"first action\", \"second action\", \
         \"third action\"], \"urgency\": \"HIGH|MEDIUM|LOW\"}}",
        rule = ev.rule,
        method = ev.method,
        severity = ev.severity,
        metric = ev.metric,
        labels = labels.join(","),
        target = ev.target,
        value = f(ev.value),
        mean = opt(v.baseline_mean),
        std = opt(v.baseline_stddev),
        z = opt(v.zscore),
        lo = opt(v.lower_bound),
        hi = opt(v.upper_bound),
        dir = v.direction.map_or("n/a", |d| d.as_str()),
        summary = ev.annotations.get("summary").map_or("n/a", String::as_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates_answers() {
        let ok = parse_analysis(r#"{"cause":"deploy","impact":"slow checkout","actions":["roll back","check logs","page owner","extra"],"urgency":"high"}"#).unwrap();
        assert_eq!(ok["llm_urgency"], "HIGH");
        assert_eq!(
            ok["llm_actions"],
            "1. roll back\n2. check logs\n3. page owner"
        );
        let one =
            parse_analysis(r#"{"cause":"c","impact":"i","actions":"restart","urgency":"LOW"}"#)
                .unwrap();
        assert_eq!(one["llm_actions"], "1. restart");
        for bad in [
            "not json",
            r#"{"cause":"c","impact":"i","actions":[],"urgency":"LOW"}"#,
            r#"{"cause":"c","impact":"i","actions":["a"],"urgency":"SOON"}"#,
            r#"{"cause":"","impact":"i","actions":["a"],"urgency":"LOW"}"#,
            r#"{"impact":"i","actions":["a"],"urgency":"LOW"}"#,
        ] {
            assert!(parse_analysis(bad).is_err(), "{bad}");
        }
    }
}
