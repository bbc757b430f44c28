//! Criterion benches of the hot path, one stage at a time:
//!   cargo bench --bench pipeline                 (all; add a filter, e.g. `-- parse`)
//! - detect: one sample judged (detector, then the rule's guard), folded into the method's
//!   state and pushed into the window unless it is an incident, per method, at window 60
//!   and 1000;
//! - parse: a scrape body as a scrape takes it (UTF-8 check, then the series index's one
//!   pass: every line parsed when all series are new, values only in the steady state), in
//!   MB/s, beside the other Rust parsers found (prometheus-parse 0.2.5,
//!   prom_text_format_parser 0.1) on the same text;
//! - store: one scrape's batch (10k samples) appended to the journal and synced.

use anomaly_sidecar::detect::{self, Method, Op, Window};
use anomaly_sidecar::pipeline::scan::SeriesIndex;
use anomaly_sidecar::scrape::ScrapeBody;
use anomaly_sidecar::store::{series_id, SeriesIdentity, Store};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

fn methods(window: usize) -> [(&'static str, Method); 7] {
    [
        ("zscore", Method::ZScore { z_threshold: 3.0 }),
        ("iqr", Method::Iqr { iqr_factor: 1.5 }),
        (
            "threshold",
            Method::Threshold {
                threshold: 100.0,
                op: Op::Gt,
            },
        ),
        (
            "trend",
            Method::Trend {
                trend_window: 5,
                deviation_pct: 20.0,
            },
        ),
        ("mad", Method::Mad { mad_threshold: 3.5 }),
        (
            "ewma",
            Method::Ewma {
                alpha: 0.1,
                z_threshold: 3.0,
            },
        ),
        (
            "seasonal",
            Method::Seasonal {
                season: crate::detect::Season::utc(86_400_000),
                buckets: 288,
                z_threshold: 3.0,
                memory: window as u32,
            },
        ),
    ]
}

fn detect(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(1));
    for window in [60usize, 1000] {
        for (name, method) in methods(window) {
            let mut w = Window::new(window, method.needs_sorted());
            let guard = detect::Guard {
                min_delta_pct: 10.0,
                resolve_below: 0.7,
                relearn: detect::Relearn::Samples(window as u32),
                ..detect::Guard::default()
            };
            let mut state = method.new_state();
            // 15 s scrapes: a seasonal series moves to its next 5-minute bucket every 20.
            let mut ts_ms = 0i64;
            let mut x = 0u64;
            let mut next = move || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                50.0 + (x >> 40) as f64 / (1u64 << 24) as f64
            };
            // A day of history first, so every seasonal bucket is past min_samples.
            for _ in 0..window.max(5760) {
                let v = next();
                detect::update(&method, &mut state, ts_ms, v);
                w.push(v);
                ts_ms += 15_000;
            }
            g.bench_function(BenchmarkId::new(name, window), |b| {
                b.iter(|| {
                    let v = next();
                    let mut j = detect::judge(&method, &w, &state, ts_ms, v, 10, 1.0);
                    // The rule's guard and the incident check, as every evaluation runs them.
                    if let Some(j) = &mut j {
                        guard.apply(&mut j.verdict, v);
                    }
                    if let Some(j) = j.as_ref().filter(|j| !(j.ready && j.verdict.anomalous)) {
                        detect::learn(&method, &mut state, ts_ms, j.bucket, v);
                        w.push(v);
                    }
                    ts_ms += 15_000;
                    black_box(j)
                })
            });
        }
    }
    g.finish();
}

