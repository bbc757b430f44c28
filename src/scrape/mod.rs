//! Fetching targets: one loop per target, scrapes never overlap, each result (samples or why
//! the scrape failed) goes to the pipeline over a channel. Never touches the store. The
//! manager owns the loops as targets come and go.

pub mod manager;
pub mod parse;
pub mod warmup;

pub use parse::Sample;

use crate::config::targets::{ClientTls, ScrapeAuth, TargetSpec};

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

/// A target to scrape.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    /// `host:port`, the `target` label and what a rule's `source` glob matches.
    pub name: String,
    pub auth: Option<ScrapeAuth>,
    pub tls: Option<ClientTls>,
    /// What one scrape may hold; a scrape past any of them fails whole.
    pub limits: Limits,
    /// Labels discovery gave the target (`namespace`, `pod`, ...), sorted by name: added to
    /// each of its series, the series' own of the same name kept as `exported_<name>`.
    pub labels: Vec<(String, String)>,
    /// Which coming of the target this is (0 for those known at start): results of a loop
    /// that was stopped are told from those of a later target in the same slot.
    pub epoch: u64,
}

/// Scrape limits, as Prometheus' scrape config has them (0: none). A hostile or broken
/// target cannot make a scrape cost more than `sample_limit` samples of at most
/// `label_limit` labels of bounded length, so memory stays within limits × `--max-series`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sample_limit: usize,
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    pub label_value_length_limit: usize,
}

impl Default for Limits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            sample_limit: 0,
            label_limit: 64,
            label_name_length_limit: 256,
            label_value_length_limit: 16384,
        }
    }
}

impl Limits {
    /// No limit at all.
    pub const NONE: Self = Self {
        sample_limit: 0,
        label_limit: 0,
        label_name_length_limit: 0,
        label_value_length_limit: 0,
    };

    /// These limits with a target's own overrides.
    pub fn with(self, o: &crate::config::targets::LimitOverrides) -> Self {
        Self {
            sample_limit: o.sample_limit.unwrap_or(self.sample_limit),
            label_limit: o.label_limit.unwrap_or(self.label_limit),
            label_name_length_limit: o
                .label_name_length_limit
                .unwrap_or(self.label_name_length_limit),
            label_value_length_limit: o
                .label_value_length_limit
                .unwrap_or(self.label_value_length_limit),
        }
    }

    /// Why a series' labels break the limits, if they do.
    pub fn check_labels<'a>(
        &self,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        let n = labels.len();
        if self.label_limit > 0 && n > self.label_limit {
            return Err(format!(
                "{n} labels, more than label_limit {}",
                self.label_limit
            ));
        }
        for (k, v) in labels {
            if self.label_name_length_limit > 0 && k.len() > self.label_name_length_limit {
                return Err(format!(
                    "label name of {} bytes, longer than label_name_length_limit {}",
                    k.len(),
                    self.label_name_length_limit
                ));
            }
            if self.label_value_length_limit > 0 && v.len() > self.label_value_length_limit {
                return Err(format!(
                    "label {k:?} value of {} bytes, longer than label_value_length_limit {}",
                    v.len(),
                    self.label_value_length_limit
                ));
            }
        }
        Ok(())
    }
}

/// Why a target's URL was refused at startup.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("bad target URL {0:?}: {1}")]
    Url(String, String),
    #[error("target {0:?} is given twice")]
    Duplicate(String),
    #[error("target {0}: {1}")]
    Tls(String, String),
}

