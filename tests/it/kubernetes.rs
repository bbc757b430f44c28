//! `kubernetes_sd` against a Kubernetes API served by the test (no kube-apiserver installs
//! here): the pods list and watch stream in the API's JSON (`tests/data/k8s/pod.json` is a
//! pod as the API returns it, and kubectl reads the fixture), with a watch that ends, a
//! `410 Gone` that forces a relist, and pods that are Pending, Running without an IP and
//! Terminating.

use crate::alertmanager::Am;
use crate::common::*;
use crate::detection::T;
use crate::discovery::{alerts, handed_off_alerts, owners, pods, up_targets, Fleet};
use crate::notify::Webhook;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOO_HIGH: &str =
    "rules:\n  - name: too_high\n    match: g\n    method: threshold\n    threshold: 100\n";

/// What the fake API server holds.
#[derive(Default)]
struct State {
    /// Pods and EndpointSlices, as stored.
    objects: Vec<Value>,
    rv: u64,
    /// Every event sent, with its resourceVersion, for watches that resume.
    history: Vec<(u64, String)>,
    /// Watches resuming from below this get `410 Gone`.
    expired_below: u64,
    watchers: Vec<Sender<Option<String>>>,
    /// Requests as `GET path?query`.
    requests: Vec<String>,
}

