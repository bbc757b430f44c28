//! The pod role: which pods are targets and with which labels, a pure function of the pod;
//! and what the Service roles need of a pod (its workload and containers' ports).

use super::super::Discovered;
use crate::config::kube_sd::{KubernetesSd, PortRef};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
                address: super::address(ip, number),
                labels,
                path: path.clone(),
                scheme: scheme.clone(),
            }
        })
        .collect()
}

/// The name of the workload that owns the pod: its controller, a Deployment for a ReplicaSet
/// named `<deployment>-<pod-template-hash>`.
pub(super) fn workload(meta: &ObjectMeta) -> Option<String> {
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

/// A container's declared ports: number and name.
type Ports = Vec<(u16, Option<String>)>;

/// What an endpoint's labels need of its pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PodInfo {
    pub(super) workload: Option<String>,
    pub(super) node: Option<String>,
    /// Per container: its name and its declared ports (number, name).
    pub(super) containers: Vec<(String, Ports)>,
}

impl PodInfo {
    pub(super) fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        Self {
            workload: workload(&pod.metadata),
            node: spec.and_then(|s| s.node_name.clone()),
            containers: spec.map_or_else(Vec::new, |s| {
                s.containers
                    .iter()
                    .map(|c| {
                        let ports = c
                            .ports
                            .iter()
                            .flatten()
                            .filter_map(|p| {
                                Some((u16::try_from(p.container_port).ok()?, p.name.clone()))
                            })
                            .collect();
                        (c.name.clone(), ports)
                    })
                    .collect()
            }),
        }
    }

    /// The container that declares port `number`.
    pub(super) fn container_of(&self, number: u16) -> Option<&str> {
        self.containers
            .iter()
            .find(|(_, ports)| ports.iter().any(|(n, _)| *n == number))
            .map(|(c, _)| c.as_str())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::discover::kubernetes) fn sd(
        port: Option<PortRef>,
        annotations: bool,
    ) -> KubernetesSd {
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
    pub(in crate::discover::kubernetes) fn pod(
        name: &str,
        phase: &str,
        ip: Option<&str>,
        extra: serde_json::Value,
    ) -> Pod {
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

    /// A target's labels, as pairs of strs to compare with literals.
    pub(in crate::discover::kubernetes) fn labels(d: &Discovered) -> Vec<(&str, &str)> {
        d.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub(in crate::discover::kubernetes) fn addresses(t: &[Discovered]) -> Vec<&str> {
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
        assert_eq!(
            labels(&t[0]),
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
}
