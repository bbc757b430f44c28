//! Worked numbers for every detector, and invariants as property tests.

use super::*;
use proptest::prelude::*;

fn window(values: &[f64], sorted: bool) -> Window {
    let mut w = Window::new(values.len().max(1), sorted);
    for v in values {
        w.push(*v);
    }
    w
}

const Z: Method = Method::ZScore { z_threshold: 3.0 };
const HIST: [f64; 10] = [10.0, 12.0, 11.0, 13.0, 9.0, 10.0, 12.0, 11.0, 10.0, 12.0];

#[test]
fn zscore_worked_example() {
    // mean 11, squared deviations sum to 14, sample variance 14/9, std 1.2472.
    let h = window(&HIST, false);
    let v = evaluate(&Z, &h, 15.0, 10).unwrap();
    assert!((v.baseline_mean.unwrap() - 11.0).abs() < 1e-12);
    assert!((v.baseline_stddev.unwrap() - (14.0f64 / 9.0).sqrt()).abs() < 1e-12);
    let z = 4.0 / (14.0f64 / 9.0).sqrt(); // 3.207
    assert!(v.anomalous);
    assert!((v.zscore.unwrap() - z).abs() < 1e-12);
    assert!((v.score - z / 3.0).abs() < 1e-12);
    assert_eq!(v.direction, Some(Direction::Rising));
    let std = (14.0f64 / 9.0).sqrt();
    assert!((v.upper_bound.unwrap() - (11.0 + 3.0 * std)).abs() < 1e-12);
    assert!((v.lower_bound.unwrap() - (11.0 - 3.0 * std)).abs() < 1e-12);

    let v = evaluate(&Z, &h, 14.0, 10).unwrap(); // z = 2.405
    assert!(!v.anomalous);
    assert!(v.score < 1.0);
    let v = evaluate(&Z, &h, 7.0, 10).unwrap(); // z = -3.207
    assert!(v.anomalous);
    assert_eq!(v.direction, Some(Direction::Falling));
}

#[test]
fn zscore_needs_min_samples_and_spread() {
    let h = window(&HIST[..9], false);
    let v = evaluate(&Z, &h, 1e9, 10).unwrap();
    assert!(!v.anomalous, "9 history values < min_samples 10");
    let flat = window(&[5.0; 20], false);
    assert!(!evaluate(&Z, &flat, 5.0, 10).unwrap().anomalous);
    // A flat history: the first value off it is judged at once (it used to be "normal"
    // until the jump itself was in the window, so a one-scrape burst was never seen).
    let v = evaluate(&Z, &flat, 55.0, 10).unwrap();
    assert!(v.anomalous, "a step off a plateau");
    assert_eq!(v.zscore, None);
    assert_eq!(v.score, 1.0 + 50.0 / 5.0);
    assert_eq!(v.direction, Some(Direction::Rising));
    assert!(evaluate(&Z, &flat, 1e9, 10).unwrap().score > v.score);
}

#[test]
fn an_error_rate_flat_at_zero_fires_on_its_first_burst_unless_below_min_delta() {
    // 0 errors/s for an hour, then 50/s: every flat-history method fires on that scrape.
    let zeros = window(&[0.0; 60], false);
    let mut ewma = Method::Ewma {
        alpha: 0.1,
        z_threshold: 3.0,
    }
    .new_state();
    let seasonal = Method::Seasonal {
        season: crate::detect::Season::utc(86_400_000),
        buckets: 24,
        z_threshold: 3.0,
        memory: 60,
    };
    let mut profile = seasonal.new_state();
    for i in 0..60 {
        crate::detect::update(&EWMA, &mut ewma, i * 15_000, 0.0);
        crate::detect::update(&seasonal, &mut profile, i * 15_000, 0.0);
    }
    for (m, state) in [(&Z, &State::None), (&EWMA, &ewma), (&seasonal, &profile)] {
        let v = evaluate_with(m, &zeros, state, 60 * 15_000, 50.0, 10).unwrap();
        assert!(v.anomalous, "{}", m.name());
        // With min_delta 100 a burst of 50/s is below what the rule cares about.
        let mut gated = v.clone();
        let g = crate::detect::Guard {
            min_delta: 100.0,
            ..Default::default()
        };
        g.apply(&mut gated, 50.0);
        assert!(!gated.anomalous, "{}", m.name());
        assert_eq!(gated.score, 0.5);
    }
}

