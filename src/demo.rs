//! `anomaly-sidecar demo`: a built-in synthetic exporter on loopback (service and node
//! metrics with noise, slow waves, and an injected anomaly every 75 s: a spike, a level shift,
//! a slow climb), the shipped rules applied to it, events printed to stdout as they happen.

use crate::app;
use crate::config::flags::{DemoArgs, RunArgs};
use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::f64::consts::PI;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shipped rules.yaml, so the demo works from any directory.
const SHIPPED_RULES: &str = include_str!("../rules.yaml");
/// Seconds between injected anomalies; kinds rotate spike → level shift → slow climb.
const CYCLE_SECS: f64 = 75.0;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("anomaly-sidecar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rules = match &args.rules {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("rules.yaml");
            std::fs::write(&p, SHIPPED_RULES).context("writing the demo rules file")?;
            p
        }
    };
    let exporter_addr = serve_synthetic().await?;
    let run_args = RunArgs {
        rules,
        targets: vec![format!("http://{exporter_addr}/metrics")],
        listen: args.listen,
        data_dir: dir.join("data"),
        scrape_interval: args.scrape_interval,
        scrape_timeout: None,
        warmup_from: None,
        warmup_selector: String::new(),
        warmup_timeout: Duration::from_secs(10),
        retention: Duration::from_secs(3600),
        max_series: 100_000,
        max_scrape_bytes: 64 << 20,
        sample_limit: crate::scrape::Limits::default().sample_limit,
        label_limit: crate::scrape::Limits::default().label_limit,
        label_name_length_limit: crate::scrape::Limits::default().label_name_length_limit,
        label_value_length_limit: crate::scrape::Limits::default().label_value_length_limit,
        web_enable_lifecycle: true,
        web_write_timeout: Duration::from_secs(60),
        web_config_file: None,
        targets_file: None,
        shard: "0/1".into(),
        rules_check_interval: Duration::from_secs(2),
        store_cache_bytes: 8 << 20,
        webhooks: Vec::new(),
        webhook_format: crate::config::flags::WebhookFormat::Alertmanager,
        alertmanagers: Vec::new(),
        llm_url: None,
        llm_model: "llama3.2".into(),
        llm_timeout: Duration::from_secs(20),
        resend_delay: Duration::from_secs(60),
        webhook_secret_file: None,
        max_retry_interval: Duration::from_secs(300),
        outbox_max_events: 100_000,
        web_external_url: None,
    };
    let app = app::start(&run_args).await?;
    println!("anomaly-sidecar demo");
    println!("  synthetic exporter  http://{exporter_addr}/metrics");
    println!("  sidecar metrics     http://{}/metrics", app.listen_addr);
    println!("  rules               {}", run_args.rules.display());
    println!("  an anomaly is injected every {CYCLE_SECS:.0}s (spike, level shift, slow climb); events follow.");
    let mut events = app.events.subscribe();
    let printer = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => println!("{}", ev.line()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} events skipped)")
                }
                Err(_) => return,
            }
        }
    });
    let stop = async {
        match args.duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = app::termination() => {}
                }
            }
            None => app::termination().await,
        }
    };
    app.wait(stop).await;
    printer.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Starts the synthetic exporter on 127.0.0.1 and returns its address.
async fn serve_synthetic() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the synthetic exporter")?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Mutex::new(Synthetic::new()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = state.lock().map(|mut s| s.render()).unwrap_or_default();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Synthetic service + node metrics driven by wall-clock time since start.
struct Synthetic {
    start: Instant,
    last: f64,
    rng: u64,
    requests: f64,
    cpu_user: f64,
}

impl Synthetic {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: 0.0,
            rng: 0x9e37_79b9_7f4a_7c15,
            requests: 1e6,
            cpu_user: 5e4,
        }
    }

    /// Uniform noise in [-1, 1) (xorshift64*).
    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn render(&mut self) -> String {
        let t = self.start.elapsed().as_secs_f64();
        let dt = (t - self.last).max(0.0);
        self.last = t;
        let cycle = (t / CYCLE_SECS) as u64;
        let phase = t % CYCLE_SECS;
        let kind = cycle % 3;
        let spike = kind == 0 && (40.0..46.0).contains(&phase);
        let shift = kind == 1 && phase >= 40.0;
        let climb = kind == 2 && (30.0..62.0).contains(&phase);
        let wave = (2.0 * PI * t / 300.0).sin();

        let rate = (50.0 + 8.0 * wave + 2.0 * self.noise()) * if spike { 5.0 } else { 1.0 };
        self.requests += rate * dt;
        self.cpu_user += (0.3 + 0.02 * self.noise()) * dt;
        let p99 = if spike {
            1.6
        } else {
            0.25 + 0.01 * wave + 0.01 * self.noise()
        };
        let rss = 200e6 + 1e6 * self.noise() + if shift { 80e6 } else { 0.0 };
        let fds = if climb {
            120.0 + 3.0 * (phase - 30.0).floor()
        } else {
            120.0 + (2.0 * self.noise()).round()
        };
        let load = if spike {
            8.0
        } else {
            1.2 + 0.3 * wave + 0.05 * self.noise()
        };
        let avail = 40e9 - 1e3 * t;

        let mut b = String::with_capacity(2048);
        let _ = write!(
            b,
            "# HELP http_requests_total Requests handled.\n# TYPE http_requests_total counter\n\
             http_requests_total{{handler=\"/api/orders\",method=\"GET\",code=\"200\"}} {:.0}\n\
             # HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds summary\n\
             http_request_duration_seconds{{handler=\"/api/orders\",quantile=\"0.99\"}} {p99}\n\
             http_request_duration_seconds_sum{{handler=\"/api/orders\"}} {:.3}\n\
             http_request_duration_seconds_count{{handler=\"/api/orders\"}} {:.0}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {rss:.0}\n\
             # HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\n\
             process_open_fds {fds}\n\
             # HELP node_load1 1m load average.\n# TYPE node_load1 gauge\n\
             node_load1 {load}\n\
             # HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n\
             node_cpu_seconds_total{{cpu=\"0\",mode=\"user\"}} {:.3}\n\
             # HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.\n# TYPE node_filesystem_avail_bytes gauge\n\
             node_filesystem_avail_bytes{{device=\"/dev/vda1\",fstype=\"ext4\",mountpoint=\"/\"}} {avail:.0}\n",
            self.requests,
            self.requests * 0.1,
            self.requests,
            self.cpu_user,
        );
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_body_parses() {
        let mut s = Synthetic::new();
        let body = s.render();
        let samples = crate::scrape::parse::parse(&body).unwrap();
        assert_eq!(samples.len(), 9);
        assert!(samples
            .iter()
            .any(|x| x.name == "http_requests_total" && x.counter_like));
    }
}
