//! Captured exposition text, including every case prometheus-parse 0.2.5 gets wrong.

use super::*;

fn one(text: &str) -> Sample {
    let mut s = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.len(), 1, "{s:?}");
    s.remove(0)
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no label {name} in {s:?}"))
}

#[test]
fn colon_names_are_kept() {
    let s =
        one("# TYPE job:http_requests:rate5m gauge\njob:http_requests:rate5m{job=\"api\"} 12.5\n");
    assert_eq!(s.name, "job:http_requests:rate5m");
    assert_eq!(s.value, 12.5);
}

#[test]
fn label_values_with_comma_and_equals() {
    let s = one(r#"http_requests_total{path="/a,b",query="x=1,y=2",code="200"} 3"#);
    assert_eq!(label(&s, "path"), "/a,b");
    assert_eq!(label(&s, "query"), "x=1,y=2");
    assert_eq!(label(&s, "code"), "200");
}

#[test]
fn escapes_are_unescaped() {
    let s = one(r#"m{msg="say \"hi\"",path="C:\\dir",multi="a\nb",odd="\d"} 1"#);
    assert_eq!(label(&s, "msg"), "say \"hi\"");
    assert_eq!(label(&s, "path"), "C:\\dir");
    assert_eq!(label(&s, "multi"), "a\nb");
    assert_eq!(label(&s, "odd"), "\\d");
}

#[test]
fn counter_family_types_its_total_sample() {
    let s = one("# HELP foo Foos.\n# TYPE foo counter\nfoo_total 17\n");
    assert_eq!(s.name, "foo_total");
    assert!(s.counter_like);
    let g = one("# TYPE bar gauge\nbar 1\n");
    assert!(!g.counter_like);
    let u = one("baz_total 1\n");
    assert!(!u.counter_like, "no TYPE means untyped");
}

#[test]
fn histogram_and_summary_parts() {
    let text = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n\
                # TYPE s summary\ns{quantile=\"0.99\"} 0.2\ns_sum 5\ns_count 9\n";
    let samples = parse(text).unwrap();
    let kinds: Vec<(String, bool)> = samples
        .iter()
        .map(|s| (s.name.clone(), s.counter_like))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("h_bucket".into(), true),
            ("h_bucket".into(), true),
            ("h_sum".into(), true),
            ("h_count".into(), true),
            ("s".into(), false),
            ("s_sum".into(), true),
            ("s_count".into(), true),
        ]
    );
}

