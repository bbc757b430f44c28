//! Loader tests: every failure mode is an error with its place and rule name.

use super::*;
use crate::detect::Op;

fn errors(text: &str) -> Vec<RuleError> {
    parse("rules.yaml", text).expect_err("should fail").0
}

#[test]
fn full_rule_with_defaults() {
    let text = r#"
defaults:
  window: 30
  min_samples: 5
  for: 1m
  severity: info
rules:
  - name: cpu_spike
    match: 'process_cpu_seconds_total{job=~"api.*"}'
    source: '10.0.*'
    transform: auto
    method: zscore
    z_threshold: 3.5
    severity: critical
    labels: {team: infra}
    annotations: {summary: '{{ $labels.instance }} {{ $labels.rule }} z={{ $value }}'}
  - name: low_disk
    match: node_filesystem_avail_bytes
    method: threshold
    threshold: 1e9
    op: lt
"#;
    let set = parse("rules.yaml", text).unwrap();
    assert_eq!(set.rules.len(), 2);
    let r = &set.rules[0];
    assert_eq!(r.window, 30);
    assert_eq!(r.min_samples, 5);
    assert_eq!(r.for_duration, Duration::from_secs(60));
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(r.method, Method::ZScore { z_threshold: 3.5 });
    assert!(r.selects(
        "10.0.0.1:80",
        "process_cpu_seconds_total",
        &[("job".into(), "api".into())]
    ));
    assert!(!r.selects(
        "10.1.0.1:80",
        "process_cpu_seconds_total",
        &[("job".into(), "api".into())]
    ));
    assert_eq!(set.rules[1].severity, Severity::Info);
    assert_eq!(
        set.rules[1].method,
        Method::Threshold {
            threshold: 1e9,
            op: Op::Lt
        }
    );
}

#[test]
fn empty_rules_list_is_allowed_but_empty_file_is_not() {
    assert!(parse("r", "rules: []\n").unwrap().rules.is_empty());
    let e = errors("");
    assert!(e[0].message.contains("empty"), "{e:?}");
    let e = errors("# only a comment\n\n");
    assert!(e[0].message.contains("empty"), "{e:?}");
}

#[test]
fn unknown_key_names_place_and_rule() {
    let text = "rules:\n  - name: a\n    match: x\n    method: zscore\n    z_treshold: 3\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 5, "{e:?}");
    assert_eq!(e[0].rule.as_deref(), Some("a"));
    assert!(e[0].message.contains("z_treshold"), "{}", e[0]);
}

#[test]
fn every_semantic_error_is_reported() {
    let text = r#"rules:
  - name: bad_threshold
    match: x
    method: threshold
  - name: bad_selector
    match: 'x{job=~"("}'
    method: zscore
  - name: negative_window
    match: x
    method: zscore
    window: -5
  - name: wrong_param
    match: x
    method: iqr
    z_threshold: 2
  - name: 9bad
    match: x
    method: magic
  - name: bad_duration
    match: x
    method: zscore
    for: soon
"#;
    let e = errors(text);
    let find = |rule: &str| {
        e.iter()
            .find(|x| x.rule.as_deref() == Some(rule))
            .unwrap_or_else(|| panic!("no error for {rule}: {e:?}"))
            .clone()
    };
    let t = find("bad_threshold");
    assert_eq!((t.line, t.column), (4, 13), "{t}");
    assert!(t.message.contains("needs `threshold`"));
    let s = find("bad_selector");
    assert_eq!(s.line, 6);
    assert!(s.message.contains("bad regex"), "{s}");
    let w = find("negative_window");
    assert_eq!(w.line, 11);
    assert!(w.message.contains("window must be a positive integer"));
    assert!(find("wrong_param")
        .message
        .contains("z_threshold does not apply"));
    assert!(e
        .iter()
        .any(|x| x.rule.as_deref() == Some("9bad") && x.message.contains("name must match")));
    assert!(e
        .iter()
        .any(|x| x.rule.as_deref() == Some("9bad") && x.message.contains("unknown method")));
    assert!(find("bad_duration").message.contains("bad duration"));
    let shown = e[0].to_string();
    assert!(
        shown.starts_with("rules.yaml:4:13: rule \"bad_threshold\": "),
        "{shown}"
    );
}

