//! History survives a restart: the first scrape after it is judged against the old window.
//! A data dir locked by another process is refused.

use crate::common::*;
use crate::detection::T;

const RULES: &str =
    "rules:\n  - name: z\n    match: g\n    method: zscore\n    window: 50\n    min_samples: 20\n";

#[test]
fn restart_keeps_windows() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = std::sync::Arc::new(Exporter::start(Reply::Body(String::new())));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (e, stop) = (exporter.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut t = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                e.set_body(format!("g {}\n", 10 + t % 3));
                t += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
    }
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    wait_for("25 evaluations", T, || {
        metric_value(
            &s.metrics(),
            "anomaly_sidecar_rule_evaluations_total{rule=\"z\"}",
        )
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n >= 25)
    });
    assert!(s.stop().success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(200));
    exporter.set_body("g 1000\n");
    // Restarted: with min_samples 20, only the old history can make the first scrape fire.
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    // Without the old window, min_samples 20 would keep it quiet for 20 scrapes, and a
    // constant 1000 would never fire at all.
    wait_for("firing from old history", T, || {
        s.log().contains("FIRING").then_some(())
    });
    assert!(
        s.log().contains("Store opened") && s.log().contains("series=1"),
        "{}",
        s.log()
    );
}

#[test]
fn locked_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &["http://127.0.0.1:1/metrics".into()],
        &[],
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let out = run(&[
        "run",
        "--rules",
        rules.to_str().unwrap(),
        "--target",
        "http://127.0.0.1:1/metrics",
        "--listen",
        &listen,
        "--data-dir",
        s.data_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the store") && err.contains("another anomaly-sidecar"),
        "{err}"
    );
}
