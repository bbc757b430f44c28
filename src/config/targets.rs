//! `--targets-file`: targets that need more than a URL (bearer token, basic auth, a private
//! CA, a client certificate), with Prometheus' scrape_config field names. Secrets are only
//! ever named by file, read at each scrape so a rotated token is used without a restart.

use super::yaml;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};

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
    url: String,
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
pub fn load_file(path: &Path) -> Result<Vec<TargetSpec>, TargetsFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TargetsFileError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text, path.parent().unwrap_or(Path::new(".")))
}

/// Validates targets file text; `file` names it in errors, `dir` anchors relative paths.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Vec<TargetSpec>, TargetsFileError> {
    let raw: RawFile = yaml::decode(text).map_err(|e| TargetsFileError {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    })?;
    raw.targets
        .into_iter()
        .map(|t| {
            let line = t.referenced.line();
            spec(t.value, dir).map_err(|message| TargetsFileError {
                file: file.to_string(),
                line,
                message,
            })
        })
        .collect()
}

fn spec(raw: RawTarget, dir: &Path) -> Result<TargetSpec, String> {
    let path = |p: String| dir.join(p);
    let url = raw.url;
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
        parse("targets.yml", text, Path::new("/etc/sidecar"))
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
