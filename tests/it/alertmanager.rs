//! The whole push path with a real Alertmanager (Debian's prometheus-alertmanager): a firing
//! alert shows in its /api/v2/alerts with our labels, is kept alive by re-sends, and goes
//! away when resolved.

use crate::common::*;
use crate::detection::T;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A real Alertmanager on a free port; killed on drop.
pub struct Am {
    child: Child,
    pub addr: String,
}

impl Drop for Am {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Am {
    /// Starts Debian's prometheus-alertmanager (None: not installed, outside CI) and waits
    /// until it is ready.
    pub fn start(dir: &std::path::Path) -> Option<Self> {
        let bin = tool("prometheus-alertmanager")?;
        let config = write(
            dir,
            "am.yml",
            "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n",
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Self { child, addr };
        wait_for("alertmanager ready", T, || {
            http("GET", &am.addr, "/-/ready").filter(|(s, _)| *s == 200)
        });
        Some(am)
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Alerts named `alertname` that Alertmanager has not resolved (it lists no others).
    pub fn active(&self, alertname: &str) -> Option<Vec<serde_json::Value>> {
        let (status, body) = http("GET", &self.addr, "/api/v2/alerts")?;
        if status != 200 {
            return None;
        }
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        Some(
            all.into_iter()
                .filter(|a| a["labels"]["alertname"] == alertname)
                .collect(),
        )
    }
}

const RULES: &str = "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    severity: critical\n    annotations: {summary: 'g is {{ $value }}'}\n";

#[test]
fn real_alertmanager_sees_firing_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--alertmanager", &am.url(), "--resend-delay", "1s"],
    );
    std::thread::sleep(Duration::from_millis(500));
    exporter.set_body("g 500\n");
    let alerts = wait_for("alert in alertmanager", T, || {
        am.active("too_high").filter(|a| !a.is_empty())
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
        am.active("too_high").map(|a| a.len()),
        Some(1),
        "one alert, not one per push"
    );

    exporter.set_body("g 5\n");
    wait_for("alert resolved in alertmanager", T, || {
        am.active("too_high").filter(|a| a.is_empty())
    });
}
