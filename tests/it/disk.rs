//! A disk that fills: the data dir is a small tmpfs that the test fills to the last byte. The
//! sidecar keeps serving and detecting from memory, delivers events from its in-memory outbox,
//! says so in a gauge and the log, and writes memory back once space returns.

use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("mounting a tmpfs needs root (CI runs as root)");
            }
            eprintln!("skipping: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the filesystem refuses.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

fn body(hot: f64) -> String {
    let mut b = String::from("# TYPE g gauge\n");
    for i in 0..50 {
        let v = if i == 0 { hot } else { f64::from(i % 5) };
        b.push_str(&format!("g{{i=\"{i}\"}} {v}\n"));
    }
    b
}

fn hot_active(s: &Sidecar) -> Option<()> {
    s.metrics()
        .lines()
        .any(|l| {
            l.starts_with("anomaly_active{")
                && l.contains("i=\"0\"")
                && l.rsplit(' ').next() == Some("1.0")
        })
        .then_some(())
}

#[test]
fn a_full_disk_degrades_to_memory_and_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(_mount) = Tmpfs::mount(&dir.join("data"), "64m") else {
        return;
    };
    let rules = write(
        dir,
        "rules.yaml",
        "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n    op: gt\n",
    );
    let exporter = Exporter::start(Reply::Body(body(1.0)));
    let hook = Webhook::start_on(0, vec![]);
    let hook_url = hook.url();
    let args = ["--webhook", hook_url.as_str()];
    let mut s = Sidecar::start(dir, &rules, &[exporter.url()], &args);
    s.wait_metric("anomaly_sidecar_store_last_write_successful", "1", T);

    let filler = dir.join("data").join("filler");
    fill(&filler);
    s.wait_metric("anomaly_sidecar_store_last_write_successful", "0", T);
    assert!(s.number("anomaly_sidecar_store_errors_total{operation=\"write\"}") >= 1);
    assert!(
        s.log().contains("Cannot write to the history store"),
        "{}",
        s.log()
    );

    // Still detecting, and still notifying, from memory.
    exporter.set_body(body(500.0));
    wait_for("anomaly from memory", T, || hot_active(&s));
    let fired = hook.wait_distinct(1);
    assert_eq!(fired[0].body["status"], "firing");
    assert_eq!(s.number("anomaly_sidecar_store_last_write_successful"), 0);

    std::fs::remove_file(&filler).unwrap();
    s.wait_metric(
        "anomaly_sidecar_store_last_write_successful",
        "1",
        Duration::from_secs(30),
    );
    assert!(
        s.log().contains("History store writable again"),
        "{}",
        s.log()
    );

    // What was written back is what a restart finds: every series, and the alert still firing
    // (not fired a second time).
    std::thread::sleep(Duration::from_millis(600));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let again = Sidecar::start(dir, &rules, &[exporter.url()], &args);
    assert!(again.log().contains("series=50"), "{}", again.log());
    wait_for("anomaly after restart", T, || hot_active(&again));
    std::thread::sleep(Duration::from_secs(1));
    let firings = hook
        .distinct()
        .into_iter()
        .filter(|g| g.body["status"] == "firing")
        .count();
    assert_eq!(
        firings, 1,
        "the firing alert survived the outage and the restart"
    );
}
