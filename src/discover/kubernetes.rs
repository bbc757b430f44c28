//! `kubernetes_sd`: one target per running pod, found by kube-rs' watcher (list, then watch
//! from its resourceVersion; a watch that ends is resumed, a 410 Gone relists, errors back
//! off), with the pod's namespace, name, container, node and workload as target labels.
//! Which pods and ports is decided by `pod_targets`, a pure function of the pod.

use super::{Discovered, Update};
use crate::config::kube_sd::{KubernetesSd, PortRef};
use crate::export::self_metrics::SelfMetrics;
use futures_util::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use std::collections::HashMap;
use tokio::sync::{mpsc, watch};

/// Why the API cannot be reached with the configuration given (at start, before the store is
/// opened or the port bound).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes API to watch: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig}); set kubeconfig in the entry or $KUBECONFIG")]
    NoConfig {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client for the entry's API server, and the namespace watched when the entry names none.
pub struct Connection {
    client: Client,
    default_namespace: String,
}

/// The entry's kubeconfig; else the in-cluster service account; else `$KUBECONFIG` (or
/// `~/.kube/config`).
pub async fn connect(sd: &KubernetesSd) -> Result<Connection, ConnectError> {
    let config = match &sd.kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| ConnectError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => match Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| ConnectError::NoConfig {
                    in_cluster: in_cluster.to_string(),
                    kubeconfig: e.to_string(),
                })?,
        },
    };
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))?;
    Ok(Connection {
        client,
        default_namespace,
    })
}

/// The targets of one pod: none unless it runs, has an IP and is not terminating; one per
/// container port that matches the entry's port (by name or number), or, for a number no
/// container declares, one without a container.
pub fn pod_targets(pod: &Pod, sd: &KubernetesSd) -> Vec<Discovered> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if status.phase.as_deref() != Some("Running") {
        return Vec::new();
    }
    let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return Vec::new();
    };
    let annotation = |k: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    let (mut port, mut path, mut scheme) = (sd.port.clone(), None, None);
    if sd.annotations {
        if annotation("prometheus.io/scrape") != Some("true") {
            return Vec::new();
        }
        if let Some(p) = annotation("prometheus.io/port") {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => port = Some(PortRef::Number(n)),
                _ => return Vec::new(),
            }
        }
        path = annotation("prometheus.io/path")
            .filter(|p| p.starts_with('/'))
            .map(str::to_string);
        scheme = annotation("prometheus.io/scheme")
            .filter(|s| matches!(*s, "http" | "https"))
            .map(str::to_string);
    }
    let Some(port) = port else {
        return Vec::new();
    };
    let containers = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
    let mut found: Vec<(&str, u16)> = Vec::new();
    for c in containers {
        for p in c.ports.iter().flatten() {
            let Ok(number) = u16::try_from(p.container_port) else {
                continue;
            };
            let matches = match &port {
                PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
                PortRef::Number(n) => number == *n,
            };
            if matches && !found.iter().any(|(_, f)| *f == number) {
                found.push((c.name.as_str(), number));
            }
        }
    }
    if found.is_empty() {
        match port {
            PortRef::Number(n) => found.push(("", n)),
            PortRef::Name(_) => return Vec::new(),
        }
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    found
        .into_iter()
        .map(|(container, number)| {
            // Sorted by name, as a series' labels are.
            let mut labels = Vec::with_capacity(5);
            if !container.is_empty() {
                labels.push(("container".to_string(), container.to_string()));
            }
            if let Some(ns) = &meta.namespace {
                labels.push(("namespace".to_string(), ns.clone()));
            }
            if let Some(node) = &node {
                labels.push(("node".to_string(), node.clone()));
            }
            if let Some(name) = &meta.name {
                labels.push(("pod".to_string(), name.clone()));
            }
            if let Some(w) = workload(meta) {
                labels.push(("workload".to_string(), w));
            }
            Discovered {
                address: format!("{host}:{number}"),
                labels,
                path: path.clone(),
                scheme: scheme.clone(),
            }
        })
        .collect()
}

/// The name of the workload that owns the pod: its controller, a Deployment for a ReplicaSet
/// named `<deployment>-<pod-template-hash>`.
fn workload(meta: &ObjectMeta) -> Option<String> {
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(d) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|n| n.strip_suffix('-'))
        }) {
            return Some(d.to_string());
        }
    }
    Some(owner.name.clone())
}

/// The pods of every watched namespace that have targets, as the watcher last told them.
struct PodSet {
    /// Per namespace: pod name → its targets (pods without any are not kept).
    live: Vec<HashMap<String, Vec<Discovered>>>,
    /// Per namespace: a relist in progress (Init .. InitDone).
    relist: Vec<Option<HashMap<String, Vec<Discovered>>>>,
    /// Per namespace: listed at least once.
    listed: Vec<bool>,
}

impl PodSet {
    fn new(namespaces: usize) -> Self {
        Self {
            live: vec![HashMap::new(); namespaces],
            relist: vec![None; namespaces],
            listed: vec![false; namespaces],
        }
    }

