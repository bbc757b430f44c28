//! `anomaly-sidecar backtest`: recorded history replayed through the live evaluation
//! (`RuleSeries::step`: transform → window → detector → alert with `for`, `keep_firing_for`
//! and `min_anomalous`) with the data's own timestamps as the clock, so an operator can try
//! a rules.yaml on last month's data before deploying it.
//!
//! Per series it writes `<name>.csv` (`timestamp,value,anomaly_score,active`, a row per input
//! row in order) and `<name>.events.csv` (the timestamp of each firing). `anomaly_score` is
//! s / (1 + s) of the detector's score s (≥ 1 past the rule's threshold; see `detect`):
//! 0.5 at the threshold, monotone, and never 1 for a finite deviation, so a threshold on it
//! can be tuned. Several rules on one series: the highest score, active when any fires.

pub mod grade;
pub mod input;

use crate::config::{Rule, RuleSet};
use crate::pipeline::{new_state, RuleSeries};
use crate::store::{SampleRing, SeriesIdentity};
use input::Recorded;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Csv {
        file: String,
        line: usize,
        message: String,
    },
    #[error("reading from Prometheus: {0}")]
    Prometheus(#[from] crate::promapi::PromApiError),
    #[error("{0}")]
    Usage(String),
    #[error("two inputs would both write {0}: rename one of them")]
    SameName(String),
    #[error("cannot write {file}: {source}")]
    Write {
        file: String,
        source: std::io::Error,
    },
}

/// What the replay of one series found.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Per input row: anomaly_score in [0, 1) and whether an alert was firing.
    pub scores: Vec<f64>,
    pub active: Vec<bool>,
    /// Rows at which an alert fired.
    pub firings: Vec<usize>,
    /// Rules that selected the series.
    pub rules: usize,
}

/// One line of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSummary {
    pub name: String,
    pub rows: usize,
    /// Rules that selected the series.
    pub rules: usize,
    pub firings: usize,
    /// Share of the series' time span with an alert firing.
    pub active_share: f64,
    /// Against its known incidents, with `--labels`.
    pub grade: Option<grade::Grade>,
}

/// Replays `series` through every rule of `rules` that selects it.
pub fn replay(rules: &RuleSet, series: &Recorded) -> Replay {
    let target: Arc<str> = series.target.as_str().into();
    let identity = SeriesIdentity::new(target, &series.metric, &series.labels, false);
    let selected: Vec<&Rule> = rules
        .rules
        .iter()
        .filter(|r| r.selects(&series.target, &series.metric, &series.labels))
        .map(|r| &**r)
        .collect();
    // As the store does: one more raw sample than the longest window (a rate needs it).
    let capacity = selected.iter().map(|r| r.window + 1).max().unwrap_or(1);
    let mut ring = SampleRing::default();
    let mut states: Vec<Option<RuleSeries>> = selected.iter().map(|_| None).collect();
    let n = series.rows.len();
    let mut out = Replay {
        scores: Vec::with_capacity(n),
        active: Vec::with_capacity(n),
        firings: Vec::new(),
        rules: selected.len(),
    };
    for (i, row) in series.rows.iter().enumerate() {
        let mut score = 0.0f64;
        let mut fired = false;
        // NaN and ±Inf are skipped, as a scrape's are: not stored, not judged.
        if row.value.is_finite() && !selected.is_empty() {
            ring.push(capacity, row.ts_ms, row.value);
            for (rule, state) in selected.iter().zip(states.iter_mut()) {
                let state = state.get_or_insert_with(|| {
                    new_state(rule, &identity, std::iter::empty(), Default::default(), &[])
                });
                let mut verdict = crate::detect::Verdict::default();
                if let Some(step) = state.step(rule, false, &ring, &mut verdict, None) {
                    score = score.max(squash(verdict.score));
                    fired |= step.transition == Some(crate::alert::Transition::Firing);
                }
            }
        }
        if fired {
            out.firings.push(i);
        }
        out.scores.push(score);
        out.active
            .push(states.iter().flatten().any(RuleSeries::is_firing));
    }
    out
}

/// The series of `--query` over `--start`..`--end` from the Prometheus at `url`.
pub fn fetch(
    url: &str,
    args: &crate::config::flags::BacktestArgs,
) -> Result<Vec<Recorded>, BacktestError> {
    let time = |flag: &str, v: &Option<String>| {
        let text = v.as_deref().unwrap_or_default();
        input::parse_timestamp(text).ok_or_else(|| {
            BacktestError::Usage(format!(
                "bad --{flag} {text:?}: use RFC 3339, YYYY-MM-DD HH:MM:SS or Unix seconds"
            ))
        })
    };
    let (start, end) = (time("start", &args.start)?, time("end", &args.end)?);
    if end < start {
        return Err(BacktestError::Usage("--end is before --start".into()));
    }
    let query = args.query.clone().unwrap_or_default();
    let endpoint = crate::promapi::endpoint(url)?;
    let client = crate::promapi::client(std::time::Duration::from_secs(60))?;
    let step = args.step.as_millis().min(i64::MAX as u128) as i64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BacktestError::Usage(format!("cannot start the async runtime: {e}")))?;
    let series = runtime.block_on(crate::promapi::query_range(
        &client, &endpoint, &query, start, end, step,
    ))?;
    Ok(input::from_range(series, url))
}

