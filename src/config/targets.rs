//! `--targets-file`: targets that need more than a URL (bearer token, basic auth, a private
//! CA, a client certificate), and targets found by discovery (`dns_sd`), with Prometheus'
//! scrape_config field names. Secrets are only ever named by file, read at each scrape so a
//! rotated token is used without a restart.

use super::yaml;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A targets file that cannot be used, with its file and line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TargetsFileError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

/// One target and how to reach it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetSpec {
    pub url: String,
    pub auth: Option<ScrapeAuth>,
    pub tls: Option<ClientTls>,
    /// Per-target overrides of the scrape limits (`sample_limit`, `label_limit`,
    /// `label_name_length_limit`, `label_value_length_limit`, as in Prometheus' scrape
    /// config); None: the flag's.
    pub limits: LimitOverrides,
}

/// What a targets file holds: targets by URL, and discovery configs whose targets share
/// one entry's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetsFile {
    pub statics: Vec<TargetSpec>,
    pub discovery: Vec<DiscoverySpec>,
}

/// One discovery entry: where its targets come from and how each is scraped.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySpec {
    /// `file:line` of the entry: names it in logs and in `sd_discovered_targets{config}`.
    pub config: String,
    pub mechanism: Mechanism,
    /// `http` or `https`.
    pub scheme: String,
    /// The path scraped on every discovered address (`metrics_path`, default /metrics).
    pub path: String,
    /// Credentials, TLS and limits of every target found (`url` empty).
    pub settings: TargetSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mechanism {
    Dns(DnsSd),
    Kubernetes(super::kube_sd::KubernetesSd),
}

/// `dns_sd`: Prometheus' `dns_sd_configs`, plus the servers to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSd {
    pub names: Vec<String>,
    pub kind: DnsKind,
    /// The port of A/AAAA targets (SRV records carry their own).
    pub port: Option<u16>,
    pub refresh_interval: Duration,
    /// Empty: the system's (`/etc/resolv.conf`, with its search list).
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsKind {
    A,
    Aaaa,
    Srv,
}

/// Scrape limits a target sets itself (0: no limit, as in Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub sample_limit: Option<usize>,
    pub label_limit: Option<usize>,
    pub label_name_length_limit: Option<usize>,
    pub label_value_length_limit: Option<usize>,
}

/// Credentials sent with every scrape; the files are read per scrape.
#[derive(Debug, Clone, PartialEq)]
pub enum ScrapeAuth {
    /// `Authorization: <scheme> <file content>`.
    Credentials { scheme: String, file: PathBuf },
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    targets: Vec<Spanned<RawTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: Option<String>,
    dns_sd: Option<RawDnsSd>,
    kubernetes_sd: Option<super::kube_sd::RawKubernetesSd>,
    scheme: Option<String>,
    metrics_path: Option<String>,
    authorization: Option<RawAuthorization>,
    bearer_token_file: Option<String>,
    basic_auth: Option<RawBasicAuth>,
    tls_config: Option<RawTls>,
    sample_limit: Option<usize>,
    label_limit: Option<usize>,
    label_name_length_limit: Option<usize>,
    label_value_length_limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsSd {
    names: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<u16>,
    refresh_interval: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    #[serde(rename = "type")]
    scheme: Option<String>,
    credentials_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: String,
    password_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// Reads and validates a targets file; relative paths are relative to its directory.
pub fn load_file(path: &Path) -> Result<TargetsFile, TargetsFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TargetsFileError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text, path.parent().unwrap_or(Path::new(".")))
}

/// Validates targets file text; `file` names it in errors, `dir` anchors relative paths.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<TargetsFile, TargetsFileError> {
    let raw: RawFile = yaml::decode(text).map_err(|e| TargetsFileError {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    })?;
    let mut out = TargetsFile::default();
    for t in raw.targets {
        let line = t.referenced.line();
        let fail = |message| TargetsFileError {
            file: file.to_string(),
            line,
            message,
        };
        let mut t = t.value;
        let config = format!("{file}:{line}");
        match (t.url.take(), t.dns_sd.take(), t.kubernetes_sd.take()) {
            (Some(url), None, None) => {
                if t.scheme.is_some() || t.metrics_path.is_some() {
                    return Err(fail(format!(
                        "target {url}: scheme and metrics_path are for discovered targets; the url says both"
                    )));
                }
                out.statics.push(spec(url, t, dir).map_err(fail)?);
            }
            (None, Some(dns), None) => {
                let d = discovery(config, Mechanism::Dns(dns_sd(dns).map_err(fail)?), t, dir);
                out.discovery.push(d.map_err(fail)?);
            }
            (None, None, Some(k)) => {
                let k = super::kube_sd::parse(k, dir).map_err(fail)?;
                let d = discovery(config, Mechanism::Kubernetes(k), t, dir);
                out.discovery.push(d.map_err(fail)?);
            }
            (None, None, None) => {
                return Err(fail(
                    "a target needs one of url, dns_sd and kubernetes_sd".into(),
                ))
            }
            _ => return Err(fail(
                "a target has one of url, dns_sd and kubernetes_sd: put them in separate entries"
                    .into(),
            )),
        }
    }
    Ok(out)
}

