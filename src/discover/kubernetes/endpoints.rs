//! The Service roles: one target per endpoint address of a Service (`endpointslice`, or the
//! older `endpoints`), on the Service's port of the entry's name or number, labelled with
//! the Service, and with the pod's container and workload from a join with the pods (as
//! Prometheus' endpoints role does). Terminating endpoints are left out.

use super::super::Discovered;
use super::pods::PodInfo;
use crate::config::kube_sd::{KubernetesSd, PortRef};
use k8s_openapi::api::core::v1::{Endpoints, ObjectReference};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;

/// Pods by name, in the namespace of the endpoints being read.
pub(super) type PodsByName<'a> = &'a HashMap<String, PodInfo>;

/// The port numbers of `ports` (name, number) that the entry's port names.
fn matching(port: &PortRef, ports: impl Iterator<Item = (Option<String>, i32)>) -> Vec<u16> {
    let mut out: Vec<u16> = ports
        .filter(|(name, number)| match port {
            PortRef::Name(n) => name.as_deref() == Some(n.as_str()),
            PortRef::Number(n) => *number == i32::from(*n),
        })
        .filter_map(|(_, number)| u16::try_from(number).ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// One endpoint address on one port, with its labels.
fn target(
    ip: &str,
    number: u16,
    namespace: &str,
    service: &str,
    node: Option<&str>,
    target_ref: Option<&ObjectReference>,
    pods: PodsByName,
) -> Discovered {
    let pod_name = target_ref
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.as_deref());
    let info = pod_name.and_then(|p| pods.get(p));
    let node = node.map(str::to_string).or_else(|| info?.node.clone());
    // Sorted by name, as a series' labels are.
    let mut labels = Vec::with_capacity(6);
    if let Some(c) = info.and_then(|i| i.container_of(number)) {
        labels.push(("container".to_string(), c.to_string()));
    }
    labels.push(("namespace".to_string(), namespace.to_string()));
    if let Some(n) = node {
        labels.push(("node".to_string(), n));
    }
    if let Some(p) = pod_name {
        labels.push(("pod".to_string(), p.to_string()));
    }
    labels.push(("service".to_string(), service.to_string()));
    if let Some(w) = info.and_then(|i| i.workload.clone()) {
        labels.push(("workload".to_string(), w));
    }
    Discovered {
        address: super::address(ip, number),
        labels,
        ..Discovered::default()
    }
}

/// The targets of an EndpointSlice: its endpoints that are not terminating, on its ports
/// that the entry names.
pub(super) fn slice_targets(
    slice: &EndpointSlice,
    sd: &KubernetesSd,
    pods: PodsByName,
) -> Vec<Discovered> {
    let Some(port) = &sd.port else {
        return Vec::new();
    };
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let meta = &slice.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let service = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .or(meta.name.as_ref())
        .map_or("", String::as_str);
    let ports = slice.ports.iter().flatten();
    let numbers = matching(port, ports.filter_map(|p| Some((p.name.clone(), p.port?))));
    let mut out = Vec::new();
    for e in &slice.endpoints {
        if e.conditions.as_ref().and_then(|c| c.terminating) == Some(true) {
            continue;
        }
        for ip in &e.addresses {
            for &n in &numbers {
                let (node, r) = (e.node_name.as_deref(), e.target_ref.as_ref());
                out.push(target(ip, n, namespace, service, node, r, pods));
            }
        }
    }
    out
}

/// The targets of an Endpoints object: its ready and not-ready addresses, on its ports that
/// the entry names.
pub(super) fn endpoints_targets(
    ep: &Endpoints,
    sd: &KubernetesSd,
    pods: PodsByName,
) -> Vec<Discovered> {
    let Some(port) = &sd.port else {
        return Vec::new();
    };
    let namespace = ep.metadata.namespace.as_deref().unwrap_or_default();
    let service = ep.metadata.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let ports = subset.ports.iter().flatten();
        let numbers = matching(port, ports.map(|p| (p.name.clone(), p.port)));
        let addresses = subset.addresses.iter().flatten();
        for a in addresses.chain(subset.not_ready_addresses.iter().flatten()) {
            for &n in &numbers {
                let (node, r) = (a.node_name.as_deref(), a.target_ref.as_ref());
                out.push(target(&a.ip, n, namespace, service, node, r, pods));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::pods::tests::{labels, pod};
    use super::*;
    use crate::config::kube_sd::Role;

    fn sd(port: PortRef) -> KubernetesSd {
        KubernetesSd {
            role: Role::EndpointSlice,
            namespaces: vec!["shop".into()],
            selector: None,
            field_selector: None,
            port: Some(port),
            annotations: false,
            kubeconfig: None,
        }
    }

    fn pods() -> HashMap<String, PodInfo> {
        let p = pod("api-1", "Running", Some("10.1.0.5"), serde_json::json!({}));
        HashMap::from([("api-1".to_string(), PodInfo::of(&p))])
    }

    /// An EndpointSlice as the API serves it.
    fn slice() -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "api-x7k2p", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "api",
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"},
                      {"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-a", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "api-1", "uid": "u1"}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "nodeName": "node-b", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "api-2", "uid": "u2"}},
                {"addresses": ["10.1.0.7"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "api-3", "uid": "u3"}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_slice_is_a_target_per_endpoint_on_the_named_port_joined_with_its_pod() {
        let t = slice_targets(&slice(), &sd(PortRef::Name("metrics".into())), &pods());
        let addresses: Vec<&str> = t.iter().map(|d| d.address.as_str()).collect();
        // The terminating endpoint is left out; a not-ready one is still scraped.
        assert_eq!(addresses, ["10.1.0.5:9090", "10.1.0.7:9090"]);
        assert_eq!(
            labels(&t[0]),
            [
                ("container", "api"),
                ("namespace", "shop"),
                ("node", "node-a"),
                ("pod", "api-1"),
                ("service", "api"),
                ("workload", "api"),
            ]
        );
        // A pod not (yet) known: the endpoint's own labels.
        assert_eq!(t[1].labels.len(), 3, "{:?}", t[1].labels);
        let by_number = slice_targets(&slice(), &sd(PortRef::Number(8080)), &pods());
        assert_eq!(by_number[0].address, "10.1.0.5:8080");
        assert!(slice_targets(&slice(), &sd(PortRef::Name("grpc".into())), &pods()).is_empty());
    }

    #[test]
    fn endpoints_are_read_the_same_way() {
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "api", "namespace": "shop"},
            "subsets": [{
                "addresses": [{"ip": "10.1.0.5", "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "namespace": "shop", "name": "api-1"}}],
                "notReadyAddresses": [{"ip": "10.1.0.7"}],
                "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"}]
            }]
        }))
        .unwrap();
        let t = endpoints_targets(&ep, &sd(PortRef::Name("metrics".into())), &pods());
        let addresses: Vec<&str> = t.iter().map(|d| d.address.as_str()).collect();
        assert_eq!(addresses, ["10.1.0.5:9090", "10.1.0.7:9090"]);
        assert!(t[0]
            .labels
            .contains(&("workload".to_string(), "api".to_string())));
        assert!(t[0]
            .labels
            .contains(&("service".to_string(), "api".to_string())));
    }
}