/// A detector score (≥ 0, 1 at the threshold) as an anomaly_score in [0, 1).
fn squash(score: f64) -> f64 {
    if score.is_nan() || score <= 0.0 {
        0.0
    } else if score.is_infinite() {
        1.0
    } else {
        score / (1.0 + score)
    }
}

/// Replays every series and writes its files under `out`; returns the summary rows, graded
/// against `labels` when given.
pub fn run(
    rules: &RuleSet,
    inputs: &[Recorded],
    out: &Path,
    labels: Option<&grade::Labels>,
) -> Result<Vec<SeriesSummary>, BacktestError> {
    let mut names = HashSet::new();
    for s in inputs {
        if !names.insert(s.name.as_str()) {
            return Err(BacktestError::SameName(format!("{}.csv", s.name)));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| BacktestError::Write {
        file: out.display().to_string(),
        source,
    })?;
    let mut summary = Vec::new();
    for series in inputs {
        let replay = replay(rules, series);
        write_series(out, series, &replay)?;
        summary.push(SeriesSummary {
            name: series.name.clone(),
            rows: series.rows.len(),
            rules: replay.rules,
            firings: replay.firings.len(),
            active_share: active_share(series, &replay.active),
            grade: labels.map(|l| grade::grade(series, &replay, l.of(&series.name))),
        });
    }
    Ok(summary)
}

/// The share of the span from the first row to the last during which an alert fired (each
/// row's state holds until the next row).
fn active_share(series: &Recorded, active: &[bool]) -> f64 {
    let rows = &series.rows;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return 0.0;
    };
    let span = (last.ts_ms - first.ts_ms) as f64;
    if span <= 0.0 {
        return 0.0;
    }
    let on: i64 = rows
        .windows(2)
        .zip(active)
        .filter(|(_, a)| **a)
        .map(|(w, _)| w[1].ts_ms - w[0].ts_ms)
        .sum();
    on as f64 / span
}

fn write_series(out: &Path, series: &Recorded, replay: &Replay) -> Result<(), BacktestError> {
    let mut float = ryu::Buffer::new();
    let mut rows = Vec::with_capacity(series.rows.len() * 48);
    rows.extend_from_slice(b"timestamp,value,anomaly_score,active\n");
    for ((row, score), active) in series.rows.iter().zip(&replay.scores).zip(&replay.active) {
        let value = crate::export::format_float(row.value);
        writeln!(
            rows,
            "{},{},{},{}",
            row.text,
            value,
            float.format(*score),
            u8::from(*active)
        )
        .map_err(|source| write_error(out, &series.name, source))?;
    }
    let mut events = b"timestamp\n".to_vec();
    for &i in &replay.firings {
        events.extend_from_slice(series.rows[i].text.as_bytes());
        events.push(b'\n');
    }
    for (file, bytes) in [
        (format!("{}.csv", series.name), rows),
        (format!("{}.events.csv", series.name), events),
    ] {
        let path: PathBuf = out.join(&file);
        std::fs::write(&path, bytes).map_err(|source| BacktestError::Write {
            file: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn write_error(out: &Path, name: &str, source: std::io::Error) -> BacktestError {
    BacktestError::Write {
        file: out.join(format!("{name}.csv")).display().to_string(),
        source,
    }
}

/// The summary as printed on stdout: a line per series, then the totals.
pub fn render_summary(rows: &[SeriesSummary]) -> String {
    let mut s = String::new();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    s.push_str(&format!(
        "{:width$}  {:>8}  {:>5}  {:>7}  {:>7}\n",
        "series", "rows", "rules", "firings", "active"
    ));
    for r in rows {
        s.push_str(&format!(
            "{:width$}  {:>8}  {:>5}  {:>7}  {:>6.2}%\n",
            r.name,
            r.rows,
            r.rules,
            r.firings,
            100.0 * r.active_share
        ));
    }
    let firings: usize = rows.iter().map(|r| r.firings).sum();
    let mean_active = if rows.is_empty() {
        0.0
    } else {
        rows.iter().map(|r| r.active_share).sum::<f64>() / rows.len() as f64
    };
    s.push_str(&format!(
        "{} series, {} firings, active {:.2}% of the time (mean over series)\n",
        rows.len(),
        firings,
        100.0 * mean_active
    ));
    s
}

/// The grading table, when the rows were graded (`--labels`); `labels` names what matched
/// no input.
pub fn render_grades(rows: &[SeriesSummary], labels: &grade::Labels) -> String {
    let graded: Vec<(&str, &grade::Grade)> = rows
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.grade.as_ref()?)))
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    grade::render(&graded, &labels.unmatched(&names))
}

#[cfg(test)]
mod tests;