/// A discovery entry with its scrape settings, checked as a URL target's are.
fn discovery(
    config: String,
    mechanism: Mechanism,
    mut raw: RawTarget,
    dir: &Path,
) -> Result<DiscoverySpec, String> {
    let scheme = raw.scheme.take().unwrap_or_else(|| "http".into());
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?}: http or https"));
    }
    let path = raw.metrics_path.take().unwrap_or_else(|| "/metrics".into());
    if !path.starts_with('/') {
        return Err(format!("metrics_path {path:?} must start with /"));
    }
    let mut settings = spec(format!("{scheme}://<discovered>{path}"), raw, dir)?;
    settings.url = String::new();
    Ok(DiscoverySpec {
        config,
        mechanism,
        scheme,
        path,
        settings,
    })
}

fn dns_sd(raw: RawDnsSd) -> Result<DnsSd, String> {
    if raw.names.is_empty() {
        return Err("dns_sd: names is empty".into());
    }
    for n in &raw.names {
        crate::discover::dns_wire::query(0, n, 1)
            .map_err(|_| format!("dns_sd: {n:?} is not a DNS name"))?;
    }
    // Prometheus' default type, and its spelling.
    let kind = match raw.kind.as_deref().unwrap_or("SRV") {
        "A" => DnsKind::A,
        "AAAA" => DnsKind::Aaaa,
        "SRV" => DnsKind::Srv,
        other => return Err(format!("dns_sd: type {other:?}: A, AAAA or SRV")),
    };
    match (kind, raw.port) {
        (DnsKind::Srv, Some(_)) => {
            return Err("dns_sd: port is for A and AAAA; SRV records carry their port".into())
        }
        (DnsKind::A | DnsKind::Aaaa, None) => {
            return Err("dns_sd: type A and AAAA need a port".into())
        }
        _ => {}
    }
    let refresh_interval = match raw.refresh_interval {
        None => Duration::from_secs(30),
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| format!("dns_sd: refresh_interval {t:?}: {e}"))?,
    };
    if refresh_interval < Duration::from_secs(1) {
        return Err("dns_sd: refresh_interval must be at least 1s".into());
    }
    let nameservers = raw
        .nameservers
        .iter()
        .map(|n| {
            n.parse::<SocketAddr>()
                .or_else(|_| {
                    n.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| format!("dns_sd: nameserver {n:?}: an IP address, with :port or not"))
        })
        .collect::<Result<_, _>>()?;
    Ok(DnsSd {
        names: raw.names,
        kind,
        port: raw.port,
        refresh_interval,
        nameservers,
    })
}

