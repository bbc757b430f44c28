//! `--web.config.file` with real TLS clients (curl, Prometheus) and certificates made by
//! openssl: TLS and basic auth on every endpoint, rotation without restart, client
//! certificates, the rate limit, request size limits, and refusals with file:line.

use crate::common::*;
use crate::detection::T;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const RULES: &str = "rules:\n  - name: any\n    match: '{__name__=~\".+\"}'\n    method: threshold\n    threshold: 100\n    op: gt\n";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is required (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `ca` (ca.pem, ca.key) in `dir`.
pub fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

/// A leaf `name` (name.pem, name.key) signed by CA `ca`, with the given SAN and usage.
pub fn leaf(dir: &Path, ca: &str, name: &str, san: &str, usage: &str) {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

pub fn server_cert(dir: &Path, ca_name: &str) {
    leaf(
        dir,
        ca_name,
        "server",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
}

/// curl's status code (0 when no HTTP answer came) and the response head and body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is required (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn https(addr: &str, dir: &Path, ca: &str, user: Option<&str>, path: &str) -> (u16, String) {
    let url = format!("https://{addr}{path}");
    let cacert = dir.join(format!("{ca}.pem")).display().to_string();
    let mut args = vec!["--cacert", &cacert, &url];
    if let Some(u) = user {
        args.extend(["-u", u]);
    }
    curl(&args)
}

pub fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

fn setup(dir: &Path) -> (Exporter, PathBuf) {
    let exporter = Exporter::start(Reply::Body(gauge_body("queue_depth", &[("", 5.0)])));
    let rules = write(dir, "rules.yaml", RULES);
    (exporter, rules)
}

/// Starts the sidecar with a web config; ready once `probe` answers 200 over TLS.
fn start_tls(dir: &Path, web: &Path, user: Option<&str>, extra: &[&str]) -> (Sidecar, Exporter) {
    let (exporter, rules) = setup(dir);
    let web_flag = web.display().to_string();
    let mut args = vec!["--web.config.file", web_flag.as_str()];
    args.extend(extra);
    let mut sidecar = Sidecar::spawn(dir, &rules, &[exporter.url()], &args);
    sidecar.wait_ready(|addr| (https(addr, dir, "ca", user, "/-/ready").0 == 200).then_some(()));
    (sidecar, exporter)
}

#[test]
fn tls_and_basic_auth_guard_every_endpoint_and_prometheus_scrapes_through_them() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    server_cert(dir, "ca");
    let password_hash = hash("s3cret-pass");
    let web = write(
        dir,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  prom: {password_hash}\n"
        ),
    );
    // The same file is valid for Prometheus' own tool: the format is exporter-toolkit's.
    let out = Command::new(&promtool)
        .args(["check", "web-config"])
        .arg(&web)
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool: {out:?}");
    let good = Some("prom:s3cret-pass");
    let (sidecar, _exporter) = start_tls(dir, &web, good, &["--web.enable-lifecycle"]);
    let addr = sidecar.addr.clone();

    for path in ["/metrics", "/-/healthy", "/-/ready", "/api/v1/alerts", "/"] {
        let (code, head) = https(&addr, dir, "ca", None, path);
        assert_eq!(code, 401, "{path} without credentials: {head}");
        assert!(
            head.to_lowercase().contains("www-authenticate: basic"),
            "{head}"
        );
        assert!(
            head.to_lowercase().contains("x-frame-options: deny"),
            "{head}"
        );
        for wrong in ["prom:nope", "root:s3cret-pass", "prom:"] {
            assert_eq!(
                https(&addr, dir, "ca", Some(wrong), path).0,
                401,
                "{path} as {wrong}"
            );
        }
        assert_eq!(
            https(&addr, dir, "ca", good, path).0,
            200,
            "{path} with credentials"
        );
    }
    let (_, metrics) = https(&addr, dir, "ca", good, "/metrics");
    assert!(metrics.contains("anomaly_sidecar_up{"), "{metrics}");
    assert!(metrics.to_lowercase().contains("x-frame-options: deny"));

    // Plain HTTP to the TLS port gets no answer; a client that does not trust the CA fails.
    assert!(!matches!(http("GET", &addr, "/metrics"), Some((200, _))));
    assert_eq!(
        curl(&["-u", "prom:s3cret-pass", &format!("https://{addr}/metrics")]).0,
        0
    );

    // Reload is behind the same authentication; a body over 64 KiB is refused (one under
    // 256 KiB is read first, so the client gets the 413 rather than a reset connection).
    let reload = format!("https://{addr}/-/reload");
    let ca_pem = dir.join("ca.pem").display().to_string();
    assert_eq!(curl(&["--cacert", &ca_pem, "-X", "POST", &reload]).0, 401);
    let (code, body) = curl(&[
        "--cacert",
        &ca_pem,
        "-u",
        "prom:s3cret-pass",
        "-X",
        "POST",
        &reload,
    ]);
    assert_eq!(code, 200, "{body}");
    let big = write(dir, "big.bin", &"x".repeat(200 << 10));
    let data = format!("@{}", big.display());
    let (code, body) = curl(&[
        "--cacert",
        &ca_pem,
        "-u",
        "prom:s3cret-pass",
        "--data-binary",
        &data,
        &reload,
    ]);
    assert_eq!(code, 413, "{body}");

    // Prometheus scrapes the sidecar over TLS with basic auth.
    let port = free_port();
    let prom_addr = format!("127.0.0.1:{port}");
    let config = write(
        dir,
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sidecar\n    scheme: https\n    tls_config:\n      ca_file: {ca_pem}\n    basic_auth:\n      username: prom\n      password: s3cret-pass\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    );
    let mut prom = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let scraped = wait_for_opt(T, || {
        let (status, body) = http(
            "GET",
            &prom_addr,
            "/api/v1/query?query=up%7Bjob%3D%22sidecar%22%7D",
        )?;
        (status == 200 && body.contains("\"1\"]")).then_some(())
    });
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        scraped.is_some(),
        "Prometheus never scraped the sidecar with up=1"
    );

    let log = sidecar.log();
    assert!(
        !log.contains("s3cret-pass") && !log.contains(&password_hash),
        "{log}"
    );
}

