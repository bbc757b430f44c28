//! `--web.config.file`: the web configuration format of Prometheus' exporter-toolkit (TLS,
//! basic auth with bcrypt hashes, response headers, rate limit), decoded and validated into
//! what the server applies, so a platform team's existing file works unchanged.

use super::yaml;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A web config file that cannot be used, with its file and line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct WebConfigError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

/// The validated web configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// Extra response headers, in file order.
    pub headers: Vec<(String, String)>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
}

/// Where a PEM text comes from: inline in the file, or a file read at each connection (so a
/// rotated certificate is served without a restart).
#[derive(Debug, Clone, PartialEq)]
pub enum Pem {
    Inline(String),
    File(PathBuf),
}

impl Pem {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
            Pem::File(path) => std::fs::read(path),
        }
    }
}

/// Go's `tls.ClientAuthType` values that rustls can enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    /// DNS names or IP addresses one of which a client certificate must carry.
    pub client_allowed_sans: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go cipher suite names (TLS 1.2), in preference order; empty = rustls' defaults.
    pub cipher_suites: Vec<String>,
    pub prefer_server_cipher_suites: bool,
    /// Go curve names, in preference order; empty = rustls' defaults.
    pub curve_preferences: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// The rustls (ring provider) suite for a Go cipher suite name; CBC and static-RSA suites
/// have none and are refused at load.
pub fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// The rustls (ring provider) key exchange group for a Go curve name.
pub fn curve(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::ring::kx_group;
    Some(match name {
        "X25519" => kx_group::X25519,
        "CurveP256" => kx_group::SECP256R1,
        "CurveP384" => kx_group::SECP384R1,
        _ => return None,
    })
}

/// Headers exporter-toolkit lets a web config set.
const HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    // We serve HTTP/1.1 only; the key is accepted so existing files load.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

/// Validates web config text; `file` names it in errors, `dir` anchors relative paths.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<WebConfig, WebConfigError> {
    let fail = |key: &str, message: String| WebConfigError {
        file: file.to_string(),
        line: yaml::find_key(text, key, 1).map_or(0, |(l, _)| l),
        message,
    };
    // An empty file is valid in exporter-toolkit: plain HTTP, no authentication.
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    }) {
        return Ok(WebConfig::default());
    }
    let raw: RawFile = yaml::decode(text).map_err(|e| WebConfigError {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    })?;
    let mut config = WebConfig::default();
    if let Some(tls) = raw.tls_server_config {
        config.tls = tls_settings(tls, dir, &fail)?;
    }
    if let Some(http) = raw.http_server_config {
        for (name, value) in http.headers.unwrap_or_default() {
            check_header(&name, &value).map_err(|m| fail(&name, m))?;
            if !value.is_empty() {
                config.headers.push((name, value));
            }
        }
    }
    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(fail(
                &user,
                format!("basic_auth_users: the password of {user:?} is not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"),
            ));
        }
        config.users.insert(user, hash);
    }
    if let Some(limit) = raw.rate_limit {
        config.rate_limit = rate_limit(limit).map_err(|m| fail("rate_limit", m))?;
    }
    Ok(config)
}

