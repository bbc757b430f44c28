//! Entry points for the fuzz targets in `fuzz/` (and the test that replays their corpus):
//! each feeds arbitrary bytes through the code path the sidecar really uses and checks the
//! invariants that must hold whatever the input. A panic here is a bug.

use crate::config::{rules, selector::Selector};
use crate::detect::{self, Method, Op, Window};
use crate::pipeline::scan::SeriesIndex;
use crate::scrape::ScrapeBody;
use std::sync::Arc;

/// rules.yaml loader: any text loads or is refused with located errors, never a panic.
pub fn rules_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match rules::parse("fuzz.yaml", &text) {
        Ok(set) => {
            for rule in &set.rules {
                assert!(!rule.name.is_empty(), "a loaded rule has a name");
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal says why");
            let _ = errors.to_string();
        }
    }
}

/// Selector parser: any text parses or is refused; a parsed selector matches any series
/// (including one whose name and label values are the input itself) without panics.
pub fn selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(sel) = Selector::parse(&text) else {
        return;
    };
    let labels = [
        ("job".to_string(), "node".to_string()),
        ("path".to_string(), text.to_string()),
    ];
    let _ = sel.matches("up", &labels);
    let _ = sel.matches(&text, &[]);
}

/// Exposition text as a scrape takes it: UTF-8 check, then the series index's scan, cold
/// (every line new, parsed in full) and warm (every series resolved from its text). Both must
/// agree with the validating parser on the error, and with each other on every value.
pub fn exposition(data: &[u8]) {
    let Ok(body) = ScrapeBody::from_bytes(data.to_vec()) else {
        return;
    };
    let validated = crate::scrape::parse::validate(&body.text);
    let mut index = SeriesIndex::default();
    // Without limits, so that only the syntax can fail it.
    let none = crate::scrape::Limits::NONE;
    let cold = index.scan(&body.text, &none);
    let cold_error = cold.as_ref().err().map(|e| match e {
        crate::scrape::ScrapeError::Parse(p) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(
        cold_error,
        validated.as_ref().err().map(|p| Some(p.clone())),
        "the scan fails exactly where validation does"
    );
    let Ok(cold) = cold else {
        return;
    };
    assert_eq!(
        Ok(cold.len()),
        validated,
        "validated and scanned counts agree"
    );
    assert!(cold.known.is_empty(), "a cold index knows no series");
    let new: Vec<_> = cold.new_samples(&index).collect();
    assert_eq!(new.len(), cold.new_lines, "every new line parses again");
    let mut texts = Vec::new();
    for (i, n) in new.iter().enumerate() {
        assert!(!n.sample.name.is_empty(), "a sample has a name");
        index.learn(n.text, i as u64, None, Arc::from([]));
        texts.push(n.text);
    }
    let Ok(warm) = index.scan(&body.text, &none) else {
        panic!("a body that scanned once scans again");
    };
    // Lines with an exemplar always take the full parse; the rest resolve, in order, each to
    // its own series text with the value the full parse gave.
    assert_eq!(warm.len(), new.len());
    let mut cold_lines = new.iter().enumerate();
    for k in &warm.known {
        let found = cold_lines.any(|(j, n)| {
            texts[k.id as usize] == texts[j] && k.value.to_bits() == n.sample.value.to_bits()
        });
        assert!(found, "a resolved line matches its full parse, in order");
    }
}

/// Equal to the bit (NaN included).
fn same_verdict(a: &detect::Verdict, b: &detect::Verdict) -> bool {
    let bits = |o: Option<f64>| o.map(f64::to_bits);
    a.anomalous == b.anomalous
        && a.score.to_bits() == b.score.to_bits()
        && bits(a.baseline_mean) == bits(b.baseline_mean)
        && bits(a.baseline_stddev) == bits(b.baseline_stddev)
        && bits(a.zscore) == bits(b.zscore)
        && bits(a.lower_bound) == bits(b.lower_bound)
        && bits(a.upper_bound) == bits(b.upper_bound)
        && a.direction == b.direction
}

/// Detector state update: a method with parameters in their validated ranges, then a stream
/// of finite values (as the pipeline feeds them) pushed into a window and judged.
pub fn detector(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let param = f64::from(head >> 2) / 8.0 + 0.125; // (0, 8]
    let method = match head & 3 {
        0 => Method::ZScore { z_threshold: param },
        1 => Method::Iqr { iqr_factor: param },
        2 => Method::Threshold {
            threshold: param * 10.0 - 40.0,
            op: [Op::Gt, Op::Lt, Op::Gte, Op::Lte][usize::from(head >> 6)],
        },
        _ => Method::Trend {
            trend_window: 2 + usize::from(head >> 4),
            deviation_pct: param,
        },
    };
    let capacity = 1 + usize::from(rest.first().copied().unwrap_or(0)) * 4;
    let min_samples = usize::from(rest.get(1).copied().unwrap_or(0) % 32);
    let mut window = Window::new(capacity, method.needs_sorted());
    // The same window as a view of the caller's values (as the store ring holds raw values,
    // one more than the window); trend walks values, so it never uses one.
    let shares = !matches!(method, Method::Trend { .. });
    let mut shared = Window::shared(capacity, method.needs_sorted(), std::iter::empty());
    let mut ring: std::collections::VecDeque<f64> = Default::default();
    let mut kept: std::collections::VecDeque<f64> = Default::default();
    for chunk in rest.chunks_exact(8).skip(1) {
        let x = f64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let Some(v) = detect::evaluate(&method, &window, x, min_samples) else {
            assert!(!x.is_finite(), "finite values are always judged");
            continue;
        };
        let bounded = kept.iter().chain([&x]).all(|v| v.abs() < 1e12);
        if bounded {
            assert!(!v.score.is_nan(), "score of {x} is NaN ({method:?})");
            if v.anomalous {
                assert!(
                    v.score >= 1.0,
                    "anomalous with score {} ({method:?})",
                    v.score
                );
            }
        }
        if shares {
            let seen = detect::evaluate(&method, &shared, x, min_samples);
            assert!(
                seen.is_some_and(|s| same_verdict(&s, &v)),
                "a view judges alike"
            );
            let evicted = (shared.len() == capacity).then(|| ring[ring.len() - capacity]);
            ring.push_back(x);
            if ring.len() > capacity + 1 {
                ring.pop_front();
            }
            let tail = || {
                ring.iter()
                    .copied()
                    .skip(ring.len().saturating_sub(capacity))
            };
            shared.push_shared(x, evicted, tail);
        }
        window.push(x);
        kept.push_back(x);
        if kept.len() > capacity {
            kept.pop_front();
        }
        assert_eq!(window.len(), kept.len());
        if shares {
            assert_eq!(shared.len(), window.len());
            assert_eq!(
                shared.mean().map(f64::to_bits),
                window.mean().map(f64::to_bits)
            );
            assert_eq!(
                shared.stddev().map(f64::to_bits),
                window.stddev().map(f64::to_bits)
            );
            assert_eq!(shared.sorted(), window.sorted());
        }
        if bounded && !kept.is_empty() {
            let naive = kept.iter().sum::<f64>() / kept.len() as f64;
            let mean = window.mean().unwrap_or(f64::NAN);
            let scale = kept.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(
                (mean - naive).abs() <= 1e-6 * scale,
                "mean {mean} vs {naive}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// Replays the committed seeds and every crasher ever found (fuzz/regressions), so a
    /// fixed bug stays fixed without running the fuzzer.
    #[test]
    fn seeds_and_regressions_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 4] = [
            ("rules_yaml", super::rules_yaml),
            ("selector", super::selector),
            ("exposition", super::exposition),
            ("detector", super::detector),
        ];
        let mut replayed = 0;
        for (name, run) in targets {
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for entry in dir.flatten() {
                    let data = std::fs::read(entry.path()).unwrap();
                    run(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 12, "only {replayed} inputs found under fuzz/");
    }
}
