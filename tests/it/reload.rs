//! Hot reload: file change (incl. a symlink swap as Kubernetes does), SIGHUP and POST /-/reload.
//! A bad file keeps the last good rules and sets the reload gauge to 0.

use crate::common::*;
use crate::detection::T;

const ONE: &str =
    "rules:\n  - name: first\n    match: g\n    method: threshold\n    threshold: 0\n";
const TWO: &str = "rules:\n  - name: first\n    match: g\n    method: threshold\n    threshold: 0\n  - name: second\n    match: g\n    method: threshold\n    threshold: 100\n";

fn has_rule(s: &Sidecar, rule: &str) -> bool {
    s.metrics()
        .lines()
        .any(|l| l.starts_with(&format!("anomaly_active{{rule=\"{rule}\"")))
}

#[test]
fn file_change_symlink_swap_and_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes layout: rules.yaml → ..data/rules.yaml, ..data → a versioned directory.
    let v1 = dir.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    write(&v1, "rules.yaml", ONE);
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    let rules = dir.path().join("rules.yaml");
    std::os::unix::fs::symlink("..data/rules.yaml", &rules).unwrap();
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--rules-check-interval", "200ms"],
    );
    wait_for("first rule", T, || has_rule(&s, "first").then_some(()));
    assert!(!has_rule(&s, "second"));
    s.wait_metric("anomaly_active{rule=\"first\"", "1.0", T);

    // Swap the ..data symlink atomically, as the kubelet does.
    let v2 = dir.path().join("v2");
    std::fs::create_dir(&v2).unwrap();
    write(&v2, "rules.yaml", TWO);
    std::os::unix::fs::symlink("v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    wait_for("second rule", T, || has_rule(&s, "second").then_some(()));
    // The unchanged rule kept its firing alert: no second firing.
    assert_eq!(
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_transitions_total{rule=\"first\",to=\"firing\"}"
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric_value(&s.metrics(), "anomaly_sidecar_rules_last_reload_successful").as_deref(),
        Some("1")
    );

    // A broken file (here: half-written, empty) keeps the good rules running.
    write(&v2, "rules.yaml", "");
    s.wait_metric("anomaly_sidecar_rules_last_reload_successful", "0", T);
    assert!(has_rule(&s, "first") && has_rule(&s, "second"));
    assert!(s.log().contains("Reload failed"), "{}", s.log());

    // Removing a rule drops its gauges.
    write(&v2, "rules.yaml", ONE);
    s.wait_metric("anomaly_sidecar_rules_last_reload_successful", "1", T);
    wait_for("second gone", T, || (!has_rule(&s, "second")).then_some(()));
}

#[test]
fn sighup_and_lifecycle_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", ONE);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    // Long check interval: only the explicit triggers reload.
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--rules-check-interval", "1h", "--web.enable-lifecycle"],
    );
    wait_for("first rule", T, || has_rule(&s, "first").then_some(()));
    write(dir.path(), "rules.yaml", TWO);
    s.signal("HUP");
    wait_for("second rule after SIGHUP", T, || {
        has_rule(&s, "second").then_some(())
    });

    write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: x\n    match: g\n    method: bogus\n",
    );
    let (status, body) = http("POST", &s.addr, "/-/reload").unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("unknown method"), "{body}");
    assert_eq!(
        metric_value(&s.metrics(), "anomaly_sidecar_rules_last_reload_successful").as_deref(),
        Some("0")
    );
    write(dir.path(), "rules.yaml", ONE);
    let (status, body) = http("POST", &s.addr, "/-/reload").unwrap();
    assert_eq!((status, body.trim()), (200, "ok: 1 rules"));
    wait_for("second gone", T, || (!has_rule(&s, "second")).then_some(()));
    assert_eq!(http("GET", &s.addr, "/-/reload").unwrap().0, 405);
}

#[test]
fn lifecycle_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", ONE);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &["http://127.0.0.1:1/metrics".into()],
        &[],
    );
    assert_eq!(http("POST", &s.addr, "/-/reload").unwrap().0, 403);
    assert_eq!(http("GET", &s.addr, "/-/healthy").unwrap().0, 200);
    assert_eq!(http("GET", &s.addr, "/-/ready").unwrap().0, 200);
    assert_eq!(http("GET", &s.addr, "/nope").unwrap().0, 404);
}
