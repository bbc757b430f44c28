//! `--targets-file`: a real node_exporter behind TLS, a client certificate and basic auth (its
//! own `--web.config.file`), and a bearer-token target whose token rotates. Credentials never
//! reach logs or /metrics.

use crate::common::*;
use crate::detection::T;
use crate::web::{ca, hash, leaf, server_cert};
use std::process::{Child, Command, Stdio};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RULES: &str = "rules:\n  - name: load_seen\n    match: '{__name__=~\"node_load1|queue_depth\"}'\n    method: threshold\n    threshold: -1\n    op: gt\n";

#[test]
fn node_exporter_behind_tls_client_certificate_and_basic_auth() {
    let Some(node) = tool("prometheus-node-exporter") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    server_cert(dir, "ca");
    leaf(dir, "ca", "client", "DNS:sidecar.example", "clientAuth");
    // The CA the sidecar trusts for the target, apart from the one node_exporter checks
    // client certificates with, so the two can rotate apart.
    std::fs::copy(dir.join("ca.pem"), dir.join("target-ca.pem")).unwrap();
    let node_web = write(
        dir,
        "node-web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\nbasic_auth_users:\n  scraper: {}\n",
            hash("node-pass-42")
        ),
    );
    let port = free_port();
    let start_node = || {
        Proc(
            Command::new(&node)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.config.file={}", node_web.display()))
                .args(["--collector.disable-defaults", "--collector.loadavg"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let node_proc = start_node();
    write(dir, "password", "node-pass-42\n");
    let targets = |password_file: &str| {
        format!(
            "targets:\n  - url: https://127.0.0.1:{port}/metrics\n    basic_auth:\n      username: scraper\n      password_file: {password_file}\n    tls_config:\n      ca_file: target-ca.pem\n      cert_file: client.pem\n      key_file: client.key\n"
        )
    };
    let file = write(dir, "targets.yml", &targets("password"));
    let rules = write(dir, "rules.yaml", RULES);
    let file_flag = file.display().to_string();
    let s = Sidecar::start(dir, &rules, &[], &["--targets-file", &file_flag]);
    let target = format!("127.0.0.1:{port}");
    s.wait_metric(
        &format!("anomaly_sidecar_up{{target=\"{target}\"}}"),
        "1",
        T,
    );
    wait_for("node_load1 evaluated", T, || {
        s.metrics().contains("metric=\"node_load1\"").then_some(())
    });

    // Wrong password: that scrape fails with the status, and the secret is nowhere.
    write(dir, "wrong", "guess\n");
    let wrong_dir = dir.join("wrong-sidecar");
    std::fs::create_dir(&wrong_dir).unwrap();
    let wrong_file = write(&wrong_dir, "targets.yml", &targets("../wrong"));
    std::fs::copy(dir.join("ca.pem"), wrong_dir.join("target-ca.pem")).unwrap();
    std::fs::copy(dir.join("client.pem"), wrong_dir.join("client.pem")).unwrap();
    std::fs::copy(dir.join("client.key"), wrong_dir.join("client.key")).unwrap();
    let wrong_flag = wrong_file.display().to_string();
    let w = Sidecar::start(&wrong_dir, &rules, &[], &["--targets-file", &wrong_flag]);
    wait_for("401 logged", T, || w.log().contains("401").then_some(()));
    assert_eq!(
        w.number(&format!("anomaly_sidecar_up{{target=\"{target}\"}}")),
        0
    );
    for text in [s.log(), w.log(), s.metrics(), w.metrics()] {
        assert!(
            !text.contains("node-pass-42") && !text.contains("guess"),
            "{text}"
        );
    }

    // cert-manager rotates the target's certificate to a new CA and the CA file the sidecar
    // trusts with it; the target restarts (so no old connection stays open). The sidecar's
    // next connections use the new CA, with no restart.
    let up = format!("anomaly_sidecar_up{{target=\"{target}\"}}");
    ca(dir, "ca2");
    server_cert(dir, "ca2");
    std::fs::copy(dir.join("ca2.pem"), dir.join("target-ca.pem")).unwrap();
    drop(node_proc);
    let _node = start_node();
    wait_for("scraped again through the new CA", T, || {
        let rebuilt = s.log().contains("TLS files of the target changed");
        let scraped = metric_value(&s.metrics(), &up).is_some_and(|v| v == "1");
        (rebuilt && scraped).then_some(())
    });
    // Still up a few scrapes later: new connections verify against the new CA.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(metric_value(&s.metrics(), &up).as_deref(), Some("1"));
    assert!(
        s.log()
            .contains("TLS files of the target changed; its client was rebuilt"),
        "{}",
        s.log()
    );
}

#[test]
fn bearer_token_is_read_at_each_scrape_so_rotation_needs_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let body = gauge_body("queue_depth", &[("", 3.0)]);
    let exporter = Exporter::start(Reply::Authorized("Bearer token-one".into(), body.clone()));
    let token = write(dir, "token", "token-one\n");
    let file = write(
        dir,
        "targets.yml",
        &format!(
            "targets:\n  - url: {}\n    authorization:\n      credentials_file: token\n",
            exporter.url()
        ),
    );
    let rules = write(dir, "rules.yaml", RULES);
    let file_flag = file.display().to_string();
    let s = Sidecar::start(dir, &rules, &[], &["--targets-file", &file_flag]);
    let up = format!("anomaly_sidecar_up{{target=\"{}\"}}", exporter.name());
    s.wait_metric(&up, "1", T);

    exporter.set(Reply::Authorized("Bearer token-two".into(), body));
    s.wait_metric(&up, "0", T);
    std::fs::write(&token, "token-two\n").unwrap();
    s.wait_metric(&up, "1", T);

    std::fs::remove_file(&token).unwrap();
    s.wait_metric(&up, "0", T);
    let log = s.log();
    assert!(
        log.contains("cannot read") && log.contains("token"),
        "{log}"
    );
    assert!(
        !log.contains("token-one") && !log.contains("token-two"),
        "{log}"
    );
}

#[test]
fn a_bad_targets_file_stops_startup_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rules = write(dir, "rules.yaml", RULES);
    // The port is busy and the data dir does not exist: the file's error must be what stops
    // startup, before the store is opened or the port bound.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let refused = |targets: &str| {
        let file = write(dir, "targets.yml", targets);
        let out = run(&[
            "run",
            "--rules",
            rules.to_str().unwrap(),
            "--targets-file",
            file.to_str().unwrap(),
            "--listen",
            &listen,
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            !stderr.contains("listen"),
            "the port is not what failed: {stderr}"
        );
        assert!(!dir.join("data").exists(), "the store was not opened");
        stderr
    };
    let stderr = refused(
        "targets:\n  - url: http://127.0.0.1:1/metrics\n    tls_config: {ca_file: ca.pem}\n",
    );
    assert!(
        stderr.contains(
            "targets.yml:2: target http://127.0.0.1:1/metrics: tls_config needs an https:// URL"
        ),
        "{stderr}"
    );
    let stderr = refused(
        "targets:\n  - url: https://127.0.0.1:1/metrics\n    tls_config: {ca_file: missing.pem}\n",
    );
    assert!(stderr.contains("missing.pem"), "{stderr}");

    let out = run(&["run", "--rules", rules.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "clap: a target is required");
}