/// A Kubernetes API server for pods and EndpointSlices: list, watch (chunked JSON lines),
/// and the discovery documents kubectl asks for.
pub struct FakeApi {
    pub addr: String,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            rv: 1000,
            ..State::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Self { addr, state }
    }

    /// A kubeconfig for this server, context namespace `shop`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        write(
            dir,
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\n    namespace: shop\ncurrent-context: fake\nusers:\n- name: test\n  user:\n    token: fixture-token\n",
                self.addr
            ),
        )
    }

    /// Stores an object and tells the watches (`ADDED`, or `MODIFIED` when one of its kind
    /// and name exists).
    pub fn put(&self, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = s.rv.to_string().into();
        let same = |o: &Value| {
            o["kind"] == obj["kind"] && o["metadata"]["name"] == obj["metadata"]["name"]
        };
        let kind = match s.objects.iter().position(same) {
            Some(i) => {
                s.objects[i] = obj.clone();
                "MODIFIED"
            }
            None => {
                s.objects.push(obj.clone());
                "ADDED"
            }
        };
        notify(&mut s, kind, obj);
    }

    /// Deletes an object; `tell`: with a `DELETED` event (else the watches miss it, as across
    /// a compaction of the API's history).
    fn delete(&self, name: &str, tell: bool) {
        let mut s = self.state.lock().unwrap();
        let i = s
            .objects
            .iter()
            .position(|p| p["metadata"]["name"] == name)
            .unwrap();
        let mut pod = s.objects.remove(i);
        s.rv += 1;
        pod["metadata"]["resourceVersion"] = s.rv.to_string().into();
        if tell {
            notify(&mut s, "DELETED", pod);
        }
    }

    /// Ends every open watch (the API server's timeout does this every few minutes).
    fn end_watches(&self) {
        for w in self.state.lock().unwrap().watchers.drain(..) {
            let _ = w.send(None);
        }
    }

    /// From now on a watch resuming from an older resourceVersion gets 410 Gone.
    fn expire_history(&self) {
        let mut s = self.state.lock().unwrap();
        s.expired_below = s.rv + 1;
        s.history.clear();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn notify(s: &mut State, kind: &str, object: Value) {
    let line = json!({"type": kind, "object": object}).to_string();
    let rv = s.rv;
    s.history.push((rv, line.clone()));
    s.watchers.retain(|w| w.send(Some(line.clone())).is_ok());
}

/// A pod from the fixture, renamed, with its phase and IP (None: not assigned yet).
fn pod(name: &str, phase: &str, ip: Option<&str>) -> Value {
    let text = std::fs::read_to_string("tests/data/k8s/pod.json").unwrap();
    let mut p: Value = serde_json::from_str(&text).unwrap();
    p["metadata"]["name"] = name.into();
    p["metadata"]["uid"] = format!("uid-{name}").into();
    p["status"]["phase"] = phase.into();
    let status = p["status"].as_object_mut().unwrap();
    match ip {
        Some(ip) => {
            status.insert("podIP".into(), ip.into());
            status.insert("podIPs".into(), json!([{"ip": ip}]));
        }
        None => {
            status.remove("podIP");
            status.remove("podIPs");
        }
    }
    p
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let Some((head, _)) = read_request(&mut stream) else {
        return;
    };
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    state.lock().unwrap().requests.push(format!("GET {target}"));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| {
        query.split('&').find_map(|kv| {
            let (key, v) = kv.split_once('=')?;
            (key == k).then(|| {
                v.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/")
            })
        })
    };
    let reply = |stream: &mut TcpStream, status: u16, body: Value| {
        let body = body.to_string();
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    match path {
        "/api" => reply(
            &mut stream,
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]}),
        ),
        "/apis" => reply(
            &mut stream,
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        "/api/v1" => reply(
            &mut stream,
            200,
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list", "watch"], "shortNames": ["po"]}]}),
        ),
        _ => {
            // One StatefulSet by name (a GET, as `kubectl get sts NAME`).
            if let Some((ns, name)) = path
                .strip_prefix("/apis/apps/v1/namespaces/")
                .and_then(|p| p.split_once("/statefulsets/"))
            {
                let s = state.lock().unwrap();
                let found = s.objects.iter().find(|o| {
                    o["kind"] == "StatefulSet"
                        && o["metadata"]["namespace"] == ns
                        && o["metadata"]["name"] == name
                });
                return match found {
                    Some(o) => reply(&mut stream, 200, o.clone()),
                    None => reply(
                        &mut stream,
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("statefulsets.apps \"{name}\" not found"),
                            "reason": "NotFound", "code": 404}),
                    ),
                };
            }
            let resource = path
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|p| Some((p.strip_suffix("/pods")?, "Pod")))
                .or_else(|| {
                    let p = path.strip_prefix("/apis/discovery.k8s.io/v1/namespaces/")?;
                    Some((p.strip_suffix("/endpointslices")?, "EndpointSlice"))
                })
                .or_else(|| {
                    let p = path.strip_prefix("/apis/apps/v1/namespaces/")?;
                    Some((p.strip_suffix("/statefulsets")?, "StatefulSet"))
                });
            let Some((ns, kind)) = resource else {
                return reply(
                    &mut stream,
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("the server could not find the requested resource ({path})"),
                        "reason": "NotFound", "code": 404}),
                );
            };
            let selector = param("labelSelector");
            let name = param("fieldSelector")
                .and_then(|f| Some(f.strip_prefix("metadata.name=")?.to_string()));
            let selected = |p: &Value| {
                p["kind"] == kind
                    && p["metadata"]["namespace"] == ns
                    && name.as_deref().is_none_or(|n| p["metadata"]["name"] == n)
                    && selector.as_deref().is_none_or(|s| {
                        s.split(',').all(|kv| match kv.split_once('=') {
                            Some((k, v)) => p["metadata"]["labels"][k] == v,
                            None => true,
                        })
                    })
            };
            if param("watch").as_deref() == Some("true") || param("watch").as_deref() == Some("1") {
                let from: u64 = param("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                watch(stream, state, from, &selected);
            } else {
                let s = state.lock().unwrap();
                let items: Vec<Value> = s.objects.iter().filter(|p| selected(p)).cloned().collect();
                let (list, api_version) = match kind {
                    "Pod" => ("PodList", "v1"),
                    "StatefulSet" => ("StatefulSetList", "apps/v1"),
                    _ => ("EndpointSliceList", "discovery.k8s.io/v1"),
                };
                reply(
                    &mut stream,
                    200,
                    json!({"kind": list, "apiVersion": api_version,
                        "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                );
            }
        }
    }
}

/// A watch: events after `from`, then live ones, as chunks of one JSON line each, until the
/// test ends it; from an expired resourceVersion, one ERROR event with a 410 Status.
fn watch(
    mut stream: TcpStream,
    state: &Mutex<State>,
    from: u64,
    selected: &dyn Fn(&Value) -> bool,
) {
    let (tx, rx): (Sender<Option<String>>, Receiver<Option<String>>) = channel();
    let backlog = {
        let mut s = state.lock().unwrap();
        if from < s.expired_below {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", s.expired_below),
                "reason": "Expired", "code": 410}});
            vec![Some(status.to_string()), None]
        } else {
            s.watchers.push(tx);
            s.history
                .iter()
                .filter(|(rv, _)| *rv > from)
                .map(|(_, l)| Some(l.clone()))
                .collect()
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = |stream: &mut TcpStream, line: &str| {
        let data = format!("{line}\n");
        write!(stream, "{:x}\r\n{data}\r\n", data.len()).and_then(|_| stream.flush())
    };
    for item in backlog.into_iter().chain(rx) {
        let Some(line) = item else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["type"] != "ERROR" && !selected(&v["object"]) {
            continue;
        }
        if chunk(&mut stream, &line).is_err() {
            return;
        }
    }
    let _ = write!(stream, "0\r\n\r\n");
}

/// The pods of namespace shop labelled app=api, on their port named metrics.
const POD_ENTRY: &str =
    "role: pod\n      namespaces: [shop]\n      selector: 'app=api'\n      port: metrics";

/// A targets file of one `kubernetes_sd` entry (`fields`, indented as under it) reading
/// the API through `kubeconfig`.
fn targets_file(dir: &Path, kubeconfig: &Path, fields: &str) -> PathBuf {
    write(
        dir,
        "targets.yml",
        &format!(
            "targets:\n  - kubernetes_sd:\n      {fields}\n      kubeconfig: {}\n",
            kubeconfig.display()
        ),
    )
}

/// A sidecar with `rules` watching the API's pods (`POD_ENTRY`), sending to a webhook
/// receiver of its own.
fn watching(dir: &Path, api: &FakeApi, rules: &str, extra: &[&str]) -> (Sidecar, Webhook) {
    watching_entry(dir, api, POD_ENTRY, rules, extra)
}

