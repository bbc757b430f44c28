//! Fault suite (first part of the faults issue): repeated kill -9 during steady scraping, and
//! targets that misbehave at the connection level.

use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// One zscore rule over every series.
const ANY_SERIES: &str =
    "rules:\n  - name: any\n    match: '{__name__=~\".+\"}'\n    method: zscore\n";

/// kill -9 at pseudo-random moments, 20 times: the store opens every time, windows keep
/// their history (at most the last interval is lost), and a firing alert stays firing
/// without a second firing event.
#[test]
fn twenty_kill_9_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: always\n    match: hot\n    method: threshold\n    threshold: 0\n  - name: hist\n    match: g\n    method: zscore\n    window: 500\n    min_samples: 2\n",
    );
    let exporter = Exporter::start(Reply::Body("hot 1\ng 1\n".into()));
    let hook = Webhook::start_on(0, vec![]);
    let args = ["--webhook", &hook.url()];
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut last_count = 0usize;
    let mut stored = 0usize;
    let mut most_lost = 0usize;
    let started = Instant::now();
    let g = anomaly_sidecar::store::series_id(&exporter.name(), "g", &[]);
    for round in 0..20 {
        let mut s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
        let evaluated = || s.number("anomaly_sidecar_rule_evaluations_total{rule=\"hist\"}");
        wait_for("an evaluation after restart", T, || {
            (evaluated() > 0).then_some(())
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 600));
        // Every sample evaluated up to here was scraped in this run; only the scrape being
        // written when the kill lands may be missing from the store.
        let seen = evaluated() as usize;
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        let log = s.log();
        assert!(log.contains("Store opened"), "round {round}: {log}");
        let series: usize = log
            .lines()
            .find_map(|l| l.split("series=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            series >= last_count,
            "round {round}: series {series} < {last_count}"
        );
        last_count = series;
        let store = anomaly_sidecar::store::Store::open(&s.data_dir, 1 << 20)
            .unwrap_or_else(|e| panic!("round {round}: store does not open after kill -9: {e}"));
        let now = store.get(g).map_or(0, |e| e.samples().len());
        assert!(
            now + 1 >= stored + seen,
            "round {round}: {now} samples stored, {stored} before plus {seen} evaluated"
        );
        most_lost = most_lost.max((stored + seen).saturating_sub(now));
        stored = now;
        drop(store);
        // Our own handle must let go of the lock before the next sidecar opens the store.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last_count, 2, "both series kept across kills");
    // One firing of `always` in all those restarts (the receiver dedupes by event id).
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &args);
    std::thread::sleep(Duration::from_millis(800));
    let firings: Vec<_> = hook
        .distinct()
        .into_iter()
        .filter(|g| {
            g.body["status"] == "firing" && g.body["alerts"][0]["labels"]["alertname"] == "always"
        })
        .collect();
    assert_eq!(firings.len(), 1, "firing alerts stay firing across kill -9");
    assert!(hook
        .distinct()
        .iter()
        .all(|g| g.body["status"] != "resolved"));
    // History kept: the zscore baseline has (almost) every sample since the start.
    let m = s.metrics();
    assert!(
        metric_value(&m, "anomaly_baseline_mean{rule=\"hist\"").is_some(),
        "{m}"
    );
    eprintln!(
        "20 kill -9 rounds in {:?}: {stored} samples kept, at most {most_lost} lost in a round",
        started.elapsed()
    );
}

/// A target that resets the connection mid-body and one whose body never ends: both fail
/// their own scrape only.
#[test]
fn reset_mid_body_and_endless_body() {
    let reset = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = reset.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in reset.incoming().flatten() {
            let _ = read_request(&mut s);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nok 1\npartial_metric{a=\"",
            );
            drop(s); // closes with most of the promised body missing
        }
    });
    let endless = TcpListener::bind("127.0.0.1:0").unwrap();
    let endless_addr = endless.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in endless.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = read_request(&mut s);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = b"c\r\nslow_metric 1\n\r\n";
                while s.write_all(chunk).is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    let good = Exporter::start(Reply::Body("fine 1\n".into()));
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", ANY_SERIES);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[
            format!("http://{reset_addr}/metrics"),
            format!("http://{endless_addr}/metrics"),
            good.url(),
        ],
        &["--scrape-timeout", "1s"],
    );
    let up = |t: String| {
        metric_value(
            &s.metrics(),
            &format!("anomaly_sidecar_up{{target=\"{t}\"}}"),
        )
    };
    wait_for("reset target down", T, || {
        up(reset_addr.to_string()).filter(|v| v == "0")
    });
    wait_for("endless target down", T, || {
        up(endless_addr.to_string()).filter(|v| v == "0")
    });
    wait_for("good target up", T, || up(good.name()).filter(|v| v == "1"));
    let m = s.metrics();
    assert!(!m.contains("metric=\"slow_metric\"") && !m.contains("metric=\"partial_metric\""));
    assert!(m.contains("metric=\"fine\""));
}

