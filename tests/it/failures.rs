//! Bad targets: each scrape failure marks only its own target down, logs once per change,
//! and disturbs nothing else.

use crate::common::*;
use crate::detection::T;
use std::time::Duration;

const RULES: &str = "rules:\n  - name: any\n    match: '{__name__=~\".+\"}'\n    method: zscore\n";

fn up(s: &Sidecar, target: &str) -> Option<String> {
    metric_value(
        &s.metrics(),
        &format!("anomaly_sidecar_up{{target=\"{target}\"}}"),
    )
}

#[test]
fn each_bad_target_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let good = Exporter::start(Reply::Body(
        "# TYPE ok gauge\nok 1\nweird NaN\ninf +Inf\n".into(),
    ));
    let status = Exporter::start(Reply::Status(500));
    let garbage = Exporter::start(Reply::Body("<html>502 Bad Gateway</html>\n".into()));
    let slow = Exporter::start(Reply::Slow(Duration::from_secs(3), "ok 1\n".into()));
    let huge = Exporter::start(Reply::Body(format!("big 1\n{}", "x 1\n".repeat(2000))));
    let hangup = Exporter::start(Reply::Hangup);
    let not_utf8 = Exporter::start(Reply::Bytes(b"ok{a=\"\xff\xfe\"} 1\n".to_vec()));
    let refused = format!("127.0.0.1:{}", free_port());
    let targets = vec![
        good.url(),
        status.url(),
        garbage.url(),
        slow.url(),
        huge.url(),
        hangup.url(),
        not_utf8.url(),
        format!("http://{refused}/metrics"),
    ];
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &targets,
        &["--scrape-timeout", "500ms", "--max-scrape-bytes", "4000"],
    );
    for bad in [
        status.name(),
        garbage.name(),
        slow.name(),
        huge.name(),
        hangup.name(),
        refused.clone(),
    ] {
        wait_for(&format!("{bad} down"), T, || {
            up(&s, &bad).filter(|v| v == "0")
        });
    }
    wait_for("good up", T, || up(&s, &good.name()).filter(|v| v == "1"));
    // NaN and +Inf samples are skipped for statistics; the finite series is evaluated.
    let m = s.metrics();
    assert!(m.contains(&format!("anomaly_value{{rule=\"any\",severity=\"warning\",method=\"zscore\",target=\"{}\",metric=\"ok\"}} 1.0", good.name())), "{m}");
    assert!(
        !m.contains("metric=\"weird\"") && !m.contains("metric=\"inf\""),
        "{m}"
    );
    // Only the finite series enters the store; NaN and +Inf carry no history.
    assert_eq!(
        metric_value(
            &m,
            &format!("anomaly_sidecar_series{{target=\"{}\"}}", good.name())
        )
        .as_deref(),
        Some("1")
    );
    // Let several failing scrapes pass: the warning is logged once per state change.
    std::thread::sleep(Duration::from_secs(2));
    let log = s.log();
    let count = |needle: &str| {
        log.lines()
            .filter(|l| l.contains("Scrape failed") && l.contains(needle))
            .count()
    };
    assert_eq!(count(&refused), 1, "{log}");
    assert!(
        log.lines().any(|l| l.contains("Scrape failed")
            && l.contains(&status.name())
            && l.contains("status 500")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Scrape failed")
            && l.contains(&garbage.name())
            && l.contains("malformed exposition text: line 1")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Scrape failed")
            && l.contains(&slow.name())
            && l.contains("timed out")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Scrape failed")
            && l.contains(&huge.name())
            && l.contains("--max-scrape-bytes")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Scrape failed")
            && l.contains(&not_utf8.name())
            && l.contains("not UTF-8")),
        "{log}"
    );
    // A target that recovers is up again, with one recovery line.
    status.set_body("ok 2\n");
    wait_for("recovered", T, || {
        up(&s, &status.name()).filter(|v| v == "1")
    });
    assert!(s.log().contains("Scrape recovered"));
}