    /// Takes one event of namespace `ns` in; whether the targets changed.
    fn apply(&mut self, ns: usize, event: Event<Pod>, sd: &KubernetesSd) -> bool {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => {
                self.relist[ns] = Some(HashMap::new());
                false
            }
            Event::InitApply(p) => {
                let targets = pod_targets(&p, sd);
                if let Some(buffer) = &mut self.relist[ns] {
                    if !targets.is_empty() {
                        buffer.insert(name(&p), targets);
                    }
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist[ns].take().unwrap_or_default();
                let first = !self.listed[ns];
                self.listed[ns] = true;
                let changed = listed != self.live[ns];
                self.live[ns] = listed;
                changed || first
            }
            Event::Apply(p) => {
                let targets = pod_targets(&p, sd);
                let live = &mut self.live[ns];
                if targets.is_empty() {
                    live.remove(&name(&p)).is_some()
                } else {
                    live.insert(name(&p), targets.clone()).as_ref() != Some(&targets)
                }
            }
            Event::Delete(p) => self.live[ns].remove(&name(&p)).is_some(),
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(|&l| l)
    }

    /// Every target, sorted by address.
    fn targets(&self) -> Vec<Discovered> {
        let mut out: Vec<Discovered> = self
            .live
            .iter()
            .flat_map(|ns| ns.values().flatten().cloned())
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }
}

/// Watches the entry's pods in each of its namespaces and sends the whole set when it
/// changes, first once every namespace has been listed. A failing API keeps the last set
/// (the watcher retries with backoff, logged once per outage).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    provider: usize,
    config: String,
    sd: KubernetesSd,
    conn: Connection,
    updates: mpsc::Sender<Update>,
    metrics: SelfMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let namespaces = if sd.namespaces.is_empty() {
        vec![conn.default_namespace.clone()]
    } else {
        sd.namespaces.clone()
    };
    let mut wc = watcher::Config::default();
    if let Some(s) = &sd.selector {
        wc = wc.labels(s);
    }
    if let Some(f) = &sd.field_selector {
        wc = wc.fields(f);
    }
    let streams = namespaces.iter().enumerate().map(|(i, ns)| {
        let api: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
        watcher::watcher(api, wc.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    let mut events = stream::select_all(streams);
    let mut pods = PodSet::new(namespaces.len());
    let mut failing = false;
    loop {
        let (ns, event) = tokio::select! {
            _ = shutdown.changed() => return,
            e = events.next() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                metrics
                    .sd_refresh_failures_total
                    .with_label_values(&["kubernetes"])
                    .inc();
                if !failing {
                    tracing::warn!(config = %config, namespace = %namespaces[ns], error = %e, "Kubernetes watch failed; its last targets stay, retrying with backoff");
                }
                failing = true;
                continue;
            }
        };
        if failing && matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
            tracing::info!(config = %config, "Kubernetes watch recovered");
            failing = false;
        }
        metrics
            .sd_lookups_total
            .with_label_values(&["kubernetes"])
            .inc();
        if !pods.apply(ns, event, &sd) || !pods.all_listed() {
            continue;
        }
        let targets = pods.targets();
        metrics
            .sd_discovered_targets
            .with_label_values(&[&config])
            .set(targets.len() as i64);
        if updates.send(Update { provider, targets }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(port: Option<PortRef>, annotations: bool) -> KubernetesSd {
        KubernetesSd {
            role: crate::config::kube_sd::Role::Pod,
            namespaces: vec!["shop".into()],
            selector: Some("app=api".into()),
            field_selector: None,
            port,
            annotations,
            kubeconfig: None,
        }
    }

    /// A pod as the API serves it (trimmed to the fields read).
    fn pod(name: &str, phase: &str, ip: Option<&str>, extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"app": "api", "pod-template-hash": "7d4b9c8f6d"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9c8f6d",
                    "uid": "3f1c2f4e-0000-4000-8000-000000000001", "controller": true,
                    "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [
                    {"name": "api", "image": "shop/api:1.4", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
                    ]},
                    {"name": "envoy", "image": "envoy:1.30", "ports": [
                        {"name": "admin", "containerPort": 9901, "protocol": "TCP"}
                    ]}
                ]
            },
            "status": {"phase": phase}
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = ip.into();
        }
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    // null removes, as in a JSON merge patch.
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    fn addresses(t: &[Discovered]) -> Vec<&str> {
        t.iter().map(|d| d.address.as_str()).collect()
    }