const EWMA: Method = Method::Ewma {
    alpha: 0.1,
    z_threshold: 3.0,
};

#[test]
fn iqr_worked_example() {
    // sorted [1..9, 100], n = 10: q1 = s[2] = 3, q3 = s[7] = 8, fences -4.5 and 15.5.
    let h = window(&[9.0, 1.0, 100.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0], true);
    let m = Method::Iqr { iqr_factor: 1.5 };
    let v = evaluate(&m, &h, 16.0, 10).unwrap();
    assert!(v.anomalous);
    assert_eq!(v.lower_bound, Some(-4.5));
    assert_eq!(v.upper_bound, Some(15.5));
    assert!((v.score - 8.0 / 7.5).abs() < 1e-12);
    assert!(!evaluate(&m, &h, 15.5, 10).unwrap().anomalous);
    assert!(!evaluate(&m, &h, -4.5, 10).unwrap().anomalous);
    assert!(evaluate(&m, &h, -5.0, 10).unwrap().anomalous);
    assert!(!evaluate(&m, &h, 1e9, 11).unwrap().anomalous, "min_samples");
}

#[test]
fn iqr_zero_spread_is_monotone() {
    let h = window(&[4.0; 12], true);
    let m = Method::Iqr { iqr_factor: 1.5 };
    let a = evaluate(&m, &h, 5.0, 10).unwrap();
    let b = evaluate(&m, &h, 50.0, 10).unwrap();
    assert!(a.anomalous && b.anomalous);
    assert!(a.score >= 1.0 && b.score > a.score);
    assert!(!evaluate(&m, &h, 4.0, 10).unwrap().anomalous);
}

#[test]
fn threshold_ops() {
    let h = window(&[], false);
    let t = |op, x| {
        evaluate(
            &Method::Threshold {
                threshold: 90.0,
                op,
            },
            &h,
            x,
            10,
        )
        .unwrap()
        .anomalous
    };
    assert!(t(Op::Gt, 95.0) && !t(Op::Gt, 90.0) && t(Op::Gte, 90.0) && !t(Op::Gte, 89.9));
    assert!(t(Op::Lt, 10.0) && !t(Op::Lt, 90.0) && t(Op::Lte, 90.0) && !t(Op::Lte, 90.1));
    let v = evaluate(
        &Method::Threshold {
            threshold: 90.0,
            op: Op::Gt,
        },
        &h,
        99.0,
        10,
    )
    .unwrap();
    assert!((v.score - 1.1).abs() < 1e-12);
    assert_eq!(v.upper_bound, Some(90.0));
    // Below 1 the threshold is not the scale: 0.5 past a threshold of 0.5 scores 1.5, not 2.
    let score = |threshold: f64, x: f64| {
        let m = Method::Threshold {
            threshold,
            op: Op::Gt,
        };
        evaluate(&m, &h, x, 10).unwrap().score
    };
    assert!((score(0.5, 1.0) - 1.5).abs() < 1e-12);
    assert!((score(0.0, 2.0) - 3.0).abs() < 1e-12);
    assert!((score(-4.0, 0.0) - 2.0).abs() < 1e-12);
}