#[test]
fn duplicate_names_and_reserved_labels() {
    let text = "rules:\n  - {name: a, match: x, method: zscore}\n  - {name: a, match: y, method: zscore, labels: {rule: z}}\n";
    let e = errors(text);
    assert!(e.iter().any(|x| x.message.contains("duplicate rule name")));
    assert!(e.iter().any(|x| x.message.contains("cannot be overridden")));
}

#[test]
fn syntax_error_has_location() {
    let e = errors("rules:\n  - name: a\n    match: [unclosed\n");
    assert!(e[0].line >= 3, "{e:?}");
    let e = errors("rules: {a: 1}\n");
    assert_eq!(e.len(), 1);
}

#[test]
fn the_shipped_rules_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.yaml");
    let set = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!set.rules.is_empty());
}

#[test]
fn robust_and_seasonal_methods_with_their_defaults_and_alert_policy() {
    let text = r#"
defaults:
  keep_firing_for: 10m
  min_anomalous: {count: 2, of: 3}
rules:
  - name: m
    match: x
    method: mad
  - name: e
    match: x
    method: ewma
    alpha: 0.2
    keep_firing_for: 0s
  - name: s
    match: x
    method: seasonal
    season: 168h
    buckets: 672
    window: 20
    min_anomalous: {count: 1, of: 1}
"#;
    let set = parse("rules.yaml", text).unwrap();
    let [m, e, s] = &set.rules[..] else {
        panic!("three rules")
    };
    assert_eq!(m.method, Method::Mad { mad_threshold: 5.0 });
    assert_eq!(m.window, 240, "the default window");
    assert_eq!(
        (m.keep_firing_for, m.min_anomalous),
        (Duration::from_secs(600), (2, 3))
    );
    assert_eq!(
        e.method,
        Method::Ewma {
            alpha: 0.2,
            z_threshold: 5.0
        }
    );
    assert_eq!(e.keep_firing_for, Duration::ZERO);
    assert_eq!(
        s.method,
        Method::Seasonal {
            season: crate::detect::Season::utc(168 * 3_600_000),
            buckets: 672,
            z_threshold: 5.5,
            memory: 20
        }
    );
    assert_eq!(s.policy().count, 1);
    assert_eq!(s.policy().keep_firing_for_ms, 600_000);
}

#[test]
fn bad_parameters_of_the_new_methods_point_at_their_value() {
    let text = r#"rules:
  - name: a
    match: x
    method: ewma
    alpha: 0
  - name: b
    match: x
    method: seasonal
    season: 1m
    buckets: 288
  - name: c
    match: x
    method: zscore
    mad_threshold: 3
    min_anomalous: {count: 4, of: 3}
  - name: d
    match: x
    method: seasonal
    season: soon
"#;
    let e = errors(text);
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| msgs.iter().any(|m| m.contains(needle));
    assert!(
        has("rules.yaml:5:12: rule \"a\": alpha must be in (0, 1], got 0"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:10:14: rule \"b\": season 60s in 288 buckets is under a second a bucket"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:14:20: rule \"c\": mad_threshold does not apply to method zscore"),
        "{msgs:?}"
    );
    assert!(
        has("rule \"c\": min_anomalous needs 1 <= count <= of <= 64, got count 4 of 3"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:19:13: rule \"d\": bad duration \"soon\""),
        "{msgs:?}"
    );
    assert_eq!(msgs.len(), 5, "{msgs:?}");
}