#[test]
fn special_values_timestamps_and_whitespace() {
    let samples = parse(
        "a NaN\nb +Inf\nc -Inf 1700000000000\n  d{x=\"1\" , y=\"2\",} 1e-300\ne 1.7976931348623157e308\n\n# comment\n",
    )
    .unwrap();
    assert!(samples[0].value.is_nan());
    assert_eq!(samples[1].value, f64::INFINITY);
    assert_eq!(samples[2].value, f64::NEG_INFINITY);
    assert_eq!(samples[2].timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(samples[3].labels.len(), 2);
    assert_eq!(samples[3].value, 1e-300);
    assert_eq!(samples[4].value, f64::MAX);
}

#[test]
fn openmetrics_eof_and_exemplars() {
    let text = "# TYPE a counter\na_total 1 # {trace_id=\"abc\"} 1.0\n# EOF\n";
    let s = one(text);
    assert!(s.counter_like);
    assert_eq!(s.value, 1.0);
    // With a timestamp, and an exemplar whose own timestamp follows it.
    let s = one("a 2.5 1700000000000 # {trace_id=\"x # y\"} 1.0 1700000000.1\n");
    assert_eq!((s.value, s.timestamp_ms), (2.5, Some(1_700_000_000_000)));
    // A '#' that does not start an exemplar is not one.
    for bad in ["a 1 #x\n", "a 1# {} 1\n", "a 1 ##\n"] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn malformed_lines_fail_with_their_number() {
    for (text, line) in [
        ("ok 1\nbroken{ 1\n", 2),
        ("ok 1\n\nno_value\n", 3),
        ("x{a=\"1\"}2\n", 1),
        ("x{a=1} 2\n", 1),
        ("x 1 2 3\n", 1),
        ("x abc\n", 1),
        ("x infinity\n", 1),
        ("<html><body>502 Bad Gateway</body></html>\n", 1),
        ("x{a=\"1\",a=\"2\"} 1\n", 1),
        ("# TYPE x weird\nx 1\n", 1),
        ("{a=\"1\"} 1\n", 1),
    ] {
        let e = parse(text).expect_err(text);
        assert_eq!(e.line, line, "{text:?}: {e}");
    }
}

#[test]
fn captured_node_exporter_body() {
    let text = include_str!("../../../tests/data/node_exporter.txt");
    let samples = parse(text).unwrap_or_else(|e| panic!("{e}"));
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(samples.len(), sample_lines);
    let cpu = samples
        .iter()
        .find(|s| s.name == "node_cpu_seconds_total")
        .expect("node_cpu_seconds_total");
    assert!(cpu.counter_like);
    assert!(samples
        .iter()
        .any(|s| s.name == "node_load1" && !s.counter_like));
    assert!(samples
        .iter()
        .any(|s| s.name == "go_gc_duration_seconds_count" && s.counter_like));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    proptest! {
        /// Lines split exactly as `str::lines` splits them, numbered alike.
        #[test]
        fn lines_match_str_lines(body in "[a\\r\\n ]{0,40}") {
            let ours: Vec<(usize, &str)> = Lines { body: &body, at: 0, number: 0 }.collect();
            let std: Vec<(usize, &str)> = body.lines().enumerate().collect();
            prop_assert_eq!(ours, std);
        }

        /// No input makes the parser panic; it either parses or names a line.
        #[test]
        fn never_panics(body in "\\PC{0,200}") {
            let _ = parse(&body);
        }

        /// Whatever we render in the text format (any label value, any finite float) parses
        /// back to the same sample.
        #[test]
        fn round_trips(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "\\PC{0,20}", 0..5),
            value in prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL,
        ) {
            let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let line = format!("{name}{{{}}} {value:?}\n", rendered.join(","));
            let parsed = parse(&line).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(&parsed[0].name, &name);
            let want: Vec<(String, String)> = labels.into_iter().collect();
            prop_assert_eq!(&parsed[0].labels, &want);
            prop_assert_eq!(parsed[0].value, value);
        }

        /// The plain-decimal fast path gives exactly the bits `str::parse` gives, and takes
        /// only what it can get exactly right.
        #[test]
        fn simple_decimals_match_str_parse(text in "[-+]?[0-9]{0,17}(\\.[0-9]{0,17})?") {
            let want = text.parse::<f64>().ok();
            if let Some(v) = simple_decimal(&text) {
                prop_assert_eq!(Some(v.to_bits()), want.map(f64::to_bits), "{}", text);
            }
            prop_assert_eq!(parse_value(&text).map(f64::to_bits), want.map(f64::to_bits));
        }
    }

    #[test]
    fn simple_decimal_cases() {
        for text in [
            "0",
            "-0",
            "7",
            "55.1234",
            "-12.5",
            ".5",
            "5.",
            "+3.25",
            "999999999999999",
        ] {
            let got = simple_decimal(text).map(f64::to_bits);
            assert_eq!(got, text.parse::<f64>().ok().map(f64::to_bits), "{text}");
            assert!(got.is_some(), "{text} takes the fast path");
        }
        for text in [
            "",
            "-",
            ".",
            "1e5",
            "1.2.3",
            "1234567890123456",
            "0x10",
            "NaN",
        ] {
            assert_eq!(simple_decimal(text), None, "{text}");
        }
    }
}