/// Scrapes `body` (of `samples` distinct series) next to a calm target with --max-series
/// 1000: the big target is capped and the rest counted, the calm one untouched. Returns the
/// peak RSS in kB and the big scrape's duration.
fn huge_scrape(body: String, samples: u64, extra: &[&str]) -> (u64, String) {
    let big = Exporter::start(Reply::Body(body));
    let calm = Exporter::start(Reply::Body("calm 1\n".into()));
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", ANY_SERIES);
    let mut args = vec![
        "--max-series",
        "1000",
        "--scrape-interval",
        "5s",
        "--scrape-timeout",
        "60s",
    ];
    args.extend(extra);
    let s = Sidecar::start(dir.path(), &rules, &[big.url(), calm.url()], &args);
    let dropped = format!(
        "anomaly_sidecar_dropped_series_total{{target=\"{}\"}}",
        big.name()
    );
    wait_for(
        "every sample of the scrape processed",
        Duration::from_secs(120),
        || (s.number(&dropped) == samples - 1000).then_some(()),
    );
    let series = |t: &str| s.number(&format!("anomaly_sidecar_series{{target=\"{t}\"}}"));
    assert_eq!(series(&big.name()), 1000);
    assert_eq!(series(&calm.name()), 1, "the other target is untouched");
    assert_eq!(
        s.number(&format!("anomaly_sidecar_up{{target=\"{}\"}}", calm.name())),
        1
    );
    let took = metric_value(
        &s.metrics(),
        &format!(
            "anomaly_sidecar_scrape_duration_seconds{{target=\"{}\"}}",
            big.name()
        ),
    )
    .unwrap_or_default();
    (s.peak_rss_kb(), took)
}

/// A million distinct series in one scrape: --max-series holds, the rest is counted, and
/// memory stays bounded (the samples are never all held at once).
#[test]
fn cardinality_bomb_is_bounded() {
    let mut body = String::from("# TYPE bomb gauge\n");
    for i in 0..1_000_000u32 {
        body.push_str(&format!("bomb{{i=\"{i}\",job=\"x\"}} {}\n", i % 7));
    }
    let (hwm_kb, _) = huge_scrape(body, 1_000_000, &[]);
    eprintln!("cardinality bomb: peak RSS {} MB", hwm_kb / 1024);
    // Holding 1M parsed samples took ~900 MB; the bound leaves room for a debug build.
    assert!(hwm_kb < 400 * 1024, "peak RSS {} MB", hwm_kb / 1024);
}

/// 100 MB of valid samples in one scrape (long labels): the scrape succeeds within its
/// limit, --max-series holds, and memory stays near one copy of the body.
#[test]
fn a_hundred_megabyte_scrape() {
    let _heavy = heavy();
    let mut body = String::with_capacity(105 << 20);
    body.push_str("# TYPE http_request_duration_seconds gauge\n");
    let mut i = 0u32;
    while body.len() < 100 << 20 {
        body.push_str(&format!(
            "http_request_duration_seconds{{instance=\"host-{:06}.example.internal:8080\",path=\"/api/v1/resources/{i}\",method=\"GET\"}} {}.25\n",
            i % 5000,
            i % 97
        ));
        i += 1;
    }
    let megabytes = body.len() >> 20;
    let (hwm_kb, took) = huge_scrape(body, u64::from(i), &["--max-scrape-bytes", "134217728"]);
    eprintln!(
        "{megabytes} MB body, {i} samples: scrape {took} s (debug build), peak RSS {} MB",
        hwm_kb / 1024
    );
    assert!(hwm_kb < 300 * 1024, "peak RSS {} MB", hwm_kb / 1024);
}

