//! `anomaly-sidecar backtest`: the real binary over CSV files, its outputs, and every
//! input problem reported with file and line, nothing written.

use crate::common::*;
use std::path::Path;

const RULES: &str =
    "rules:\n  - name: z\n    match: '{__name__=~\".+\"}'\n    method: zscore\n    for: 2m\n";

/// 60 rows a minute apart around 10, rows 40..=43 at 40.
fn spiky_csv() -> String {
    let mut s = String::from("timestamp,value\n");
    for i in 0..60 {
        let v = if (40..44).contains(&i) {
            40.0
        } else {
            10.0 + (i % 3) as f64
        };
        s.push_str(&format!(
            "2014-04-10 {:02}:{:02}:00,{v}\n",
            7 + i / 60,
            i % 60
        ));
    }
    s
}

#[test]
fn writes_scores_events_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let csv = write(dir.path(), "cpu-busy.v1.csv", &spiky_csv());
    let flat = write(
        dir.path(),
        "flat.csv",
        "timestamp,value\n2014-04-10T07:00:00Z,1\n2014-04-10T07:01:00Z,1\n",
    );
    let out_dir = dir.path().join("out");
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        flat.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores = std::fs::read_to_string(out_dir.join("cpu-busy.v1.csv")).unwrap();
    let lines: Vec<&str> = scores.lines().collect();
    assert_eq!(lines[0], "timestamp,value,anomaly_score,active");
    assert_eq!(lines.len(), 61, "one row per input row");
    assert!(
        lines[1].starts_with("2014-04-10 07:00:00,10.0,"),
        "{}",
        lines[1]
    );
    // Rows 40..=43 anomalous; `for: 2m` is two minutes of data time: firing at row 42.
    let active: Vec<usize> = (0..60).filter(|i| lines[i + 1].ends_with(",1")).collect();
    assert_eq!(active.first(), Some(&42), "{scores}");
    let score = |i: usize| {
        lines[i + 1]
            .split(',')
            .nth(2)
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(score(40) > 0.5 && score(40) < 1.0 && score(10) < 0.5);
    let events = std::fs::read_to_string(out_dir.join("cpu-busy.v1.events.csv")).unwrap();
    assert_eq!(events, "timestamp\n2014-04-10 07:42:00\n");
    let flat_events = std::fs::read_to_string(out_dir.join("flat.events.csv")).unwrap();
    assert_eq!(flat_events, "timestamp\n");
    assert!(stdout.contains("cpu-busy.v1"), "{stdout}");
    assert!(stdout.contains("2 series, 1 firings"), "{stdout}");
}

#[test]
fn a_rule_that_does_not_select_the_file_scores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: z\n    match: other\n    method: zscore\n",
    );
    let csv = write(dir.path(), "cpu.csv", &spiky_csv());
    let out_dir = dir.path().join("out");
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let scores = std::fs::read_to_string(out_dir.join("cpu.csv")).unwrap();
    assert!(
        scores.lines().skip(1).all(|l| l.ends_with(",0.0,0")),
        "{scores}"
    );
}

#[test]
fn bad_input_is_reported_with_file_and_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let cases = [
        (
            "ts.csv",
            "timestamp,value\n2014-04-10 07:00:00,1\nyesterday,2\n",
            ":3: bad timestamp \"yesterday\"",
        ),
        (
            "value.csv",
            "timestamp,value\n2014-04-10 07:00:00,one\n",
            ":2: bad value \"one\"",
        ),
        (
            "header.csv",
            "time,v\n2014-04-10 07:00:00,1\n",
            ":1: header",
        ),
        (
            "short.csv",
            "timestamp,value\n2014-04-10 07:00:00\n",
            ":2: expected 2 columns, got 1",
        ),
    ];
    for (name, text, message) in cases {
        let csv = write(dir.path(), name, text);
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = run(&[
            "backtest",
            "--rules",
            rules.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{}{message}", csv.display())),
            "{name}: {stderr}"
        );
        assert!(!out_dir.exists(), "{name}: wrote output despite the error");
    }
    // A missing file, and a rules error, as `check` reports it.
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        "/nonexistent.csv",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.csv"));
    let bad_rules = write(
        dir.path(),
        "bad.yaml",
        "rules:\n  - name: a\n    match: x\n    method: ewma\n    alpha: 2\n",
    );
    let csv = write(dir.path(), "ok.csv", &spiky_csv());
    let out = run(&[
        "backtest",
        "--rules",
        bad_rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":5:12: rule \"a\": alpha must be in (0, 1], got 2"),
        "{stderr}"
    );
    // Two files with one stem would overwrite each other's output.
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let twin = write(&dir.path().join("b"), "ok.csv", &spiky_csv());
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        twin.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ok.csv"));
}