/// A body like the load bench's: six metric names, 3–6 labels each.
fn body(series: usize) -> String {
    let names = [
        "http_requests_in_flight",
        "db_query_latency_seconds",
        "queue_depth",
    ];
    let mut out = String::new();
    for (k, name) in names.iter().enumerate() {
        out.push_str(&format!("# HELP {name} A gauge.\n# TYPE {name} gauge\n"));
        for i in (k..series).step_by(names.len()) {
            out.push_str(&format!(
                "{name}{{service=\"svc-{}\",instance=\"10.0.{}.{}:9100\",series_id=\"{i}\",method=\"GET\"}} {}.{}\n",
                i % 97,
                i / 256 % 256,
                i % 256,
                50 + i % 10,
                i % 1000
            ));
        }
    }
    out
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.sample_size(20);
    let node = include_str!("../tests/data/node_exporter.txt").to_string();
    for (name, text) in [("synthetic_100k", body(100_000)), ("node_exporter", node)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        // A scrape of a body whose series are all new: every line checked, then parsed.
        g.bench_function(BenchmarkId::new("ours_new_series", name), |b| {
            b.iter(|| {
                let body = ScrapeBody::from_bytes(text.clone().into_bytes()).unwrap();
                let mut index = SeriesIndex::default();
                let scan = index.scan(&body.text, &Default::default()).unwrap();
                black_box(scan.new_samples(&index).count())
            })
        });
        // Every later scrape: series resolved from their text, values parsed.
        let mut warm = SeriesIndex::default();
        let scan = SeriesIndex::default()
            .scan(&text, &Default::default())
            .unwrap();
        let learnt: Vec<String> = scan
            .new_samples(&SeriesIndex::default())
            .map(|n| n.text.to_string())
            .collect();
        // A scan first records the body's TYPE lines: an index learnt under other types is
        // cleared by the next scan (the series' transforms may differ), which would leave
        // every later iteration scanning against an empty index.
        let _ = warm.scan(&text, &Default::default()).unwrap();
        for (i, series) in learnt.iter().enumerate() {
            warm.learn(series, i as u64, None, Arc::from([0usize]));
        }
        let known = warm.scan(&text, &Default::default()).unwrap().known.len();
        assert_eq!(known, learnt.len(), "every series resolved from its text");
        g.bench_function(BenchmarkId::new("ours_steady", name), |b| {
            b.iter(|| {
                let body = ScrapeBody::from_bytes(text.clone().into_bytes()).unwrap();
                let scan = warm.scan(&body.text, &Default::default()).unwrap();
                black_box(scan.known.len())
            })
        });
        g.bench_function(BenchmarkId::new("prometheus-parse", name), |b| {
            b.iter(|| {
                let lines = text.lines().map(|l| Ok(l.to_string()));
                let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
                black_box(scrape.samples.len())
            })
        });
        // winnow-based; it keeps values as text, so each is converted as a scrape would.
        g.bench_function(BenchmarkId::new("prom_text_format_parser", name), |b| {
            b.iter(|| {
                let scrape = prom_text_format_parser::Scrape::parse(&text).unwrap();
                let values = scrape.metrics.iter().flat_map(|m| &m.samples);
                black_box(values.map(|s| s.value.value.as_f64()).sum::<f64>())
            })
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    let ids: Vec<u64> = (0..10_000u64)
        .map(|i| {
            let labels = vec![("i".to_string(), i.to_string())];
            let id = series_id("t:1", "m", &labels);
            let identity = || SeriesIdentity::new("t:1".into(), "m", &labels, false);
            s.admit(id, identity, 1_000_000).unwrap();
            id
        })
        .collect();
    let mut ts = 0i64;
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("scrape_batch_10k", |b| {
        b.iter(|| {
            ts += 1000;
            for id in &ids {
                s.append(*id, ts, ts as f64, 60);
            }
            let (writer, batch) = s.take_batch();
            writer.write(batch).unwrap();
            if s.compaction_due() {
                s.compact().unwrap();
            }
        })
    });
    // A compaction rewrites every window: 100k series, window 60, 3-6 labels, noisy values.
    // In memory where there is a tmpfs: the CPU it costs, not the disk's fsync.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    let ids: Vec<u64> = (0..100_000u64)
        .map(|i| {
            let mut labels = vec![
                (
                    "instance".to_string(),
                    format!("10.0.{}.{}:9100", i / 256 % 256, i % 256),
                ),
                ("series_id".to_string(), i.to_string()),
                ("service".to_string(), format!("svc-{}", i % 97)),
            ];
            if i % 2 == 1 {
                labels.push(("method".to_string(), "GET".to_string()));
            }
            let id = series_id("t:1", "http_requests_in_flight", &labels);
            let identity =
                || SeriesIdentity::new("t:1".into(), "http_requests_in_flight", &labels, false);
            s.admit(id, identity, 1_000_000).unwrap();
            id
        })
        .collect();
    for k in 0..61i64 {
        for (n, id) in ids.iter().enumerate() {
            // As scraped: printed with 4 decimals, parsed back.
            let noise = ((n as u64 * 2_654_435_761 + k as u64 * 40_503) % 10_007) as f64 / 1e3;
            let value: f64 = format!("{:.4}", 50.0 + noise).parse().unwrap();
            s.append(*id, 1_700_000_000_000 + k * 1000, value, 60);
        }
        let (writer, batch) = s.take_batch();
        writer.write(batch).unwrap();
    }
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.sample_size(10);
    g.bench_function("compact_100k_window_60", |b| {
        b.iter(|| s.compact().unwrap())
    });
    g.finish();
}

criterion_group!(benches, detect, parse, store);
criterion_main!(benches);
