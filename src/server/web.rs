//! Applies `--web.config.file` to connections and requests: the TLS acceptor (rebuilt when the
//! file or a certificate changes, so rotation needs no restart), basic auth with a cache of
//! verified bcrypt checks, the rate limit and the extra response headers.

use crate::config::web::{self, ClientAuth, Pem, TlsSettings, TlsVersion, WebConfig};
use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Why the web config cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    Config(#[from] web::WebConfigError),
    #[error("{file}: TLS: {message}")]
    Tls { file: String, message: String },
    #[error("{file}: TLS cannot be switched on or off while running; restart to apply")]
    TlsModeChanged { file: String },
}

/// Compared against when a user is unknown, so a wrong name takes as long as a wrong password.
const DECOY_HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";
/// Verified credentials remembered; beyond it the cache starts over.
const VERIFIED_CACHE: usize = 1024;

/// What a request was refused for.
#[derive(Debug, PartialEq)]
pub enum Denied {
    Unauthorized,
    RateLimited,
}

/// The web config in force and where it came from.
pub struct WebGuard {
    path: Option<PathBuf>,
    current: Mutex<Arc<Applied>>,
    /// Fingerprint of the last inputs that failed, so a broken file is logged once.
    failed: Mutex<Option<Vec<u8>>>,
    /// bcrypt checks running at once: failed logins cannot take every core from scraping.
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
}

/// One applied version of the web config.
pub struct Applied {
    config: WebConfig,
    /// Everything it was built from (file and certificate bytes).
    fingerprint: Vec<u8>,
    acceptor: Option<TlsAcceptor>,
    verified: Mutex<HashSet<[u8; 32]>>,
    bucket: Mutex<(f64, Instant)>,
}

impl WebGuard {
    /// Loads the file (if any) at startup; any error is fatal there.
    pub fn load(path: Option<&Path>) -> Result<Self, WebError> {
        let applied = match path {
            None => Applied::build(WebConfig::default(), Vec::new(), None)?,
            Some(p) => build(p)?,
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            current: Mutex::new(Arc::new(applied)),
            failed: Mutex::new(None),
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(2)),
        })
    }

    /// Whether connections are TLS; fixed at startup.
    pub fn tls(&self) -> bool {
        self.snapshot().acceptor.is_some()
    }

    fn snapshot(&self) -> Arc<Applied> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The config in force, re-read from disk when the file or a certificate changed (as
    /// exporter-toolkit does per request), the reading done on a blocking thread, never on the
    /// async runtime's. A broken new version is logged and the last good one stays.
    pub async fn current(self: &Arc<Self>) -> Arc<Applied> {
        if self.path.is_none() {
            return self.snapshot();
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.refresh()).await {
            Ok(a) => a,
            Err(_) => self.snapshot(),
        }
    }

    /// `current`, blocking.
    fn refresh(&self) -> Arc<Applied> {
        let now = self.snapshot();
        let Some(path) = &self.path else { return now };
        let (fingerprint, config) = inputs(path);
        if fingerprint == now.fingerprint {
            return now;
        }
        if self.failed.lock().ok().and_then(|f| f.clone()).as_ref() == Some(&fingerprint) {
            return now;
        }
        let built = config.and_then(|config| {
            let file = path.display().to_string();
            let tls = config.tls.clone();
            Applied::build(
                config,
                fingerprint.clone(),
                tls.as_ref().map(|t| (t, file.as_str())),
            )
        });
        match built {
            Ok(a) if a.acceptor.is_some() != now.acceptor.is_some() => self.keep(
                now,
                WebError::TlsModeChanged {
                    file: path.display().to_string(),
                },
                fingerprint,
            ),
            Ok(a) => {
                tracing::info!(file = %path.display(), "Web config reloaded");
                let a = Arc::new(a);
                if let Ok(mut g) = self.current.lock() {
                    *g = a.clone();
                }
                a
            }
            Err(e) => self.keep(now, e, fingerprint),
        }
    }

    fn keep(&self, now: Arc<Applied>, e: WebError, fingerprint: Vec<u8>) -> Arc<Applied> {
        let mut failed = match self.failed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if failed.as_ref() != Some(&fingerprint) {
            tracing::error!(error = %e, "Web config change refused; the previous one stays in force");
            *failed = Some(fingerprint);
        }
        now
    }

    /// Rate limit, then basic auth.
    pub async fn admit(
        &self,
        applied: &Applied,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), Denied> {
        applied.take_token()?;
        if applied.config.users.is_empty() {
            return Ok(());
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Err(Denied::Unauthorized);
        };
        let hash = applied.config.users.get(&user);
        let key = cache_key(&user, &password, hash.map_or("", String::as_str));
        if applied.verified.lock().is_ok_and(|v| v.contains(&key)) {
            return Ok(());
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return Err(Denied::Unauthorized);
        };
        let checked = hash.cloned().unwrap_or_else(|| DECOY_HASH.to_string());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &checked))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if !ok || hash.is_none() {
            return Err(Denied::Unauthorized);
        }
        if let Ok(mut v) = applied.verified.lock() {
            if v.len() >= VERIFIED_CACHE {
                v.clear();
            }
            v.insert(key);
        }
        Ok(())
    }
}