#[test]
fn trend_worked_examples() {
    let m = Method::Trend {
        trend_window: 5,
        deviation_pct: 20.0,
    };
    // 10 → 14 strictly rising: +40 % ≥ 20 %.
    let v = evaluate(
        &m,
        &window(&[50.0, 10.0, 11.0, 12.0, 13.0], false),
        14.0,
        10,
    )
    .unwrap();
    assert!(v.anomalous);
    assert_eq!(v.direction, Some(Direction::Rising));
    assert!((v.score - 2.0).abs() < 1e-12);
    // +19 % is not enough.
    let v = evaluate(&m, &window(&[10.0, 10.5, 11.0, 11.5], false), 11.9, 10).unwrap();
    assert!(!v.anomalous);
    // Not strictly monotone.
    let v = evaluate(&m, &window(&[10.0, 12.0, 11.0, 13.0], false), 14.0, 10).unwrap();
    assert!(!v.anomalous);
    // Falling by 40 %.
    let v = evaluate(&m, &window(&[100.0, 90.0, 80.0, 70.0], false), 60.0, 10).unwrap();
    assert!(v.anomalous);
    assert_eq!(v.direction, Some(Direction::Falling));
    // First value must be > 0.
    let v = evaluate(&m, &window(&[0.0, 1.0, 2.0, 3.0], false), 4.0, 10).unwrap();
    assert!(!v.anomalous);
    // Too little history.
    let v = evaluate(&m, &window(&[1.0, 2.0, 3.0], false), 4.0, 10).unwrap();
    assert!(!v.anomalous);
}

#[test]
fn non_finite_values_are_skipped() {
    let h = window(&HIST, true);
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(evaluate(&Z, &h, x, 10), None);
    }
}

proptest! {
    /// With any guard, every method's verdict keeps its meaning: anomalous only at a score
    /// ≥ 1, never on the side the rule ignores, never closer to the baseline than the
    /// minimum deviation; and a guard only ever takes anomalies away.
    #[test]
    fn a_guard_keeps_score_and_verdict_consistent(
        values in prop::collection::vec(-1e3f64..1e3, 12..60),
        x in -5e3f64..5e3,
        side in prop::sample::select(vec![Side::Up, Side::Down, Side::Both]),
        min_delta in prop::sample::select(vec![0.0, 1.0, 100.0]),
        min_delta_pct in prop::sample::select(vec![0.0, 10.0, 300.0]),
    ) {
        let g = Guard { side, min_delta, min_delta_pct, ..Guard::default() };
        let methods = [
            Z,
            Method::Iqr { iqr_factor: 1.5 },
            Method::Mad { mad_threshold: 3.5 },
            Method::Trend { trend_window: 5, deviation_pct: 20.0 },
        ];
        for m in methods {
            let h = window(&values, m.needs_sorted());
            let Some(before) = evaluate(&m, &h, x, 10) else { continue };
            let mut v = before.clone();
            g.apply(&mut v, x);
            prop_assert!(!v.anomalous || before.anomalous, "{}", m.name());
            if v.anomalous {
                prop_assert!(v.score >= 1.0, "{} {:?}", m.name(), v);
                let center = (v.lower_bound.unwrap() + v.upper_bound.unwrap()) / 2.0;
                let need = min_delta.max(min_delta_pct / 100.0 * center.abs());
                prop_assert!((x - center).abs() >= need * (1.0 - 1e-12), "{} {:?}", m.name(), v);
                match side {
                    Side::Up => prop_assert_eq!(v.direction, Some(Direction::Rising)),
                    Side::Down => prop_assert_eq!(v.direction, Some(Direction::Falling)),
                    Side::Both => {}
                }
            }
        }
    }

    /// A constant series never fires a zscore or iqr rule.
    #[test]
    fn constant_never_fires(c in -1e9f64..1e9, n in 10usize..100) {
        let h = window(&vec![c; n], true);
        prop_assert!(!evaluate(&Z, &h, c, 10).unwrap().anomalous);
        let iqr = Method::Iqr { iqr_factor: 1.5 };
        prop_assert!(!evaluate(&iqr, &h, c, 10).unwrap().anomalous);
    }

    /// Shifting a series by a constant changes no z-score.
    #[test]
    fn zscore_shift_invariant(
        values in prop::collection::vec(-1e3f64..1e3, 12..60),
        x in -1e4f64..1e4,
        shift in -1e6f64..1e6,
    ) {
        let a = evaluate(&Z, &window(&values, false), x, 10).unwrap();
        let shifted: Vec<f64> = values.iter().map(|v| v + shift).collect();
        let b = evaluate(&Z, &window(&shifted, false), x + shift, 10).unwrap();
        match (a.zscore, b.zscore) {
            (Some(za), Some(zb)) => prop_assert!((za - zb).abs() <= 1e-6 * (1.0 + za.abs())),
            (None, None) => {}
            (za, zb) => prop_assert!(false, "{:?} vs {:?}", za, zb),
        }
    }

    /// The score grows with the deviation and never panics on any finite input.
    #[test]
    fn score_is_monotone(values in prop::collection::vec(-1e3f64..1e3, 12..60), d in 0.0f64..1e4) {
        let h = window(&values, true);
        let mean = h.mean().unwrap();
        for m in [Z, Method::Iqr { iqr_factor: 1.5 }] {
            let a = evaluate(&m, &h, mean + d, 10).unwrap().score;
            let b = evaluate(&m, &h, mean + d + 1.0, 10).unwrap().score;
            prop_assert!(b >= a);
        }
    }
}

