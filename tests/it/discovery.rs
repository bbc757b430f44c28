//! Targets that come and go: `dns_sd` against a real DNS server (Debian's dnsmasq on a
//! loopback port, its records edited while the sidecar runs), and `--shard` splitting targets
//! between replicas, then rebalancing when their number changes.

use crate::alertmanager::Am;
use crate::common::*;
use crate::detection::T;
use crate::notify::Webhook;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

const TOO_HIGH: &str =
    "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n";

/// A real dnsmasq answering from a hosts directory it watches, on a free loopback port.
struct Dns {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Dns {
    /// dnsmasq with `extra` flags (e.g. `--srv-host`); None outside CI when not installed.
    fn start(dir: &Path, extra: &[String]) -> Option<Self> {
        let bin = tool("dnsmasq")?;
        let hosts = dir.join("hosts.d");
        std::fs::create_dir_all(&hosts).unwrap();
        let mut dns = Self {
            child: None,
            port: 0,
            hosts,
            bin,
            dir: dir.to_path_buf(),
            extra: extra.to_vec(),
        };
        for _ in 0..5 {
            dns.port = free_port();
            if dns.spawn() {
                return Some(dns);
            }
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
        );
    }

    /// Starts dnsmasq on `self.port`; whether it runs.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.join("dnsmasq.log")).unwrap();
        let mut child = Command::new(&self.bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--log-queries",
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!("--hostsdir={}", self.hosts.display()))
            // As root dnsmasq drops to `nobody`, who may not read a temp dir.
            .arg(format!(
                "--user={}",
                std::env::var("USER").unwrap_or("root".into())
            ))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let running = child.try_wait().unwrap().is_none();
        self.child = Some(child);
        running
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Back on the same port (an outage that ends).
    fn resume(&mut self) {
        assert!(self.spawn(), "dnsmasq did not come back on {}", self.port);
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the A records (`ip name` lines); renamed into place so dnsmasq's inotify reads
    /// the whole file once.
    fn set_hosts(&self, text: &str) {
        let tmp = self.hosts.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.hosts.join("records")).unwrap();
    }
}

/// Exporters on 127.0.0.`first`.. that share one port, as a headless Service's pods do.
pub fn pods(first: u8, n: u8, reply: &Reply) -> (u16, Vec<Exporter>) {
    'again: for _ in 0..20 {
        let l = TcpListener::bind((format!("127.0.0.{first}").as_str(), 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut out = vec![Exporter::on(l, reply.clone())];
        for i in 1..n {
            match TcpListener::bind((format!("127.0.0.{}", first + i).as_str(), port)) {
                Ok(l) => out.push(Exporter::on(l, reply.clone())),
                Err(_) => continue 'again,
            }
        }
        return (port, out);
    }
    panic!("no port free on every address");
}

pub fn up_targets(s: &Sidecar) -> BTreeSet<String> {
    s.metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("anomaly_sidecar_up{target=\""))
        .filter_map(|l| l.split_once('"').map(|(t, _)| t.to_string()))
        .collect()
}

/// Targets of the alerts `/api/v1/alerts` lists in `state`.
pub fn alert_targets(s: &Sidecar, state: &str) -> BTreeSet<String> {
    alerts(s, state).into_keys().collect()
}

/// The alerts `/api/v1/alerts` lists in `state`: target → activeAt.
pub fn alerts(s: &Sidecar, state: &str) -> BTreeMap<String, String> {
    let (_, b) = http("GET", &s.addr, "/api/v1/alerts").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["state"] == state)
        .filter_map(|a| {
            let t = a["labels"]["target"].as_str()?;
            Some((t.to_string(), a["activeAt"].as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn dns_sd_follows_a_records_and_retires_pods_that_go() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dns) = Dns::start(dir.path(), &[]) else {
        return;
    };
    let (port, pods) = pods(2, 3, &Reply::Body("g 5\n".into()));
    pods[0].set_body("g 500\n");
    dns.set_hosts("127.0.0.2 api.test\n127.0.0.3 api.test\n");
    let targets = write(
        dir.path(),
        "targets.yml",
        &format!(
            "targets:\n  - dns_sd:\n      names: [api.test]\n      type: A\n      port: {port}\n      refresh_interval: 1s\n      nameservers: ['{}']\n",
            dns.server()
        ),
    );
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let hook = Webhook::start_on(0, vec![]);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[],
        &[
            "--targets-file",
            targets.to_str().unwrap(),
            "--webhook",
            &hook.url(),
        ],
    );
    let (a, b, c) = (
        format!("127.0.0.2:{port}"),
        format!("127.0.0.3:{port}"),
        format!("127.0.0.4:{port}"),
    );
    wait_for("both pods scraped", T, || {
        (up_targets(&s) == BTreeSet::from([a.clone(), b.clone()])).then_some(())
    });
    wait_for("the first pod's alert", T, || {
        (alert_targets(&s, "firing") == BTreeSet::from([a.clone()])).then_some(())
    });
    let m = s.metrics();
    assert!(
        m.contains(&format!(
            "anomaly_sidecar_sd_discovered_targets{{config=\"{}:2\"}} 2",
            targets.display()
        )),
        "{m}"
    );

    // The first pod goes, a third comes: its alert resolves with the reason, the third is
    // scraped from the next refresh.
    dns.set_hosts("127.0.0.3 api.test\n127.0.0.4 api.test\n");
    wait_for("the new pod scraped, the old one gone", T, || {
        (up_targets(&s) == BTreeSet::from([b.clone(), c.clone()])).then_some(())
    });
    let events = hook.wait_distinct(2);
    assert_eq!(events[0].body["status"], "firing");
    let resolved = &events[1].body;
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_eq!(resolved["alerts"][0]["labels"]["target"], a.as_str());
    assert_eq!(
        resolved["alerts"][0]["annotations"]["reason"], "target_gone",
        "{resolved}"
    );
    assert!(alert_targets(&s, "firing").is_empty());
    assert!(
        !s.metrics().contains(&format!("target=\"{a}\"")),
        "gauges of a pod that went stay"
    );

    // The DNS server stops: the last targets stay and are still scraped.
    let before = pods[2].served.load(Ordering::SeqCst);
    let mut dns = dns;
    dns.stop();
    wait_for("a failed refresh counted", T, || {
        (s.number("anomaly_sidecar_sd_refresh_failures_total{mechanism=\"dns\"}") > 0).then_some(())
    });
    wait_for("the pods scraped on", T, || {
        (pods[2].served.load(Ordering::SeqCst) > before + 3).then_some(())
    });
    assert_eq!(up_targets(&s), BTreeSet::from([b, c]));
    assert!(s.log().contains("DNS lookup failed; its last targets stay"));
}

#[test]
fn a_restart_during_a_dns_outage_keeps_its_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut dns) = Dns::start(dir.path(), &[]) else {
        return;
    };
    let (port, _pods) = pods(2, 1, &Reply::Body("g 500\n".into()));
    dns.set_hosts("127.0.0.2 api.test\n");
    let targets = write(
        dir.path(),
        "targets.yml",
        &format!(
            "targets:\n  - dns_sd:\n      names: [api.test]\n      type: A\n      port: {port}\n      refresh_interval: 2s\n      nameservers: ['{}']\n",
            dns.server()
        ),
    );
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let hook = Webhook::start_on(0, vec![]);
    let url = hook.url();
    let args = [
        "--targets-file",
        targets.to_str().unwrap(),
        "--webhook",
        &url,
    ];
    let s = Sidecar::start(dir.path(), &rules, &[], &args);
    let target = format!("127.0.0.2:{port}");
    let fired = wait_for("the alert", T, || {
        alerts(&s, "firing").get(&target).cloned()
    });
    hook.wait_distinct(1);
    assert!(s.stop().success());
    // Restarted while DNS is down: the alert restored from before is not resolved (an empty
    // first answer would have resolved it as target_gone) and is the same alert once DNS
    // is back.
    dns.stop();
    let s = Sidecar::start(dir.path(), &rules, &[], &args);
    // (the first set waits up to three rounds of 2 s for an answer)
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(hook.distinct().len(), 1, "{:?}", hook.distinct());
    dns.resume();
    wait_for("the restored alert evaluated again", T, || {
        (alerts(&s, "firing").get(&target) == Some(&fired)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.distinct().len(), 1, "{:?}", hook.distinct());
    assert!(!s.log().contains("reason=target_gone"), "{}", s.log());
}

#[test]
fn dns_sd_srv_records_carry_each_target_port() {
    let dir = tempfile::tempdir().unwrap();
    let e1 = Exporter::start(Reply::Body("g 5\n".into()));
    let e2 = Exporter::start(Reply::Body("g 7\n".into()));
    let srv = |e: &Exporter| {
        format!(
            "--srv-host=_metrics._tcp.api.test,localhost,{}",
            e.addr.port()
        )
    };
    let Some(dns) = Dns::start(dir.path(), &[srv(&e1), srv(&e2)]) else {
        return;
    };
    let targets = write(
        dir.path(),
        "targets.yml",
        &format!(
            "targets:\n  - dns_sd:\n      names: [_metrics._tcp.api.test]\n      refresh_interval: 1s\n      nameservers: ['{}']\n",
            dns.server()
        ),
    );
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let s = Sidecar::start(
        dir.path(),
        &rules,
        &[],
        &["--targets-file", targets.to_str().unwrap()],
    );
    let want = BTreeSet::from([
        format!("localhost:{}", e1.addr.port()),
        format!("localhost:{}", e2.addr.port()),
    ]);
    wait_for("both SRV targets up", T, || {
        let m = s.metrics();
        want.iter()
            .all(|t| m.contains(&format!("anomaly_sidecar_up{{target=\"{t}\"}} 1")))
            .then_some(())
    });
    assert_eq!(up_targets(&s), want);
}

#[test]
fn dns_sd_mistakes_stop_the_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    for (text, needle) in [
        (
            "targets:\n  - dns_sd:\n      names: [api.test]\n      type: A\n",
            "targets.yml:2: dns_sd: type A and AAAA need a port",
        ),
        (
            "targets:\n  - dns_sd:\n      names: [api.test]\n      nameservers: [resolver.local]\n",
            "an IP address",
        ),
    ] {
        let targets = write(dir.path(), "targets.yml", text);
        let err = refused(
            dir.path(),
            &rules,
            &["--targets-file", targets.to_str().unwrap()],
        );
        assert!(err.contains(needle), "{err}");
    }
    for (shard, needle) in [
        ("3/3", "does not exist"),
        ("auto/3", "ordinal"),
        ("1", "expected I/N"),
    ] {
        let args = ["--target", "http://127.0.0.1:1/metrics", "--shard", shard];
        let err = refused(dir.path(), &rules, &args);
        assert!(err.contains(needle), "--shard {shard}: {err}");
    }
}

/// Sidecar `i` of `n` over every exporter, with its own data dir under `dir/shard-i`.
fn shard(dir: &Path, rules: &Path, urls: &[String], i: usize, n: usize, am: &Am) -> Sidecar {
    let own = dir.join(format!("shard-{i}"));
    std::fs::create_dir_all(&own).unwrap();
    let spec = format!("{i}/{n}");
    Sidecar::start(
        &own,
        rules,
        urls,
        &[
            "--shard",
            &spec,
            "--scrape-interval",
            "500ms",
            "--alertmanager",
            &am.url(),
            "--resend-delay",
            "1s",
        ],
    )
}

/// Which sidecar fires each alert (by target), since when; panics if two fire the same one.
pub fn owners(sidecars: &[Sidecar]) -> BTreeMap<String, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, s) in sidecars.iter().enumerate() {
        for (t, since) in alerts(s, "firing") {
            if let Some((j, _)) = out.insert(t.clone(), (i, since)) {
                panic!("alert of {t} firing on shards {j} and {i}");
            }
        }
    }
    out
}

