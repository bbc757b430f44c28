//! `backtest --labels FILE`: a replay graded against known incidents, per series and in total:
//! incidents caught, time to detect, false alerts per day, and the NAB score (standard
//! profile, as `../shared/eval/nab_score.py` computes it from the events).
//!
//! Labels are NAB's `combined_windows.json` shape (`{"dir/name.csv": [[start, end], ...]}`)
//! or a CSV with the header `series,start,end`; a series is named as its output files are
//! (a CSV input's stem), and a JSON key by its file's stem. Every input is graded: one
//! without labels is incident-free, so each firing on it is a false alert.
//!
//! An incident is caught when an alert fires between its start and end, or was already
//! firing when it started (the page came a little early); time to detect is from the start
//! to that firing (0 when early). A firing outside every incident is a false alert.

use super::input::Recorded;
use super::{BacktestError, Replay};
use std::collections::HashMap;
use std::path::Path;

/// NAB's standard profile: a true positive, a false positive, a missed window.
const TP: f64 = 1.0;
const FP: f64 = 0.11;
const FN: f64 = 1.0;

/// Known incidents per series name, as (start, end) in ms, sorted.
#[derive(Debug, Default, Clone)]
pub struct Labels {
    by_series: HashMap<String, Vec<(i64, i64)>>,
}

impl Labels {
    /// Reads a labels file: JSON when it starts with `{`, else `series,start,end` CSV.
    pub fn read(path: &Path) -> Result<Self, BacktestError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BacktestError::Read {
            file: file.clone(),
            source,
        })?;
        let mut labels = if text.trim_start().starts_with('{') {
            Self::from_json(&file, &text)?
        } else {
            Self::from_csv(&file, &text)?
        };
        for windows in labels.by_series.values_mut() {
            windows.sort_unstable();
        }
        Ok(labels)
    }

    fn from_json(file: &str, text: &str) -> Result<Self, BacktestError> {
        let bad = |message: String| BacktestError::Csv {
            file: file.to_string(),
            line: 1,
            message,
        };
        let raw: HashMap<String, Vec<Vec<String>>> = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not a labels file ({e}): expected {{\"name.csv\": [[start, end], ...]}}"
            ))
        })?;
        let mut by_series = HashMap::new();
        for (key, windows) in raw {
            let mut out = Vec::new();
            for w in windows {
                let [start, end] = w.as_slice() else {
                    return Err(bad(format!("{key}: a window is [start, end], got {w:?}")));
                };
                out.push(window(start, end).map_err(|m| bad(format!("{key}: {m}")))?);
            }
            by_series.insert(stem(&key), out);
        }
        Ok(Self { by_series })
    }

    fn from_csv(file: &str, text: &str) -> Result<Self, BacktestError> {
        let bad = |line: usize, message: String| BacktestError::Csv {
            file: file.to_string(),
            line,
            message,
        };
        let mut lines = text.lines().enumerate();
        let header = lines.next().map(|(_, h)| h.trim()).unwrap_or_default();
        if header.replace(' ', "") != "series,start,end" {
            return Err(bad(
                1,
                format!("expected the header series,start,end, got {header:?}"),
            ));
        }
        let mut by_series: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [series, start, end] = cols.as_slice() else {
                return Err(bad(
                    i + 1,
                    format!("expected series,start,end, got {line:?}"),
                ));
            };
            let w = window(start, end).map_err(|m| bad(i + 1, m))?;
            by_series.entry(stem(series)).or_default().push(w);
        }
        Ok(Self { by_series })
    }

    /// The incidents of series `name`; none when unlabelled.
    pub fn of(&self, name: &str) -> &[(i64, i64)] {
        self.by_series.get(name).map_or(&[], Vec::as_slice)
    }

    /// Labelled series that are not among `names` (a typo, or a file not given).
    pub fn unmatched<'a>(&'a self, names: &[&str]) -> Vec<&'a str> {
        let mut out: Vec<&str> = self
            .by_series
            .keys()
            .map(String::as_str)
            .filter(|k| !names.contains(k))
            .collect();
        out.sort_unstable();
        out
    }
}

fn window(start: &str, end: &str) -> Result<(i64, i64), String> {
    let t = |s: &str| {
        super::input::parse_timestamp(s.trim_matches('"')).ok_or_else(|| {
            format!("bad timestamp {s:?}: use RFC 3339, YYYY-MM-DD HH:MM:SS or Unix seconds")
        })
    };
    let (a, b) = (t(start)?, t(end)?);
    if b < a {
        return Err(format!("incident ends ({end}) before it starts ({start})"));
    }
    Ok((a, b))
}

