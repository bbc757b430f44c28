//! The whole push path with a real Alertmanager (Debian's prometheus-alertmanager): a firing
//! alert shows in its /api/v2/alerts with our labels, is kept alive by re-sends, and goes
//! away when resolved.

use crate::common::*;
use crate::detection::T;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Am(Child);
impl Drop for Am {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RULES: &str = "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    severity: critical\n    annotations: {summary: 'g is {{ $value }}'}\n";

fn our_alerts(addr: &str) -> Option<Vec<serde_json::Value>> {
    let (status, body) = http("GET", addr, "/api/v2/alerts")?;
    if status != 200 {
        return None;
    }
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(
        all.into_iter()
            .filter(|a| a["labels"]["alertname"] == "too_high")
            .collect(),
    )
}

#[test]
fn real_alertmanager_sees_firing_and_resolved() {
    let Some(bin) = tool("prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "am.yml",
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n",
    );
    let port = free_port();
    let am_addr = format!("127.0.0.1:{port}");
    let _am = Am(Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address={am_addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    wait_for("alertmanager ready", T, || {
        http("GET", &am_addr, "/-/ready").filter(|(s, _)| *s == 200)
    });

    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--alertmanager",
            &format!("http://{am_addr}/"),
            "--resend-delay",
            "1s",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body("g 500\n");
    let alerts = wait_for("alert in alertmanager", T, || {
        our_alerts(&am_addr).filter(|a| !a.is_empty())
    });
    let a = &alerts[0];
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["metric"], "g");
    assert_eq!(a["labels"]["target"], exporter.name());
    assert_eq!(a["annotations"]["summary"], "g is 500");
    assert_eq!(a["annotations"]["method"], "threshold");
    // Re-sent while firing: more than one successful push after a few resend delays.
    std::thread::sleep(Duration::from_millis(2500));
    let pushes = s.number(
        "anomaly_sidecar_notifications_total{receiver=\"alertmanager-0\",result=\"success\"}",
    );
    assert!(pushes >= 2, "pushes {pushes}");
    assert_eq!(
        our_alerts(&am_addr).map(|a| a.len()),
        Some(1),
        "one alert, not one per push"
    );

    exporter.set_body("g 5\n");
    wait_for("alert resolved in alertmanager", T, || {
        our_alerts(&am_addr).filter(|a| a.is_empty())
    });
}