/// 30 exporters of `g`, the first six above `TOO_HIGH`'s threshold: what sharding splits.
pub struct Fleet {
    pub exporters: Vec<Exporter>,
    pub urls: Vec<String>,
    pub names: BTreeSet<String>,
    /// The six whose alert fires.
    pub hot: BTreeSet<String>,
}

impl Fleet {
    pub fn start() -> Self {
        let exporters: Vec<Exporter> = (0..30)
            .map(|i| Exporter::start(Reply::Body(format!("g {}\n", if i < 6 { 500 } else { 5 }))))
            .collect();
        Self {
            urls: exporters.iter().map(Exporter::url).collect(),
            names: exporters.iter().map(Exporter::name).collect(),
            hot: exporters[..6].iter().map(Exporter::name).collect(),
            exporters,
        }
    }

    /// Waits until the six alerts fire, each on one of `sidecars`: which one, since when.
    pub fn owned(&self, sidecars: &[Sidecar]) -> BTreeMap<String, (usize, String)> {
        let what = format!("six alerts, each on one of {}", sidecars.len());
        wait_for(&what, T, || {
            let o = owners(sidecars);
            (o.keys().cloned().collect::<BTreeSet<_>>() == self.hot).then_some(o)
        })
    }
}

/// Alerts a log says were handed off to another shard.
pub fn handed_off_alerts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("RESOLVED") && l.contains("reason=target_moved"))
        .count()
}

