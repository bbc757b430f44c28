//! Test harness: the real binary, an exporter served by the test (the sidecar's peer), and
//! small HTTP helpers. Everything binds 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_anomaly-sidecar");

/// How the test exporter answers.
#[derive(Clone)]
pub enum Reply {
    Body(String),
    Status(u16),
    Slow(Duration, String),
    /// Closes the connection without answering.
    Hangup,
    /// A 200 with raw bytes (e.g. invalid UTF-8).
    Bytes(Vec<u8>),
    /// The body when the request's Authorization header is exactly this, else 401.
    Authorized(String, String),
}

/// An HTTP exporter whose answer the test changes at will.
pub struct Exporter {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    /// Requests being answered now, and the most ever at once.
    pub concurrency: Arc<(AtomicUsize, AtomicUsize)>,
    /// Requests answered so far.
    pub served: Arc<AtomicUsize>,
}

impl Exporter {
    pub fn start(reply: Reply) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), reply)
    }

    /// An exporter on a listener the test bound (another loopback address, a given port).
    pub fn on(listener: TcpListener, reply: Reply) -> Self {
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let concurrency = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let served = Arc::new(AtomicUsize::new(0));
        let (r, c, n) = (reply.clone(), concurrency.clone(), served.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, c, n) = (r.clone(), c.clone(), n.clone());
                thread::spawn(move || {
                    if serve(stream, r, &c) {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            reply,
            concurrency,
            served,
        }
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub fn set_body(&self, body: impl Into<String>) {
        self.set(Reply::Body(body.into()));
    }

    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    pub fn name(&self) -> String {
        self.addr.to_string()
    }
}

/// Counts a request as in flight from its arrival until its answer starts: a request that
/// arrives before the previous answer was sent is a real overlap, one that arrives while
/// this thread is still closing the previous connection is not.
/// Whether a request was read.
fn serve(mut stream: TcpStream, reply: Arc<Mutex<Reply>>, c: &(AtomicUsize, AtomicUsize)) -> bool {
    let mut buf = [0u8; 4096];
    let mut req = Vec::new();
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let now = c.0.fetch_add(1, Ordering::SeqCst) + 1;
    c.1.fetch_max(now, Ordering::SeqCst);
    let answer = answer(&req, &reply);
    c.0.fetch_sub(1, Ordering::SeqCst);
    let Some((status, body)) = answer else {
        return true;
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    true
}

/// The status and body for one request (None: hang up), after any delay the reply asks for.
fn answer(req: &[u8], reply: &Mutex<Reply>) -> Option<(u16, Vec<u8>)> {
    let reply = reply.lock().unwrap().clone();
    Some(match reply {
        Reply::Body(b) => (200, b.into_bytes()),
        Reply::Bytes(b) => (200, b),
        Reply::Status(s) => (s, b"error\n".to_vec()),
        Reply::Slow(d, b) => {
            thread::sleep(d);
            (200, b.into_bytes())
        }
        Reply::Hangup => return None,
        Reply::Authorized(expected, b) => {
            let head = String::from_utf8_lossy(req).to_string();
            let given = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("authorization")
                    .then(|| v.trim().to_string())
            });
            if given.as_deref() == Some(expected.as_str()) {
                (200, b.into_bytes())
            } else {
                (401, b"unauthorized\n".to_vec())
            }
        }
    })
}

/// Held by the tests that load the machine most (hundreds of /metrics readers, bodies of tens
/// of MB), so they do not run at the same time as each other: together they starve a 2-core
/// machine into scrape timeouts that no one of them causes alone.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A free port on 127.0.0.1 (bound and released; good enough for tests).
/// Now, in Unix seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 request; returns status and body.
pub fn http(method: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    http_waiting(method, addr, path, Duration::from_secs(10))
}

/// `http` that waits up to `patience` for each read (a reader queued behind others gets its
/// first byte only when its turn comes).
pub fn http_waiting(
    method: &str,
    addr: &str,
    path: &str,
    patience: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(patience)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running sidecar; killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Sidecar {
    /// Starts `run` with the given rules file, targets and extra flags; waits until ready.
    pub fn start(dir: &Path, rules: &Path, targets: &[String], extra: &[&str]) -> Self {
        let mut s = Self::spawn(dir, rules, targets, extra);
        s.wait_ready(|addr| http("GET", addr, "/-/ready").filter(|(st, _)| *st == 200));
        s
    }

    /// Waits until `ready(addr)` answers, failing early if the process exits.
    pub fn wait_ready<T>(&mut self, mut ready: impl FnMut(&str) -> Option<T>) -> T {
        let addr = self.addr.clone();
        wait_for("sidecar ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sidecar exited early with {status}: {}", self.log());
            }
            ready(&addr)
        })
    }

    /// Starts `run` without waiting for it.
    pub fn spawn(dir: &Path, rules: &Path, targets: &[String], extra: &[&str]) -> Self {
        Self::spawn_env(dir, rules, targets, extra, &[])
    }

    /// `spawn` with extra environment variables (e.g. a failpoint).
    pub fn spawn_env(
        dir: &Path,
        rules: &Path,
        targets: &[String],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data_dir = dir.join("data");
        let log = dir.join(format!("sidecar-{port}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--rules")
            .arg(rules)
            .arg("--listen")
            .arg(&addr)
            .arg("--data-dir")
            .arg(&data_dir);
        if !extra.contains(&"--scrape-interval") {
            cmd.args(["--scrape-interval", "200ms"]);
        }
        for t in targets {
            cmd.arg("--target").arg(t);
        }
        cmd.args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        Self {
            child,
            addr,
            data_dir,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http("GET", &self.addr, "/metrics")
            .map(|x| x.1)
            .unwrap_or_default()
    }

    /// Waits until a /metrics line starting with `prefix` has the value `value`.
    pub fn wait_metric(&self, prefix: &str, value: &str, timeout: Duration) {
        wait_for(&format!("{prefix} = {value}"), timeout, || {
            metric_value(&self.metrics(), prefix).filter(|v| v == value)
        });
    }

    /// The value of the first /metrics line starting with `prefix` as an integer, 0 when
    /// absent (counters that were never incremented are not exported).
    pub fn number(&self, prefix: &str) -> u64 {
        metric_value(&self.metrics(), prefix)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Peak resident memory of the process so far, in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_for("sidecar exit", Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first line of `metrics` starting with `prefix`.
pub fn metric_value(metrics: &str, prefix: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `run --rules RULES <args>` with a data dir under `dir`, which must fail before the store
/// is opened; its stderr.
pub fn refused(dir: &Path, rules: &Path, args: &[&str]) -> String {
    let data = dir.join("data");
    let mut all = vec!["run", "--rules", rules.to_str().unwrap()];
    all.extend([
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    all.extend_from_slice(args);
    let out = run(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started: {err}");
    assert!(!data.exists(), "store opened before the check: {err}");
    err
}

/// `anomaly-sidecar backtest --rules RULES --csv CSVS… --out OUT`, which must succeed.
pub fn backtest(rules: &Path, csvs: &[&Path], out: &Path) -> Output {
    let mut args = vec!["backtest", "--rules", rules.to_str().unwrap(), "--csv"];
    args.extend(csvs.iter().map(|c| c.to_str().unwrap()));
    args.extend(["--out", out.to_str().unwrap()]);
    let done = run(&args);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    done
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A gauge body: `name{labels} value` lines under a TYPE header.
pub fn gauge_body(name: &str, series: &[(&str, f64)]) -> String {
    let mut b = format!("# TYPE {name} gauge\n");
    for (labels, v) in series {
        b.push_str(&format!("{name}{labels} {v}\n"));
    }
    b
}

/// Fails (not skips) when a tool is missing under CI; elsewhere returns None to skip.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is required under CI=true; install it (see README)");
        }
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// Reads one HTTP/1.1 request: its head (request line and headers) and its body.
pub fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, len) = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).to_string();
    Some((head, buf[head_end..head_end + len].to_vec()))
}