impl Applied {
    fn build(
        config: WebConfig,
        fingerprint: Vec<u8>,
        tls: Option<(&TlsSettings, &str)>,
    ) -> Result<Self, WebError> {
        let acceptor = match tls {
            None => None,
            Some((settings, file)) => {
                Some(acceptor(settings).map_err(|message| WebError::Tls {
                    file: file.to_string(),
                    message,
                })?)
            }
        };
        let burst = config.rate_limit.map_or(0.0, |r| f64::from(r.burst));
        Ok(Self {
            config,
            fingerprint,
            acceptor,
            verified: Mutex::new(HashSet::new()),
            bucket: Mutex::new((burst, Instant::now())),
        })
    }

    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    /// Headers every response gets.
    pub fn headers(&self) -> &[(String, String)] {
        &self.config.headers
    }

    /// Whether a verified client certificate carries one of `client_allowed_sans`.
    pub fn client_allowed(&self, peer: Option<&[CertificateDer<'_>]>) -> bool {
        let Some(tls) = &self.config.tls else {
            return true;
        };
        if tls.client_allowed_sans.is_empty() {
            return true;
        }
        let Some(cert) = peer.and_then(|p| p.first()) else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        // Exactly, as exporter-toolkit compares them: a wildcard certificate (`*.example.com`)
        // does not stand in for `a.example.com`. DNS names compare without case; an IP
        // address SAN is exact by nature.
        let dns: Vec<&str> = cert.valid_dns_names().collect();
        tls.client_allowed_sans.iter().any(|san| {
            if san.parse::<std::net::IpAddr>().is_ok() {
                return ServerName::try_from(san.as_str())
                    .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok());
            }
            dns.iter().any(|d| d.eq_ignore_ascii_case(san))
        })
    }

    /// A token bucket: `burst` requests at once, refilled one per `interval`.
    fn take_token(&self) -> Result<(), Denied> {
        let Some(limit) = self.config.rate_limit else {
            return Ok(());
        };
        let Ok(mut bucket) = self.bucket.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() / limit.interval.as_secs_f64();
        bucket.0 = (bucket.0 + refill).min(f64::from(limit.burst));
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            Ok(())
        } else {
            Err(Denied::RateLimited)
        }
    }
}

/// What a version is built from (the file's bytes, then each certificate and key it names,
/// with lengths) and the config decoded from it, or why it cannot be used.
fn inputs(path: &Path) -> (Vec<u8>, Result<WebConfig, WebError>) {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let e = web::WebConfigError {
                file,
                line: 0,
                message: format!("cannot read: {e}"),
            };
            return (Vec::new(), Err(e.into()));
        }
    };
    let mut fingerprint = text.clone().into_bytes();
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = match web::parse(&file, &text, dir) {
        Ok(c) => c,
        Err(e) => return (fingerprint, Err(e.into())),
    };
    if let Some(tls) = &config.tls {
        for pem in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            match read_pem(pem, path) {
                Ok(bytes) => {
                    fingerprint.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    fingerprint.extend_from_slice(&bytes);
                }
                Err(e) => return (fingerprint, Err(e)),
            }
        }
    }
    (fingerprint, Ok(config))
}

fn build(path: &Path) -> Result<Applied, WebError> {
    let (fingerprint, config) = inputs(path);
    let config = config?;
    let file = path.display().to_string();
    let tls = config.tls.clone();
    Applied::build(
        config,
        fingerprint,
        tls.as_ref().map(|t| (t, file.as_str())),
    )
}

fn read_pem(pem: &Pem, config: &Path) -> Result<Vec<u8>, WebError> {
    pem.read().map_err(|e| WebError::Tls {
        file: config.display().to_string(),
        message: match pem {
            Pem::File(p) => format!("cannot read {}: {e}", p.display()),
            Pem::Inline(_) => e.to_string(),
        },
    })
}

/// A rustls server config from validated settings; errors say which input is wrong.
fn acceptor(tls: &TlsSettings) -> Result<TlsAcceptor, String> {
    let read = |pem: &Pem| pem.read().map_err(|e| e.to_string());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert: {e}"))?;
    if certs.is_empty() {
        return Err("cert: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| format!("key: {e}"))?;
    let provider = Arc::new(provider(tls));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match (tls.client_auth, &tls.client_ca) {
        (ClientAuth::NoClientCert, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| format!("client_ca: {e}"))?;
                roots.add(cert).map_err(|e| format!("client_ca: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder
                .with_client_cert_verifier(verifier.build().map_err(|e| format!("client_ca: {e}"))?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert/key: {e}"))?;
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// ring's provider narrowed to the configured TLS 1.2 suites and curves (TLS 1.3 suites are
/// not configurable, as in Go).
fn provider(tls: &TlsSettings) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        let mut suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect();
        suites.extend(
            tls.cipher_suites
                .iter()
                .filter_map(|n| web::cipher_suite(n)),
        );
        provider.cipher_suites = suites;
    }
    if !tls.curve_preferences.is_empty() {
        provider.kx_groups = tls
            .curve_preferences
            .iter()
            .filter_map(|n| web::curve(n))
            .collect();
    }
    provider
}

fn basic_credentials(header: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let h = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0Om9r");
        assert_eq!(
            basic_credentials(&h),
            Some(("alice".into(), "s3cret:ok".into()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer x")),
            None
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Basic !!")),
            None
        );
    }

    #[test]
    fn the_bucket_allows_burst_then_refills() {
        let config = WebConfig {
            rate_limit: Some(web::RateLimit {
                interval: std::time::Duration::from_millis(50),
                burst: 2,
            }),
            ..WebConfig::default()
        };
        let a = Applied::build(config, Vec::new(), None).unwrap();
        assert_eq!(a.take_token(), Ok(()));
        assert_eq!(a.take_token(), Ok(()));
        assert_eq!(a.take_token(), Err(Denied::RateLimited));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(a.take_token(), Ok(()));
    }
}