#[test]
fn a_clock_that_goes_back_is_replayed_in_file_order_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let csv = write(
        dir.path(),
        "back.csv",
        "timestamp,value\n2014-04-10 07:05:00,1\n2014-04-10 07:00:00,2\n2014-04-10 07:10:00,3\n",
    );
    let out_dir = dir.path().join("out");
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("back.csv:3: a timestamp before the previous row's"));
    let scores = std::fs::read_to_string(out_dir.join("back.csv")).unwrap();
    assert_eq!(
        scores.lines().nth(2).unwrap().split(',').next(),
        Some("2014-04-10 07:00:00")
    );
}

/// A Prometheus whose TSDB holds `openmetrics` (backfilled with promtool), on a free port;
/// killed on drop. None when the tools are missing (outside CI).
pub struct HistoryPrometheus {
    child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for HistoryPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HistoryPrometheus {
    pub fn start(openmetrics: &str) -> Option<Self> {
        let (prometheus, promtool) = (tool("prometheus")?, tool("promtool")?);
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "history.om", openmetrics);
        let data = dir.path().join("data");
        let out = std::process::Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = write(dir.path(), "prometheus.yml", "global: {}\n");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            "prometheus ready",
            std::time::Duration::from_secs(60),
            || http("GET", &addr, "/-/ready").filter(|(s, _)| *s == 200),
        );
        Some(Self {
            child,
            addr,
            _dir: dir,
        })
    }
}

/// `n` samples of `name{labels}` a second apart ending `end_s`, ~10 with a spike at `spike`.
pub fn openmetrics(name: &str, labels: &str, end_s: u64, n: u64, spike: Option<u64>) -> String {
    let mut s = format!("# TYPE {name} gauge\n");
    for i in 0..n {
        let v = if Some(i) == spike { 100 } else { 10 + i % 3 };
        s.push_str(&format!("{name}{{{labels}}} {v} {}\n", end_s - n + 1 + i));
    }
    s.push_str("# EOF\n");
    s
}

/// A minute ago, in Unix seconds: where the backfilled histories end.
fn a_minute_ago() -> u64 {
    now_s() - 60
}

