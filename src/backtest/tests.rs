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

/// A series at 10..12 with rows `from..to` at `level`.
fn shifted(n: usize, from: usize, to: usize, level: f64) -> Recorded {
    let spikes: Vec<(usize, f64)> = (from..to).map(|i| (i, level + (i % 3) as f64)).collect();
    series(n, &spikes)
}

fn active_rows(r: &Replay) -> Vec<usize> {
    (0..r.active.len()).filter(|&i| r.active[i]).collect()
}

#[test]
fn an_incident_stays_firing_while_it_lasts_and_resolves_when_it_ends() {
    // 40 rows at 25 after 100 normal ones. Before, the 60-row window took them in: the band
    // widened and the alert resolved while the value was still 25.
    let r = replay(&rules(ZSCORE), &shifted(200, 100, 140, 25.0));
    assert_eq!(r.firings, vec![100], "one firing");
    assert_eq!(active_rows(&r), (100..140).collect::<Vec<_>>());
    // Back to normal: nothing more (the baseline is the one from before the incident).
    assert!(r.scores[141..].iter().all(|s| *s < 0.5));
}

#[test]
fn a_shift_that_outlasts_relearn_after_becomes_the_new_normal_once() {
    let yaml = format!("{ZSCORE}    window: 30\n");
    let r = replay(&rules(&yaml), &shifted(300, 100, 300, 25.0));
    // Relearnt after a window's worth of rows (the default), not fired again.
    assert_eq!(r.firings, vec![100]);
    assert_eq!(active_rows(&r), (100..129).collect::<Vec<_>>());
    // `never` keeps it firing to the end; a duration counts data time (60 s rows).
    let never = replay(
        &rules(&format!("{yaml}    relearn_after: never\n")),
        &shifted(300, 100, 300, 25.0),
    );
    assert_eq!(active_rows(&never), (100..300).collect::<Vec<_>>());
    let ten = replay(
        &rules(&format!("{yaml}    relearn_after: 10m\n")),
        &shifted(300, 100, 300, 25.0),
    );
    assert_eq!(ten.firings, vec![100]);
    assert_eq!(active_rows(&ten), (100..110).collect::<Vec<_>>());
}

#[test]
fn hysteresis_holds_an_alert_through_a_dip_below_the_threshold() {
    // Normal 10..12 (std ~0.83, the default z 4.5 band up to ~14.7); the incident at
    // 16..18, with a dip to 14 (z ~3.6: 0.8 of the threshold) in the middle.
    let mut s = shifted(80, 50, 60, 16.0);
    s.rows[55].value = 14.0;
    let r = replay(&rules(ZSCORE), &s);
    assert_eq!(r.firings, vec![50]);
    assert_eq!(active_rows(&r), (50..60).collect::<Vec<_>>());
    // resolve_below: 1 is the old behaviour: the dip resolves and the rest fires again.
    let plain = replay(&rules(&format!("{ZSCORE}    resolve_below: 1\n")), &s);
    assert_eq!(plain.firings, vec![50, 56]);
}

#[test]
fn min_delta_and_direction_decide_what_matters() {
    // A drop to 5 and a rise to 16: z far past 3 both times.
    let s = series(80, &[(40, 5.0), (60, 16.0)]);
    assert_eq!(replay(&rules(ZSCORE), &s).firings, vec![40, 60]);
    let up = format!("{ZSCORE}    direction: up\n");
    assert_eq!(replay(&rules(&up), &s).firings, vec![60]);
    // The baseline is ~10.98: 5 is 5.98 below it, 16 is 5.02 above.
    let big = format!("{ZSCORE}    min_delta: 5.5\n");
    assert_eq!(replay(&rules(&big), &s).firings, vec![40]);
    let pct = format!("{ZSCORE}    min_delta_pct: 40\n");
    assert_eq!(replay(&rules(&pct), &s).firings, vec![40, 60]);
    let pct = format!("{ZSCORE}    min_delta_pct: 50\n");
    assert_eq!(replay(&rules(&pct), &s).firings, vec![40]);
}

#[test]
fn a_pending_alert_needs_the_whole_condition_for_all_of_for() {
    // `for: 2m` over 60 s rows; the incident at 16..18 from row 50, with a dip to 14 at row
    // 52 (0.8 of the threshold): hysteresis would hold a firing alert there, but a pending
    // one is cancelled and starts again at row 53, firing at 55.
    let mut s = shifted(80, 50, 70, 16.0);
    s.rows[52].value = 14.0;
    let r = replay(&rules(&format!("{ZSCORE}    for: 2m\n")), &s);
    assert_eq!(r.firings, vec![55]);
}

/// Pod `pod`'s copy of one metric at 15 s steps: 100 + a little, or `drift` from row 40.
fn pod_series(pod: &str, n: usize, offset_ms: i64, drift: Option<f64>) -> Recorded {
    let rows = (0..n)
        .map(|i| Row {
            ts_ms: 1_000_000 + i as i64 * 15_000 + offset_ms,
            text: format!("t{i}"),
            value: match drift {
                Some(v) if i >= 40 => v,
                _ => 100.0 + ((i * 7 + pod.len() * 3) % 5) as f64,
            },
        })
        .collect();
    Recorded {
        name: format!("latency_{pod}"),
        metric: "latency".into(),
        labels: vec![("pod".into(), pod.into())],
        target: "prometheus".into(),
        rows,
        backwards: None,
    }
}

#[test]
fn peers_rules_judge_each_input_against_the_others_at_the_same_time() {
    let rules = rules("rules:\n  - name: outlier\n    match: latency\n    method: peers\n");
    // Five pods scraped at their own instants of each 15 s round; one drifts from row 40.
    let inputs: Vec<Recorded> = ["a", "bb", "ccc", "dddd", "eeeee"]
        .iter()
        .enumerate()
        .map(|(k, pod)| {
            let drift = (*pod == "ccc").then_some(180.0);
            pod_series(pod, 80, k as i64 * 2_000, drift)
        })
        .collect();
    let replays = replay_together(&rules, &inputs);
    for (input, r) in inputs.iter().zip(&replays) {
        if input.name == "latency_ccc" {
            // min_anomalous 8 of 10 rounds: it fires on the 8th drifted row, once.
            assert_eq!(r.firings, [47], "{}", input.name);
            assert!(r.active[79]);
        } else {
            assert!(r.firings.is_empty(), "{}: {:?}", input.name, r.firings);
        }
    }
    // Alone, a peers rule has nobody to compare with: nothing fires.
    let alone = replay(&rules, &inputs[2]);
    assert!(alone.firings.is_empty());
    assert!(alone.scores.iter().all(|&s| s == 0.0));
}
