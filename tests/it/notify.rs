//! Webhook delivery: Alertmanager payload field by field, HMAC, retries on 5xx and while the
//! receiver is down, no retry on a 400, and an outbox that survives kill -9.

use crate::common::*;
use crate::detection::T;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    /// The request's path.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    pub raw: Vec<u8>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver answering each request with the next status of its script (then 200).
pub struct Webhook {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub script: Arc<Mutex<Vec<u16>>>,
    /// Every request received, answered or not.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Webhook {
    pub fn start_on(port: u16, script: Vec<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g, s, r) = (got.clone(), script.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (g, s, r) = (g.clone(), s.clone(), r.clone());
                std::thread::spawn(move || handle(stream, g, s, &r));
            }
        });
        Self {
            port,
            got,
            script,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/secret-token", self.port)
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Requests with a 2xx answer, i.e. accepted ones, in order.
    pub fn wait_count(&self, n: usize) -> Vec<Got> {
        wait_for(&format!("{n} webhook requests"), T, || {
            let g = self.got();
            (g.len() >= n).then_some(g)
        })
    }

    /// Accepted events as a receiver that drops duplicates by X-Anomaly-Event-Id sees them.
    pub fn distinct(&self) -> Vec<Got> {
        let mut seen = std::collections::HashSet::new();
        self.got()
            .into_iter()
            .filter(|g| seen.insert(g.header("X-Anomaly-Event-Id").unwrap_or("").to_string()))
            .collect()
    }

    pub fn wait_distinct(&self, n: usize) -> Vec<Got> {
        wait_for(&format!("{n} distinct events"), T, || {
            let g = self.distinct();
            (g.len() >= n).then_some(g)
        })
    }
}

