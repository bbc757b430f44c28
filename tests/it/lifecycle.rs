//! An alert's whole life across the seams, with a real Alertmanager where one is named:
//! several alerts at once stay active past the hold, a target that goes down resolves its
//! alerts after the grace (everywhere at once), series that differ only in a label the sidecar
//! sets stay two alerts, and an edited rule, a removed rule and a restart in the middle of
//! `for` keep (or end) the incident as they should.

use crate::alertmanager::Am;
use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::time::{Duration, Instant};

const TOO_HIGH: &str =
    "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n";

fn body(values: &[(&str, f64)]) -> String {
    gauge_body("g", values)
}

/// Pending and firing alerts as `/api/v1/alerts` lists them.
fn api_alerts(s: &Sidecar) -> Vec<serde_json::Value> {
    let (_, b) = http("GET", &s.addr, "/api/v1/alerts").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

fn firing(s: &Sidecar) -> usize {
    api_alerts(s)
        .iter()
        .filter(|a| a["state"] == "firing")
        .count()
}

fn active_gauges(s: &Sidecar, value: &str) -> usize {
    s.metrics()
        .lines()
        .filter(|l| l.starts_with("anomaly_active{") && l.ends_with(&format!(" {value}")))
        .count()
}

fn status(g: &crate::notify::Got) -> &str {
    g.body["status"].as_str().unwrap_or("")
}

#[test]
fn five_alerts_at_once_stay_active_in_alertmanager_past_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let low: Vec<(String, f64)> = (0..5).map(|i| (format!("{{i=\"{i}\"}}"), 5.0)).collect();
    let as_refs = |v: &[(String, f64)]| -> String {
        let r: Vec<(&str, f64)> = v.iter().map(|(l, x)| (l.as_str(), *x)).collect();
        body(&r)
    };
    let exporter = Exporter::start(Reply::Body(as_refs(&low)));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--alertmanager", &am.url(), "--resend-delay", "1s"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let high: Vec<(String, f64)> = low.iter().map(|(l, _)| (l.clone(), 500.0)).collect();
    exporter.set_body(as_refs(&high));
    wait_for("five alerts in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 5)
    });
    // The hold is 4 × max(resend delay, interval) = 4 s: past it, every alert must still be
    // there, because each re-send carried all five.
    std::thread::sleep(Duration::from_secs(9));
    let alerts = am.active("too_high").unwrap();
    assert_eq!(alerts.len(), 5, "{alerts:#?}");
    assert_eq!(firing(&s), 5);
    assert_eq!(active_gauges(&s, "1.0"), 5);
    // One request per re-send with all of them, not one per alert: ~9 re-sends plus the five
    // firing events.
    let pushes = s.number(
        "anomaly_sidecar_notifications_total{receiver=\"alertmanager-0\",result=\"success\"}",
    );
    assert!((10..=25).contains(&pushes), "pushes {pushes}");

    exporter.set_body(as_refs(&low));
    wait_for("all resolved in alertmanager", T, || {
        am.active("too_high").filter(|a| a.is_empty())
    });
    assert_eq!(firing(&s), 0);
}

#[test]
fn a_target_down_resolves_its_alerts_after_the_grace_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let exporter = Exporter::start(Reply::Body(body(&[("", 5.0)])));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--alertmanager",
            &am.url(),
            "--webhook",
            &hook.url(),
            "--resend-delay",
            "1s",
            "--scrape-interval",
            "500ms",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    exporter.set_body(body(&[("", 500.0)]));
    wait_for("alert in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 1)
    });
    hook.wait_distinct(1);

    // Down: within the grace (3 intervals = 1.5 s) the alert stays active everywhere.
    let down = Instant::now();
    exporter.set(Reply::Status(500));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(firing(&s), 1, "still firing within the grace");
    assert_eq!(am.active("too_high").map(|a| a.len()), Some(1));
    let got = hook.wait_distinct(2);
    let resolved_after = down.elapsed();
    let res = &got[1];
    assert_eq!(status(res), "resolved");
    assert_eq!(
        res.body["alerts"][0]["annotations"]["reason"],
        "target_down"
    );
    assert!(
        resolved_after >= Duration::from_millis(1400),
        "resolved {resolved_after:?} after the target went down"
    );
    // …and Alertmanager, /api/v1/alerts and /metrics agree, for longer than the hold.
    wait_for("resolved in alertmanager", T, || {
        am.active("too_high").filter(|a| a.is_empty())
    });
    for _ in 0..3 {
        assert_eq!(firing(&s), 0);
        assert_eq!(active_gauges(&s, "1.0"), 0);
        assert_eq!(am.active("too_high").map(|a| a.len()), Some(0));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(s.log().contains("reason=target_down"), "{}", s.log());

    // Back, still high: a new incident (the old one was resolved for everyone).
    exporter.set_body(body(&[("", 500.0)]));
    let got = hook.wait_distinct(3);
    assert_eq!(status(&got[2]), "firing");
    wait_for("firing again in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 1)
    });
    assert_eq!(firing(&s), 1);
}