#[test]
fn guard_settings_have_method_defaults_and_point_at_bad_values() {
    use crate::detect::{Relearn, Side};
    let set = super::parse(
        "rules.yaml",
        r#"defaults:
  min_delta: 0.5
  resolve_below: 0.6
rules:
  - name: z
    match: x
    window: 120
  - name: s
    match: x
    method: seasonal
    season: 168h
    direction: up
    min_delta_pct: 20
  - name: t
    match: x
    method: threshold
    threshold: 5
  - name: e
    match: x
    method: ewma
    relearn_after: 2h
    resolve_below: 1
"#
        .replace(
            "    match: x\n    window",
            "    match: x\n    method: zscore\n    window",
        )
        .as_str(),
    )
    .unwrap();
    let g = |i: usize| set.rules[i].guard;
    assert_eq!(g(0).relearn, Relearn::Samples(120), "a window's worth");
    assert_eq!(
        (g(0).min_delta, g(0).resolve_below),
        (0.5, 0.6),
        "from defaults"
    );
    assert_eq!(g(1).relearn, Relearn::After(168 * 3_600_000), "a season");
    assert_eq!((g(1).side, g(1).min_delta_pct), (Side::Up, 20.0));
    // A threshold is its own line: no minimum deviation, no hysteresis unless asked.
    assert_eq!(g(2).min_delta, 0.0);
    assert_eq!(g(2).resolve_below, 0.6);
    assert_eq!(g(2).relearn, Relearn::Never);
    assert_eq!(g(3).relearn, Relearn::After(7_200_000));
    assert_eq!(g(3).resolve_below, 1.0);

    let text = r#"rules:
  - name: a
    match: x
    method: zscore
    direction: sideways
    min_delta: -1
  - name: b
    match: x
    method: threshold
    threshold: 1
    min_delta_pct: 5
    relearn_after: 1h
  - name: c
    match: x
    method: mad
    resolve_below: 1.5
    relearn_after: 0s
  - name: d
    match: x
    method: iqr
    for: 10m
    relearn_after: 5m
"#;
    let msgs: Vec<String> = errors(text).iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| msgs.iter().any(|m| m.contains(needle));
    assert!(
        has("rules.yaml:5:16: rule \"a\": unknown direction \"sideways\": use up, down or both"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:6:16: rule \"a\": min_delta must be a number >= 0, got -1"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:11:20: rule \"b\": min_delta_pct does not apply to method threshold"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:12:20: rule \"b\": relearn_after does not apply to method threshold"),
        "{msgs:?}"
    );
    assert!(
        has("rule \"c\": resolve_below must be in (0, 1]"),
        "{msgs:?}"
    );
    assert!(
        has("rule \"c\": relearn_after must be longer than 0"),
        "{msgs:?}"
    );
    assert!(
        has("rules.yaml:22:20: rule \"d\": relearn_after (5m) must be longer than for (10m)"),
        "{msgs:?}"
    );
    assert_eq!(msgs.len(), 7, "{msgs:?}");
}

#[test]
fn seasonal_buckets_in_a_time_zone_from_the_rule_or_the_defaults() {
    let text = r#"
defaults:
  timezone: America/New_York
rules:
  - name: berlin
    match: x
    method: seasonal
    season: 168h
    buckets: 168
    timezone: Europe/Berlin
  - name: default_zone
    match: x
    method: seasonal
  - name: not_seasonal
    match: x
    method: zscore
"#;
    let set = parse("rules.yaml", text).unwrap();
    let zone = |i: usize| match &set.rules[i].method {
        Method::Seasonal { season, .. } => season.zone().map(str::to_string),
        m => panic!("{m:?}"),
    };
    assert_eq!(zone(0).as_deref(), Some("Europe/Berlin"));
    assert_eq!(zone(1).as_deref(), Some("America/New_York"));
    // Zone and alignment are what the profile learns with: its key says so.
    assert!(set.rules[0]
        .detector_fingerprint()
        .starts_with("Seasonal { season: 604800000ms+345600000ms@Europe/Berlin,"));
    let e = errors(
        r#"defaults:
  timezone: Europe/Atlantis
rules:
  - name: a
    match: x
    method: zscore
    timezone: UTC
  - name: b
    match: x
    method: seasonal
    timezone: berlin
"#,
    );
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(msgs[0].starts_with("rules.yaml:2:13: unknown timezone \"Europe/Atlantis\""));
    assert!(msgs
        .iter()
        .any(|m| m == "rules.yaml:7:15: rule \"a\": timezone does not apply to method zscore"));
    assert!(msgs.iter().any(|m| m.starts_with(
        "rules.yaml:11:15: rule \"b\": unknown timezone \"berlin\": use an IANA name"
    )));
}

#[test]
fn a_daily_utc_profile_keeps_the_key_it_had_before_zones() {
    // Stored seasonal profiles belong to this key: an upgrade must not forget them.
    let set = parse(
        "rules.yaml",
        "rules:\n  - name: s\n    match: x\n    method: seasonal\n    buckets: 24\n",
    )
    .unwrap();
    assert_eq!(
        set.rules[0].detector_fingerprint(),
        "Seasonal { season_ms: 86400000, buckets: 24, z_threshold: 5.5, memory: 240 }|Auto|240|10"
    );
}