/// rules.yaml faults: a rule removed while firing resolves and its gauges go; a reload storm
/// (100 reloads a second) neither stalls scraping nor re-fires anything; 10,000 rules load;
/// a regex that backtracks catastrophically elsewhere is linear here.
#[test]
fn rules_faults() {
    let dir = tempfile::tempdir().unwrap();
    let two = "rules:\n  - name: keep\n    match: hot\n    method: threshold\n    threshold: 0\n  - name: drop_me\n    match: hot\n    method: threshold\n    threshold: 0\n  - name: evil\n    match: 'path_hits{path=~\"(a+)+$\"}'\n    method: zscore\n";
    let rules = write(dir.path(), "rules.yaml", two);
    let long_path = format!("{}b", "a".repeat(5000));
    let exporter = Exporter::start(Reply::Body(format!(
        "hot 1\npath_hits{{path=\"{long_path}\"}} 3\n"
    )));
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--webhook",
            &hook.url(),
            "--web.enable-lifecycle",
            "--rules-check-interval",
            "1h",
        ],
    );
    let firing = |name: &str| {
        hook.distinct()
            .iter()
            .filter(|g| {
                g.body["alerts"][0]["labels"]["alertname"] == name && g.body["status"] == "firing"
            })
            .count()
    };
    wait_for("both firing", T, || {
        (firing("keep") == 1 && firing("drop_me") == 1).then_some(())
    });

    // Reload storm with unchanged rules: 100 a second for 2 seconds.
    let evals = || s.number("anomaly_sidecar_rule_evaluations_total{rule=\"keep\"}");
    let before = evals();
    for _ in 0..200 {
        assert_eq!(http("POST", &s.addr, "/-/reload").unwrap().0, 200);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(evals() >= before + 5, "scraping went on during the storm");
    assert_eq!(
        firing("keep"),
        1,
        "no re-firing from reloads of unchanged rules"
    );

    // Remove a firing rule: its alert resolves and its gauges go.
    write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: keep\n    match: hot\n    method: threshold\n    threshold: 0\n",
    );
    assert_eq!(http("POST", &s.addr, "/-/reload").unwrap().0, 200);
    wait_for("drop_me resolved", T, || {
        hook.distinct()
            .iter()
            .any(|g| {
                g.body["alerts"][0]["labels"]["alertname"] == "drop_me"
                    && g.body["status"] == "resolved"
            })
            .then_some(())
    });
    wait_for("drop_me gauges gone", T, || {
        (!s.metrics().contains("rule=\"drop_me\"")).then_some(())
    });
    assert_eq!(firing("keep"), 1);

    // 10,000 rules load and are checked.
    let mut many = String::from("rules:\n");
    for i in 0..10_000 {
        many.push_str(&format!(
            "  - {{name: r{i}, match: 'm{{job=~\"j{i}.*\"}}', method: zscore}}\n"
        ));
    }
    let big = write(dir.path(), "many.yaml", &many);
    let out = run(&["check", "--rules", big.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 10000 rules"
    );
}

/// 200 concurrent /metrics readers while 5k series are scraped: every reader gets the full
/// body and scraping goes on. (Peak memory is printed, not bounded here: the store's sled
/// writes dominate it; see the faults issue's notes.)
#[test]
fn two_hundred_concurrent_metrics_readers() {
    let _heavy = heavy();
    let mut body = String::from("# TYPE load gauge\n");
    for i in 0..5_000u32 {
        body.push_str(&format!("load{{i=\"{i}\"}} {}\n", i % 5));
    }
    let exporter = Exporter::start(Reply::Body(body));
    // A second target whose scrape (800ms) outlasts the interval (500ms): under the readers'
    // load its scrapes must still never overlap.
    let slow = Exporter::start(Reply::Slow(Duration::from_millis(800), "slow 1\n".into()));
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: z\n    match: load\n    method: zscore\n",
    );
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url(), slow.url()],
        &["--scrape-interval", "500ms", "--scrape-timeout", "5s"],
    );
    let series = || {
        metric_value(
            &s.metrics(),
            &format!("anomaly_sidecar_series{{target=\"{}\"}}", exporter.name()),
        )
    };
    wait_for("5k series", Duration::from_secs(60), || {
        series().filter(|v| v == "5000")
    });
    wait_for("5k rows exported", T, || {
        let rows = s
            .metrics()
            .lines()
            .filter(|l| l.starts_with("anomaly_active{"))
            .count();
        (rows == 5_000).then_some(())
    });
    let evals = || s.number("anomaly_sidecar_rule_evaluations_total{rule=\"z\"}");
    let before = evals();
    eprintln!("before readers: peak RSS {} MB", s.peak_rss_kb() / 1024);
    // 16 are answered at a time and the rest queue without a byte until their turn: on a
    // busy 2-core machine the last of 200 debug-build responses starts after more than the
    // usual 10 s read timeout. What is tested is that every reader gets a whole body.
    let started = Instant::now();
    let readers: Vec<_> = (0..200)
        .map(|_| {
            let addr = s.addr.clone();
            let patience = Duration::from_secs(120);
            std::thread::spawn(move || http_waiting("GET", &addr, "/metrics", patience))
        })
        .collect();
    let mut sizes = Vec::new();
    for r in readers {
        let (status, body) = r.join().unwrap().expect("a response");
        assert_eq!(status, 200);
        assert!(body.contains("anomaly_sidecar_build_info"), "complete body");
        sizes.push(
            body.lines()
                .filter(|l| l.starts_with("anomaly_active{"))
                .count(),
        );
    }
    assert!(
        sizes.iter().all(|n| *n == 5_000),
        "every reader saw every series"
    );
    eprintln!("200 readers answered in {:?}", started.elapsed());
    wait_for("scraping went on", T, || (evals() > before).then_some(()));
    // A scrape that timed out is abandoned by the sidecar while the exporter's handler still
    // sleeps out its 800 ms: then the exporter counts two at once though the sidecar never ran
    // two (a clean-clone CI run timed out both targets' first scrapes once, 5 s each).
    let abandoned = s
        .log()
        .contains(&format!("Scrape failed target={}", slow.name()));
    let overlap = slow.concurrency.1.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        overlap == 1 || (abandoned && overlap == 2),
        "a scrape never overlaps itself ({overlap} at once): {}",
        s.log()
    );
    assert_eq!(
        s.number(&format!("anomaly_sidecar_up{{target=\"{}\"}}", slow.name())),
        1
    );
    let hwm_kb = s.peak_rss_kb();
    eprintln!("200 readers of 5k series: peak RSS {} MB", hwm_kb / 1024);
}