/// `dir/name.csv` → `name`, as input files name their series.
fn stem(key: &str) -> String {
    let base = key.rsplit(['/', '\\']).next().unwrap_or(key);
    base.strip_suffix(".csv").unwrap_or(base).to_string()
}

/// One series graded.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    pub incidents: usize,
    pub caught: usize,
    /// Per caught incident: ms from its start to the page (0 when already firing).
    pub detect_ms: Vec<i64>,
    pub false_alerts: usize,
    /// Days from the first row to the last.
    pub days: f64,
    nab: NabTally,
}

/// What the NAB score of several series adds up from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NabTally {
    raw: f64,
    windows: usize,
    scored: usize,
}

/// Grades one replay against the series' incidents.
pub fn grade(series: &Recorded, replay: &Replay, incidents: &[(i64, i64)]) -> Grade {
    let rows = &series.rows;
    let ts = |i: usize| rows[i].ts_ms;
    let inside = |t: i64| incidents.iter().any(|&(a, b)| a <= t && t <= b);
    let mut detect_ms = Vec::new();
    for &(a, b) in incidents {
        // Already firing when it started: the row before the start was active.
        let early = rows
            .iter()
            .rposition(|r| r.ts_ms < a)
            .is_some_and(|i| replay.active[i]);
        if early {
            detect_ms.push(0);
        } else if let Some(&i) = replay.firings.iter().find(|&&i| (a..=b).contains(&ts(i))) {
            detect_ms.push(ts(i) - a);
        }
    }
    // A firing outside every incident is false unless its alert was still firing when one
    // began (the early page above).
    let reaches_incident = |i: usize| {
        (i..rows.len())
            .take_while(|&j| j == i || replay.active[j - 1])
            .any(|j| inside(ts(j)))
    };
    let false_alerts = replay
        .firings
        .iter()
        .filter(|&&i| !inside(ts(i)) && !reaches_incident(i))
        .count();
    let days = match (rows.first(), rows.last()) {
        (Some(f), Some(l)) => (l.ts_ms - f.ts_ms) as f64 / 86_400_000.0,
        _ => 0.0,
    };
    Grade {
        incidents: incidents.len(),
        caught: detect_ms.len(),
        detect_ms,
        false_alerts,
        days,
        nab: nab(series, &replay.firings, incidents),
    }
}

/// NAB's sigmoid: ~0.987 at −1 (a window's left edge), 0 at its right edge, −1 past 3.
fn sigmoid(pos: f64) -> f64 {
    if pos > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * pos).exp()) - 1.0
    }
}

/// The raw NAB score of one file's detections (rows that fired), standard profile: the first
/// 15 % of rows (at most 750) are probation; a window earns its earliest detection, weighted
/// by how early it came; a detection outside every window costs, less just after one.
fn nab(series: &Recorded, firings: &[usize], incidents: &[(i64, i64)]) -> NabTally {
    let n = series.rows.len();
    // Windows as row spans: the rows whose timestamps fall inside.
    let spans: Vec<(usize, usize)> = incidents
        .iter()
        .filter_map(|&(a, b)| {
            let first = series.rows.iter().position(|r| r.ts_ms >= a)?;
            let last = series.rows.iter().rposition(|r| r.ts_ms <= b)?;
            (first <= last).then_some((first, last))
        })
        .collect();
    let max_tp = sigmoid(-1.0);
    let probation = ((0.15 * n as f64).floor() as usize).min(750);
    let fired: std::collections::HashSet<usize> = firings.iter().copied().collect();
    let (mut best, mut scored) = (vec![None::<f64>; spans.len()], vec![false; spans.len()]);
    let (mut fp_sum, mut k, mut prev) = (0.0, 0, None::<(usize, usize)>);
    for i in 0..n {
        let (window, value) = if k < spans.len() && spans[k].0 <= i {
            let (first, last) = spans[k];
            let width = last - first + 1;
            let v = sigmoid((i as f64 - last as f64 - 1.0) / width as f64) / max_tp;
            let w = k;
            if i == last {
                prev = Some((last, width));
                k += 1;
            }
            (Some(w), v)
        } else {
            let v = prev.map_or(-1.0, |(last, width)| {
                sigmoid((i - last) as f64 / (width.saturating_sub(1)).max(1) as f64)
            });
            (None, v)
        };
        if i < probation {
            continue;
        }
        match window {
            Some(w) => {
                scored[w] = true;
                if fired.contains(&i) {
                    best[w] = Some(best[w].map_or(value, |b: f64| b.max(value)));
                }
            }
            None if fired.contains(&i) => fp_sum += value,
            None => {}
        }
    }
    let n_scored = scored.iter().filter(|s| **s).count();
    let detected = best.iter().flatten().count();
    let tp_sum: f64 = best.iter().flatten().sum();
    NabTally {
        raw: TP * tp_sum + FP * fp_sum - FN * (n_scored - detected) as f64,
        windows: incidents.len(),
        scored: n_scored,
    }
}