/// Polls `f` until Some or the timeout; None when it never came.
fn wait_for_opt<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn credentials_and_certificates_rotate_without_restart_and_a_broken_file_keeps_the_last_good() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    ca(dir, "ca2");
    server_cert(dir, "ca");
    let config = |hash: &str| {
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  alice: {hash}\n")
    };
    let web = write(dir, "web.yml", &config(&hash("first")));
    let (sidecar, _exporter) = start_tls(dir, &web, Some("alice:first"), &[]);
    let addr = sidecar.addr.clone();

    write(dir, "web.yml", &config(&hash("second")));
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:first"), "/metrics").0,
        401
    );
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:second"), "/metrics").0,
        200
    );

    write(dir, "web.yml", "basic_auth_users: [\n");
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:second"), "/metrics").0,
        200
    );
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:first"), "/metrics").0,
        401
    );
    assert!(
        sidecar.log().contains("Web config change refused"),
        "{}",
        sidecar.log()
    );

    // Turning TLS off needs a restart: refused, TLS stays.
    write(dir, "web.yml", "basic_auth_users: {}\n");
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:second"), "/metrics").0,
        200
    );

    // A certificate from another CA, written over the old files (as cert-manager does).
    write(dir, "web.yml", &config(&hash("second")));
    server_cert(dir, "ca2");
    assert_eq!(
        https(&addr, dir, "ca2", Some("alice:second"), "/metrics").0,
        200
    );
    assert_eq!(
        https(&addr, dir, "ca", Some("alice:second"), "/metrics").0,
        0
    );
}