impl Target {
    /// Parses a full http(s) URL.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let url =
            reqwest::Url::parse(text).map_err(|e| TargetError::Url(text.into(), e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Url(
                text.into(),
                "scheme must be http or https".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| TargetError::Url(text.into(), "no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| TargetError::Url(text.into(), "no port".into()))?;
        let mut name = format!("{host}:{port}");
        if url.path() != "/metrics" {
            name.push_str(url.path());
        }
        Ok(Self {
            url,
            name,
            auth: None,
            tls: None,
            limits: Limits::default(),
            labels: Vec::new(),
            epoch: 0,
        })
    }

    /// `host:port` without the path: what `--shard` hashes, as Prometheus' `__address__`.
    pub fn address(&self) -> &str {
        match self.name.find('/') {
            Some(i) => &self.name[..i],
            None => &self.name,
        }
    }

    /// The URL with any password in it masked, for logs.
    pub fn display_url(&self) -> String {
        crate::util::redact_url(self.url.as_str())
    }
}

/// Parses every target (flags, then the targets file), refusing duplicates.
pub fn parse_targets(
    texts: &[String],
    specs: &[TargetSpec],
    limits: Limits,
) -> Result<Vec<Target>, TargetError> {
    let mut out: Vec<Target> = Vec::new();
    let plain = texts.iter().map(|t| TargetSpec {
        url: t.clone(),
        ..TargetSpec::default()
    });
    for spec in plain.chain(specs.iter().cloned()) {
        let mut target = Target::parse(&spec.url)?;
        target.auth = spec.auth;
        target.tls = spec.tls;
        target.limits = limits.with(&spec.limits);
        if out.iter().any(|o| o.name == target.name) {
            return Err(TargetError::Duplicate(target.name));
        }
        out.push(target);
    }
    Ok(out)
}

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("body larger than --max-scrape-bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("cannot read {0}: {1}")]
    Credentials(String, String),
    #[error("malformed exposition text: {0}")]
    Parse(#[from] parse::ParseError),
    #[error("scrape limit exceeded: {0}")]
    Limit(String),
}

/// A fetched exposition body, checked to be UTF-8. The pipeline parses it in one pass
/// (`parse::samples` and the series index), failing the scrape at the first malformed line.
#[derive(Debug)]
pub struct ScrapeBody {
    pub text: String,
}

impl ScrapeBody {
    /// A fetched body, checked to be UTF-8 (what every scrape goes through).
    pub fn from_bytes(body: Vec<u8>) -> Result<Self, ScrapeError> {
        if simdutf8::basic::from_utf8(&body).is_err() {
            return Err(ScrapeError::NotUtf8);
        }
        // SAFETY: simdutf8 has just checked that `body` is UTF-8, the one requirement.
        let text = unsafe { String::from_utf8_unchecked(body) };
        Ok(Self { text })
    }
}

/// The outcome of one scrape.
#[derive(Debug)]
pub struct ScrapeResult {
    /// The target's slot in the pipeline's list.
    pub target: usize,
    /// The target's `epoch`: a result of a target since removed is dropped.
    pub epoch: u64,
    /// When the scrape started, in milliseconds since the epoch: the samples' timestamp.
    pub at_ms: i64,
    pub duration: Duration,
    pub outcome: Result<ScrapeBody, ScrapeError>,
    /// Released when the result is dropped (evaluated): bounds the bodies held per target.
    pub _in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Bodies of one target held at once.
const BODIES_IN_FLIGHT: usize = 1;

/// Settings shared by every scrape loop.
#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_bytes: u64,
}

/// Builds the HTTP client shared by targets without TLS settings (and by receivers).
pub fn client() -> Result<reqwest::Client, ScrapeError> {
    builder()
        .build()
        .map_err(|e| ScrapeError::Request(e.to_string()))
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(concat!("anomaly-sidecar/", env!("CARGO_PKG_VERSION")))
}

/// The client for `target`: the shared one, or its own when it has TLS settings (a CA given
/// replaces the built-in roots, as in Prometheus). Files are read once, here, at startup.
pub fn client_for(
    target: &Target,
    shared: &reqwest::Client,
) -> Result<reqwest::Client, TargetError> {
    let Some(tls) = &target.tls else {
        return Ok(shared.clone());
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        TargetError::Tls(target.name.clone(), format!("{what}: {e}"))
    };
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| fail(&p.display().to_string(), &e));
    let mut b = builder().danger_accept_invalid_certs(tls.insecure_skip_verify);
    if let Some(ca) = &tls.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|e| fail(&ca.display().to_string(), &e))?;
        if certs.is_empty() {
            return Err(fail(&ca.display().to_string(), &"no PEM certificate in it"));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend_from_slice(&read(key)?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| fail("cert_file/key_file", &e))?;
        b = b.identity(identity);
    }
    b.build().map_err(|e| fail("TLS", &e))
}

/// Scrapes `target` every interval until shutdown. A scrape that outlasts the interval delays
/// the next one instead of overlapping it.
pub async fn run_target(
    index: usize,
    target: Target,
    client: reqwest::Client,
    settings: ScrapeSettings,
    results: mpsc::Sender<ScrapeResult>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One body of this target exists at a time: the next scrape starts once the last one was
    // evaluated. A pipeline slower than the interval delays scrapes instead of piling up
    // bodies (11 MB at 100k series, 100 MB at worst); evaluation takes ~0.1 s at 100k.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BODIES_IN_FLIGHT));
    let mut client = client;
    let mut tls_files = TlsFiles::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(rebuilt) = tls_files.changed(&target, &client).await {
            client = rebuilt;
        }
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let at_ms = crate::util::now_ms();
        let started = Instant::now();
        let outcome = tokio::select! {
            r = scrape_once(&client, &target, &settings) => r,
            _ = shutdown.changed() => return,
        };
        let result = ScrapeResult {
            target: index,
            epoch: target.epoch,
            at_ms,
            duration: started.elapsed(),
            outcome,
            _in_flight: Some(permit),
        };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

/// A target's CA, certificate and key as last built into its client: when cert-manager (or
/// anyone) rewrites them, the next scrape uses a client built from the new files, without a
/// restart. Files are read on a blocking thread.
#[derive(Default)]
struct TlsFiles {
    /// What the client was built from (None: not read yet).
    built: Option<Vec<u8>>,
    /// Files that failed to build, so a broken rotation is logged once.
    failed: Option<Vec<u8>>,
}

impl TlsFiles {
    /// A client built from the target's TLS files if they changed since the last one.
    async fn changed(
        &mut self,
        target: &Target,
        client: &reqwest::Client,
    ) -> Option<reqwest::Client> {
        let tls = target.tls.clone()?;
        let read = tokio::task::spawn_blocking(move || {
            let mut fp = Vec::new();
            for p in [&tls.ca_file, &tls.cert_file, &tls.key_file]
                .into_iter()
                .flatten()
            {
                let bytes = std::fs::read(p).unwrap_or_default();
                fp.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                fp.extend_from_slice(&bytes);
            }
            fp
        });
        let fp = read.await.ok()?;
        let Some(built) = &self.built else {
            // The files the startup client was built from.
            self.built = Some(fp);
            return None;
        };
        if *built == fp || self.failed.as_ref() == Some(&fp) {
            return None;
        }
        let (t, c) = (target.clone(), client.clone());
        match tokio::task::spawn_blocking(move || client_for(&t, &c))
            .await
            .ok()?
        {
            Ok(rebuilt) => {
                tracing::info!(target = %target.name, "TLS files of the target changed; its client was rebuilt");
                self.built = Some(fp);
                self.failed = None;
                Some(rebuilt)
            }
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "TLS files of the target changed but cannot be used; the last good ones stay");
                self.failed = Some(fp);
                None
            }
        }
    }
}

/// Fetches and parses one body.
pub async fn scrape_once(
    client: &reqwest::Client,
    target: &Target,
    settings: &ScrapeSettings,
) -> Result<ScrapeBody, ScrapeError> {
    let fetch = fetch(client, target, settings.max_bytes);
    let body = tokio::time::timeout(settings.timeout, fetch)
        .await
        .map_err(|_| ScrapeError::Timeout(settings.timeout))??;
    ScrapeBody::from_bytes(body)
}

async fn fetch(
    client: &reqwest::Client,
    target: &Target,
    max_bytes: u64,
) -> Result<Vec<u8>, ScrapeError> {
    let mut request = client.get(target.url.clone()).header(
        reqwest::header::ACCEPT,
        "text/plain;version=0.0.4;q=0.9,*/*;q=0.1",
    );
    if let Some(auth) = &target.auth {
        // The files are read per scrape (a rotated token is used at once), off the runtime.
        let auth = auth.clone();
        let header = tokio::task::spawn_blocking(move || authorization(&auth))
            .await
            .map_err(|e| ScrapeError::Credentials("credentials".into(), e.to_string()))??;
        request = request.header(reqwest::header::AUTHORIZATION, header);
    }
    let mut resp = request
        .send()
        .await
        .map_err(|e| ScrapeError::Request(error_chain(&e)))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(ScrapeError::Status(resp.status().as_u16()));
    }
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(ScrapeError::TooLarge(max_bytes));
    }
    // Sized up front when the length is known: growing by doubling would briefly hold 1.5×
    // a large body (the old and the new buffer).
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(max_bytes) as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ScrapeError::Request(error_chain(&e)))?
    {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(ScrapeError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The Authorization header, from files read now so a rotated token is used at once. The value
/// is marked sensitive and never logged.
fn authorization(auth: &ScrapeAuth) -> Result<reqwest::header::HeaderValue, ScrapeError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .map_err(|e| ScrapeError::Credentials(p.display().to_string(), e.to_string()))
    };
    let text = match auth {
        ScrapeAuth::Credentials { scheme, file } => format!("{scheme} {}", read(file)?),
        ScrapeAuth::Basic {
            username,
            password_file,
        } => {
            use base64::Engine;
            let pair = format!("{username}:{}", read(password_file)?);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
    };
    let mut value = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
        ScrapeError::Credentials("credentials".into(), "not a valid header value".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// reqwest's Display hides the cause ("error sending request"); operators need the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast check agrees with std on any bytes, UTF-8 or nearly (overlong forms,
        /// surrogates and truncated sequences included).
        #[test]
        fn utf8_check_agrees_with_std(
            ascii in "[ -~\n]{0,200}",
            tail in prop::collection::vec(any::<u8>(), 0..8),
            text in "\\PC{0,40}",
        ) {
            let mut bytes = ascii.into_bytes();
            bytes.extend_from_slice(text.as_bytes());
            bytes.extend_from_slice(&tail);
            let ours = ScrapeBody::from_bytes(bytes.clone()).map(|b| b.text);
            let std = String::from_utf8(bytes);
            prop_assert_eq!(ours.ok(), std.ok());
        }
    }

    #[test]
    fn utf8_check_rejects_overlong_surrogate_and_truncated_sequences() {
        for bad in [
            &b"up \xc0\xaf"[..],
            b"up \xed\xa0\x80",
            b"up \xe2\x82",
            b"\xf5\x80\x80\x80",
        ] {
            assert!(ScrapeBody::from_bytes(bad.to_vec()).is_err(), "{bad:?}");
        }
        let good = "up{a=\"ü€𝄞\"} 1\n";
        assert_eq!(ScrapeBody::from_bytes(good.into()).unwrap().text, good);
    }

    #[test]
    fn target_names() {
        assert_eq!(
            Target::parse("http://127.0.0.1:9100/metrics").unwrap().name,
            "127.0.0.1:9100"
        );
        assert_eq!(Target::parse("http://svc/metrics").unwrap().name, "svc:80");
        assert_eq!(
            Target::parse("https://svc:8443/stats").unwrap().name,
            "svc:8443/stats"
        );
        assert!(Target::parse("127.0.0.1:9100").is_err());
        assert!(Target::parse("ftp://x/metrics").is_err());
        assert!(parse_targets(
            &["http://a:1/metrics".into(), "http://a:1/metrics".into()],
            &[],
            Limits::default()
        )
        .is_err());
    }
}
