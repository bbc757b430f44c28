//! Against a real node_exporter (Debian's prometheus-node-exporter): its own metrics flow
//! through, and a value injected through its textfile collector flips the gauges and back.

use crate::common::*;
use crate::detection::T;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn set_textfile(dir: &std::path::Path, v: f64) {
    let tmp = dir.join("injected.prom.tmp");
    std::fs::write(
        &tmp,
        format!("# TYPE injected_value gauge\ninjected_value {v}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("injected.prom")).unwrap();
}

#[test]
fn real_node_exporter() {
    let Some(bin) = tool("prometheus-node-exporter") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let textfiles = dir.path().join("textfile");
    std::fs::create_dir(&textfiles).unwrap();
    set_textfile(&textfiles, 10.0);
    let port = free_port();
    let _node = Node(
        Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--collector.textfile.directory={}",
                textfiles.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let node_addr = format!("127.0.0.1:{port}");
    wait_for("node_exporter up", T, || {
        http("GET", &node_addr, "/metrics").filter(|(s, _)| *s == 200)
    });
    let rules = write(
        dir.path(),
        "rules.yaml",
        "defaults: {window: 30, min_samples: 5}\nrules:\n  - name: injected\n    match: injected_value\n    method: zscore\n  - name: cpu\n    match: 'node_cpu_seconds_total{mode=\"idle\"}'\n    method: zscore\n  - name: load_seen\n    match: node_load1\n    method: threshold\n    threshold: -1\n",
    );
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[format!("http://{node_addr}/metrics")],
        &[],
    );
    let target = node_addr.clone();
    // node_load1 is always > -1: the threshold rule fires on real data.
    s.wait_metric(
        &format!("anomaly_active{{rule=\"load_seen\",severity=\"warning\",method=\"threshold\",target=\"{target}\",metric=\"node_load1\"}}"),
        "1.0",
        T,
    );
    // Counters are rated: cpu idle seconds per second stays within [0, cores].
    wait_for("cpu idle rate", T, || {
        s.metrics()
            .lines()
            .any(|l| l.starts_with("anomaly_value{rule=\"cpu\"") && l.contains("mode=\"idle\""))
            .then_some(())
    });
    let m = s.metrics();
    assert_eq!(
        metric_value(&m, &format!("anomaly_sidecar_up{{target=\"{target}\"}}")).as_deref(),
        Some("1")
    );

    // Vary the injected value to build history, then spike it.
    let active = format!("anomaly_active{{rule=\"injected\",severity=\"warning\",method=\"zscore\",target=\"{target}\",metric=\"injected_value\"}}");
    for i in 0..12 {
        set_textfile(&textfiles, 10.0 + (i % 3) as f64);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(metric_value(&s.metrics(), &active).as_deref(), Some("0.0"));
    set_textfile(&textfiles, 1000.0);
    s.wait_metric(&active, "1.0", T);
    set_textfile(&textfiles, 11.0);
    s.wait_metric(&active, "0.0", T);
}