#[test]
fn client_certificates_are_required_verified_and_matched_against_allowed_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    ca(dir, "rogue");
    server_cert(dir, "ca");
    leaf(dir, "ca", "client", "DNS:scraper.example", "clientAuth");
    leaf(dir, "ca", "other", "DNS:other.example", "clientAuth");
    leaf(dir, "rogue", "forged", "DNS:scraper.example", "clientAuth");
    leaf(dir, "ca", "wild", "DNS:*.scraper.example", "clientAuth");
    let web = write(
        dir,
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  client_allowed_sans: [scraper.example, node1.scraper.example]\n",
    );
    let (exporter, rules) = setup(dir);
    let web_flag = web.display().to_string();
    let mut sidecar = Sidecar::spawn(
        dir,
        &rules,
        &[exporter.url()],
        &["--web.config.file", &web_flag],
    );
    let ca_pem = dir.join("ca.pem").display().to_string();
    let with = |addr: &str, name: &str| {
        let (cert, key) = (
            dir.join(format!("{name}.pem")).display().to_string(),
            dir.join(format!("{name}.key")).display().to_string(),
        );
        curl(&[
            "--cacert",
            &ca_pem,
            "--cert",
            &cert,
            "--key",
            &key,
            &format!("https://{addr}/metrics"),
        ])
        .0
    };
    sidecar.wait_ready(|addr| (with(addr, "client") == 200).then_some(()));
    let addr = sidecar.addr.clone();
    assert_eq!(
        curl(&["--cacert", &ca_pem, &format!("https://{addr}/metrics")]).0,
        0
    );
    assert_eq!(with(&addr, "other"), 0, "a SAN outside client_allowed_sans");
    assert_eq!(with(&addr, "forged"), 0, "a certificate from another CA");
    assert_eq!(
        with(&addr, "wild"),
        0,
        "a wildcard SAN is not node1.scraper.example: matched exactly, as exporter-toolkit does"
    );
    assert_eq!(with(&addr, "client"), 200);
}

#[test]
fn the_rate_limit_answers_429() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let web = write(dir, "web.yml", "rate_limit:\n  interval: 1m\n  burst: 3\n");
    let (exporter, rules) = setup(dir);
    let web_flag = web.display().to_string();
    let mut sidecar = Sidecar::spawn(
        dir,
        &rules,
        &[exporter.url()],
        &["--web.config.file", &web_flag],
    );
    sidecar.wait_ready(|addr| http("GET", addr, "/-/healthy").filter(|r| r.0 == 200));
    let codes: Vec<u16> = (0..3)
        .filter_map(|_| http("GET", &sidecar.addr, "/-/healthy").map(|r| r.0))
        .collect();
    assert_eq!(codes, [200, 200, 429]);
}

#[test]
fn a_bad_web_config_stops_startup_with_file_and_line_and_check_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rules = write(dir, "rules.yaml", RULES);
    let bad = write(
        dir,
        "web.yml",
        "# web\ntls_server_config:\n  cert_file: server.pem\n",
    );
    let out = run(&[
        "run",
        "--rules",
        rules.to_str().unwrap(),
        "--target",
        "http://127.0.0.1:1/metrics",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--web.config.file",
        bad.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let rules_arg = rules.display().to_string();
    let check = |web: PathBuf| {
        let web = web.display().to_string();
        run(&["check", "--rules", &rules_arg, "--web.config.file", &web])
    };
    assert!(
        stderr.contains("web.yml:2: tls_server_config: missing key_file"),
        "{stderr}"
    );
    assert!(
        !dir.join("data").exists(),
        "nothing opened before the config was valid"
    );

    let out = check(bad.clone());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing key_file"));

    let missing_cert = write(
        dir,
        "web2.yml",
        "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
    );
    let out = check(missing_cert);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("nope.pem"), "{stdout}");

    let good = write(
        dir,
        "web3.yml",
        &format!("basic_auth_users:\n  a: {}\n", hash("x")),
    );
    let out = check(good);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: web config"));
}
