//! The optional LLM explanation against a test server speaking Ollama's /api/generate: a good
//! answer becomes llm_* annotations; a slow, failing or garbage one never delays the event
//! past --llm-timeout nor drops it.

use crate::common::*;
use crate::notify::Webhook;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Good,
    Slow,
    Garbage,
    Error,
}

/// A fake Ollama; records each request body.
fn ollama(mode: Mode) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let Some((head, body)) = read_request(&mut stream) else {
                    return;
                };
                assert!(head.starts_with("POST /api/generate "), "{head}");
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                let inner = r#"{"cause":"a deploy raised load","impact":"slower responses","actions":["roll back","check the deploy","watch latency"],"urgency":"high"}"#;
                let (status, body) = match mode {
                    Mode::Good => (200, serde_json::json!({"model": "m", "response": inner, "done": true}).to_string()),
                    Mode::Slow => {
                        std::thread::sleep(Duration::from_secs(30));
                        (200, serde_json::json!({"model": "m", "response": inner, "done": true}).to_string())
                    }
                    Mode::Garbage => (200, serde_json::json!({"model": "m", "response": "I think it is fine :)", "done": true}).to_string()),
                    Mode::Error => (500, "model not loaded".to_string()),
                };
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            });
        }
    });
    (url, seen)
}

const RULES: &str =
    "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n";

/// Fires one event; returns its annotations, how long it took to arrive, the sidecar, the
/// LLM requests seen, and the temp dir (kept alive while the sidecar runs).
fn run(
    mode: Mode,
) -> (
    serde_json::Value,
    Duration,
    Sidecar,
    Vec<serde_json::Value>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let hook = Webhook::start_on(0, vec![]);
    let (llm, seen) = ollama(mode);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--webhook",
            &hook.url(),
            "--llm-url",
            &llm,
            "--llm-model",
            "tiny",
            "--llm-timeout",
            "1s",
        ],
    );
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    exporter.set_body("g 500\n");
    let got = hook.wait_count(1);
    let took = started.elapsed();
    let requests = seen.lock().unwrap().clone();
    (
        got[0].body["alerts"][0]["annotations"].clone(),
        took,
        s,
        requests,
        dir,
    )
}

fn llm_count(s: &Sidecar, result: &str) -> Option<String> {
    metric_value(
        &s.metrics(),
        &format!("anomaly_sidecar_llm_requests_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn good_answer_becomes_annotations() {
    let (a, _, s, requests, _dir) = run(Mode::Good);
    assert_eq!(a["llm_cause"], "a deploy raised load");
    assert_eq!(a["llm_impact"], "slower responses");
    assert_eq!(
        a["llm_actions"],
        "1. roll back\n2. check the deploy\n3. watch latency"
    );
    assert_eq!(a["llm_urgency"], "HIGH");
    assert_eq!(requests.len(), 1, "asked once per firing");
    let r = &requests[0];
    assert_eq!(r["model"], "tiny");
    assert_eq!(r["stream"], false);
    let prompt = r["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("too_high")
            && prompt.contains("Value: 500")
            && prompt.contains("\"urgency\""),
        "{prompt}"
    );
    assert_eq!(llm_count(&s, "success").as_deref(), Some("1"));
}

#[test]
fn slow_garbage_and_failing_answers_never_hold_the_event() {
    for (mode, label) in [
        (Mode::Slow, "timeout"),
        (Mode::Garbage, "invalid"),
        (Mode::Error, "error"),
    ] {
        let (a, took, s, _, _dir) = run(mode);
        assert!(a.get("llm_cause").is_none(), "{a}");
        assert_eq!(a["method"], "threshold", "the event itself is intact");
        assert!(
            // The slow model answers after 30 s; the event must not wait for it.
            took < Duration::from_secs(12),
            "{label}: took {took:?} with a 1s LLM timeout"
        );
        assert_eq!(llm_count(&s, label).as_deref(), Some("1"), "{label}");
    }
}