/// `backtest` of `query` on the Prometheus at `url`, from `start` to `end` at 1 s steps.
fn backtest_query(
    rules: &Path,
    url: &str,
    query: &str,
    (start, end): (&str, &str),
    out: &Path,
) -> std::process::Output {
    run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--prometheus",
        url,
        "--query",
        query,
        "--start",
        start,
        "--end",
        end,
        "--step",
        "1s",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn replays_a_range_read_from_prometheus() {
    let end = a_minute_ago();
    let history = openmetrics(
        "bt_value",
        "instance=\"h:1\",job=\"bt\"",
        end,
        300,
        Some(250),
    );
    let Some(prom) = HistoryPrometheus::start(&history) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: z\n    match: bt_value\n    method: zscore\n",
    );
    let out_dir = dir.path().join("out");
    let url = format!("http://{}", prom.addr);
    let (start, end) = ((end - 299).to_string(), end.to_string());
    let args = |query: &str, out: &Path| backtest_query(&rules, &url, query, (&start, &end), out);
    let out = args("bt_value", &out_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores = std::fs::read_to_string(out_dir.join("bt_value_h_1_bt.csv")).unwrap();
    assert_eq!(scores.lines().count(), 301, "a row per step");
    let events = std::fs::read_to_string(out_dir.join("bt_value_h_1_bt.events.csv")).unwrap();
    let fired: Vec<&str> = events.lines().skip(1).collect();
    assert_eq!(fired.len(), 1, "{events}");
    let spike_at = anomaly_sidecar::util::rfc3339(((end.parse::<i64>().unwrap()) - 49) * 1000);
    assert_eq!(fired[0], spike_at);
    assert!(stdout.contains("bt_value_h_1_bt"), "{stdout}");

    // Prometheus' own complaint, and an unreachable one: errors, nothing written.
    let bad = dir.path().join("bad");
    let out = args("bt_value{", &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bad.exists());
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--prometheus",
        &format!("http://127.0.0.1:{}", free_port()),
        "--query",
        "x",
        "--start",
        &start,
        "--end",
        &end,
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading from Prometheus"));
    assert!(!bad.exists());
}

#[test]
fn a_peers_rule_replays_each_pod_against_the_others_from_prometheus() {
    let end = a_minute_ago();
    // Five pods of one job, a second apart; p3 drifts to 30 for its last 100 s.
    let mut history = String::from("# TYPE bt_latency gauge\n");
    for i in 0..300u64 {
        for k in 0..5u64 {
            let v = if k == 3 && i >= 200 {
                30
            } else {
                10 + (i + k) % 3
            };
            history.push_str(&format!(
                "bt_latency{{job=\"bt\",pod=\"p{k}\"}} {v} {}\n",
                end - 299 + i
            ));
        }
    }
    history.push_str("# EOF\n");
    let Some(prom) = HistoryPrometheus::start(&history) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: outlier\n    match: bt_latency\n    method: peers\n",
    );
    let out_dir = dir.path().join("out");
    let (start, end_s) = ((end - 299).to_string(), end.to_string());
    let url = format!("http://{}", prom.addr);
    let range = (start.as_str(), end_s.as_str());
    let out = backtest_query(&rules, &url, "bt_latency", range, &out_dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fired = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&out_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(series) = name.strip_suffix(".events.csv") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            fired.insert(series.to_string(), text.lines().skip(1).count());
        }
    }
    assert_eq!(fired.len(), 5, "{fired:?}");
    for (series, n) in &fired {
        // Only the pod that drifted, once (8 of 10 rounds out, then it stays out).
        let want = usize::from(series.ends_with("p3"));
        assert_eq!(*n, want, "{series}: {fired:?}");
    }
}

