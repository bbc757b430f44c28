use super::*;

const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

fn load(text: &str) -> Result<WebConfig, WebConfigError> {
    parse("web.yml", text, Path::new("/etc/web"))
}

#[test]
fn empty_file_is_plain_http_without_auth() {
    assert_eq!(load("").unwrap(), WebConfig::default());
    assert_eq!(load("# nothing\n").unwrap(), WebConfig::default());
}

#[test]
fn exporter_toolkit_sample_loads() {
    let text = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305\n  curve_preferences: [X25519, CurveP256]\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  alice: {HASH}\nrate_limit:\n  interval: 100ms\n  burst: 5\n"
    );
    let c = load(&text).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, Pem::File("/etc/web/server.crt".into()));
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.max_version, TlsVersion::Tls13);
    assert!(tls.prefer_server_cipher_suites);
    assert_eq!(c.headers.len(), 2);
    assert_eq!(c.users.get("alice").map(String::as_str), Some(HASH));
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            interval: Duration::from_millis(100),
            burst: 5
        })
    );
}

#[test]
fn absolute_paths_stay_absolute() {
    let c = load("tls_server_config:\n  cert_file: /a/c.pem\n  key_file: k.pem\n").unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, Pem::File("/a/c.pem".into()));
    assert_eq!(tls.key, Pem::File("/etc/web/k.pem".into()));
}

#[track_caller]
fn refused(text: &str, line: u64, needle: &str) {
    let e = load(text).unwrap_err();
    assert_eq!(e.line, line, "{e}");
    assert!(e.to_string().contains(needle), "{e}");
    assert!(e.to_string().starts_with("web.yml:"), "{e}");
}

#[test]
fn every_mistake_is_refused_with_its_line() {
    refused(
        "tls_server_config:\n  cert_file: a\n",
        1,
        "missing key_file",
    );
    refused(
        "tls_server_config:\n  key_file: a\n",
        1,
        "missing cert_file",
    );
    refused(
        "tls_server_config:\n  cert: x\n  cert_file: a\n  key_file: b\n",
        3,
        "mutually exclusive",
    );
    refused(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n",
        4,
        "invalid client_auth_type",
    );
    refused("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca\n", 4, "not supported");
    refused("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", 4, "needs client_ca_file");
    refused(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: ca\n",
        4,
        "without a client_auth_type",
    );
    refused(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
        4,
        "insecure",
    );
    refused("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n", 4, "above");
    refused("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", 4, "TLS_RSA_WITH_AES_128_CBC_SHA is not supported");
    refused(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n",
        4,
        "CurveP521",
    );
    refused(
        "http_server_config:\n  headers:\n    Server: nginx\n",
        3,
        "can not be configured",
    );
    refused(
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        3,
        "invalid value",
    );
    refused(
        "basic_auth_users:\n  bob: hunter2\n",
        2,
        "not a bcrypt hash",
    );
    refused("rate_limit:\n  interval: 1s\n", 1, "burst");
    refused(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  sni: x\n",
        4,
        "unknown field `sni`",
    );
    refused("basic_auth_users: [a, b]\n", 1, "");
}

#[test]
fn the_plain_password_never_appears_in_an_error() {
    let e = load("basic_auth_users:\n  bob: hunter2secret\n").unwrap_err();
    assert!(!e.to_string().contains("hunter2secret"), "{e}");
}