#[test]
fn series_differing_only_in_a_label_the_sidecar_sets_are_two_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: too_high\n    match: log_rate\n    method: threshold\n    threshold: 100\n    labels: {team: infra}\n",
    );
    let low =
        "log_rate{severity=\"error\",team=\"a\"} 1\nlog_rate{severity=\"warning\",team=\"a\"} 1\n";
    let high = "log_rate{severity=\"error\",team=\"a\"} 500\nlog_rate{severity=\"warning\",team=\"a\"} 500\n";
    let exporter = Exporter::start(Reply::Body(low.into()));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--alertmanager",
            &am.url(),
            "--webhook",
            &hook.url(),
            "--resend-delay",
            "1s",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body(high);
    let alerts = wait_for("two alerts in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 2)
    });
    let mut exported: Vec<String> = alerts
        .iter()
        .map(|a| {
            assert_eq!(a["labels"]["severity"], "warning");
            assert_eq!(a["labels"]["team"], "infra");
            assert_eq!(a["labels"]["exported_team"], "a");
            a["labels"]["exported_severity"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    exported.sort();
    assert_eq!(exported, ["error", "warning"]);
    let got = hook.wait_distinct(2);
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|g| g.header("X-Anomaly-Event-Id").unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "two event ids");
    let api = api_alerts(&s);
    assert_eq!(api.len(), 2);
    assert_ne!(api[0]["labels"], api[1]["labels"]);
    // /metrics names them the same way.
    let m = s.metrics();
    for sev in ["error", "warning"] {
        let needle = format!("exported_severity=\"{sev}\"");
        assert!(
            m.lines().any(|l| l.starts_with("anomaly_active{")
                && l.contains(&needle)
                && l.contains("team=\"infra\"")
                && l.contains("exported_team=\"a\"")),
            "{m}"
        );
    }
    // Resolving one resolves that one only.
    exporter.set_body(
        "log_rate{severity=\"error\",team=\"a\"} 1\nlog_rate{severity=\"warning\",team=\"a\"} 500\n",
    );
    wait_for("one left in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 1)
    });
    std::thread::sleep(Duration::from_secs(2));
    let left = am.active("too_high").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["labels"]["exported_severity"], "warning");
}

