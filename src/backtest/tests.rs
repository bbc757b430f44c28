//! Replays with worked numbers: where a rule fires, for how long, and what `for`,
//! `keep_firing_for` and `min_anomalous` change, in the data's time.

use super::input::{Recorded, Row};
use super::*;

fn rules(yaml: &str) -> RuleSet {
    crate::config::rules::parse("rules.yaml", yaml).unwrap()
}

/// A flat-ish series at 60 s steps with `spikes` (row, value) set.
fn series(n: usize, spikes: &[(usize, f64)]) -> Recorded {
    let rows = (0..n)
        .map(|i| {
            let value = spikes
                .iter()
                .find(|s| s.0 == i)
                .map_or(10.0 + (i % 3) as f64, |s| s.1);
            Row {
                ts_ms: 1_000_000 + i as i64 * 60_000,
                text: format!("t{i}"),
                value,
            }
        })
        .collect();
    Recorded {
        name: "s".into(),
        metric: "s".into(),
        labels: Vec::new(),
        target: "s.csv".into(),
        rows,
        backwards: None,
    }
}

const ZSCORE: &str = "rules:\n  - name: z\n    match: '{__name__=~\".+\"}'\n    method: zscore\n";

#[test]
fn a_spike_fires_once_and_resolves_on_the_next_row() {
    let r = replay(&rules(ZSCORE), &series(40, &[(30, 50.0)]));
    assert_eq!(r.firings, vec![30]);
    let active: Vec<usize> = (0..40).filter(|&i| r.active[i]).collect();
    assert_eq!(active, vec![30]);
    assert!(r.scores[30] > 0.5 && r.scores[30] < 1.0);
    assert!(r.scores[..30].iter().all(|s| *s < 0.5));
    // Before min_samples (10) nothing is judged.
    assert!(r.scores[..10].iter().all(|s| *s == 0.0));
}

#[test]
fn the_score_keeps_ordering_large_deviations() {
    let small = replay(&rules(ZSCORE), &series(40, &[(30, 50.0)]));
    let large = replay(&rules(ZSCORE), &series(40, &[(30, 5000.0)]));
    let huge = replay(&rules(ZSCORE), &series(40, &[(30, 5e9)]));
    assert!(small.scores[30] < large.scores[30]);
    assert!(large.scores[30] < huge.scores[30] && huge.scores[30] < 1.0);
}

#[test]
fn for_counts_data_time_and_keep_firing_for_holds_after_the_condition() {
    // Rows 30..=34 high: with `for: 3m` (3 rows at 60 s) it fires at row 33.
    let high: Vec<(usize, f64)> = (30..35).map(|i| (i, 50.0 + i as f64)).collect();
    let yaml = format!(
        "{ZSCORE}    z_threshold: 2\n    for: 3m\n    keep_firing_for: 2m\n    window: 20\n"
    );
    let r = replay(&rules(&yaml), &series(60, &high));
    assert_eq!(r.firings, vec![33]);
    // Firing from 33, condition clear from row 35 (or earlier when the window adapts), kept
    // for 2 minutes of data time: resolved two rows after it cleared.
    let active: Vec<usize> = (0..60).filter(|&i| r.active[i]).collect();
    assert_eq!(active.first(), Some(&33));
    let last = *active.last().unwrap();
    assert!((35..=37).contains(&last), "{active:?}");
    assert_eq!(active.len(), last - 33 + 1, "one alert, no gap: {active:?}");
}

#[test]
fn min_anomalous_ignores_a_lone_spike() {
    let yaml = format!("{ZSCORE}    min_anomalous: {{count: 2, of: 3}}\n");
    let lone = replay(&rules(&yaml), &series(40, &[(30, 50.0)]));
    assert!(lone.firings.is_empty());
    let pair = replay(&rules(&yaml), &series(40, &[(30, 50.0), (32, 60.0)]));
    assert_eq!(pair.firings, vec![32]);
}

#[test]
fn rows_that_are_not_numbers_are_skipped_not_judged() {
    let mut s = series(40, &[(30, 50.0)]);
    s.rows[20].value = f64::NAN;
    let r = replay(&rules(ZSCORE), &s);
    assert_eq!(r.scores.len(), 40);
    assert_eq!(r.scores[20], 0.0);
    assert_eq!(r.firings, vec![30]);
}

#[test]
fn active_share_weighs_rows_by_their_time() {
    let s = series(5, &[]);
    let share = active_share(&s, &[true, false, false, true, true]);
    // Rows 0 and 3 hold for a minute each, of a 4-minute span; the last row ends it.
    assert!((share - 0.5).abs() < 1e-12);
}