fn tls_settings(
    raw: RawTls,
    dir: &Path,
    fail: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Option<TlsSettings>, WebConfigError> {
    let pem = |inline: Option<String>, file: Option<String>, name: &str| match (
        inline.filter(|s| !s.is_empty()),
        file.filter(|s| !s.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(fail(
            &format!("{name}_file"),
            format!("tls_server_config: {name} and {name}_file are mutually exclusive"),
        )),
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(path)) => Ok(Some(Pem::File(dir.join(path)))),
        (None, None) => Ok(None),
    };
    let cert = pem(raw.cert, raw.cert_file, "cert")?;
    let key = pem(raw.key, raw.key_file, "key")?;
    let client_ca = pem(raw.client_ca, raw.client_ca_file, "client_ca")?;
    let (cert, key) = match (cert, key) {
        (None, None) if client_ca.is_none() && raw.client_auth_type.is_none() => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (None, _) => {
            return Err(fail(
                "tls_server_config",
                "tls_server_config: missing cert_file".into(),
            ))
        }
        (_, None) => {
            return Err(fail(
                "tls_server_config",
                "tls_server_config: missing key_file".into(),
            ))
        }
    };
    let client_auth = match raw.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        t @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(fail("client_auth_type", format!(
                "client_auth_type {t} accepts unverified certificates and is not supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
            )))
        }
        other => {
            return Err(fail(
                "client_auth_type",
                format!("invalid client_auth_type {other:?} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"),
            ))
        }
    };
    match (client_auth, &client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err(fail(
                "client_ca_file",
                "client CA's have been configured without a client_auth_type".into(),
            ))
        }
        (ClientAuth::NoClientCert, None) => {}
        (_, None) => {
            return Err(fail(
                "client_auth_type",
                "client_auth_type needs client_ca_file to verify client certificates".into(),
            ))
        }
        _ => {}
    }
    let sans = raw.client_allowed_sans.unwrap_or_default();
    if !sans.is_empty() && client_auth != ClientAuth::RequireAndVerifyClientCert {
        return Err(fail(
            "client_allowed_sans",
            "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert".into(),
        ));
    }
    for san in &sans {
        if rustls::pki_types::ServerName::try_from(san.as_str()).is_err() {
            return Err(fail(
                "client_allowed_sans",
                format!("client_allowed_sans: {san:?} is not a DNS name or IP address (the only SAN kinds supported)"),
            ));
        }
    }
    let version = |v: Option<String>, default: TlsVersion, key: &str| match v.as_deref() {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(fail(
            key,
            format!("{key} {v} is not supported: TLS 1.0 and 1.1 are insecure (TLS12, TLS13)"),
        )),
        Some(v) => Err(fail(
            key,
            format!("unknown TLS version {v:?} (TLS12, TLS13)"),
        )),
    };
    let min_version = version(raw.min_version, TlsVersion::Tls12, "min_version")?;
    let max_version = version(raw.max_version, TlsVersion::Tls13, "max_version")?;
    if min_version > max_version {
        return Err(fail(
            "min_version",
            "min_version is above max_version".into(),
        ));
    }
    let cipher_suites = raw.cipher_suites.unwrap_or_default();
    for s in &cipher_suites {
        if cipher_suite(s).is_none() {
            return Err(fail(
                "cipher_suites",
                format!("cipher suite {s} is not supported by rustls (supported: the ECDHE suites with AES-GCM or CHACHA20_POLY1305)"),
            ));
        }
    }
    let curve_preferences = raw.curve_preferences.unwrap_or_default();
    for c in &curve_preferences {
        if curve(c).is_none() {
            return Err(fail(
                "curve_preferences",
                format!("curve {c} is not supported by rustls (supported: X25519, CurveP256, CurveP384)"),
            ));
        }
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_auth,
        client_ca,
        client_allowed_sans: sans,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
        curve_preferences,
    }))
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    if !HEADERS.contains(&name) {
        return Err(format!(
            "HTTP header {name:?} can not be configured (allowed: {})",
            HEADERS.join(", ")
        ));
    }
    let ok = match name {
        "X-Frame-Options" => {
            value.is_empty()
                || value.eq_ignore_ascii_case("deny")
                || value.eq_ignore_ascii_case("sameorigin")
        }
        "X-Content-Type-Options" => value.is_empty() || value.eq_ignore_ascii_case("nosniff"),
        _ => hyper::header::HeaderValue::from_str(value).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value {value:?} for HTTP header {name}"))
    }
}

fn rate_limit(raw: RawRateLimit) -> Result<Option<RateLimit>, String> {
    let interval = match raw.interval.as_deref() {
        None | Some("") | Some("0") | Some("0s") => return Ok(None),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("rate_limit: bad interval {text:?}: {e}"))?,
    };
    if interval.is_zero() {
        return Ok(None);
    }
    let burst = raw.burst.unwrap_or(0);
    if burst == 0 {
        return Err("rate_limit: burst must be at least 1 when interval is set".into());
    }
    Ok(Some(RateLimit { interval, burst }))
}

#[cfg(test)]
mod tests;
