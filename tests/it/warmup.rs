//! `--warmup-from`: a fresh sidecar judges its first scrape against history read from a real
//! Prometheus (backfilled with promtool), and an unreachable one is only a warning.

use crate::backtest::{openmetrics, HistoryPrometheus};
use crate::common::*;
use std::time::Duration;

const RULES: &str =
    "rules:\n  - name: z\n    match: '{__name__=~\"warm_.+\"}'\n    method: zscore\n    window: 60\n";

#[test]
fn the_first_scrape_is_judged_against_history_from_prometheus() {
    // Prometheus holds 5 minutes of warm_value{a="1"} around 11, under its own target labels,
    // and a replica's copy of the series that the selector leaves out.
    let mut history = openmetrics(
        "warm_value",
        "a=\"1\",instance=\"10.0.0.1:8080\",job=\"svc\",pod=\"web-0\"",
        now_s() - 2,
        300,
        None,
    );
    history = history.replace("# EOF\n", "");
    history.push_str(
        &openmetrics(
            "warm_value",
            "a=\"1\",instance=\"10.0.0.2:8080\",job=\"svc\",pod=\"web-1\"",
            now_s() - 2,
            300,
            None,
        )
        .replace("# TYPE warm_value gauge\n", ""),
    );
    // And a series whose own `instance` label Prometheus kept as `exported_instance`.
    history = history.replace("# EOF\n", "");
    history.push_str(&openmetrics(
        "warm_exported",
        "exported_instance=\"10.0.0.9:9100\",instance=\"10.0.0.1:8080\",job=\"svc\",pod=\"web-0\"",
        now_s() - 2,
        300,
        None,
    ));
    let Some(prom) = HistoryPrometheus::start(&history) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    // From its first scrape the exporter says 100: far off the history, and constant, so a
    // sidecar without history never fires (its window's std stays 0).
    let exporter = Exporter::start(Reply::Body(
        "warm_value{a=\"1\"} 100\nwarm_exported{instance=\"10.0.0.9:9100\"} 100\n".into(),
    ));
    let url = format!("http://{}", prom.addr);
    for d in ["warm", "replicas"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let warm = Sidecar::start(
        &dir.path().join("warm"),
        &rules,
        &[exporter.url()],
        &[
            "--scrape-interval",
            "1s",
            "--warmup-from",
            &url,
            "--warmup-selector",
            "pod=\"web-0\"",
        ],
    );
    let firing = "anomaly_sidecar_transitions_total{rule=\"z\",to=\"firing\"}";
    wait_for("the first scrape fires", Duration::from_secs(20), || {
        (warm.number(firing) >= 1).then_some(())
    });
    // Fired at the first evaluation: judged against the 60 samples from Prometheus.
    let log = warm.log();
    assert!(
        log.contains("Warm start: history for 2 of 2 series (0 missing, 0 matched several series)"),
        "{log}"
    );
    let first_firing = log
        .lines()
        .find(|l| l.contains("FIRING"))
        .unwrap_or_default();
    assert!(
        first_firing.contains("mean=1"),
        "baseline from the history (~11): {first_firing}"
    );

    // Without the selector both pods' copies match: skipped, counted, never mixed.
    let replicas = Sidecar::start(
        &dir.path().join("replicas"),
        &rules,
        &[exporter.url()],
        &["--scrape-interval", "1s", "--warmup-from", &url],
    );
    wait_for("warm start logged", Duration::from_secs(20), || {
        replicas
            .log()
            .contains("Warm start: history for 1 of 2 series (0 missing, 1 matched several series)")
            .then_some(())
    });
}

#[test]
fn an_unreachable_prometheus_is_a_warning_and_the_sidecar_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("warm_value{a=\"1\"} 100\n".into()));
    // Credentials in the URL never reach a log line or an error.
    let url = format!(
        "http://wuser9:pa55word@127.0.0.1:{}/?access_token=t0ken1&step=1",
        free_port()
    );
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--warmup-from", &url, "--warmup-timeout", "2s"],
    );
    wait_for("scrapes evaluated", Duration::from_secs(20), || {
        (s.number("anomaly_sidecar_rule_evaluations_total{rule=\"z\"}") >= 3).then_some(())
    });
    let log = s.log();
    assert!(
        log.contains("Warm start failed, the series start from scratch"),
        "{log}"
    );
    for secret in ["pa55word", "t0ken1", "wuser9"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    assert!(log.contains("access_token=xxxxx"), "{log}");
    // A malformed URL is a startup error, as any bad flag.
    let out = run(&[
        "run",
        "--rules",
        rules.to_str().unwrap(),
        "--target",
        &exporter.url(),
        "--warmup-from",
        "ftp://reader:pa55word@prometheus:9090/?token=t0ken1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("d2").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --warmup-from"), "{stderr}");
    assert!(
        !stderr.contains("pa55word") && !stderr.contains("t0ken1"),
        "{stderr}"
    );
}

/// A Prometheus that accepts and never answers: a target's first scrape waits for it (up to
/// --warmup-timeout), but another target's scrapes are judged meanwhile and SIGTERM stops the
/// sidecar at once.
#[test]
fn a_first_scrape_waiting_for_history_blocks_neither_other_targets_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in silent.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    // `warm` is selected by the rule (its first scrape waits); `other` by none.
    let warm = Exporter::start(Reply::Body("warm_value{a=\"1\"} 100\n".into()));
    let other = Exporter::start(Reply::Body("other_value 1\n".into()));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[warm.url(), other.url()],
        &["--warmup-from", &url, "--warmup-timeout", "60s"],
    );
    wait_for("the other target judged", Duration::from_secs(10), || {
        metric_value(
            &s.metrics(),
            &format!(
                "anomaly_sidecar_scrape_samples{{target=\"{}\"}}",
                other.name()
            ),
        )
        .filter(|v| v == "1")
    });
    assert_eq!(
        s.number("anomaly_sidecar_rule_evaluations_total{rule=\"z\"}"),
        0,
        "the warm target's first scrape still waits for its history"
    );
    assert!(!held.lock().unwrap().is_empty(), "history was asked for");
    let stopping = std::time::Instant::now();
    let status = s.stop();
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "shutdown took {:?} behind a waiting warm start",
        stopping.elapsed()
    );
}