#[test]
fn calibrated_thresholds_and_their_errors() {
    let text = r#"
defaults:
  alerts_per_day: 4
rules:
  - name: own
    match: x
    method: zscore
    threshold_mode: calibrated
    alerts_per_day: 0.5
  - name: from_defaults
    match: x
    method: mad
    threshold_mode: calibrated
  - name: fixed
    match: x
    method: ewma
"#;
    let set = parse("rules.yaml", text).unwrap();
    let per_day: Vec<Option<f64>> = set.rules.iter().map(|r| r.guard.alerts_per_day).collect();
    assert_eq!(per_day, [Some(0.5), Some(4.0), None]);
    let e = errors(
        r#"rules:
  - name: a
    match: x
    method: zscore
    alerts_per_day: 2
  - name: b
    match: x
    method: threshold
    threshold: 1
    threshold_mode: calibrated
  - name: c
    match: x
    method: zscore
    threshold_mode: tuned
  - name: d
    match: x
    method: zscore
    threshold_mode: calibrated
    alerts_per_day: 0
"#,
    );
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    for want in [
        "rules.yaml:5:21: rule \"a\": alerts_per_day needs threshold_mode: calibrated",
        "rules.yaml:10:21: rule \"b\": threshold_mode does not apply to method threshold",
        "rules.yaml:14:21: rule \"c\": unknown threshold_mode \"tuned\": use fixed or calibrated",
        "rules.yaml:19:21: rule \"d\": alerts_per_day must be in (0, 43200], got 0",
    ] {
        assert!(msgs.iter().any(|m| m == want), "{want}\n{msgs:?}");
    }
}

#[test]
fn peers_rules_and_their_mistakes() {
    let set = parse(
        "rules.yaml",
        "rules:\n  - name: outlier\n    match: http_requests_total\n    method: peers\n    by: [workload, handler]\n  - name: strict\n    match: g\n    method: peers\n    mad_threshold: 5\n    min_peers: 4\n    min_anomalous: {count: 1, of: 1}\n",
    )
    .unwrap();
    let r = &set.rules[0];
    assert_eq!(
        r.method,
        Method::Peers {
            mad_threshold: 5.0,
            min_peers: 3
        }
    );
    assert_eq!(r.by, ["workload", "handler"]);
    // 8 of the last 10 rounds by default: one noisy scrape of one pod is not an outlier.
    assert_eq!(r.min_anomalous, (8, 10));
    let s = &set.rules[1];
    assert_eq!(
        s.method,
        Method::Peers {
            mad_threshold: 5.0,
            min_peers: 4
        }
    );
    assert_eq!(s.min_anomalous, (1, 1));
    // A default min_anomalous written in `defaults` applies to peers rules too.
    let d = parse(
        "rules.yaml",
        "defaults:\n  min_anomalous: {count: 2, of: 4}\nrules:\n  - name: o\n    match: g\n    method: peers\n",
    )
    .unwrap();
    assert_eq!(d.rules[0].min_anomalous, (2, 4));

    let e = errors(
        "rules:\n  - name: a\n    match: g\n    method: zscore\n    by: [pod]\n  - name: b\n    match: g\n    method: peers\n    min_peers: 1\n  - name: c\n    match: g\n    method: peers\n    by: [pod, pod]\n  - name: d\n    match: g\n    method: peers\n    relearn_after: 1h\n  - name: e\n    match: g\n    method: mad\n    min_peers: 3\n",
    );
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| msgs.iter().any(|m| m.contains(needle));
    assert!(
        has("rules.yaml:5:9: rule \"a\": by does not apply to method zscore"),
        "{msgs:?}"
    );
    assert!(has("rule \"b\": min_peers must be at least 2"), "{msgs:?}");
    assert!(has("rule \"c\": by: \"pod\" is named twice"), "{msgs:?}");
    assert!(
        has("rule \"d\": relearn_after does not apply to method peers"),
        "{msgs:?}"
    );
    assert!(
        has("rule \"e\": min_peers does not apply to method mad"),
        "{msgs:?}"
    );
}