fn handle(
    mut stream: std::net::TcpStream,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<Vec<u16>>>,
    requests: &std::sync::atomic::AtomicUsize,
) {
    let Some((head, raw)) = read_request(&mut stream) else {
        return;
    };
    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let status = {
        let mut s = script.lock().unwrap();
        if s.is_empty() {
            200
        } else {
            s.remove(0)
        }
    };
    if status == 0 {
        return; // hang up without answering
    }
    // 1xxx: answer 200 after that many milliseconds minus 1000 (a slow receiver).
    let status = if status >= 1000 {
        std::thread::sleep(Duration::from_millis(u64::from(status - 1000)));
        200
    } else {
        status
    };
    if (200..300).contains(&status) {
        let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
        got.lock().unwrap().push(Got {
            path,
            headers,
            body,
            raw,
        });
    }
    // A redirect points to /moved on the same receiver.
    let location = if (300..400).contains(&status) {
        "Location: /moved\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

const RULES: &str = "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    severity: critical\n    labels: {team: infra}\n    annotations: {summary: 'g on {{ $labels.instance }} is {{ $value }}'}\n";

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn counter(s: &Sidecar, result: &str) -> u64 {
    s.number(&format!(
        "anomaly_sidecar_notifications_total{{receiver=\"webhook-0\",result=\"{result}\"}}"
    ))
}

#[test]
fn payload_signature_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let secret = write(dir.path(), "secret", "s3cr3t\n");
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--webhook",
            &hook.url(),
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--web.external-url",
            "http://sidecar.example:9477/",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body("g 500\n");
    hook.wait_count(1);
    exporter.set_body("g 5\n");
    let got = hook.wait_count(2);
    let (fire, res) = (&got[0], &got[1]);
    for g in [fire, res] {
        assert_eq!(
            g.header("X-Anomaly-Signature"),
            Some(format!("sha256={}", hmac_hex(b"s3cr3t", &g.raw)).as_str())
        );
        assert_eq!(g.header("Content-Type"), Some("application/json"));
        let b = &g.body;
        assert_eq!(b["version"], "4");
        assert_eq!(b["receiver"], "anomaly-sidecar");
        assert_eq!(b["externalURL"], "http://sidecar.example:9477");
        assert_eq!(b["groupKey"], "{}:{alertname=\"too_high\"}");
        assert_eq!(b["truncatedAlerts"], 0);
        assert_eq!(
            b["groupLabels"],
            serde_json::json!({"alertname": "too_high"})
        );
        let a = &b["alerts"][0];
        assert_eq!(b["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(a["labels"]["alertname"], "too_high");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["team"], "infra");
        assert_eq!(a["labels"]["metric"], "g");
        assert_eq!(a["labels"]["target"], exporter.name());
        assert_eq!(b["commonLabels"], a["labels"]);
        assert_eq!(b["commonAnnotations"], a["annotations"]);
        assert_eq!(a["annotations"]["method"], "threshold");
        assert_eq!(a["annotations"]["upper_bound"], "100");
        assert_eq!(a["generatorURL"], "http://sidecar.example:9477/metrics");
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(fire.body["status"], "firing");
    assert_eq!(fire.body["alerts"][0]["status"], "firing");
    assert_eq!(fire.body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(fire.body["alerts"][0]["annotations"]["value"], "500");
    assert_eq!(fire.body["alerts"][0]["annotations"]["direction"], "RISING");
    assert_eq!(
        fire.body["alerts"][0]["annotations"]["summary"],
        format!("g on {} is 500", exporter.name())
    );
    assert_eq!(res.body["status"], "resolved");
    assert_ne!(res.body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(
        res.body["alerts"][0]["startsAt"],
        fire.body["alerts"][0]["startsAt"]
    );
    assert_eq!(
        res.body["alerts"][0]["fingerprint"],
        fire.body["alerts"][0]["fingerprint"]
    );
    let (fid, rid) = (
        fire.header("X-Anomaly-Event-Id").unwrap(),
        res.header("X-Anomaly-Event-Id").unwrap(),
    );
    assert_ne!(fid, rid);
    // Neither the secret nor the URL's token leaks.
    let m = s.metrics();
    let log = s.log();
    for text in [&m, &log] {
        assert!(!text.contains("s3cr3t") && !text.contains("secret-token"));
    }
    assert_eq!(counter(&s, "success"), 2);
    // The gauge follows the delivery (under CI load it was read a moment before: 1).
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "0",
        Duration::from_secs(10),
    );
    let m = s.metrics();
    assert!(m.contains("anomaly_sidecar_notification_latency_seconds_count 2"));
}

#[test]
fn retries_500_and_a_receiver_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 500\n".into()));
    // The receiver is not listening yet: connection refused.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &url, "--max-retry-interval", "1s"],
    );
    wait_for("failed attempts", T, || {
        (counter(&s, "failed") >= 2).then_some(())
    });
    exporter.set_body("g 5\n");
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "2",
        T,
    );
    // Up, but answering 500 twice before accepting.
    let hook = Webhook::start_on(port, vec![500, 503]);
    let got = hook.wait_count(2);
    assert_eq!(
        got[0].body["status"], "firing",
        "a resolution never overtakes its firing"
    );
    assert_eq!(got[1].body["status"], "resolved");
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "0",
        T,
    );
    assert!(counter(&s, "failed") >= 4);
    assert_eq!(counter(&s, "success"), 2);
    assert_eq!(hook.script.lock().unwrap().len(), 0);
}

#[test]
fn a_400_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 500\n".into()));
    let hook = Webhook::start_on(0, vec![400]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    wait_for("rejected", T, || {
        (counter(&s, "rejected") == 1).then_some(())
    });
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "0",
        T,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counter(&s, "rejected"), 1);
    assert_eq!(counter(&s, "failed"), 0);
    assert!(hook.got().is_empty());
    assert!(s.log().contains("rejected the event"));
}

#[test]
fn outbox_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 500\n".into()));
    let hook = Webhook::start_on(0, vec![503; 1000]);
    let args = ["--webhook", &hook.url()];
    let mut s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "1",
        T,
    );
    // The gauge counts the event when it is queued; the first delivery attempt comes only after
    // the scrape's batch (outbox and firing alert) is on disk. A kill before that may lose the
    // scrape whole, as a kill -9 is allowed to, and then nothing is left to deliver.
    wait_for("a first delivery attempt", T, || {
        (hook.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    });
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    drop(s);
    hook.script.lock().unwrap().clear();
    exporter.set_body("g 5\n");
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    let got = hook.wait_count(2);
    assert_eq!(got[0].body["status"], "firing");
    assert_eq!(
        got[1].body["status"], "resolved",
        "the restarted sidecar kept the firing state"
    );
    s.wait_metric(
        "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}",
        "0",
        T,
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(hook.got().len(), 2, "no event twice, none lost");
}

#[test]
fn a_hanging_receiver_holds_only_its_own_queue() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 500\n".into()));
    // Accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in hang.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hang_url, "--webhook", &hook.url()],
    );
    // The healthy receiver gets the event although the other one hangs.
    let got = hook.wait_count(1);
    assert_eq!(got[0].body["status"], "firing");
    let evals = |s: &Sidecar| s.number("anomaly_sidecar_rule_evaluations_total{rule=\"too_high\"}");
    let before = evals(&s);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(evals(&s) >= before + 3, "scraping and detection go on");
    assert_eq!(
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}"
        )
        .as_deref(),
        Some("1")
    );
}

