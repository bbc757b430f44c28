//! End to end: a series scraped from a test exporter flips the anomaly gauges on an injected
//! spike and back, and /metrics passes promtool.

use crate::common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub const T: Duration = Duration::from_secs(30);

/// Feeds `test_gauge{instance="a"}` with 10..14 in turn, or 500 while `spike` is set.
pub fn feeder(exporter: Arc<Exporter>, spike: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let tick = AtomicU64::new(0);
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let t = tick.fetch_add(1, Ordering::Relaxed);
            let v = if spike.load(Ordering::Relaxed) {
                500.0
            } else {
                10.0 + (t % 5) as f64
            };
            exporter.set_body(gauge_body(
                "test_gauge",
                &[("{instance=\"a\"}", v), ("{instance=\"b\"}", 7.0)],
            ));
            thread::sleep(Duration::from_millis(60));
        }
    });
}

const RULES: &str = r#"
defaults: {window: 30, min_samples: 5}
rules:
  - name: z
    match: 'test_gauge{instance="a"}'
    method: zscore
    annotations: {summary: '{{ $labels.instance }} is at {{ $value }}'}
  - name: above_100
    match: test_gauge
    method: threshold
    threshold: 100
    severity: critical
"#;

#[test]
fn spike_flips_gauges_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Arc::new(Exporter::start(Reply::Body(String::new())));
    let (spike, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    feeder(exporter.clone(), spike.clone(), stop.clone());
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    let z = format!("{{rule=\"z\",severity=\"warning\",method=\"zscore\",target=\"{}\",metric=\"test_gauge\",instance=\"a\"}}", exporter.name());
    wait_for("enough history", T, || {
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_rule_evaluations_total{rule=\"z\"}",
        )
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n >= 8)
    });
    let m = s.metrics();
    assert_eq!(
        metric_value(&m, &format!("anomaly_active{z}")).as_deref(),
        Some("0.0")
    );
    assert!(metric_value(&m, &format!("anomaly_baseline_mean{z}")).is_some());
    assert!(metric_value(&m, &format!("anomaly_upper_bound{z}")).is_some());
    assert_eq!(
        metric_value(
            &m,
            &format!("anomaly_sidecar_up{{target=\"{}\"}}", exporter.name())
        )
        .as_deref(),
        Some("1")
    );

    spike.store(true, Ordering::Relaxed);
    s.wait_metric(&format!("anomaly_active{z}"), "1.0", T);
    let m = s.metrics();
    let score: f64 = metric_value(&m, &format!("anomaly_score{z}"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(score >= 1.0, "score {score}");
    let above = format!("anomaly_active{{rule=\"above_100\",severity=\"critical\",method=\"threshold\",target=\"{}\",metric=\"test_gauge\",instance=\"a\"}}", exporter.name());
    s.wait_metric(&above, "1.0", T);
    assert!(
        m.contains("anomaly_sidecar_transitions_total{rule=\"z\",to=\"firing\"} 1"),
        "{m}"
    );

    // What a person checks first when paged.
    let (status, body) = http("GET", &s.addr, "/api/v1/alerts").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let alerts = v["data"]["alerts"].as_array().unwrap();
    let za = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "z")
        .expect("z listed");
    assert_eq!(za["state"], "firing");
    assert_eq!(za["labels"]["instance"], "a");
    assert_eq!(za["annotations"]["summary"], "a is at 500");
    assert_eq!(za["explanation"]["method"], "zscore");
    assert!(za["explanation"]["zscore"].as_f64().unwrap() > 3.0);
    assert!(za["explanation"]["baseline_mean"].as_f64().unwrap() < 20.0);

    spike.store(false, Ordering::Relaxed);
    s.wait_metric(&format!("anomaly_active{z}"), "0.0", T);
    s.wait_metric(&above, "0.0", T);
    // Series b never fired.
    let b = format!("anomaly_active{{rule=\"above_100\",severity=\"critical\",method=\"threshold\",target=\"{}\",metric=\"test_gauge\",instance=\"b\"}}", exporter.name());
    assert_eq!(metric_value(&s.metrics(), &b).as_deref(), Some("0.0"));
    wait_for("alerts list empty", T, || {
        let body = http("GET", &s.addr, "/api/v1/alerts")?.1;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"].as_array()?.is_empty().then_some(())
    });
    let log = s.log();
    assert!(
        log.contains("FIRING") && log.contains("rule=z") && log.contains("summary=\"a is at 500\""),
        "{log}"
    );
    assert!(log.contains("RESOLVED"), "{log}");
    stop.store(true, Ordering::Relaxed);
    assert!(s.stop().success());
}

