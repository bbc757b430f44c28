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
use crate::pipeline::{new_state, PeerGroups, RuleSeries};
use crate::store::{SampleRing, SeriesId, SeriesIdentity};
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

/// Replays `series` through every rule of `rules` that selects it (alone: a `peers` rule
/// finds no peers).
pub fn replay(rules: &RuleSet, series: &Recorded) -> Replay {
    replay_together(rules, std::slice::from_ref(series))
        .pop()
        .unwrap_or_else(|| Replayer::new(rules, series).out)
}

/// Replays every input through the rules that select it, all of them on one clock: rows go
/// in time order across inputs (each input's own order kept), so a `peers` rule judges a
/// series against the same series of the other inputs at the same time, as the live
/// pipeline does at the same scrape round.
pub fn replay_together(rules: &RuleSet, inputs: &[Recorded]) -> Vec<Replay> {
    use std::cmp::Reverse;
    let mut replayers: Vec<Replayer> = inputs.iter().map(|s| Replayer::new(rules, s)).collect();
    let mut peers = crate::pipeline::PeerGroups::default();
    // The input whose next row comes first, by (timestamp, input); each input's rows in order
    // even where its clock went back.
    let mut next: std::collections::BinaryHeap<Reverse<(i64, usize)>> = inputs
        .iter()
        .enumerate()
        .filter_map(|(s, r)| Some(Reverse((r.rows.first()?.ts_ms, s))))
        .collect();
    let mut cursor = vec![0usize; inputs.len()];
    while let Some(Reverse((_, s))) = next.pop() {
        let i = cursor[s];
        replayers[s].row(s as SeriesId, &inputs[s].rows[i], i, &mut peers);
        cursor[s] += 1;
        if let Some(row) = inputs[s].rows.get(i + 1) {
            next.push(Reverse((row.ts_ms, s)));
        }
    }
    replayers.into_iter().map(|r| r.out).collect()
}

/// One input's replay in progress.
struct Replayer<'r> {
    identity: SeriesIdentity,
    /// The rules that select it, with their index in the rule set (a peers group's key).
    selected: Vec<(usize, &'r Rule)>,
    /// As the store does: one more raw sample than the longest window (a rate needs it).
    capacity: usize,
    ring: SampleRing,
    states: Vec<Option<RuleSeries>>,
    /// Peers' values count for two of the input's usual steps (live: two scrape intervals).
    fresh_ms: i64,
    out: Replay,
}

impl<'r> Replayer<'r> {
    fn new(rules: &'r RuleSet, series: &Recorded) -> Self {
        let target: Arc<str> = series.target.as_str().into();
        let identity = SeriesIdentity::new(target, &series.metric, &series.labels, false);
        let selected: Vec<(usize, &Rule)> = rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.selects(&series.target, &series.metric, &series.labels))
            .map(|(i, r)| (i, &**r))
            .collect();
        let mut steps: Vec<i64> = series
            .rows
            .windows(2)
            .map(|w| w[1].ts_ms - w[0].ts_ms)
            .filter(|d| *d > 0)
            .collect();
        steps.sort_unstable();
        let n = series.rows.len();
        Self {
            capacity: selected
                .iter()
                .map(|(_, r)| r.window + 1)
                .max()
                .unwrap_or(1),
            states: selected.iter().map(|_| None).collect(),
            fresh_ms: 2 * steps.get(steps.len() / 2).copied().unwrap_or(60_000),
            out: Replay {
                scores: Vec::with_capacity(n),
                active: Vec::with_capacity(n),
                firings: Vec::new(),
                rules: selected.len(),
            },
            ring: SampleRing::default(),
            identity,
            selected,
        }
    }

    /// Row `i` of the input (`id` among the inputs replayed together).
    fn row(&mut self, id: SeriesId, row: &input::Row, i: usize, peers: &mut PeerGroups) {
        let mut score = 0.0f64;
        let mut fired = false;
        // NaN and ±Inf are skipped, as a scrape's are: not stored, not judged.
        if row.value.is_finite() && !self.selected.is_empty() {
            self.ring.push(self.capacity, row.ts_ms, row.value);
            for (&(ri, rule), state) in self.selected.iter().zip(self.states.iter_mut()) {
                let state = state.get_or_insert_with(|| {
                    new_state(
                        rule,
                        &self.identity,
                        std::iter::empty(),
                        Default::default(),
                        &[],
                    )
                });
                let is_peers = matches!(rule.method, crate::detect::Method::Peers { .. });
                let others = is_peers
                    .then(|| peers.others(ri, rule, id, &self.identity, row.ts_ms, self.fresh_ms));
                let mut verdict = crate::detect::Verdict::default();
                if let Some(step) =
                    state.step(rule, false, &self.ring, &mut verdict, others.as_deref())
                {
                    score = score.max(squash(verdict.score));
                    fired |= step.transition == Some(crate::alert::Transition::Firing);
                    if is_peers {
                        peers.set(ri, id, step.x, row.ts_ms);
                    }
                }
            }
        }
        if fired {
            self.out.firings.push(i);
        }
        self.out.scores.push(score);
        self.out
            .active
            .push(self.states.iter().flatten().any(RuleSeries::is_firing));
    }
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
    for (series, replay) in inputs.iter().zip(replay_together(rules, inputs)) {
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