    #[test]
    fn a_running_pod_is_one_target_per_matching_port_with_its_labels() {
        let p = pod(
            "api-7d4b9c8f6d-x2x9q",
            "Running",
            Some("10.1.2.3"),
            serde_json::json!({}),
        );
        let t = pod_targets(&p, &sd(Some(PortRef::Name("metrics".into())), false));
        assert_eq!(addresses(&t), ["10.1.2.3:9090"]);
        let labels: Vec<(&str, &str)> = t[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("container", "api"),
                ("namespace", "shop"),
                ("node", "node-a"),
                ("pod", "api-7d4b9c8f6d-x2x9q"),
                ("workload", "api"),
            ]
        );
        // By number: the container that declares it; a number nobody declares still scrapes.
        let t = pod_targets(&p, &sd(Some(PortRef::Number(9901)), false));
        assert_eq!(t[0].labels[0], ("container".into(), "envoy".into()));
        let t = pod_targets(&p, &sd(Some(PortRef::Number(9100)), false));
        assert_eq!(addresses(&t), ["10.1.2.3:9100"]);
        assert_eq!(t[0].labels[0].0, "namespace");
        assert!(pod_targets(&p, &sd(Some(PortRef::Name("grpc".into())), false)).is_empty());
        let v6 = pod("api-1", "Running", Some("fd00::5"), serde_json::json!({}));
        let t = pod_targets(&v6, &sd(Some(PortRef::Name("metrics".into())), false));
        assert_eq!(addresses(&t), ["[fd00::5]:9090"]);
    }

    #[test]
    fn pending_ipless_and_terminating_pods_are_not_targets() {
        let port = sd(Some(PortRef::Name("metrics".into())), false);
        let pending = pod("a", "Pending", None, serde_json::json!({}));
        let no_ip = pod("b", "Running", None, serde_json::json!({}));
        let terminating = pod(
            "c",
            "Running",
            Some("10.1.2.4"),
            serde_json::json!({"metadata": {"deletionTimestamp": "2026-12-06T04:00:00Z",
                "deletionGracePeriodSeconds": 30}}),
        );
        let done = pod("d", "Succeeded", Some("10.1.2.5"), serde_json::json!({}));
        for p in [pending, no_ip, terminating, done] {
            assert!(pod_targets(&p, &port).is_empty(), "{:?}", p.metadata.name);
        }
    }

    #[test]
    fn workloads_from_owner_references() {
        let sts = pod(
            "db-2",
            "Running",
            Some("10.1.0.9"),
            serde_json::json!({"metadata": {"labels": {"pod-template-hash": null},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": "db", "uid": "u", "controller": true}]}}),
        );
        assert_eq!(workload(&sts.metadata).as_deref(), Some("db"));
        // A ReplicaSet of its own (no Deployment's hash): its name.
        let rs = pod(
            "cache-abcde",
            "Running",
            Some("10.1.0.8"),
            serde_json::json!({"metadata": {"labels": {"pod-template-hash": null},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "cache", "uid": "u", "controller": true}]}}),
        );
        assert_eq!(workload(&rs.metadata).as_deref(), Some("cache"));
        let mut bare = sts.clone();
        bare.metadata.owner_references = None;
        assert_eq!(workload(&bare.metadata), None);
    }

    #[test]
    fn annotations_when_asked() {
        let ann = |scrape: &str| {
            serde_json::json!({"metadata": {"annotations": {
                "prometheus.io/scrape": scrape, "prometheus.io/port": "9901",
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/scheme": "https"}}})
        };
        let on = pod("a", "Running", Some("10.0.0.1"), ann("true"));
        let off = pod("b", "Running", Some("10.0.0.2"), ann("false"));
        let asked = sd(None, true);
        let t = pod_targets(&on, &asked);
        assert_eq!(addresses(&t), ["10.0.0.1:9901"]);
        assert_eq!(t[0].path.as_deref(), Some("/stats/prometheus"));
        assert_eq!(t[0].scheme.as_deref(), Some("https"));
        assert!(pod_targets(&off, &asked).is_empty());
        // Not asked: annotations change nothing.
        let t = pod_targets(&off, &sd(Some(PortRef::Name("metrics".into())), false));
        assert_eq!(addresses(&t), ["10.0.0.2:9090"]);
        assert_eq!(t[0].path, None);
    }

    #[test]
    fn the_set_follows_list_watch_and_relist() {
        let s = sd(Some(PortRef::Name("metrics".into())), false);
        let mut set = PodSet::new(1);
        let running = |n: &str, ip: &str| pod(n, "Running", Some(ip), serde_json::json!({}));
        assert!(!set.apply(0, Event::Init, &s));
        assert!(!set.apply(0, Event::InitApply(running("a", "10.0.0.1")), &s));
        assert!(!set.all_listed());
        // The first listing is news even when empty of targets.
        assert!(set.apply(0, Event::InitDone, &s));
        assert_eq!(addresses(&set.targets()), ["10.0.0.1:9090"]);
        assert!(set.apply(0, Event::Apply(running("b", "10.0.0.2")), &s));
        // A status update that changes nothing scraped is not news.
        assert!(!set.apply(0, Event::Apply(running("b", "10.0.0.2")), &s));
        assert!(set.apply(0, Event::Delete(running("a", "10.0.0.1")), &s));
        // A relist (after a 410 Gone) replaces the set whole: pods deleted meanwhile go.
        set.apply(0, Event::Init, &s);
        set.apply(0, Event::InitApply(running("c", "10.0.0.3")), &s);
        assert_eq!(addresses(&set.targets()), ["10.0.0.2:9090"]);
        assert!(set.apply(0, Event::InitDone, &s));
        assert_eq!(addresses(&set.targets()), ["10.0.0.3:9090"]);
    }
}