/// The normalised NAB score (100 perfect, 0 never firing) of graded series; None without
/// any incident.
pub fn nab_score<'a>(grades: impl Iterator<Item = &'a Grade>) -> Option<f64> {
    let (mut raw, mut windows, mut scored) = (0.0, 0, 0);
    for g in grades {
        raw += g.nab.raw;
        windows += g.nab.windows;
        scored += g.nab.scored;
    }
    let span = TP * windows as f64 + FN * scored as f64;
    (span > 0.0).then(|| 100.0 * (raw + FN * scored as f64) / span)
}

/// A duration in ms as people read it: 0s, 45s, 12m, 3h 5m.
pub fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{}h", s / 3600)
            } else {
                format!("{}h {m}m", s / 3600)
            }
        }
    }
}

/// The grading table printed after the summary: a line per series, then the totals.
pub fn render(rows: &[(&str, &Grade)], unmatched: &[&str]) -> String {
    let mut s = String::new();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    s.push_str(&format!(
        "\n{:width$}  {:>9}  {:>6}  {:>11}  {:>12}  {:>9}\n",
        "series", "incidents", "caught", "median_ttd", "false_alerts", "false/day"
    ));
    for (name, g) in rows {
        s.push_str(&format!(
            "{:width$}  {:>9}  {:>6}  {:>11}  {:>12}  {:>9.2}\n",
            name,
            g.incidents,
            g.caught,
            median(&g.detect_ms).map_or("-".to_string(), human_ms),
            g.false_alerts,
            per_day(g.false_alerts, g.days),
        ));
    }
    let incidents: usize = rows.iter().map(|r| r.1.incidents).sum();
    let caught: usize = rows.iter().map(|r| r.1.caught).sum();
    let all_ttd: Vec<i64> = rows.iter().flat_map(|r| r.1.detect_ms.clone()).collect();
    let false_alerts: usize = rows.iter().map(|r| r.1.false_alerts).sum();
    let days: f64 = rows.iter().map(|r| r.1.days).sum();
    s.push_str(&format!(
        "{caught} of {incidents} incidents caught, median time to detect {}, {false_alerts} false alerts ({:.2} per series-day), NAB standard score {}\n",
        median(&all_ttd).map_or("-".to_string(), human_ms),
        per_day(false_alerts, days),
        nab_score(rows.iter().map(|r| r.1)).map_or("n/a (no incident)".to_string(), |v| format!("{v:.2}")),
    ));
    if !unmatched.is_empty() {
        s.push_str(&format!(
            "{} labelled series not among the inputs: {}\n",
            unmatched.len(),
            unmatched.join(", ")
        ));
    }
    s
}

fn per_day(n: usize, days: f64) -> f64 {
    if days > 0.0 {
        n as f64 / days
    } else {
        0.0
    }
}