/// Receivers that fail for a long time, in compressed time: with `--max-retry-interval 1s`,
/// 30 s of a receiver answering 500 is as many capped retry intervals as 2.5 hours at the
/// default 5m. Its outbox stays at the bound, retries never spin, a slow receiver and a
/// healthy one are not held up, and scraping keeps its pace.
#[test]
fn receivers_failing_for_hours_of_compressed_time() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: flappy\n    match: g\n    method: threshold\n    threshold: 100\n",
    );
    let exporter = Exporter::start(Reply::Body("g 5\n".into()));
    let failing = Webhook::start_on(0, vec![500; 100_000]);
    let slow = Webhook::start_on(0, vec![1000 + 700; 100_000]);
    let healthy = Webhook::start_on(0, vec![]);
    let urls = [failing.url(), slow.url(), healthy.url()];
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &[
            "--webhook",
            &urls[0],
            "--webhook",
            &urls[1],
            "--webhook",
            &urls[2],
            "--max-retry-interval",
            "1s",
            "--outbox-max-events",
            "20",
        ],
    );
    let evals = || s.number("anomaly_sidecar_rule_evaluations_total{rule=\"flappy\"}");
    let started = Instant::now();
    let evals_before = evals();
    let mut rss_at_10s = 0;
    let mut flips = 0;
    while started.elapsed() < Duration::from_secs(30) {
        flips += 1;
        exporter.set_body(if flips % 2 == 1 { "g 500\n" } else { "g 5\n" });
        std::thread::sleep(Duration::from_millis(500));
        if rss_at_10s == 0 && started.elapsed() >= Duration::from_secs(10) {
            rss_at_10s = current_rss_kb(&s);
        }
    }
    let elapsed = started.elapsed();
    let events = s.log().matches("FIRING").count() + s.log().matches("RESOLVED").count();
    assert!(events >= 40, "only {events} events");
    let outbox = |r: &str| {
        s.number(&format!(
            "anomaly_sidecar_outbox_events{{receiver=\"{r}\"}}"
        ))
    };
    assert!(
        outbox("webhook-0") <= 20,
        "failing receiver's outbox {}",
        outbox("webhook-0")
    );
    assert!(s.number("anomaly_sidecar_outbox_dropped_total") >= (events - 20) as u64 / 2);
    let attempts = failing.requests.load(std::sync::atomic::Ordering::SeqCst);
    // Backoff 1, 1 (capped) … with ±20 % jitter: at most one attempt per 0.8 s, plus the first.
    assert!(
        attempts as f64 <= elapsed.as_secs_f64() / 0.8 + 5.0,
        "{attempts} attempts in {elapsed:?}"
    );
    assert!(attempts >= 10, "retries stopped: {attempts}");
    // The healthy receiver has every event, the slow one keeps answering.
    wait_for("healthy receiver has every event", T, || {
        (healthy.distinct().len() >= events).then_some(())
    });
    assert!(slow.requests.load(std::sync::atomic::Ordering::SeqCst) >= 20);
    // Scraping (200ms) kept its pace: at least 80 % of the evaluations it should have made.
    let made = evals() - evals_before;
    let expected = elapsed.as_millis() as u64 / 200;
    assert!(
        made * 10 >= expected * 8,
        "{made} evaluations of {expected}"
    );
    let rss_end = current_rss_kb(&s);
    eprintln!(
        "compressed outage: {events} events, {attempts} attempts to the failing receiver in {elapsed:?}, \
         {made}/{expected} evaluations, RSS {} MB at 10 s and {} MB at 30 s",
        rss_at_10s / 1024,
        rss_end / 1024
    );
    assert!(
        rss_end < rss_at_10s + 8 * 1024,
        "RSS grew from {rss_at_10s} to {rss_end} kB"
    );
}