fn spec(url: String, raw: RawTarget, dir: &Path) -> Result<TargetSpec, String> {
    let path = |p: String| dir.join(p);
    let auth = match (raw.authorization, raw.bearer_token_file, raw.basic_auth) {
        (None, None, None) => None,
        (Some(a), None, None) => {
            let scheme = a.scheme.unwrap_or_else(|| "Bearer".into());
            if scheme.is_empty() || scheme.contains(char::is_whitespace) {
                return Err(format!("target {url}: bad authorization type {scheme:?}"));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                return Err(format!(
                    "target {url}: authorization type Basic: use basic_auth with username and password_file"
                ));
            }
            Some(ScrapeAuth::Credentials {
                scheme,
                file: path(a.credentials_file),
            })
        }
        (None, Some(f), None) => Some(ScrapeAuth::Credentials {
            scheme: "Bearer".into(),
            file: path(f),
        }),
        (None, None, Some(b)) => Some(ScrapeAuth::Basic {
            username: b.username,
            password_file: path(b.password_file),
        }),
        _ => {
            return Err(format!(
                "target {url}: at most one of authorization, bearer_token_file and basic_auth"
            ))
        }
    };
    let tls = match raw.tls_config {
        None => None,
        Some(t) => {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(format!(
                    "target {url}: tls_config needs both cert_file and key_file for a client certificate"
                ));
            }
            Some(ClientTls {
                ca_file: t.ca_file.map(path),
                cert_file: t.cert_file.map(path),
                key_file: t.key_file.map(path),
                insecure_skip_verify: t.insecure_skip_verify,
            })
        }
    };
    if tls.is_some() && !url.starts_with("https://") {
        return Err(format!("target {url}: tls_config needs an https:// URL"));
    }
    let limits = LimitOverrides {
        sample_limit: raw.sample_limit,
        label_limit: raw.label_limit,
        label_name_length_limit: raw.label_name_length_limit,
        label_value_length_limit: raw.label_value_length_limit,
    };
    Ok(TargetSpec {
        url,
        auth,
        tls,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Vec<TargetSpec>, TargetsFileError> {
        parse("targets.yml", text, Path::new("/etc/sidecar")).map(|f| f.statics)
    }

    fn discover(text: &str) -> Result<Vec<DiscoverySpec>, TargetsFileError> {
        parse("targets.yml", text, Path::new("/etc/sidecar")).map(|f| f.discovery)
    }

    #[test]
    fn dns_sd_loads_with_prometheus_names_and_defaults() {
        let d = discover(
            "targets:\n  - url: http://a:1/metrics\n  - dns_sd:\n      names: [api-headless.shop.svc.cluster.local]\n      type: A\n      port: 8080\n      refresh_interval: 10s\n      nameservers: ['127.0.0.1:5353', '::1']\n    metrics_path: /stats\n  - dns_sd: {names: [_metrics._tcp.api.shop.svc]}\n    scheme: https\n    tls_config: {ca_file: ca.crt}\n",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].config, "targets.yml:3");
        assert_eq!(
            (d[0].scheme.as_str(), d[0].path.as_str()),
            ("http", "/stats")
        );
        let Mechanism::Dns(a) = &d[0].mechanism else {
            panic!()
        };
        assert_eq!((a.kind, a.port), (DnsKind::A, Some(8080)));
        assert_eq!(a.refresh_interval, Duration::from_secs(10));
        assert_eq!(
            a.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let Mechanism::Dns(srv) = &d[1].mechanism else {
            panic!()
        };
        assert_eq!((srv.kind, srv.port), (DnsKind::Srv, None));
        assert_eq!(srv.refresh_interval, Duration::from_secs(30));
        assert_eq!(d[1].scheme, "https");
        assert_eq!(
            d[1].settings.tls.as_ref().unwrap().ca_file,
            Some(PathBuf::from("/etc/sidecar/ca.crt"))
        );
    }

    #[test]
    fn dns_sd_mistakes_are_refused_with_their_line() {
        for (text, line, needle) in [
            (
                "targets:\n  - dns_sd: {names: [a.test], type: A}\n",
                2,
                "need a port",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test], port: 80}\n",
                2,
                "SRV records carry",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test], type: MX}\n",
                2,
                "A, AAAA or SRV",
            ),
            ("targets:\n  - dns_sd: {names: []}\n", 2, "names is empty"),
            (
                "targets:\n  - dns_sd: {names: ['a..b']}\n",
                2,
                "not a DNS name",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test], refresh_interval: 10ms}\n",
                2,
                "at least 1s",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test], nameservers: [dns.local]}\n",
                2,
                "an IP address",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test], nameserver: [1.1.1.1]}\n",
                2,
                "unknown field `nameserver`",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test]}\n    scheme: ftp\n",
                2,
                "http or https",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test]}\n    tls_config: {ca_file: c}\n",
                2,
                "https",
            ),
            (
                "targets:\n  - dns_sd: {names: [a.test]}\n    metrics_path: metrics\n",
                2,
                "start with /",
            ),
            (
                "targets:\n  - url: http://a:1/metrics\n    metrics_path: /x\n",
                2,
                "the url says both",
            ),
            (
                "targets:\n  - url: http://a:1/metrics\n    dns_sd: {names: [a.test]}\n",
                2,
                "separate entries",
            ),
            ("targets:\n  - sample_limit: 5\n", 2, "one of url, dns_sd"),
        ] {
            let e = parse("targets.yml", text, Path::new("/")).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn prometheus_field_names_load() {
        let t = load(
            "targets:\n  - url: https://127.0.0.1:8443/metrics\n    authorization:\n      credentials_file: /var/run/token\n    tls_config:\n      ca_file: ca.crt\n  - url: http://127.0.0.1:9100/metrics\n    basic_auth: {username: prom, password_file: pw}\n  - url: http://127.0.0.1:9200/metrics\n",
        )
        .unwrap();
        assert_eq!(
            t[0].auth,
            Some(ScrapeAuth::Credentials {
                scheme: "Bearer".into(),
                file: "/var/run/token".into()
            })
        );
        assert_eq!(
            t[0].tls.as_ref().unwrap().ca_file,
            Some(PathBuf::from("/etc/sidecar/ca.crt"))
        );
        assert_eq!(
            t[1].auth,
            Some(ScrapeAuth::Basic {
                username: "prom".into(),
                password_file: "/etc/sidecar/pw".into()
            })
        );
        assert_eq!(t[2].auth, None);
        let t = load("targets:\n  - url: http://a:1/metrics\n    sample_limit: 500\n    label_value_length_limit: 0\n").unwrap();
        assert_eq!(t[0].limits.sample_limit, Some(500));
        assert_eq!(t[0].limits.label_value_length_limit, Some(0));
        assert_eq!(t[0].limits.label_limit, None);
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        for (text, line, needle) in [
            ("targets:\n  - url: http://a:1/metrics\n    bearer_token: abc\n", 3, "unknown field `bearer_token`"),
            ("targets:\n  - url: http://a:1/metrics\n  - url: http://b:1/metrics\n    bearer_token_file: t\n    basic_auth: {username: u, password_file: p}\n", 3, "at most one"),
            ("targets:\n  - url: http://a:1/metrics\n    tls_config: {ca_file: ca}\n", 2, "https"),
            ("targets:\n  - url: https://a:1/metrics\n    tls_config: {cert_file: c}\n", 2, "both cert_file and key_file"),
            ("targets:\n  - url: https://a:1/metrics\n    basic_auth: {username: u, password: p}\n", 3, "unknown field `password`"),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