/// `watching` with the entry's fields given.
fn watching_entry(
    dir: &Path,
    api: &FakeApi,
    fields: &str,
    rules: &str,
    extra: &[&str],
) -> (Sidecar, Webhook) {
    let rules = write(dir, "rules.yaml", rules);
    let kubeconfig = api.kubeconfig(dir);
    let targets = targets_file(dir, &kubeconfig, fields);
    let hook = Webhook::start_on(0, vec![]);
    let mut args = vec!["--targets-file", targets.to_str().unwrap(), "--webhook"];
    let url = hook.url();
    args.push(&url);
    args.extend_from_slice(extra);
    (Sidecar::start(dir, &rules, &[], &args), hook)
}

/// The fixture's pods, on exporters at 127.0.0.2.. and one shared port.
fn with_port(mut p: Value, port: u16) -> Value {
    p["spec"]["containers"][0]["ports"][1]["containerPort"] = port.into();
    p
}

#[test]
fn pods_are_followed_through_list_watch_an_ended_watch_and_410_gone() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, exporters) = pods(2, 4, &Reply::Body("g 5\n".into()));
    exporters[0].set_body("g 500\n");
    let addr = |i: u8| format!("127.0.0.{i}:{port}");
    api.put(with_port(pod("api-1", "Running", Some("127.0.0.2")), port));
    api.put(with_port(pod("api-2", "Running", Some("127.0.0.3")), port));
    // Not scraped: Pending without an IP, Running without an IP (yet), Terminating, and a pod
    // the selector leaves out.
    api.put(with_port(pod("api-3", "Pending", None), port));
    api.put(with_port(pod("api-4", "Running", None), port));
    let mut terminating = with_port(pod("api-5", "Running", Some("127.0.0.5")), port);
    terminating["metadata"]["deletionTimestamp"] = "2026-12-06T04:00:00Z".into();
    terminating["metadata"]["deletionGracePeriodSeconds"] = 30.into();
    api.put(terminating);
    let mut other = with_port(pod("web-1", "Running", Some("127.0.0.4")), port);
    other["metadata"]["labels"]["app"] = "web".into();
    api.put(other);

    let (s, hook) = watching(dir.path(), &api, TOO_HIGH, &[]);
    wait_for("the two running pods scraped", T, || {
        (up_targets(&s) == BTreeSet::from([addr(2), addr(3)])).then_some(())
    });
    // Each pod's series carry its target labels.
    let firing = wait_for("api-1's alert", T, || {
        s.metrics()
            .lines()
            .find(|l| l.starts_with("anomaly_active{") && l.ends_with(" 1.0"))
            .map(str::to_string)
    });
    for label in [
        "namespace=\"shop\"",
        "pod=\"api-1\"",
        "container=\"api\"",
        "node=\"node-a\"",
        "workload=\"api\"",
        &format!("target=\"{}\"", addr(2)),
    ] {
        assert!(firing.contains(label), "{label} missing: {firing}");
    }

    // api-4 gets its IP: scraped from its next interval.
    api.put(with_port(pod("api-4", "Running", Some("127.0.0.4")), port));
    wait_for("api-4 scraped", T, || {
        up_targets(&s).contains(&addr(4)).then_some(())
    });

    // The watch ends; the watcher resumes from the last resourceVersion it saw and misses
    // nothing sent meanwhile.
    let watches = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
    };
    let before = watches(&api);
    api.end_watches();
    api.delete("api-2", true);
    wait_for("api-2 retired after the resumed watch", T, || {
        (up_targets(&s) == BTreeSet::from([addr(2), addr(4)])).then_some(())
    });
    assert!(watches(&api) > before, "{:?}", api.requests());
    let resumed = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.contains("watch=true"))
        .unwrap();
    assert!(
        !resumed.contains("resourceVersion=0&") && resumed.contains("resourceVersion="),
        "{resumed}"
    );

    // History compacted and api-1 deleted without an event: the resumed watch gets 410 Gone,
    // the watcher relists, and api-1's alert resolves with the reason.
    let lists = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.contains("/pods") && !r.contains("watch=true"))
            .count()
    };
    let lists_before = lists(&api);
    api.delete("api-1", false);
    api.expire_history();
    api.end_watches();
    wait_for("api-1 gone after the relist", T, || {
        (up_targets(&s) == BTreeSet::from([addr(4)])).then_some(())
    });
    assert!(lists(&api) > lists_before, "{:?}", api.requests());
    let events = hook.wait_distinct(2);
    assert_eq!(events[1].body["status"], "resolved");
    assert_eq!(events[1].body["alerts"][0]["labels"]["pod"], "api-1");
    assert_eq!(
        events[1].body["alerts"][0]["annotations"]["reason"],
        "target_gone"
    );
    let m = s.metrics();
    let found = metric_value(&m, "anomaly_sidecar_sd_discovered_targets{config=");
    assert_eq!(found.as_deref(), Some("1"), "{m}");
}