const MAD: Method = Method::Mad { mad_threshold: 3.5 };

#[test]
fn mad_worked_example_ignores_an_outlier_in_the_history() {
    // Sorted: 9 10 10 10 11 11 12 12 12 13 (+100); median 11, deviations 0 0 1 1 1 1 1 1 2 2
    // (+89): MAD 1, scale 1.4826, band 11 ± 3.5 · 1.4826 = [5.8109, 16.1891].
    let mut values = HIST.to_vec();
    values.push(100.0);
    let h = window(&values, true);
    let v = evaluate(&MAD, &h, 17.0, 10).unwrap();
    assert!((v.upper_bound.unwrap() - (11.0 + 3.5 * 1.4826)).abs() < 1e-9);
    assert!((v.lower_bound.unwrap() - (11.0 - 3.5 * 1.4826)).abs() < 1e-9);
    assert!(v.anomalous);
    assert!((v.score - 6.0 / (3.5 * 1.4826)).abs() < 1e-9);
    assert_eq!(v.direction, Some(Direction::Rising));
    // The zscore of the same history is blinded by the outlier: 17 is within 1 std.
    let z = evaluate(&Z, &h, 17.0, 10).unwrap();
    assert!(!z.anomalous);
    let v = evaluate(&MAD, &h, 15.0, 10).unwrap();
    assert!(!v.anomalous && v.score < 1.0);
}

#[test]
fn mad_on_a_plateau_uses_the_mean_absolute_deviation_then_any_change() {
    // 8 of 10 values equal: MAD 0; mean absolute deviation 2/10, scale 1.2533 · 0.2.
    let h = window(&[5.0, 5.0, 5.0, 6.0, 5.0, 5.0, 4.0, 5.0, 5.0, 5.0], true);
    let v = evaluate(&MAD, &h, 6.0, 10).unwrap();
    let scale = 1.253314 * 0.2;
    assert!((v.score - 1.0 / (3.5 * scale)).abs() < 1e-9);
    assert!(v.anomalous);
    let flat = window(&[5.0; 10], true);
    assert!(!evaluate(&MAD, &flat, 5.0, 10).unwrap().anomalous);
    let off = evaluate(&MAD, &flat, 5.5, 10).unwrap();
    assert!(off.anomalous && off.score > 1.0);
    assert!(evaluate(&MAD, &flat, 7.0, 10).unwrap().score > off.score);
}