/// `--labels` with NAB's own labels over the shared NAB series: the NAB score it prints is
/// the shared scorer's (`../shared/eval/nab_score.py --events`) on the events it wrote, and
/// the counts agree with the events files.
#[test]
fn labels_grade_the_rules_as_the_nab_scorer_does() {
    let eval = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval");
    if !eval.join("nab_score.py").exists() {
        eprintln!("skipped: ../shared/eval is not here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let preset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/nab-rules.yaml");
    let data = eval.join("nab/data");
    let mut csvs = Vec::new();
    for cat in std::fs::read_dir(&data).unwrap().flatten() {
        for f in std::fs::read_dir(cat.path()).unwrap().flatten() {
            csvs.push((cat.file_name(), f.path()));
        }
    }
    let out_dir = dir.path().join("out");
    let mut args: Vec<String> = vec![
        "backtest".into(),
        "--rules".into(),
        preset.display().to_string(),
        "--labels".into(),
        eval.join("nab/combined_windows.json").display().to_string(),
        "--out".into(),
        out_dir.display().to_string(),
        "--csv".into(),
    ];
    args.extend(csvs.iter().map(|(_, p)| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = stdout
        .lines()
        .find(|l| l.contains("incidents caught"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let ours: f64 = total.rsplit(' ').next().unwrap().parse().unwrap();
    // The events laid out for the scorer: <category>/<file>.csv.
    let events = dir.path().join("events");
    for (cat, path) in &csvs {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        std::fs::create_dir_all(events.join(cat)).unwrap();
        std::fs::copy(
            out_dir.join(format!("{name}.events.csv")),
            events.join(cat).join(format!("{name}.csv")),
        )
        .unwrap();
    }
    let scorer = std::process::Command::new("python3")
        .arg(eval.join("nab_score.py"))
        .arg(&events)
        .arg("--events")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&scorer.stdout);
    let standard: f64 = text
        .lines()
        .find(|l| l.starts_with("standard"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        (ours - standard).abs() < 0.01,
        "ours {ours} vs the scorer's {standard}: {total}"
    );
    // 39 windows in 24 files; every file labelled (none unmatched).
    assert!(total.contains(" of 39 incidents caught"), "{total}");
    assert!(!stdout.contains("not among the inputs"), "{stdout}");
    let caught: usize = total.split(' ').next().unwrap().parse().unwrap();
    assert!(caught >= 30, "{total}");
}

/// A CSV of incidents: per series and in total, and a bad labels file is refused with its
/// line before anything is written.
#[test]
fn labels_from_a_csv_of_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let csv = write(dir.path(), "cpu.csv", &spiky_csv());
    let labels = write(
        dir.path(),
        "incidents.csv",
        "series,start,end\ncpu,2014-04-10 07:39:00,2014-04-10 07:45:00\n",
    );
    let out_dir = dir.path().join("out");
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // The spike starts at 07:40 and `for: 2m` fires it at 07:42: 3 minutes after the start.
    assert!(
        stdout.contains("1 of 1 incidents caught, median time to detect 3m, 0 false alerts"),
        "{stdout}"
    );
    let bad = write(
        dir.path(),
        "bad.csv",
        "series,start,end\ncpu,2014-04-10 07:39:00,later\n",
    );
    let out_dir = dir.path().join("out2");
    let out = run(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--labels",
        bad.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.csv:2: bad timestamp \"later\""),
        "{stderr}"
    );
    assert!(!out_dir.exists(), "nothing written");
}

/// A week at one minute: white noise, or the same with a heavy tail (every value cubed, so
/// z > 3 is common), scaled by `scale`.
fn noise_week(heavy: bool, scale: f64) -> String {
    let mut s = String::from("timestamp,value\n");
    let mut seed = if heavy { 5u64 } else { 9u64 };
    for k in 0..(7 * 1440) {
        // (a sum of four uniforms: close enough to Gaussian for a zscore)
        let mut g = 0.0;
        for _ in 0..4 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            g += (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        }
        let g = g * 3f64.sqrt();
        let v = if heavy { g * g * g } else { g };
        s.push_str(&format!(
            "{},{:.6}\n",
            1_700_000_000 + k * 60,
            100.0 + scale * v
        ));
    }
    s
}

#[test]
fn a_calibrated_threshold_means_about_as_many_alerts_a_day_on_any_series() {
    let dir = tempfile::tempdir().unwrap();
    let white = write(dir.path(), "white.csv", &noise_week(false, 1.0));
    let heavy = write(dir.path(), "heavy.csv", &noise_week(true, 50.0));
    let firings = |name: &str, rule: &str| -> Vec<usize> {
        let rules = write(dir.path(), &format!("{name}.yaml"), rule);
        let out_dir = dir.path().join(name);
        backtest(&rules, &[&white, &heavy], &out_dir);
        ["white", "heavy"]
            .iter()
            .map(|s| {
                let events = std::fs::read_to_string(out_dir.join(format!("{s}.events.csv")));
                // (after the first 1000 minutes: the tail is fitted from 500 samples on)
                let warm = 1_700_000_000 + 1000 * 60;
                let after = |l: &str| l.parse::<i64>().is_ok_and(|t| t >= warm);
                events.unwrap().lines().skip(1).filter(|l| after(l)).count()
            })
            .collect()
    };
    let base = "rules:\n  - name: z\n    match: '{__name__=~\".+\"}'\n    method: zscore\n    z_threshold: 3\n    window: 240\n";
    let fixed = firings("fixed", base);
    let calibrated = firings(
        "calibrated",
        &format!("{base}    threshold_mode: calibrated\n    alerts_per_day: 2\n"),
    );
    // z > 3 is rare on Gaussian noise and common under a heavy tail: the fixed line pages
    // many times more on one than on the other.
    assert!(fixed[1] > 5 * fixed[0].max(1), "fixed {fixed:?}");
    // Calibrated, both are near 2 a day: about 13 in the 6.3 days after the first fit.
    for (s, n) in ["white", "heavy"].iter().zip(&calibrated) {
        assert!(
            (6..=26).contains(n),
            "{s}: {n} firings, calibrated {calibrated:?} fixed {fixed:?}"
        );
    }
}