#[test]
fn the_fixture_is_what_kubectl_reads() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    api.put(pod("api-1", "Running", Some("10.244.0.17")));
    api.put(pod("api-2", "Pending", None));
    let kubeconfig = api.kubeconfig(dir.path());
    let out = std::process::Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["get", "pods", "-n", "shop", "-l", "app=api", "-o", "json"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api-1", "api-2"]);
    assert_eq!(list["items"][0]["status"]["podIP"], "10.244.0.17");
}

#[test]
fn a_kubeconfig_that_cannot_be_used_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let missing = dir.path().join("no-such-kubeconfig");
    let garbage = write(dir.path(), "garbage", "clusters: [[[\n");
    for (kubeconfig, needle) in [(&missing, "no-such-kubeconfig"), (&garbage, "garbage")] {
        let targets = targets_file(dir.path(), kubeconfig, POD_ENTRY);
        let err = refused(
            dir.path(),
            &rules,
            &["--targets-file", targets.to_str().unwrap()],
        );
        assert!(err.contains("targets.yml:2: kubeconfig"), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let targets = write(
        dir.path(),
        "targets.yml",
        "targets:\n  - kubernetes_sd:\n      role: pod\n      selector: 'app in prod'\n      port: metrics\n",
    );
    let err = refused(
        dir.path(),
        &rules,
        &["--targets-file", targets.to_str().unwrap()],
    );
    assert!(
        err.contains("targets.yml:2: kubernetes_sd: selector"),
        "{err}"
    );
}

/// The series of `anomaly_zscore` / `anomaly_active` rows by pod.
fn by_pod(metrics: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let pod = l.split("pod=\"").nth(1)?.split('"').next()?.to_string();
            Some((pod, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn peers_fire_only_for_the_pod_that_drifts_from_its_workload() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, exporters) = pods(2, 8, &Reply::Body("g 0\n".into()));
    // Five pods of the api Deployment around 100, three of the worker StatefulSet around
    // 500: judged against all eight, every worker would stand out.
    let levels = [100.0, 101.0, 99.0, 100.5, 99.5, 500.0, 505.0, 495.0];
    for (i, (e, level)) in exporters.iter().zip(levels).enumerate() {
        e.set_body(format!("# TYPE g gauge\ng{{handler=\"/cart\"}} {level}\n"));
        let ip = format!("127.0.0.{}", i + 2);
        let mut p = with_port(pod(&format!("pod-{i}"), "Running", Some(&ip)), port);
        if i >= 5 {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
                "kind": "StatefulSet", "name": "worker", "uid": "u-w", "controller": true}]);
            p["metadata"]["labels"] = json!({"app": "api"});
        }
        api.put(p);
    }
    let rules = "rules:\n  - name: pod_outlier\n    match: g\n    method: peers\n    by: [workload]\n    min_anomalous: {count: 3, of: 3}\n";
    let (s, hook) = watching(dir.path(), &api, rules, &[]);
    wait_for("eight pods judged", T, || {
        (by_pod(&s.metrics(), "anomaly_zscore").len() == 8).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let quiet = by_pod(&s.metrics(), "anomaly_active");
    assert!(quiet.values().all(|v| *v == 0.0), "{quiet:?}");

    // pod-3 drifts: only its alert fires, with its group's median.
    exporters[3].set_body("# TYPE g gauge\ng{handler=\"/cart\"} 140\n");
    let ev = hook.wait_distinct(1)[0].body.clone();
    let alert = &ev["alerts"][0];
    assert_eq!(ev["status"], "firing");
    assert_eq!(alert["labels"]["pod"], "pod-3", "{ev}");
    assert_eq!(alert["labels"]["workload"], "api");
    let median: f64 = alert["annotations"]["baseline_mean"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(median, 100.0, "the api pods' median: {ev}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let m = s.metrics();
    let active = by_pod(&m, "anomaly_active");
    assert_eq!(active.get("pod-3"), Some(&1.0), "{active:?}");
    assert_eq!(
        active.values().filter(|v| **v == 1.0).count(),
        1,
        "{active:?}"
    );
    let z = by_pod(&m, "anomaly_zscore");
    assert!(z["pod-3"] > 3.0, "{z:?}");
    assert_eq!(hook.distinct().len(), 1);

    // Back in line: it resolves, once.
    exporters[3].set_body("# TYPE g gauge\ng{handler=\"/cart\"} 100.2\n");
    let events = hook.wait_distinct(2);
    assert_eq!(events[1].body["status"], "resolved");
    assert_eq!(events[1].body["alerts"][0]["labels"]["pod"], "pod-3");
}

/// Feeds `g` (100..104 in turn) and the counter `c_total` (+10 a tick, from `start`) to an
/// exporter until `stop`; `spike` puts g at 500.
fn feed(
    e: Arc<Exporter>,
    start: u64,
    spike: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::spawn(move || {
        let mut t = 0u64;
        while !stop.load(Relaxed) {
            let g = if spike.load(Relaxed) {
                500.0
            } else {
                100.0 + (t % 5) as f64
            };
            e.set_body(format!(
                "# TYPE g gauge\ng{{handler=\"/cart\"}} {g}\n# TYPE c_total counter\nc_total {}\n",
                start + 10 * t
            ));
            t += 1;
            // Not a divisor of the scrape interval: the scrapes see every value of the cycle
            // (at 50 ms, five to a 250 ms scrape, each scrape saw the same phase until the
            // scrapes' phase moved, and 104 stood out of a window of 100s).
            std::thread::sleep(std::time::Duration::from_millis(37));
        }
    });
}

/// Whether `family` has a row of `rule` for `pod`.
fn has_row(metrics: &str, family: &str, rule: &str, pod: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with(&format!("{family}{{rule=\"{rule}\""))
            && l.contains(&format!("pod=\"{pod}\""))
    })
}

#[test]
fn a_pod_that_replaces_another_starts_from_its_workloads_history() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, exporters) = pods(2, 2, &Reply::Body("g 0\n".into()));
    let exporters: Vec<Arc<Exporter>> = exporters.into_iter().map(Arc::new).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let spike = Arc::new(AtomicBool::new(false));
    feed(
        exporters[0].clone(),
        1_000_000,
        Arc::new(AtomicBool::new(false)),
        stop.clone(),
    );
    // The new pod's counter starts from zero, as a restarted process' does.
    feed(exporters[1].clone(), 0, spike.clone(), stop.clone());
    let old = "api-7d4b9c8f6d-old11";
    let new = "api-7d4b9c8f6d-new22";
    api.put(with_port(pod(old, "Running", Some("127.0.0.2")), port));
    // A zscore rule blind for its first 20 samples, on the gauge and on the counter's rate.
    let rules = "defaults: {window: 40, min_samples: 20}\nrules:\n  - name: g_z\n    match: g\n    method: zscore\n    z_threshold: 4\n  - name: c_rate\n    match: c_total\n    method: zscore\n    z_threshold: 1000\n";
    let args = ["--scrape-interval", "250ms"];
    let (s, _) = watching(dir.path(), &api, rules, &args);
    let ready = |s: &Sidecar| {
        wait_for("the old pod's baseline ready", T, || {
            let m = s.metrics();
            (has_row(&m, "anomaly_upper_bound", "g_z", old)
                && has_row(&m, "anomaly_upper_bound", "c_rate", old))
            .then_some(())
        })
    };
    ready(&s);
    // The sidecar restarts first: the old pod's history, restored from the store, is what
    // its replacement starts from.
    s.stop();
    let (s, hook) = watching(dir.path(), &api, rules, &args);
    ready(&s);

    // A rolling restart: the old pod goes, its replacement comes with a new name and IP.
    api.delete(old, true);
    api.put(with_port(pod(new, "Running", Some("127.0.0.3")), port));
    let scrapes = wait_for("the new pod judged against a baseline", T, || {
        let m = s.metrics();
        (has_row(&m, "anomaly_upper_bound", "g_z", new)
            && has_row(&m, "anomaly_upper_bound", "c_rate", new))
        .then(|| exporters[1].served.load(Ordering::SeqCst))
    });
    // From its first scrapes (a counter's rate needs two), not after 20: judged by the
    // second, seen here by the 8th at most (the /metrics polls lag the 250 ms scrapes on a
    // busy machine).
    assert!(scrapes <= 8, "judged only after {scrapes} scrapes");
    assert!(s.number("anomaly_sidecar_seeded_series_total") >= 2);
    // And it judges: a spike on the new pod fires at once.
    spike.store(true, Ordering::SeqCst);
    let ev = hook.wait_distinct(1)[0].body.clone();
    assert_eq!(ev["status"], "firing", "{ev}");
    assert_eq!(ev["alerts"][0]["labels"]["pod"], new, "{ev}");
    assert_eq!(ev["alerts"][0]["labels"]["alertname"], "g_z", "{ev}");
    stop.store(true, Ordering::SeqCst);
}