#[test]
fn disappeared_series_stop_being_exported() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body(gauge_body(
        "test_gauge",
        &[("{instance=\"a\"}", 1.0), ("{instance=\"b\"}", 2.0)],
    )));
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    let b = "anomaly_value{rule=\"above_100\",severity=\"critical\",method=\"threshold\",target=";
    wait_for("series b exported", T, || {
        s.metrics()
            .lines()
            .any(|l| l.starts_with(b) && l.contains("instance=\"b\""))
            .then_some(())
    });
    exporter.set_body(gauge_body("test_gauge", &[("{instance=\"a\"}", 1.0)]));
    wait_for("series b gone", T, || {
        (!s.metrics().lines().any(|l| l.contains("instance=\"b\""))).then_some(())
    });
    assert!(s
        .metrics()
        .lines()
        .any(|l| l.starts_with(b) && l.contains("instance=\"a\"")));
}

#[test]
fn promtool_accepts_metrics() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let body = gauge_body(
        "test_gauge",
        &[
            ("{instance=\"a\",path=\"/a,b\",msg=\"say \\\"hi\\\"\"}", 1.0),
            ("{instance=\"b\",rule=\"clash\"}", 1e-300),
        ],
    );
    let exporter = Exporter::start(Reply::Body(body));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url(), "http://127.0.0.1:1/metrics".into()],
        &[],
    );
    wait_for("rows", T, || {
        s.metrics()
            .contains("exported_rule=\"clash\"")
            .then_some(())
    });
    let metrics = s.metrics();
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(metrics.contains("path=\"/a,b\""));
    assert!(metrics.contains(r#"msg="say \"hi\"""#));
    assert!(metrics.contains("anomaly_sidecar_build_info{version="));
}

#[test]
fn pending_until_for_elapses() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: slow\n    match: g\n    method: threshold\n    threshold: 1\n    for: 1s\n",
    );
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    s.wait_metric("anomaly_pending{rule=\"slow\"", "1.0", T);
    assert_eq!(
        metric_value(&s.metrics(), "anomaly_active{rule=\"slow\"").as_deref(),
        Some("0.0")
    );
    let body = http("GET", &s.addr, "/api/v1/alerts").unwrap().1;
    assert!(body.contains("\"state\":\"pending\""), "{body}");
    s.wait_metric("anomaly_active{rule=\"slow\"", "1.0", T);
    assert_eq!(
        metric_value(&s.metrics(), "anomaly_pending{rule=\"slow\"").as_deref(),
        Some("0.0")
    );
    let body = http("GET", &s.addr, "/api/v1/alerts").unwrap().1;
    assert!(body.contains("\"state\":\"firing\""), "{body}");
}

/// A shift that lasts: the alert stays firing while it is kept out of the baseline, then,
/// after `relearn_after` (here the default, a window's worth of samples), resolves once as
/// the new normal, at the webhook (annotation `reason="new_normal"`) and in /metrics (the
/// counter, the gauges), and does not fire again at the new level.
#[test]
fn a_lasting_shift_resolves_once_as_the_new_normal() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "defaults: {window: 30, min_samples: 5}\nrules:\n  - name: z\n    match: 'test_gauge{instance=\"a\"}'\n    method: zscore\n",
    );
    let exporter = Arc::new(Exporter::start(Reply::Body(String::new())));
    let (spike, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    feeder(exporter.clone(), spike.clone(), stop.clone());
    let hook = crate::notify::Webhook::start_on(0, vec![]);
    let url = hook.url();
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &url, "--webhook-format", "alertmanager"],
    );
    let evaluations = || {
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_rule_evaluations_total{rule=\"z\"}",
        )
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
    };
    wait_for("enough history", T, || (evaluations() >= 10).then_some(()));
    spike.store(true, Ordering::Relaxed);
    let z = format!("anomaly_active{{rule=\"z\",severity=\"warning\",method=\"zscore\",target=\"{}\",metric=\"test_gauge\",instance=\"a\"}}", exporter.name());
    s.wait_metric(&z, "1.0", T);
    let fired_at = evaluations();
    s.wait_metric("anomaly_sidecar_relearned_total{rule=\"z\"}", "1", T);
    // Firing for the whole window (30 samples at 500), not resolved when the window widened.
    assert!(
        evaluations() >= fired_at + 25,
        "{} after {fired_at}",
        evaluations()
    );
    assert_eq!(metric_value(&s.metrics(), &z).as_deref(), Some("0.0"));
    let resolved = wait_for("the resolution at the webhook", T, || {
        hook.got()
            .into_iter()
            .find(|g| g.body["status"] == "resolved")
    });
    let a = &resolved.body["alerts"][0];
    assert_eq!(a["annotations"]["reason"], "new_normal", "{a}");
    // 500 is normal now: another 20 scrapes at it fire nothing.
    let now = evaluations();
    wait_for("more scrapes at the new level", T, || {
        (evaluations() >= now + 20).then_some(())
    });
    let m = s.metrics();
    assert!(
        m.contains("anomaly_sidecar_transitions_total{rule=\"z\",to=\"firing\"} 1"),
        "{m}"
    );
    assert_eq!(metric_value(&m, &z).as_deref(), Some("0.0"));
    stop.store(true, Ordering::Relaxed);
    assert!(s.stop().success());
}
