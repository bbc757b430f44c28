//! Crash ordering of an alert and its notifications: the sidecar aborts (as kill -9 would)
//! at each step between the evaluation that fires an alert and its delivery, then starts
//! again on the same data. Whatever the step, the receiver sees the incident fire once and
//! resolve once: never a delivery without the state, never a lost resolution, never two
//! firings for one incident. Debug builds read the failpoint from
//! `ANOMALY_SIDECAR_FAILPOINT`.

use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::time::Duration;

const RULES: &str =
    "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n";

fn crash_at(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let hook = Webhook::start_on(0, vec![]);
    let url = hook.url();
    let args = ["--webhook", url.as_str()];
    let mut s = Sidecar::spawn_env(
        dir.path(),
        &rules,
        &[exporter.url()],
        &args,
        &[("ANOMALY_SIDECAR_FAILPOINT", point)],
    );
    s.wait_ready(|addr| http("GET", addr, "/-/ready").filter(|(st, _)| *st == 200));
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body("g 500\n");
    let status = wait_for(&format!("abort at {point}"), T, || {
        s.child.try_wait().ok().flatten()
    });
    assert!(!status.success(), "aborted at {point}");
    assert!(
        s.log().contains(&format!("failpoint {point}")),
        "{}",
        s.log()
    );

    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    let got = hook.wait_distinct(1);
    assert_eq!(got[0].body["status"], "firing", "{point}");
    wait_for("firing after the restart", T, || {
        metric_value(&s.metrics(), "anomaly_active{rule=\"too_high\"").filter(|v| v == "1.0")
    });
    // A while longer: no second firing of the same incident.
    std::thread::sleep(Duration::from_secs(1));
    let firings: Vec<_> = hook
        .distinct()
        .into_iter()
        .filter(|g| g.body["status"] == "firing")
        .collect();
    assert_eq!(firings.len(), 1, "{point}: {firings:#?}");

    exporter.set_body("g 5\n");
    let got = hook.wait_distinct(2);
    assert_eq!(got[1].body["status"], "resolved", "{point}");
    assert_eq!(
        got[1].body["alerts"][0]["startsAt"], got[0].body["alerts"][0]["startsAt"],
        "{point}: the resolution is the firing's"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(hook.distinct().len(), 2, "{point}");
}

#[test]
fn killed_after_the_scrape_is_written_but_before_the_alert_is() {
    crash_at("before_alert_commit");
}

#[test]
fn killed_after_the_alert_and_its_event_are_written_but_before_delivery() {
    crash_at("after_alert_commit");
}

#[test]
fn killed_after_delivery_but_before_the_outbox_forgets_the_event() {
    crash_at("after_delivery");
}
