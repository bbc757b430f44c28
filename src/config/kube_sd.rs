//! `kubernetes_sd` in `--targets-file`: which pods to scrape, in the field names of
//! Prometheus' `kubernetes_sd_configs` where they apply. Checked at load: a selector the API
//! server would refuse is an error with the file and line, not a warning an hour later.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a `kubernetes_sd` entry watches.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSd {
    pub role: Role,
    /// Empty: the namespace the sidecar runs in (or the kubeconfig context's).
    pub namespaces: Vec<String>,
    /// A label selector, as `kubectl -l` takes it.
    pub selector: Option<String>,
    /// A field selector, as `kubectl --field-selector` takes it.
    pub field_selector: Option<String>,
    /// The container port scraped (None: the `prometheus.io/port` annotation's).
    pub port: Option<PortRef>,
    /// Honour `prometheus.io/scrape`, `port`, `path` and `scheme` pod annotations.
    pub annotations: bool,
    /// None: in-cluster config, else `$KUBECONFIG` (or `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every running pod.
    Pod,
    /// Every endpoint of the selected Services' EndpointSlices.
    EndpointSlice,
    /// The same from the older Endpoints objects.
    Endpoints,
}

/// A container port by name or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetesSd {
    role: String,
    #[serde(default)]
    namespaces: Vec<String>,
    selector: Option<String>,
    field_selector: Option<String>,
    port: Option<RawPort>,
    #[serde(default)]
    annotations: bool,
    kubeconfig: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(u16),
    Name(String),
}

/// Checks an entry; relative paths are relative to `dir`.
pub(super) fn parse(raw: RawKubernetesSd, dir: &Path) -> Result<KubernetesSd, String> {
    let role = match raw.role.as_str() {
        "pod" => Role::Pod,
        "endpointslice" => Role::EndpointSlice,
        "endpoints" => Role::Endpoints,
        other => {
            return Err(format!(
                "kubernetes_sd: role {other:?}: pod, endpointslice or endpoints"
            ))
        }
    };
    if role != Role::Pod && raw.annotations {
        return Err(format!(
            "kubernetes_sd: annotations are read from pods: role {} takes the Service's port",
            raw.role
        ));
    }
    for ns in &raw.namespaces {
        if !is_dns_label(ns) {
            return Err(format!(
                "kubernetes_sd: namespace {ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ));
        }
    }
    if let Some(s) = &raw.selector {
        check_label_selector(s).map_err(|e| format!("kubernetes_sd: selector {s:?}: {e}"))?;
    }
    if let Some(s) = &raw.field_selector {
        check_field_selector(s).map_err(|e| format!("kubernetes_sd: field_selector {s:?}: {e}"))?;
    }
    let port = match raw.port {
        None => None,
        Some(RawPort::Number(0)) => return Err("kubernetes_sd: port 0".into()),
        Some(RawPort::Number(n)) => Some(PortRef::Number(n)),
        Some(RawPort::Name(n)) => match n.parse::<u16>() {
            Ok(0) => return Err("kubernetes_sd: port 0".into()),
            Ok(p) => Some(PortRef::Number(p)),
            Err(_) if is_port_name(&n) => Some(PortRef::Name(n)),
            Err(_) => {
                return Err(format!(
                    "kubernetes_sd: port {n:?}: a container port's name (at most 15 of a-z, 0-9, '-') or number"
                ))
            }
        },
    };
    if port.is_none() && role != Role::Pod {
        return Err(format!(
            "kubernetes_sd: role {} needs the Service port to scrape (name or number)",
            raw.role
        ));
    }
    if port.is_none() && !raw.annotations {
        return Err(
            "kubernetes_sd: give the port to scrape (name or number), or annotations: true to take it from prometheus.io/port".into(),
        );
    }
    Ok(KubernetesSd {
        role,
        namespaces: raw.namespaces,
        selector: raw.selector,
        field_selector: raw.field_selector,
        port,
        annotations: raw.annotations,
        kubeconfig: raw.kubeconfig.map(|p| dir.join(p)),
    })
}

/// RFC 1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IANA service name, as a container port's `name` must be.
fn is_port_name(s: &str) -> bool {
    is_dns_label(s) && s.len() <= 15 && s.bytes().any(|b| b.is_ascii_lowercase())
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63.
fn is_label_key(k: &str) -> bool {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label) {
                return false;
            }
            name
        }
        None => k,
    };
    is_label_value(name) && !name.is_empty()
}

/// A label value: at most 63 of alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric (or empty).
fn is_label_value(v: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric();
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| ok(b) || matches!(b, b'-' | b'_' | b'.'))
            && v.bytes().next().is_some_and(ok)
            && v.bytes().last().is_some_and(ok))
}