#[test]
fn ewma_worked_example_follows_a_drift() {
    let m = Method::Ewma {
        alpha: 0.5,
        z_threshold: 3.0,
    };
    let mut state = m.new_state();
    // 10, 12: mean 11, var 0.5 · (0 + 2 · 1) = 1. Then 11: d 0, var 0.5.
    for x in [10.0, 12.0, 11.0] {
        update(&m, &mut state, 0, x);
    }
    let h = window(&[], false);
    let v = evaluate_with(&m, &h, &state, 0, 14.0, 2).unwrap();
    assert_eq!(v.baseline_mean, Some(11.0));
    assert!((v.baseline_stddev.unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
    let z = 3.0 / 0.5f64.sqrt();
    assert!((v.zscore.unwrap() - z).abs() < 1e-12);
    assert!(v.anomalous && (v.score - z / 3.0).abs() < 1e-12);
    // Not judged before min_samples values.
    assert!(!evaluate_with(&m, &h, &state, 0, 14.0, 4).unwrap().anomalous);
    // A slow ramp: the zscore of a 60-value window fires at its end, the ewma does not.
    let ramp: Vec<f64> = (0..120)
        .map(|i| 100.0 + i as f64 + (i % 3) as f64)
        .collect();
    let m = Method::Ewma {
        alpha: 0.3,
        z_threshold: 3.0,
    };
    let mut state = m.new_state();
    let mut zw = Window::new(60, false);
    let (mut ewma_fired, mut z_fired) = (0, 0);
    for &x in &ramp {
        ewma_fired += usize::from(evaluate_with(&m, &zw, &state, 0, x, 10).unwrap().anomalous);
        z_fired += usize::from(
            evaluate(&Method::ZScore { z_threshold: 1.5 }, &zw, x, 10)
                .unwrap()
                .anomalous,
        );
        update(&m, &mut state, 0, x);
        zw.push(x);
    }
    assert_eq!(ewma_fired, 0);
    assert!(z_fired > 50, "{z_fired}");
}

proptest! {
    /// The merged median deviation equals sorting the deviations.
    #[test]
    fn mad_matches_sorting(values in prop::collection::vec(-1e3f64..1e3, 1..80), x in -2e3f64..2e3) {
        let h = window(&values, true);
        let mut s = values.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let med = |s: &[f64]| if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        let m = med(&s);
        let mut d: Vec<f64> = s.iter().map(|v| (v - m).abs()).collect();
        d.sort_by(f64::total_cmp);
        let mad = med(&d);
        let v = evaluate(&MAD, &h, x, 1).unwrap();
        if mad > 0.0 {
            let upper = m + 3.5 * 1.4826 * mad;
            prop_assert!((v.upper_bound.unwrap() - upper).abs() <= 1e-9 * (1.0 + upper.abs()));
        }
        // Monotone: further from the median never scores lower.
        let further = evaluate(&MAD, &h, x + (x - m).signum() * 1.0, 1).unwrap();
        prop_assert!(further.score >= v.score);
    }
}

#[test]
fn seasonal_knows_the_busy_hour_and_still_sees_a_spike_in_it() {
    // Hourly buckets over a day; every day 09:00-10:00 runs at 100, the rest at 10 (± 1).
    let hour = 3_600_000i64;
    let m = Method::Seasonal {
        season: crate::detect::Season::utc(24 * hour),
        buckets: 24,
        z_threshold: 3.0,
        memory: 60,
    };
    let z = Method::ZScore { z_threshold: 3.0 };
    let mut state = m.new_state();
    let mut window = Window::new(60, false);
    let value = |t: i64| {
        let base = if (t / hour) % 24 == 9 { 100.0 } else { 10.0 };
        base + ((t / 60_000) % 3) as f64 - 1.0
    };
    // Five days at one sample every 10 minutes.
    let (mut seasonal_fired, mut z_fired) = (0, 0);
    for i in 0..(5 * 144) {
        let t = i * 600_000;
        let x = value(t);
        let day = i / 144;
        let s = evaluate_with(&m, &window, &state, t, x, 3).unwrap();
        if day >= 3 {
            seasonal_fired += usize::from(s.anomalous);
            z_fired += usize::from(evaluate(&z, &window, x, 3).unwrap().anomalous);
        }
        update(&m, &mut state, t, x);
        window.push(x);
    }
    assert_eq!(seasonal_fired, 0, "the busy hour is usual by day 3");
    assert!(
        z_fired >= 2,
        "a plain zscore fires at every busy hour: {z_fired}"
    );
    // At 09:30 on day 5, 150 is unusual even for the busy hour; 100 is not.
    let t = 5 * 24 * hour + 9 * hour + 30 * 60_000;
    let spike = evaluate_with(&m, &window, &state, t, 150.0, 3).unwrap();
    assert!(spike.anomalous);
    assert!((spike.baseline_mean.unwrap() - 100.0).abs() < 1.0);
    assert!(
        !evaluate_with(&m, &window, &state, t, 100.5, 3)
            .unwrap()
            .anomalous
    );
    // A bucket with fewer than min_samples values falls back to the window's zscore.
    let fresh = m.new_state();
    let v = evaluate_with(&m, &window, &fresh, t, 100.0, 3).unwrap();
    assert_eq!(v.baseline_mean, window.mean());
}

#[test]
fn peers_worked_numbers() {
    // Five pods, one drifting: the group's median 100, MAD 1 (|99-100|, |100-100|, ...).
    let mut v = Verdict::default();
    judge_peers_into(&mut v, 130.0, &[99.0, 100.0, 101.0, 100.5], 3.0, 3).unwrap();
    assert_eq!(v.baseline_mean, Some(100.5));
    // Group sorted: 99, 100, 100.5, 101, 130; median 100.5; deviations 1.5, 0.5, 0, 0.5,
    // 29.5 → MAD 0.5; scale 1.4826 · 0.5 = 0.7413; z = 29.5 / 0.7413 = 39.8.
    let scale = 1.4826 * 0.5;
    assert!((v.baseline_stddev.unwrap() - scale).abs() < 1e-9);
    assert!((v.zscore.unwrap() - 29.5 / scale).abs() < 1e-9);
    assert!((v.score - 29.5 / (3.0 * scale)).abs() < 1e-9);
    assert!(v.anomalous);
    assert_eq!(v.direction, Some(Direction::Rising));
    assert!((v.upper_bound.unwrap() - (100.5 + 3.0 * scale)).abs() < 1e-9);
    // A pod in the middle of its peers is not.
    judge_peers_into(&mut v, 100.0, &[99.0, 101.0, 130.0, 100.5], 3.0, 3).unwrap();
    assert!(!v.anomalous && v.score < 1.0);
    // Too few pods: no verdict at all.
    assert!(judge_peers_into(&mut v, 130.0, &[100.0], 3.0, 3).is_none());
    assert!(!v.anomalous);
    // Every peer alike: any other value is off the plateau.
    judge_peers_into(&mut v, 7.0, &[5.0, 5.0, 5.0], 3.0, 3).unwrap();
    assert!(v.anomalous);
    judge_peers_into(&mut v, 5.0, &[5.0, 5.0, 5.0], 3.0, 3).unwrap();
    assert!(!v.anomalous);
    // Alone, a peers rule judges nothing.
    let m = Method::Peers {
        mad_threshold: 3.0,
        min_peers: 3,
    };
    let w = Window::new(10, false);
    let (ready, _) = judge_into(&mut v, &m, &w, &State::None, 0, 1e9, 0, 1.0).unwrap();
    assert!(!ready && !v.anomalous);
}

proptest::proptest! {
    /// The verdict of a pod does not depend on the order its peers come in, and a pod equal
    /// to its group's median is never anomalous.
    #[test]
    fn peers_verdict_ignores_order_and_the_median_is_normal(
        mut others in proptest::collection::vec(-1e6f64..1e6, 2..20),
        x in -1e6f64..1e6,
    ) {
        let mut a = Verdict::default();
        let mut b = Verdict::default();
        judge_peers_into(&mut a, x, &others, 3.0, 3).unwrap();
        others.reverse();
        judge_peers_into(&mut b, x, &others, 3.0, 3).unwrap();
        proptest::prop_assert_eq!(a.anomalous, b.anomalous);
        proptest::prop_assert_eq!(a.baseline_mean, b.baseline_mean);
        let mut all = others.clone();
        all.push(x);
        all.sort_by(f64::total_cmp);
        if all.len() % 2 == 1 && all[all.len() / 2] == x {
            proptest::prop_assert!(!a.anomalous);
        }
    }
}