#[test]
fn the_outbox_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let url = format!("http://127.0.0.1:{}/hook", free_port()); // nobody listens
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &url, "--outbox-max-events", "3"],
    );
    // Five firings and five resolutions.
    for _ in 0..5 {
        exporter.set_body("g 500\n");
        std::thread::sleep(Duration::from_millis(700));
        exporter.set_body("g 5\n");
        std::thread::sleep(Duration::from_millis(700));
    }
    let dropped: u64 = wait_for("drops counted", T, || {
        metric_value(&s.metrics(), "anomaly_sidecar_outbox_dropped_total")
            .and_then(|v| v.parse().ok())
            .filter(|n: &u64| *n >= 7)
    });
    assert!(dropped <= 10 - 3 + 1, "dropped {dropped}");
    assert_eq!(
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_outbox_events{receiver=\"webhook-0\"}"
        )
        .as_deref(),
        Some("3")
    );
}

#[test]
fn slack_and_json_formats() {
    for format in ["slack", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let rules = write(dir.path(), "rules.yaml", RULES);
        let exporter = Exporter::start(Reply::Body("g 5\n".into()));
        let hook = Webhook::start_on(0, vec![]);
        let _s = Sidecar::start(
            dir.path(),
            &rules,
            &[exporter.url()],
            &["--webhook", &hook.url(), "--webhook-format", format],
        );
        std::thread::sleep(Duration::from_millis(500));
        exporter.set_body("g 500\n");
        hook.wait_count(1);
        exporter.set_body("g 5\n");
        let got = hook.wait_count(2);
        let (fire, res) = (&got[0].body, &got[1].body);
        if format == "slack" {
            let text = fire["text"].as_str().unwrap();
            assert!(
                text.contains("[FIRING] too_high (critical)") && text.contains("is 500"),
                "{text}"
            );
            assert!(res["text"]
                .as_str()
                .unwrap()
                .contains("[RESOLVED] too_high"));
            let blocks = fire["blocks"].as_array().unwrap();
            assert_eq!(blocks[0]["type"], "section");
            let fields = blocks[1]["fields"].as_array().unwrap();
            assert!(fields.len() <= 10, "Slack allows at most 10 fields");
            assert!(
                fields.iter().any(|f| f["text"] == "*Value*\n500"),
                "{fields:?}"
            );
        } else {
            assert_eq!(fire["status"], "firing");
            assert_eq!(res["status"], "resolved");
            assert_eq!(fire["rule"], "too_high");
            assert_eq!(fire["value"], 500.0);
            assert_eq!(fire["labels"]["alertname"], "too_high");
            assert_eq!(fire["explanation"]["upper_bound"], 100.0);
            assert_eq!(fire["id"], got[0].header("X-Anomaly-Event-Id").unwrap());
            assert_eq!(fire["startsAt"], res["startsAt"]);
        }
    }
}

#[test]
fn a_series_gone_during_a_restart_still_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 500\n".into()));
    let hook = Webhook::start_on(0, vec![]);
    let args = ["--webhook", &hook.url()];
    let mut s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    let got = hook.wait_count(1);
    assert_eq!(got[0].body["status"], "firing");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    // While the sidecar was down, the series went away.
    exporter.set_body("other 1\n");
    let _s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    // A kill right after a delivery may repeat it; a receiver tells by the event id.
    let got = hook.wait_distinct(2);
    assert_eq!(got[0].body["status"], "firing");
    assert_eq!(got[1].body["status"], "resolved");
    assert_eq!(
        got[1].body["alerts"][0]["startsAt"],
        got[0].body["alerts"][0]["startsAt"]
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(hook.distinct().len(), 2);
}

#[test]
fn redirects_307_is_followed_with_the_body_302_is_retried_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    // The firing: 302 twice (kept and retried), then 200. The resolution: 307 to /moved,
    // which answers 200.
    let hook = Webhook::start_on(0, vec![302, 302, 200, 307, 200]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body("g 500\n");
    let got = hook.wait_count(1);
    assert_eq!(got[0].body["status"], "firing");
    assert_eq!(counter(&s, "redirect"), 2);
    assert_eq!(counter(&s, "rejected"), 0);
    let log = s.log();
    assert_eq!(
        log.matches("HTTP 302 redirect, not followed").count(),
        1,
        "logged once: {log}"
    );
    exporter.set_body("g 5\n");
    let got = hook.wait_count(2);
    assert_eq!(got[1].path, "/moved", "307 followed");
    assert_eq!(got[1].body["status"], "resolved", "with the body");
    assert_eq!(counter(&s, "success"), 2);
    assert_eq!(hook.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
}