#[test]
fn max_series_is_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let many: Vec<(String, f64)> = (0..30)
        .map(|i| (format!("{{i=\"{i}\"}}"), i as f64))
        .collect();
    let many: Vec<(&str, f64)> = many.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    let bomb = Exporter::start(Reply::Body(gauge_body("bomb", &many)));
    let calm = Exporter::start(Reply::Body(gauge_body(
        "calm",
        &[("{i=\"1\"}", 1.0), ("{i=\"2\"}", 2.0)],
    )));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[bomb.url(), calm.url()],
        &["--max-series", "10"],
    );
    let series = |t: &str| {
        metric_value(
            &s.metrics(),
            &format!("anomaly_sidecar_series{{target=\"{t}\"}}"),
        )
    };
    wait_for("bomb capped", T, || {
        series(&bomb.name()).filter(|v| v == "10")
    });
    wait_for("calm kept", T, || series(&calm.name()).filter(|v| v == "2"));
    let dropped: u64 = wait_for("dropped counted", T, || {
        metric_value(
            &s.metrics(),
            &format!(
                "anomaly_sidecar_dropped_series_total{{target=\"{}\"}}",
                bomb.name()
            ),
        )
        .and_then(|v| v.parse().ok())
        .filter(|n: &u64| *n >= 20)
    });
    assert!(dropped >= 20);
    assert!(metric_value(
        &s.metrics(),
        &format!(
            "anomaly_sidecar_dropped_series_total{{target=\"{}\"}}",
            calm.name()
        )
    )
    .is_none());
}

#[test]
fn scrapes_of_a_target_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    // Each scrape takes 700ms, the interval is 200ms and the timeout (3s) is longer than both.
    let slow = Exporter::start(Reply::Slow(Duration::from_millis(700), "g 1\n".into()));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[slow.url()],
        &["--scrape-timeout", "3s"],
    );
    wait_for("a few scrapes", T, || {
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_rule_evaluations_total{rule=\"any\"}",
        )
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n >= 4)
    });
    assert_eq!(
        slow.concurrency.1.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(up(&s, &slow.name()).as_deref(), Some("1"));
}

#[test]
fn retention_removes_series_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let e = Exporter::start(Reply::Body("a 1\nb 2\n".into()));
    let s = Sidecar::start(dir.path(), &rules, &[e.url()], &["--retention", "1s"]);
    let series = || {
        metric_value(
            &s.metrics(),
            &format!("anomaly_sidecar_series{{target=\"{}\"}}", e.name()),
        )
    };
    wait_for("two series", T, || series().filter(|v| v == "2"));
    e.set_body("a 1\n");
    wait_for("b expired", T, || series().filter(|v| v == "1"));
}

/// `sample_limit` and the label limits, as in Prometheus' scrape config: a scrape that breaks
/// one fails whole (`up` 0, the reason logged) and nothing of it is applied; a target's own
/// limit in --targets-file overrides the flag.
#[test]
fn scrape_limits_fail_a_scrape_whole_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: high\n    match: g\n    method: threshold\n    threshold: 100\n",
    );
    let five = gauge_body(
        "g",
        &[
            ("{i=\"0\"}", 1.0),
            ("{i=\"1\"}", 1.0),
            ("{i=\"2\"}", 1.0),
            ("{i=\"3\"}", 1.0),
            ("{i=\"4\"}", 1.0),
        ],
    );
    let many = Exporter::start(Reply::Body(five.clone()));
    let allowed = Exporter::start(Reply::Body(five));
    let long = Exporter::start(Reply::Body(format!(
        "g{{path=\"{}\"}} 1\n",
        "x".repeat(5000)
    )));
    let targets = write(
        dir.path(),
        "targets.yml",
        &format!(
            "targets:\n  - url: {}\n    sample_limit: 10\n",
            allowed.url()
        ),
    );
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[many.url(), long.url()],
        &[
            "--sample-limit",
            "3",
            "--label-value-length-limit",
            "4096",
            "--targets-file",
            targets.to_str().unwrap(),
        ],
    );
    wait_for("the allowed target up", T, || {
        up(&s, &allowed.name()).filter(|v| v == "1")
    });
    wait_for("the limited targets down", T, || {
        (up(&s, &many.name()).as_deref() == Some("0")
            && up(&s, &long.name()).as_deref() == Some("0"))
        .then_some(())
    });
    let log = s.log();
    assert!(
        log.contains("scrape limit exceeded: 5 samples, more than sample_limit 3"),
        "{log}"
    );
    assert!(
        log.contains(
            "label \"path\" value of 5000 bytes, longer than label_value_length_limit 4096"
        ),
        "{log}"
    );
    let m = s.metrics();
    let rows = |t: &str| {
        m.lines()
            .filter(|l| l.starts_with("anomaly_active{") && l.contains(&format!("target=\"{t}\"")))
            .count()
    };
    assert_eq!(
        rows(&many.name()),
        0,
        "nothing of a failed scrape is applied"
    );
    assert_eq!(rows(&long.name()), 0);
    assert_eq!(rows(&allowed.name()), 5);
    // Back under the limit: scraped again.
    many.set_body(gauge_body("g", &[("{i=\"0\"}", 1.0)]));
    wait_for("back up", T, || up(&s, &many.name()).filter(|v| v == "1"));
}