#[test]
fn an_annotation_edit_and_a_restart_keep_the_incident_and_a_removed_rule_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    annotations: {summary: first}\n",
    );
    let exporter = Exporter::start(Reply::Body(body(&[("", 5.0)])));
    let hook = Webhook::start_on(0, vec![]);
    let (hook_url, am_url) = (hook.url(), am.url());
    let args = [
        "--webhook",
        hook_url.as_str(),
        "--alertmanager",
        am_url.as_str(),
        "--resend-delay",
        "1s",
        "--rules-check-interval",
        "200ms",
    ];
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body(body(&[("", 500.0)]));
    let fired = hook.wait_distinct(1);
    assert_eq!(status(&fired[0]), "firing");
    let in_am = wait_for("firing in alertmanager", T, || {
        am.active("too_high").filter(|a| a.len() == 1)
    });
    let starts_at = in_am[0]["startsAt"].clone();

    // Edited while firing (reload), then a restart with the same data: the same incident.
    write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    severity: critical\n    annotations: {summary: second, runbook: 'http://x'}\n",
    );
    wait_for("reloaded", T, || {
        api_alerts(&s)
            .first()
            .filter(|a| a["annotations"]["summary"] == "second")
            .map(|_| ())
    });
    assert!(s.stop().success());
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    wait_for("firing after the restart", T, || {
        (firing(&s) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        hook.distinct().len(),
        1,
        "no second firing: {:#?}",
        hook.distinct()
    );
    assert_eq!(
        s.number("anomaly_sidecar_transitions_total{rule=\"too_high\",to=\"firing\"}"),
        0,
        "restored, not fired anew"
    );
    // Alertmanager and /api/v1/alerts agree: one alert, the one that fired, with its labels.
    let in_am = am.active("too_high").unwrap();
    assert_eq!(in_am.len(), 1, "{in_am:#?}");
    assert_eq!(in_am[0]["startsAt"], starts_at);
    assert_eq!(in_am[0]["labels"]["severity"], "warning");
    let api = api_alerts(&s);
    assert_eq!(api.len(), 1);
    assert_eq!(api[0]["labels"], in_am[0]["labels"]);

    // Renamed: the old rule's alert resolves with a reason, under the labels it fired with;
    // the new one fires as its own incident.
    write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: too_high_renamed\n    match: g\n    method: threshold\n    threshold: 100\n",
    );
    let got = hook.wait_distinct(3);
    let res = got
        .iter()
        .find(|g| status(g) == "resolved")
        .expect("a resolution");
    let a = &res.body["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "too_high");
    assert_eq!(
        a["labels"]["severity"], "warning",
        "the labels it fired with"
    );
    assert_eq!(a["annotations"]["reason"], "rule_removed");
    assert_eq!(a["startsAt"], fired[0].body["alerts"][0]["startsAt"]);
    assert_eq!(
        a["fingerprint"], fired[0].body["alerts"][0]["fingerprint"],
        "the same alert for Alertmanager"
    );
    let renamed = got.iter().find(|g| {
        status(g) == "firing" && g.body["alerts"][0]["labels"]["alertname"] == "too_high_renamed"
    });
    assert!(renamed.is_some(), "{got:#?}");
    wait_for("the old alert resolved in alertmanager", T, || {
        am.active("too_high").filter(|a| a.is_empty())
    });
    wait_for("the renamed one firing there", T, || {
        am.active("too_high_renamed").filter(|a| a.len() == 1)
    });
}

#[test]
fn a_rule_removed_while_the_sidecar_was_stopped_resolves_its_alert_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let exporter = Exporter::start(Reply::Body(body(&[("", 5.0)])));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body(body(&[("", 500.0)]));
    hook.wait_distinct(1);
    assert!(s.stop().success());
    write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: other\n    match: nothing_here\n    method: threshold\n    threshold: 1\n",
    );
    let _s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    let got = hook.wait_distinct(2);
    assert_eq!(status(&got[1]), "resolved");
    assert_eq!(
        got[1].body["alerts"][0]["annotations"]["reason"],
        "rule_removed"
    );
}

#[test]
fn a_restart_during_for_neither_restarts_nor_skips_the_countdown() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: slow\n    match: g\n    method: threshold\n    threshold: 100\n    for: 4s\n",
    );
    let exporter = Exporter::start(Reply::Body(body(&[("", 5.0)])));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body(body(&[("", 500.0)]));
    let pending = wait_for("pending", T, || {
        api_alerts(&s).into_iter().find(|a| a["state"] == "pending")
    });
    let active_at = pending["activeAt"].as_str().unwrap().to_string();
    let pending_seen = Instant::now();
    assert!(s.stop().success());
    std::thread::sleep(Duration::from_millis(1500));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--webhook", &hook.url()],
    );
    // Still pending, from the same moment.
    let again = wait_for("pending again", T, || api_alerts(&s).into_iter().next());
    if again["state"] == "pending" {
        assert_eq!(
            again["activeAt"],
            active_at.as_str(),
            "the countdown goes on"
        );
    }
    let got = hook.wait_distinct(1);
    let fired_after = pending_seen.elapsed();
    assert_eq!(status(&got[0]), "firing");
    // for = 4 s from activeAt: with the countdown restarted it would fire ≥ 4 s after the
    // restart, i.e. ≥ 5.5 s after pending was first seen.
    assert!(
        fired_after < Duration::from_millis(5200),
        "fired {fired_after:?} after pending was seen: the countdown restarted"
    );
    assert!(
        fired_after >= Duration::from_millis(2500),
        "fired {fired_after:?} after pending was seen: for was skipped"
    );
    assert_eq!(firing(&s), 1);
}