fn current_rss_kb(s: &Sidecar) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", s.child.id()))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Slowloris: 200 clients that dribble a request header one byte at a time never finish it.
/// /metrics keeps answering meanwhile, and each of them is cut off after the 10 s allowed for
/// request headers, however busy it keeps the connection.
#[test]
fn slowloris_clients_are_cut_off() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", ANY_SERIES);
    let exporter = Exporter::start(Reply::Body("g 1\n".into()));
    let s = Sidecar::start(dir.path(), &rules, &[exporter.url()], &[]);
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                c.set_read_timeout(Some(Duration::from_millis(400)))
                    .unwrap();
                let started = Instant::now();
                let mut buf = [0u8; 64];
                while started.elapsed() < Duration::from_secs(20) {
                    if c.write_all(b"X").is_err() {
                        return Some(started.elapsed());
                    }
                    match c.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        _ => return Some(started.elapsed()),
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (status, body) = http("GET", &s.addr, "/metrics").expect("an answer under slowloris");
    assert_eq!(status, 200);
    assert!(body.contains("anomaly_sidecar_up"));
    let answered_in = t.elapsed();
    let cut: Vec<Duration> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap())
        .collect();
    eprintln!(
        "slowloris: /metrics answered in {answered_in:?}; {} of 200 slow clients cut off, the last after {:?}",
        cut.len(),
        cut.iter().max()
    );
    assert_eq!(cut.len(), 200, "every slow client is cut off");
    assert!(cut.iter().all(|d| *d < Duration::from_secs(15)));
    assert!(answered_in < Duration::from_secs(2));
}

/// 16 clients that ask for /metrics and never read it hold every /metrics slot; with
/// `--web.write-timeout` they are cut off and a reader that waits behind them is answered.
#[test]
fn stalled_metrics_readers_are_cut_off_and_free_their_slots() {
    let _heavy = heavy();
    // Long label values make each /metrics body far larger than the socket buffers of a
    // client that reads nothing (~20k rows × 6 families × ~400 bytes).
    let pad = "p".repeat(300);
    let mut body = String::from("# TYPE load gauge\n");
    for i in 0..20_000u32 {
        body.push_str(&format!("load{{i=\"{i}\",pad=\"{pad}\"}} {}\n", i % 5));
    }
    let exporter = Exporter::start(Reply::Body(body));
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.yaml",
        "rules:\n  - name: z\n    match: load\n    method: zscore\n",
    );
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[exporter.url()],
        &["--scrape-interval", "1s", "--web.write-timeout", "3s"],
    );
    wait_for("20k rows exported", Duration::from_secs(60), || {
        let rows = s
            .metrics()
            .lines()
            .filter(|l| l.starts_with("anomaly_active{"))
            .count();
        (rows == 20_000).then_some(())
    });
    let stalled: Vec<std::net::TcpStream> = (0..16)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
            write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, text) =
        http_waiting("GET", &s.addr, "/metrics", Duration::from_secs(60)).expect("an answer");
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(text.contains("anomaly_sidecar_build_info"), "a whole body");
    assert!(
        waited < Duration::from_secs(30),
        "answered after {waited:?} behind stalled readers"
    );
    // Under load the 17th request may be read before the last stalled one took its slot:
    // the stalled ones are cut off 3 s after they began, whatever came first.
    wait_for("stalled readers cut off", Duration::from_secs(20), || {
        s.log()
            .contains("did not read its response in time")
            .then_some(())
    });
    drop(stalled);
}