/// An EndpointSlice of Service `api` with an endpoint per (pod, ip, terminating).
fn slice(port: u16, endpoints: &[(&str, &str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, terminating)| {
            json!({"addresses": [ip],
                "conditions": {"ready": !terminating, "serving": true, "terminating": terminating},
                "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")}})
        })
        .collect();
    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "api-x7k2p", "namespace": "shop", "generateName": "api-",
            "labels": {"kubernetes.io/service-name": "api",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "api",
                "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": port, "protocol": "TCP"}],
        "endpoints": eps})
}

#[test]
fn endpointslices_of_a_service_are_its_pods_with_their_workload() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, _exporters) = pods(2, 2, &Reply::Body("g 5\n".into()));
    let addr = |i: u8| format!("127.0.0.{i}:{port}");
    api.put(with_port(pod("api-1", "Running", Some("127.0.0.2")), port));
    api.put(with_port(pod("api-2", "Running", Some("127.0.0.3")), port));
    api.put(slice(
        port,
        &[("api-1", "127.0.0.2", false), ("api-2", "127.0.0.3", false)],
    ));
    let entry = "role: endpointslice\n      namespaces: [shop]\n      selector: 'kubernetes.io/service-name=api'\n      port: metrics";
    let (s, _hook) = watching_entry(dir.path(), &api, entry, TOO_HIGH, &[]);
    wait_for("both endpoints scraped", T, || {
        (up_targets(&s) == BTreeSet::from([addr(2), addr(3)])).then_some(())
    });
    let row = wait_for("api-1's series with its labels", T, || {
        s.metrics()
            .lines()
            .find(|l| l.starts_with("anomaly_value{") && l.contains("pod=\"api-1\""))
            .map(str::to_string)
    });
    for label in [
        "service=\"api\"",
        "workload=\"api\"",
        "container=\"api\"",
        "namespace=\"shop\"",
        "node=\"node-a\"",
    ] {
        assert!(row.contains(label), "{label} missing: {row}");
    }
    // api-2 is terminating: its endpoint says so and it is no longer scraped.
    api.put(slice(
        port,
        &[("api-1", "127.0.0.2", false), ("api-2", "127.0.0.3", true)],
    ));
    wait_for("the terminating endpoint retired", T, || {
        (up_targets(&s) == BTreeSet::from([addr(2)])).then_some(())
    });
    // Both watches listed with their own selectors: the slices by Service, the pods all.
    let r = api.requests();
    assert!(
        r.iter().any(|q| q.contains("/endpointslices")
            && q.contains("labelSelector=kubernetes.io%2Fservice-name%3Dapi")),
        "{r:?}"
    );
    assert!(
        r.iter()
            .any(|q| q.contains("/pods") && !q.contains("labelSelector")),
        "{r:?}"
    );
}

