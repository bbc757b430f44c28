//! The seasonal profile through a restart: a series with a two-level rhythm (a 4 s season
//! in two buckets) fires while its buckets are young, and after a restart its persisted
//! profile knows both levels at once, where one rebuilt from the stored window would not.

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// window 3: the store keeps 4 samples, too few to rebuild a bucket of the other half of the
// season; only the persisted profile knows it after a restart.
const RULES: &str = "rules:\n  - name: s\n    match: rhythm\n    method: seasonal\n    season: 4s\n    buckets: 2\n    window: 3\n    min_samples: 3\n";

/// 10 in the first half of each 4 s season, 100 in the second (± 1), NaN (skipped) near the
/// turns so no sample is judged against the neighbouring bucket.
fn rhythm(exporter: Arc<Exporter>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let phase = ms % 4000;
            let level = if phase < 2000 { 10.0 } else { 100.0 };
            let near_turn = phase % 2000 < 400 || phase % 2000 > 1800;
            let v = if near_turn {
                f64::NAN
            } else {
                level + (tick % 3) as f64 - 1.0
            };
            exporter.set_body(format!("rhythm {v}\n"));
            tick += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn a_restart_keeps_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let exporter = Arc::new(Exporter::start(Reply::Body("rhythm 10\n".into())));
    let stop = Arc::new(AtomicBool::new(false));
    rhythm(exporter.clone(), stop.clone());
    let flags = ["--scrape-interval", "200ms"];
    let firing = "anomaly_sidecar_transitions_total{rule=\"s\",to=\"firing\"}";
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &flags);
    // Young buckets fall back to the 3-sample window: the first turns to the other level fire.
    wait_for(
        "a turn fires while the profile is young",
        Duration::from_secs(30),
        || (s.number(firing) >= 1).then_some(()),
    );
    // Four more seasons: both buckets full, and persisted at each turn.
    std::thread::sleep(Duration::from_secs(16));
    let settled = s.number(firing);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(s.number(firing), settled, "a known rhythm stops firing");
    assert!(s.stop().success());

    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &flags);
    wait_for("evaluating again", Duration::from_secs(20), || {
        (s.number("anomaly_sidecar_rule_evaluations_total{rule=\"s\"}") >= 5).then_some(())
    });
    // Three seasons, six turns: judged against the restored buckets, none fires.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(s.number(firing), 0, "{}", s.log());
    stop.store(true, Ordering::Relaxed);
}