/// The grammar of `kubectl -l`: requirements separated by commas, each `key`, `!key`,
/// `key=v`, `key==v`, `key!=v`, `key in (a,b)` or `key notin (a,b)`.
pub fn check_label_selector(s: &str) -> Result<(), String> {
    for req in split_requirements(s)? {
        let req = req.trim();
        if req.is_empty() {
            return Err("an empty requirement (two commas, or a trailing one)".into());
        }
        let (key, values): (&str, Vec<&str>) = if let Some(k) = req.strip_prefix('!') {
            (k.trim(), Vec::new())
        } else if let Some((k, rest)) = set_operator(req) {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{req:?}: in and notin take (a, b, ...)"))?;
            (k, inner.split(',').map(str::trim).collect())
        } else if let Some((k, v)) = req
            .split_once("!=")
            .or_else(|| req.split_once("=="))
            .or_else(|| req.split_once('='))
        {
            (k.trim(), vec![v.trim()])
        } else {
            (req, Vec::new())
        };
        if !is_label_key(key) {
            return Err(format!("{key:?} is not a label key"));
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            return Err(format!("{v:?} is not a label value"));
        }
    }
    Ok(())
}

/// `key in (...)` / `key notin (...)`: the key and what follows the operator.
fn set_operator(req: &str) -> Option<(&str, &str)> {
    for op in [" notin ", " in "] {
        if let Some((k, rest)) = req.split_once(op) {
            return Some((k.trim(), rest));
        }
    }
    None
}

/// Splits at the commas outside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, String> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

/// `kubectl --field-selector`: `field=v`, `field==v` or `field!=v`, comma-separated.
fn check_field_selector(s: &str) -> Result<(), String> {
    for req in s.split(',') {
        let (field, _) = req
            .split_once("!=")
            .or_else(|| req.split_once("=="))
            .or_else(|| req.split_once('='))
            .ok_or_else(|| format!("{req:?}: expected field=value, == or !="))?;
        let field = field.trim();
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        {
            return Err(format!(
                "{field:?} is not a field path (e.g. spec.nodeName)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_as_kubectl_takes_them() {
        for ok in [
            "app=api",
            "app==api,tier!=cache",
            "app.kubernetes.io/name=shop, environment in (prod, staging)",
            "!canary,track notin (beta)",
            "release",
            "app=",
        ] {
            assert_eq!(check_label_selector(ok), Ok(()), "{ok}");
        }
        for (bad, needle) in [
            ("app=api,", "empty requirement"),
            ("app in prod", "in and notin take"),
            ("app=a b", "not a label value"),
            ("-app=x", "not a label key"),
            ("env in (a,(b)", "unbalanced"),
            ("Bad_Prefix.io/x=y", "not a label key"),
        ] {
            let e = check_label_selector(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert!(check_field_selector("spec.nodeName=node-1,status.phase!=Failed").is_ok());
        assert!(check_field_selector("spec.nodeName").is_err());
    }

    #[test]
    fn ports_by_name_or_number() {
        let raw = |port: Option<RawPort>, annotations| RawKubernetesSd {
            role: "pod".into(),
            namespaces: vec!["shop".into()],
            selector: None,
            field_selector: None,
            port,
            annotations,
            kubeconfig: Some("kube/config".into()),
        };
        let sd = parse(
            raw(Some(RawPort::Name("metrics".into())), false),
            Path::new("/etc"),
        )
        .unwrap();
        assert_eq!(sd.port, Some(PortRef::Name("metrics".into())));
        assert_eq!(sd.kubeconfig, Some(PathBuf::from("/etc/kube/config")));
        let sd = parse(
            raw(Some(RawPort::Name("8080".into())), false),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(sd.port, Some(PortRef::Number(8080)));
        assert!(parse(raw(None, true), Path::new("/")).is_ok());
        let e = parse(raw(None, false), Path::new("/")).unwrap_err();
        assert!(e.contains("give the port"), "{e}");
        let e = parse(
            raw(Some(RawPort::Name("Metrics_Port".into())), false),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("container port's name"), "{e}");
        // The Service roles take the Service's port, never annotations.
        let role = |r: &str, port: Option<RawPort>, annotations| {
            let mut x = raw(port, annotations);
            x.role = r.into();
            parse(x, Path::new("/"))
        };
        let sd = role(
            "endpointslice",
            Some(RawPort::Name("metrics".into())),
            false,
        )
        .unwrap();
        assert_eq!(sd.role, Role::EndpointSlice);
        let sd = role("endpoints", Some(RawPort::Number(9100)), false).unwrap();
        assert_eq!(sd.role, Role::Endpoints);
        let e = role("endpointslice", None, true).unwrap_err();
        assert!(e.contains("annotations are read from pods"), "{e}");
        let e = role("endpoints", None, false).unwrap_err();
        assert!(e.contains("needs the Service port"), "{e}");
        let e = role("service", None, false).unwrap_err();
        assert!(e.contains("pod, endpointslice or endpoints"), "{e}");
    }
}