#[test]
fn prometheus_io_annotations_are_honoured_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, _exporters) = pods(2, 2, &Reply::Body("g 5\n".into()));
    let annotated = |name: &str, ip: &str, scrape: &str| {
        let mut p = pod(name, "Running", Some(ip));
        p["metadata"]["annotations"] = json!({"prometheus.io/scrape": scrape,
            "prometheus.io/port": port.to_string(), "prometheus.io/path": "/stats"});
        p
    };
    api.put(annotated("api-1", "127.0.0.2", "true"));
    api.put(annotated("api-2", "127.0.0.3", "false"));
    let entry = "role: pod\n      namespaces: [shop]\n      annotations: true";
    let (s, _hook) = watching_entry(dir.path(), &api, entry, TOO_HIGH, &[]);
    // Only the pod that asks, on the port and path its annotations give (the fixture's
    // containers declare 9090; the path shows in the target's name).
    let want = BTreeSet::from([format!("127.0.0.2:{port}/stats")]);
    wait_for("the annotated pod scraped", T, || {
        (up_targets(&s) == want).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(up_targets(&s), want);
}

/// A StatefulSet of `replicas` in namespace shop, as the API returns it.
pub fn statefulset(name: &str, replicas: u32) -> Value {
    json!({"kind": "StatefulSet", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app.kubernetes.io/name": "anomaly-sidecar"}},
        "spec": {"replicas": replicas, "serviceName": format!("{name}-shards"),
            "selector": {"matchLabels": {"app.kubernetes.io/name": "anomaly-sidecar"}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": "anomaly-sidecar"}},
                "spec": {"containers": [{"name": "anomaly-sidecar", "image": "anomaly-sidecar"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas}})
}

/// Each replica's scraped targets, once all of `n` are scraped exactly once between them.
fn split_once(replicas: &[&Sidecar], n: usize) -> Vec<BTreeSet<String>> {
    wait_for(
        &format!("{n} targets split over {}", replicas.len()),
        T,
        || {
            let sets: Vec<BTreeSet<String>> = replicas.iter().map(|s| up_targets(s)).collect();
            let union: BTreeSet<&String> = sets.iter().flatten().collect();
            let total: usize = sets.iter().map(BTreeSet::len).sum();
            (total == n && union.len() == n).then_some(sets)
        },
    )
}

#[test]
fn shard_auto_follows_the_statefulsets_replicas_without_a_restart() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let Some(am) = Am::start(dir.path()) else {
        return;
    };
    let api = FakeApi::start();
    api.put(statefulset("anomaly-sidecar", 2));
    let kubeconfig = api.kubeconfig(dir.path());
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let fleet = Fleet::start();
    let urls = &fleet.urls;
    let replica = |i: usize| {
        let own = dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&own).unwrap();
        let pod = format!("anomaly-sidecar-{i}");
        let args = [
            "--shard",
            "auto",
            "--scrape-interval",
            "500ms",
            "--alertmanager",
            &am.url(),
            "--resend-delay",
            "1s",
        ];
        let env = [
            ("POD_NAME", pod.as_str()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ];
        let mut s = Sidecar::spawn_env(&own, &rules, urls, &args, &env);
        s.wait_ready(|addr| http("GET", addr, "/-/ready").filter(|(st, _)| *st == 200));
        s
    };
    let hold_six = |replicas: &[Sidecar]| {
        for _ in 0..8 {
            owners(replicas);
            let active = am.active("too_high").unwrap_or_default();
            assert_eq!(active.len(), 6, "{active:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    let mut replicas = vec![replica(0), replica(1)];
    let two = split_once(&[&replicas[0], &replicas[1]], 30);
    for s in &replicas {
        assert_eq!(s.number("anomaly_sidecar_shards "), 2);
    }
    let before = fleet.owned(&replicas);
    wait_for("six alerts in alertmanager", T, || {
        (am.active("too_high")?.len() == 6).then_some(())
    });

    // Scaled to 3: the running two take N from the StatefulSet and hand a share to the third.
    let pids: Vec<u32> = replicas.iter().map(|s| s.child.id()).collect();
    api.put(statefulset("anomaly-sidecar", 3));
    replicas.push(replica(2));
    let three = split_once(&[&replicas[0], &replicas[1], &replicas[2]], 30);
    assert!(three.iter().all(|s| !s.is_empty()), "{three:?}");
    let after = fleet.owned(&replicas);
    hold_six(&replicas);
    for (s, pid) in replicas.iter_mut().zip(&pids) {
        assert_eq!(s.child.id(), *pid);
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "restarted: {}",
            s.log()
        );
        assert_eq!(s.number("anomaly_sidecar_shards "), 3);
    }
    // Every target whose hash moved left its old replica as moved, not gone; an alert among
    // them was handed off there (not resolved in Alertmanager, which kept all six active)
    // and fired anew on its new replica.
    let owner = |split: &[BTreeSet<String>], t: &str| split.iter().position(|s| s.contains(t));
    for (i, s) in replicas[..2].iter().enumerate() {
        let log = s.log();
        let left: BTreeSet<&str> = two[i]
            .iter()
            .filter(|t| owner(&three, t) != Some(i))
            .map(String::as_str)
            .collect();
        let said: BTreeSet<&str> = log
            .lines()
            .filter(|l| l.contains("another shard's now"))
            .filter_map(|l| l.split("target=").nth(1)?.split_whitespace().next())
            .collect();
        assert_eq!(said, left, "replica {i}");
        assert!(!log.contains("reason=target_gone"), "{log}");
        let alerts_left = before
            .iter()
            .filter(|(t, (j, _))| *j == i && after[*t].0 != i)
            .count();
        assert_eq!(handed_off_alerts(&log), alerts_left, "replica {i}");
    }
    for (t, (i, since)) in &before {
        if after[t].0 == *i {
            assert_eq!(
                *since, after[t].1,
                "{t} stayed on replica {i} but fired again"
            );
        }
    }

    // Back to 2: replica 2 (past N) owns nothing before Kubernetes stops it, and the other
    // two take its targets.
    api.put(statefulset("anomaly-sidecar", 2));
    wait_for("replica 2 idle", T, || {
        (replicas[2].number("anomaly_sidecar_targets{state=\"active\"}") == 0).then_some(())
    });
    split_once(&[&replicas[0], &replicas[1]], 30);
    fleet.owned(&replicas[..2]);
    hold_six(&replicas);
    assert!(replicas.pop().unwrap().stop().success());
    hold_six(&replicas);
}

#[test]
fn shard_auto_without_its_statefulset_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let kubeconfig = api.kubeconfig(dir.path());
    let rules = write(dir.path(), "rules.yaml", TOO_HIGH);
    let args = ["--target", "http://127.0.0.1:1/metrics", "--shard", "auto"];
    let env = [
        ("POD_NAME", "anomaly-sidecar-0"),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];
    let mut s = Sidecar::spawn_env(dir.path(), &rules, &[], &args, &env);
    let status = s.child.wait().unwrap();
    assert!(!status.success());
    let log = s.log();
    assert!(
        log.contains("StatefulSet shop/anomaly-sidecar") && log.contains("not found"),
        "{log}"
    );
    assert!(!s.data_dir.exists(), "the store was opened: {log}");
}

#[test]
fn a_restart_while_the_api_is_down_ends_restored_alerts_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    let (port, _exporters) = pods(2, 1, &Reply::Body("g 500\n".into()));
    api.put(with_port(pod("api-1", "Running", Some("127.0.0.2")), port));
    let (s, hook) = watching(dir.path(), &api, TOO_HIGH, &[]);
    let target = format!("127.0.0.2:{port}");
    wait_for("the alert", T, || {
        alerts(&s, "firing").get(&target).cloned()
    });
    hook.wait_distinct(1);
    assert!(s.stop().success());

    // Restarted while the API refuses every connection: the restored alert is not resolved
    // at once (the API may just be slow), nor kept forever with nothing evaluating it.
    let kubeconfig = dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let down = format!("127.0.0.1:{}", free_port());
    std::fs::write(&kubeconfig, text.replace(&api.addr, &down)).unwrap();
    let started = std::time::Instant::now();
    let args = [
        "--targets-file",
        dir.path().join("targets.yml").to_str().unwrap(),
        "--webhook",
        &hook.url(),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Sidecar::start(dir.path(), &dir.path().join("rules.yaml"), &[], &args);
    // Meanwhile it is what Alertmanager has (re-sent there): firing in /api/v1/alerts and
    // on /metrics, with nothing scraped yet.
    std::thread::sleep(Duration::from_secs(5));
    assert!(alerts(&s, "firing").contains_key(&target), "{}", s.log());
    let active = |s: &Sidecar| {
        s.metrics()
            .lines()
            .any(|l| l.starts_with("anomaly_active{") && l.contains(&target) && l.ends_with(" 1.0"))
    };
    assert!(active(&s), "{}", s.metrics());
    assert_eq!(hook.distinct().len(), 1, "{:?}", hook.distinct());
    // After the grace (10 s at this scrape interval) it resolves, saying why.
    let events = hook.wait_distinct(2);
    let waited = started.elapsed();
    let resolved = &events[1].body;
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_eq!(resolved["alerts"][0]["labels"]["target"], target.as_str());
    assert_eq!(
        resolved["alerts"][0]["annotations"]["reason"], "discovery_unavailable",
        "{resolved}"
    );
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    wait_for("the alert gone from /api/v1/alerts and /metrics", T, || {
        (alerts(&s, "firing").is_empty() && !active(&s)).then_some(())
    });
    let log = s.log();
    assert!(log.contains("Discovery has not answered"), "{log}");
    assert!(!log.contains("reason=target_gone"), "{log}");
}

#[test]
fn a_pod_moved_to_this_shard_is_warm_started_from_its_own_history_in_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start();
    // Both pods say 100 from their first scrape: constant, so without history nothing fires
    // (the window's spread stays 0).
    let (port, _exporters) = pods(2, 3, &Reply::Body("warm_value{a=\"1\"} 100\n".into()));
    let names = ["api-7d4b9c8f6d-aaaaa", "api-7d4b9c8f6d-bbbbb"];
    for (i, name) in names.iter().enumerate() {
        let ip = format!("127.0.0.{}", i + 2);
        api.put(with_port(pod(name, "Running", Some(&ip)), port));
    }
    // Prometheus' copies, labelled as the usual relabelling does (namespace, pod, container;
    // no workload, no node): the first pod around 11, the second around 51.
    let end = now_s() - 2;
    let mut history = String::from("# TYPE warm_value gauge\n");
    for (i, name) in names.iter().enumerate() {
        let labels = format!(
            "a=\"1\",container=\"api\",instance=\"127.0.0.{}:{port}\",job=\"pods\",namespace=\"shop\",pod=\"{name}\"",
            i + 2
        );
        for j in 0..300u64 {
            let v = 10 + 40 * i as u64 + j % 3;
            history.push_str(&format!("warm_value{{{labels}}} {v} {}\n", end - 299 + j));
        }
    }
    history.push_str("# EOF\n");
    let Some(prom) = crate::backtest::HistoryPrometheus::start(&history) else {
        return;
    };
    let url = format!("http://{}", prom.addr);
    let rules = "rules:\n  - name: z\n    match: warm_value\n    method: zscore\n    window: 60\n";
    let moved = format!("127.0.0.3:{port}");
    let home = anomaly_sidecar::discover::shard::hashmod(&moved, 2);
    let warm = ["--scrape-interval", "1s", "--warmup-from", &url];

    // The replica that does not own the second pod with two shards...
    let other = format!("{}/2", 1 - home);
    let args = [&warm[..], &["--shard", &other]].concat();
    let (s, _hook) = watching(dir.path(), &api, rules, &args);
    wait_for("the pods discovered", T, || {
        (s.number("anomaly_sidecar_sd_discovered_targets") == 2).then_some(())
    });
    assert!(!up_targets(&s).contains(&moved), "{}", s.metrics());
    s.stop();

    // ...owns it once it is the only one: its first scrape is judged against that pod's own
    // history, not the other pod's, and fires at once.
    let (s, hook) = watching(
        dir.path(),
        &api,
        rules,
        &[&warm[..], &["--shard", "0/1"]].concat(),
    );
    // The first event whose alert has `label` = `value`.
    let event = |what: &str, label: &str, value: &str| {
        wait_for(what, T, || {
            hook.got()
                .into_iter()
                .map(|g| g.body)
                .find(|b| b["alerts"][0]["labels"][label] == value)
        })
    };
    let ev = event("the moved pod fires", "target", &moved);
    assert_eq!(ev["status"], "firing", "{ev}");
    let alert = &ev["alerts"][0];
    assert_eq!(alert["labels"]["pod"], names[1], "{ev}");
    let mean: f64 = alert["annotations"]["baseline_mean"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((50.0..53.0).contains(&mean), "its own baseline (~51): {ev}");
    let log = s.log();
    assert!(
        log.lines().any(|l| l.contains(&moved)
            && l.contains(
                "Warm start: history for 1 of 1 series (0 missing, 0 matched several series)"
            )),
        "{log}"
    );

    // The first pod is replaced: Prometheus has nothing under the new name, so the new pod
    // starts from its workload's history here (the pods warm-started or restored above)
    // and fires at its first evaluation too.
    api.delete(names[0], true);
    let new = "api-7d4b9c8f6d-ccccc";
    api.put(with_port(pod(new, "Running", Some("127.0.0.4")), port));
    let ev = event("the replacing pod fires", "pod", new);
    assert_eq!(ev["status"], "firing", "{ev}");
    assert!(s.number("anomaly_sidecar_seeded_series_total") >= 1);
    let log = s.log();
    assert!(
        log.contains("Warm start: history for 0 of 1 series (1 missing, 0 matched several series)"),
        "{log}"
    );
}