fn median(v: &[i64]) -> Option<i64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().filter(|_| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::input::Row;

    fn series(n: usize) -> Recorded {
        Recorded {
            name: "s".into(),
            metric: "s".into(),
            labels: Vec::new(),
            target: "s.csv".into(),
            rows: (0..n)
                .map(|i| Row {
                    ts_ms: i as i64 * 60_000,
                    text: format!("t{i}"),
                    value: 1.0,
                })
                .collect(),
            backwards: None,
        }
    }

    /// A replay whose alerts fire at each `(from, to)` and stay active until `to` (excluded).
    fn replay(n: usize, active: &[(usize, usize)]) -> Replay {
        let on = |i: usize| active.iter().any(|&(a, b)| (a..b).contains(&i));
        Replay {
            scores: vec![0.0; n],
            active: (0..n).map(on).collect(),
            firings: active.iter().map(|r| r.0).collect(),
            rules: 1,
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn caught_time_to_detect_and_false_alerts() {
        // Incidents at rows 40..=50 and 70..=75; firings at 42 (caught, 2 minutes in), at
        // 65 still firing at 70 (caught early: 0), and at 90 (false).
        let s = series(100);
        let r = replay(100, &[(42, 45), (65, 72), (90, 91)]);
        let g = grade(&s, &r, &[(40 * MIN, 50 * MIN), (70 * MIN, 75 * MIN)]);
        assert_eq!((g.incidents, g.caught), (2, 2));
        assert_eq!(g.detect_ms, vec![2 * MIN, 0]);
        assert_eq!(g.false_alerts, 1, "the early page is not a false one");
        assert!((g.days - 99.0 / 1440.0).abs() < 1e-12);
        // Missed: nothing fires in the second incident.
        let r = replay(100, &[(42, 45)]);
        let g = grade(&s, &r, &[(40 * MIN, 50 * MIN), (70 * MIN, 75 * MIN)]);
        assert_eq!((g.caught, g.false_alerts), (1, 0));
    }

    #[test]
    fn nab_scores_like_the_reference_scorer() {
        // 1000 rows, probation 150; one window at rows 400..=499. A detection at its first
        // row earns 1 (a perfect file); none scores 0; a detection far from any window
        // before it costs fp 0.11 of a miss.
        let s = series(1000);
        let w = [(400 * MIN, 499 * MIN)];
        let score = |active: &[(usize, usize)]| {
            nab_score(std::iter::once(&grade(&s, &replay(1000, active), &w))).unwrap()
        };
        assert!((score(&[(400, 401)]) - 100.0).abs() < 1e-9);
        assert!(score(&[]).abs() < 1e-9);
        // 2 / (1 + e^(5 (450 - 500) / 100)) - 1, over the left edge's 0.9866: half way in.
        let mid = (2.0 / (1.0 + (5.0f64 * -0.5).exp()) - 1.0) / sigmoid(-1.0);
        assert!((score(&[(450, 451)]) - 100.0 * (mid + 1.0) / 2.0).abs() < 1e-9);
        // A false positive before the window (row 300): −0.11 on top of the catch.
        assert!((score(&[(300, 301), (400, 401)]) - 100.0 * (2.0 - 0.11) / 2.0).abs() < 1e-9);
        // In probation it costs nothing.
        assert!((score(&[(100, 101), (400, 401)]) - 100.0).abs() < 1e-9);
        assert_eq!(nab_score(std::iter::empty()), None);
    }

    #[test]
    fn labels_from_json_and_csv_with_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("w.json");
        std::fs::write(
            &json,
            r#"{"realKnownCause/nyc_taxi.csv": [["2014-11-01 19:00:00.000000", "2014-11-02 12:00:00.000000"]], "quiet.csv": []}"#,
        )
        .unwrap();
        let l = Labels::read(&json).unwrap();
        assert_eq!(l.of("nyc_taxi").len(), 1);
        assert!(l.of("quiet").is_empty() && l.of("other").is_empty());
        assert_eq!(l.unmatched(&["nyc_taxi"]), vec!["quiet"]);
        let csv = dir.path().join("l.csv");
        std::fs::write(
            &csv,
            "series,start,end\napi_latency,2026-01-05T10:00:00Z,2026-01-05T10:30:00Z\napi_latency,1767600000,1767603600\n",
        )
        .unwrap();
        let l = Labels::read(&csv).unwrap();
        assert_eq!(l.of("api_latency").len(), 2);
        for (text, needle) in [
            ("series,begin,end\n", "expected the header series,start,end"),
            (
                "series,start,end\na,2026-01-05 10:00:00,soon\n",
                ":2: bad timestamp \"soon\"",
            ),
            (
                "series,start,end\na,1767603600,1767600000\n",
                ":2: incident ends",
            ),
        ] {
            std::fs::write(&csv, text).unwrap();
            let e = Labels::read(&csv).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        std::fs::write(&json, r#"{"a.csv": [["2014-11-01 19:00:00"]]}"#).unwrap();
        let e = Labels::read(&json).unwrap_err().to_string();
        assert!(e.contains("a window is [start, end]"), "{e}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(0), "0s");
        assert_eq!(human_ms(45_000), "45s");
        assert_eq!(human_ms(12 * MIN), "12m");
        assert_eq!(human_ms(185 * MIN), "3h 5m");
        assert_eq!(human_ms(120 * MIN), "2h");
    }
}
