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

/// 2024-03-18 00:00 UTC, a Monday; Berlin moves to summer time on 2024-03-31 at 01:00 UTC.
const MARCH_18: i64 = 1_710_720_000_000;
const BERLIN_SPRING: i64 = 1_711_846_800_000;
const DAY: i64 = 86_400_000;

/// Three weeks at 5 minutes of a service busy from 09:00 to 17:00 Berlin time (100, else 10,
/// ± 2), across the change to summer time.
fn berlin_office_hours() -> String {
    let mut s = String::from("timestamp,value\n");
    let mut seed = 1u64;
    for k in 0..(21 * 288) {
        let t = MARCH_18 + k * 300_000;
        let offset = if t < BERLIN_SPRING { 1 } else { 2 } * 3_600_000;
        let local_hour = (t + offset).rem_euclid(DAY) / 3_600_000;
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let noise = (seed >> 33) as f64 / (1u64 << 31) as f64 * 4.0 - 2.0;
        let level = if (9..17).contains(&local_hour) {
            100.0
        } else {
            10.0
        };
        s.push_str(&format!("{},{:.3}\n", t / 1000, level + noise));
    }
    s
}

/// The firings a rule file's backtest of `csv` writes, as epoch ms.
fn firings(dir: &std::path::Path, name: &str, rule: &str, csv: &std::path::Path) -> Vec<i64> {
    let rules = write(dir, &format!("{name}.yaml"), &format!("rules:\n{rule}"));
    let out_dir = dir.join(name);
    backtest(&rules, &[csv], &out_dir);
    let events = std::fs::read_to_string(out_dir.join("office.events.csv")).unwrap();
    events
        .lines()
        .skip(1)
        // (written as the input's timestamps were: Unix seconds)
        .map(|l| anomaly_sidecar::backtest::input::parse_timestamp(l).unwrap())
        .collect()
}

#[test]
fn buckets_in_local_time_follow_daylight_saving_and_auto_finds_the_day() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "office.csv", &berlin_office_hours());
    let rule = |extra: &str| {
        format!("  - name: s\n    match: office\n    method: seasonal\n    buckets: 24\n    window: 60\n    min_samples: 20\n{extra}")
    };
    let warm = MARCH_18 + 4 * DAY;
    let utc = firings(dir.path(), "utc", &rule(""), &csv);
    let berlin = firings(
        dir.path(),
        "berlin",
        &rule("    timezone: Europe/Berlin\n"),
        &csv,
    );
    let auto = firings(
        dir.path(),
        "auto",
        &rule("    season: auto\n    timezone: Europe/Berlin\n"),
        &csv,
    );
    // In UTC buckets the office opens an hour early from the change on: 07:00 UTC was quiet.
    assert!(
        utc.iter()
            .any(|t| (BERLIN_SPRING..BERLIN_SPRING + DAY).contains(t)),
        "{utc:?}"
    );
    assert_eq!(
        berlin.iter().filter(|t| **t >= warm).count(),
        0,
        "{berlin:?}"
    );
    // Before the rhythm shows (three days), `auto` judges by the 5-hour window: opening
    // fires. From then on the daily profile judges, in Berlin time.
    assert!(auto.iter().any(|t| *t < warm), "{auto:?}");
    assert_eq!(auto.iter().filter(|t| **t >= warm).count(), 0, "{auto:?}");
}