#[test]
fn shards_scrape_each_target_once_and_rebalance_without_losing_alerts() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let fleet = Fleet::start();
    let (exporters, urls, names) = (&fleet.exporters, &fleet.urls, &fleet.names);

    let three: Vec<Sidecar> = (0..3)
        .map(|i| shard(dir.path(), &rules, urls, i, 3, &am))
        .collect();
    // Between them the three scrape every exporter, and no exporter twice.
    let split = wait_for("30 targets split", T, || {
        let sets: Vec<BTreeSet<String>> = three.iter().map(up_targets).collect();
        (sets.iter().map(BTreeSet::len).sum::<usize>() == 30).then_some(sets)
    });
    let union: BTreeSet<String> = split.iter().flatten().cloned().collect();
    assert_eq!(&union, names, "{split:?}");
    assert!(split.iter().all(|s| !s.is_empty()), "{split:?}");
    for (i, s) in three.iter().enumerate() {
        assert_eq!(
            s.number("anomaly_sidecar_targets{state=\"other_shard\"}"),
            30 - split[i].len() as u64
        );
    }
    // Counted at the exporters: one scraper each scrapes as often as any other's.
    let start: Vec<usize> = exporters
        .iter()
        .map(|e| e.served.load(Ordering::SeqCst))
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let counts: Vec<usize> = exporters
        .iter()
        .zip(&start)
        .map(|(e, s)| e.served.load(Ordering::SeqCst) - s)
        .collect();
    let mut sorted = counts.clone();
    sorted.sort();
    let median = sorted[15];
    assert!(median >= 4, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c * 2 > median && c * 2 < median * 3),
        "an exporter scraped by two shards, or by none: {counts:?}"
    );

    let before = fleet.owned(&three);
    wait_for("six alerts in alertmanager", T, || {
        (am.active("too_high")?.len() == 6).then_some(())
    });

    // Two replicas now: 0 and 1 keep their stores, 2 is gone.
    for s in three {
        assert!(s.stop().success());
    }
    let two: Vec<Sidecar> = (0..2)
        .map(|i| shard(dir.path(), &rules, urls, i, 2, &am))
        .collect();
    let after = fleet.owned(&two);
    let split: Vec<BTreeSet<String>> = wait_for("30 targets on two shards", T, || {
        let sets: Vec<BTreeSet<String>> = two.iter().map(up_targets).collect();
        (sets.iter().map(BTreeSet::len).sum::<usize>() == 30).then_some(sets)
    });
    assert_eq!(
        &split.iter().flatten().cloned().collect::<BTreeSet<_>>(),
        names
    );
    // Held for a while: never two owners, and Alertmanager keeps all six active.
    for _ in 0..10 {
        assert_eq!(owners(&two), after);
        let active = am.active("too_high").unwrap_or_default();
        assert_eq!(active.len(), 6, "{active:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // An alert that stayed on its shard was restored (active since it first fired); one that
    // moved away from a shard that still runs was handed off there (reason=target_moved, not
    // resolved in Alertmanager, which is why all six stayed active), and fired anew on its
    // new shard.
    let mut moved_from_running = 0;
    for (t, (i, since)) in &before {
        let (j, since_now) = &after[t];
        if i == j {
            assert_eq!(since, since_now, "{t} stayed on shard {i} but fired again");
        } else if *i < 2 {
            moved_from_running += 1;
        }
    }
    eprintln!(
        "moved from a running shard: {moved_from_running}; before {before:?}, after {after:?}"
    );
    let resolved_there: usize = two.iter().map(|s| handed_off_alerts(&s.log())).sum();
    assert_eq!(resolved_there, moved_from_running, "{before:?} {after:?}");
}
