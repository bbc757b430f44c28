//! The alerting path with the real programs: node_exporter and a test exporter → sidecar →
//! Prometheus (with deploy/prometheus/anomaly-alerts.yml) → Alertmanager → a webhook served by
//! the test. Also the sidecar's own --alertmanager push into the same Alertmanager, and
//! promtool on the rules file and its unit tests.

use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/anomaly-alerts.yml"
);
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/anomaly-alerts.test.yml"
);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &std::path::Path, args: &[String]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn promtool_checks_and_tests_the_rules_file() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", ALERTS],
        vec!["test", "rules", ALERTS_TEST],
    ] {
        let out = Command::new(&promtool).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Percent-encodes a query parameter.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's first result, if any.
fn query(prom: &str, q: &str) -> Option<String> {
    let (status, body) = http("GET", prom, &format!("/api/v1/query?query={}", encode(q)))?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

#[test]
fn anomaly_reaches_alertmanager_through_prometheus_and_directly() {
    let (Some(prometheus), Some(am), Some(node)) = (
        tool("prometheus"),
        tool("prometheus-alertmanager"),
        tool("prometheus-node-exporter"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();

    let node_addr = format!("127.0.0.1:{}", free_port());
    let _node = spawn(
        &node,
        &[
            format!("--web.listen-address={node_addr}"),
            "--no-collector.systemd".into(),
        ],
    );
    let exporter = Exporter::start(Reply::Body("jumpy_value 5\n".into()));

    let hook = Webhook::start_on(0, vec![]);
    let am_addr = format!("127.0.0.1:{}", free_port());
    write(
        dir.path(),
        "am.yml",
        &format!(
            "route:\n  receiver: hook\n  group_by: [alertname, rule]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{}'\n        send_resolved: true\n",
            hook.url()
        ),
    );
    let _am = spawn(
        &am,
        &[
            format!("--config.file={}", d("am.yml")),
            format!("--storage.path={}", d("am-data")),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".into(),
        ],
    );

    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: jump\n    match: jumpy_value\n    method: threshold\n    threshold: 100\n    severity: critical\n    annotations: {summary: 'jumpy_value is {{ $value }}'}\n  - name: node_load\n    match: node_load1\n    method: zscore\n",
    );
    let sidecar = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url(), format!("http://{node_addr}/metrics")],
        &[
            "--alertmanager",
            &format!("http://{am_addr}"),
            "--resend-delay",
            "1s",
        ],
    );

    let prom_addr = format!("127.0.0.1:{}", free_port());
    write(
        dir.path(),
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{ALERTS}']\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_addr}']\n\
             scrape_configs:\n  - job_name: anomaly-sidecar\n    static_configs:\n      - targets: ['{}']\n",
            sidecar.addr
        ),
    );
    let _prom = spawn(
        &prometheus,
        &[
            format!("--config.file={}", d("prometheus.yml")),
            format!("--storage.tsdb.path={}", d("prom-data")),
            format!("--web.listen-address={prom_addr}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
    );
    wait_for("prometheus ready", T, || {
        http("GET", &prom_addr, "/-/ready").filter(|(s, _)| *s == 200)
    });
    wait_for("sidecar scraped by prometheus", T, || {
        query(&prom_addr, "anomaly_active{rule=\"jump\"}").filter(|v| v == "0")
    });

    exporter.set_body("jumpy_value 500\n");
    wait_for("anomaly_active 1 in prometheus", T, || {
        query(&prom_addr, "anomaly_active{rule=\"jump\"}").filter(|v| v == "1")
    });
    // Through Prometheus: alertname AnomalyDetected with the series' labels.
    let via_prometheus = |status: &str| {
        hook.got().into_iter().find(|g| {
            // (node_load, a zscore on a real node_exporter, may fire too: not what is checked)
            g.body["status"] == status
                && g.body["alerts"][0]["labels"]["alertname"] == "AnomalyDetected"
                && g.body["alerts"][0]["labels"]["rule"] == "jump"
        })
    };
    let fired = wait_for("AnomalyDetected at the webhook", T, || {
        via_prometheus("firing")
    });
    let a = &fired.body["alerts"][0];
    assert_eq!(a["labels"]["rule"], "jump");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["metric"], "jumpy_value");
    assert_eq!(a["labels"]["target"], exporter.name());
    assert_eq!(a["labels"]["job"], "anomaly-sidecar");
    assert_eq!(
        a["annotations"]["summary"],
        format!("Anomaly jump on jumpy_value ({})", exporter.name())
    );
    // The sidecar's own push: alertname is the rule, annotations carried over.
    let direct = wait_for("the sidecar's own push at the webhook", T, || {
        hook.got().into_iter().find(|g| {
            g.body["status"] == "firing" && g.body["alerts"][0]["labels"]["alertname"] == "jump"
        })
    });
    assert_eq!(
        direct.body["alerts"][0]["annotations"]["summary"],
        "jumpy_value is 500"
    );

    // Every query of the Grafana dashboard is valid PromQL, and its band panel has data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/anomaly-sidecar.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.push(
        dashboard["annotations"]["list"][1]["expr"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert!(exprs.len() >= 10);
    for e in &exprs {
        let q = e
            .replace("=~\"$rule\"", "=~\".*\"")
            .replace("=~\"$target\"", "=~\".*\"")
            .replace("\"$rule\"", "\"jump\"");
        assert!(!q.contains('$'), "unsubstituted variable in {q}");
        let (status, body) = http(
            "GET",
            &prom_addr,
            &format!("/api/v1/query?query={}", encode(&q)),
        )
        .unwrap();
        assert_eq!(status, 200, "{q}: {body}");
    }
    // A `gt` threshold rule has only an upper edge.
    for band in ["anomaly_upper_bound", "anomaly_value"] {
        assert!(
            query(&prom_addr, &format!("{band}{{rule=\"jump\"}}")).is_some(),
            "{band}"
        );
    }

    exporter.set_body("jumpy_value 5\n");
    wait_for(
        "resolved through prometheus",
        Duration::from_secs(60),
        || via_prometheus("resolved"),
    );
    wait_for("resolved direct push", Duration::from_secs(60), || {
        hook.got().into_iter().find(|g| {
            g.body["status"] == "resolved" && g.body["alerts"][0]["labels"]["alertname"] == "jump"
        })
    });
}
