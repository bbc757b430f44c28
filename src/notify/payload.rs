//! The Alertmanager webhook payload (version 4) for one alert event, so every receiver that
//! understands Alertmanager's webhook works unchanged.

use crate::alert::AlertEvent;
use crate::util::rfc3339;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Alertmanager's "zero time": a firing alert has no end yet.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Alertmanager-style fingerprint of a label set: 16 hex digits, stable across restarts.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The id a receiver can drop duplicates by: the same for every retry of one event.
pub fn event_id(ev: &AlertEvent) -> String {
    let status = if ev.firing { "firing" } else { "resolved" };
    format!("{}-{}-{status}", fingerprint(&ev.labels()), ev.fired_at_ms)
}

/// The whole request body for one event.
pub fn webhook_body(ev: &AlertEvent, receiver: &str, external_url: &str) -> Value {
    let labels = ev.labels();
    let annotations = ev.annotations();
    let status = if ev.firing { "firing" } else { "resolved" };
    let ends_at = if ev.firing {
        ZERO_TIME.to_string()
    } else {
        rfc3339(ev.at_ms)
    };
    let mut group = Map::new();
    group.insert("alertname".into(), Value::String(ev.rule.to_string()));
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", ev.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(ev.fired_at_ms),
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/metrics"),
            "fingerprint": fingerprint(&labels),
        }],
    })
}

/// The body Alertmanager's API v2 takes (`POST /api/v2/alerts`) for one event.
pub fn alertmanager_body(ev: &AlertEvent, external_url: &str, hold: std::time::Duration) -> Value {
    Value::Array(vec![alertmanager_alert(ev, external_url, hold)])
}

/// The same body for a batch of firing alerts (a re-send).
pub fn alertmanager_batch(
    alerts: &[AlertEvent],
    external_url: &str,
    hold: std::time::Duration,
) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|ev| alertmanager_alert(ev, external_url, hold))
            .collect(),
    )
}

/// One alert as API v2 takes it. A firing alert ends `hold` after `at_ms` unless re-sent, as
/// Prometheus does, so a sidecar that dies lets its alerts resolve instead of firing forever.
fn alertmanager_alert(ev: &AlertEvent, external_url: &str, hold: std::time::Duration) -> Value {
    let ends_at = if ev.firing {
        ev.at_ms + hold.as_millis() as i64
    } else {
        ev.at_ms
    };
    json!({
        "labels": ev.labels(),
        "annotations": ev.annotations(),
        "startsAt": rfc3339(ev.fired_at_ms),
        "endsAt": rfc3339(ends_at),
        "generatorURL": format!("{external_url}/metrics"),
    })
}

/// A chat message in the Slack incoming-webhook shape (`text` for notifications and clients
/// without blocks, `blocks` for the room), which Mattermost and Rocket.Chat also accept.
pub fn slack_body(ev: &AlertEvent, external_url: &str) -> Value {
    use crate::util::format_value as f;
    let status = if ev.firing { "FIRING" } else { "RESOLVED" };
    let icon = if ev.firing {
        ":rotating_light:"
    } else {
        ":white_check_mark:"
    };
    // Slack reads `<…>` as a link or mention and `&` as an entity: text from labels and
    // templates is escaped, our own link is not.
    let e = slack_escape;
    let summary = e(&ev
        .annotations
        .get("summary")
        .cloned()
        .unwrap_or_else(|| format!("{} on {}", ev.metric, ev.target)));
    let (rule, severity) = (e(&ev.rule), e(&ev.severity));
    let text = format!("{icon} [{status}] {rule} ({severity}): {summary}");
    let series: Vec<String> = ev
        .series_labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", e(v)))
        .collect();
    let v = &ev.verdict;
    let mut fields = vec![
        format!("*Severity*\n{severity}"),
        format!("*Target*\n{}", e(&ev.target)),
        format!("*Value*\n{}", f(ev.value)),
        format!("*Method*\n{}", ev.method),
    ];
    if let Some(m) = v.baseline_mean {
        fields.push(format!(
            "*Baseline*\n{} ± {}",
            f(m),
            f(v.baseline_stddev.unwrap_or(0.0))
        ));
    }
    if let Some(z) = v.zscore {
        fields.push(format!("*z-score*\n{}", f(z)));
    }
    if let (Some(lo), Some(hi)) = (v.lower_bound, v.upper_bound) {
        fields.push(format!("*Normal band*\n{} … {}", f(lo), f(hi)));
    }
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|t| json!({"type": "mrkdwn", "text": t}))
        .collect();
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("{icon} *[{status}] {rule}*\n{summary}")}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "`{}{{{}}}` · since {} · <{external_url}/api/v1/alerts|alerts>",
                ev.metric, series.join(","), rfc3339(ev.fired_at_ms)
            )}]},
        ],
    })
}

/// Escapes the three characters Slack's message text gives a meaning to.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One event as a plain object, for receivers that want neither Alertmanager nor chat shapes.
pub fn event_json(ev: &AlertEvent, id: &str) -> Value {
    let v = &ev.verdict;
    let finite = |x: Option<f64>| x.filter(|x| x.is_finite());
    json!({
        "id": id,
        "status": if ev.firing { "firing" } else { "resolved" },
        "rule": ev.rule,
        "severity": ev.severity,
        "method": ev.method,
        "target": ev.target,
        "metric": ev.metric,
        "labels": ev.labels(),
        "annotations": ev.annotations,
        "value": finite(Some(ev.value)),
        "startsAt": rfc3339(ev.fired_at_ms),
        "at": rfc3339(ev.at_ms),
        "explanation": {
            "score": finite(Some(v.score)),
            "baseline_mean": finite(v.baseline_mean),
            "baseline_stddev": finite(v.baseline_stddev),
            "zscore": finite(v.zscore),
            "lower_bound": finite(v.lower_bound),
            "upper_bound": finite(v.upper_bound),
            "direction": v.direction.map(|d| d.as_str()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_from_labels_and_templates_is_escaped() {
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        let ev = AlertEvent {
            firing: true,
            at_ms: 0,
            fired_at_ms: 0,
            rule: "r".into(),
            severity: "warning".into(),
            method: "threshold".into(),
            target: "h:1".into(),
            metric: "g".into(),
            series_labels: vec![("path".into(), "<!channel>".into())],
            rule_labels: Default::default(),
            annotations: [("summary".to_string(), "p99 > 1s & rising <@U1>".to_string())].into(),
            value: 1.0,
            verdict: Default::default(),
        };
        let body = slack_body(&ev, "http://x").to_string();
        assert!(
            !body.contains("<!channel>") && !body.contains("<@U1>"),
            "{body}"
        );
        assert!(
            body.contains("p99 &gt; 1s &amp; rising &lt;@U1&gt;"),
            "{body}"
        );
        assert!(
            body.contains("<http://x/api/v1/alerts|alerts>"),
            "our link stays a link"
        );
    }
}
