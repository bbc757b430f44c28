//! Command-line interface. Flag names follow the issue tracker's contract (other tests and the
//! Helm chart depend on them); every flag can also come from `ANOMALY_SIDECAR_<FLAG>`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

impl Cli {
    /// Parses the command line and the environment. A list flag given in the environment
    /// (`ANOMALY_SIDECAR_TARGET`, `…_WEBHOOK`, `…_ALERTMANAGER`) is comma-separated there, as
    /// one variable holds it; on the command line each value is taken whole (a URL may hold a
    /// comma).
    pub fn parse_all() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().get_matches();
        let mut cli = match Self::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        if let (Command::Run(args), Some(("run", m))) = (&mut cli.command, matches.subcommand()) {
            args.split_env_lists(m);
        }
        cli
    }
}

impl RunArgs {
    /// The scrape limits the flags set (a target's own in --targets-file override them).
    pub fn limits(&self) -> crate::scrape::Limits {
        crate::scrape::Limits {
            sample_limit: self.sample_limit,
            label_limit: self.label_limit,
            label_name_length_limit: self.label_name_length_limit,
            label_value_length_limit: self.label_value_length_limit,
        }
    }

    /// Splits on commas the list flags that came from the environment.
    pub fn split_env_lists(&mut self, m: &clap::ArgMatches) {
        let from_env =
            |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::EnvVariable);
        for (id, list) in [
            ("targets", &mut self.targets),
            ("webhooks", &mut self.webhooks),
            ("alertmanagers", &mut self.alertmanagers),
        ] {
            if from_env(id) {
                *list = list
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
    }
}

/// Scrapes Prometheus exporters, detects anomalies per series and exports them as gauges.
#[derive(Debug, Parser)]
#[command(name = "anomaly-sidecar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scrape targets, detect anomalies and serve /metrics.
    Run(Box<RunArgs>),
    /// Validate a rules file: prints `ok: N rules` or every error, exits 0 or 1.
    Check(CheckArgs),
    /// Run everything on loopback against a built-in synthetic exporter.
    Demo(DemoArgs),
    /// Replay recorded series through the rules (the live evaluation, the data's timestamps
    /// as the clock) and write each series' scores and firings.
    Backtest(BacktestArgs),
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Rules file to try.
    #[arg(long, env = "ANOMALY_SIDECAR_RULES", default_value = "./rules.yaml")]
    pub rules: PathBuf,
    /// `timestamp,value` CSV files, one series each, named after the file (its stem, with
    /// characters outside [a-zA-Z0-9_] as `_`, is the metric name).
    #[arg(long, num_args = 1.., required_unless_present = "prometheus")]
    pub csv: Vec<PathBuf>,
    /// Read the series from a Prometheus HTTP API instead (with --query, --start, --end).
    #[arg(long, requires_all = ["query", "start", "end"])]
    pub prometheus: Option<String>,
    /// The selector (or any PromQL expression) whose range is replayed.
    #[arg(long)]
    pub query: Option<String>,
    /// Range start: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or Unix seconds.
    #[arg(long)]
    pub start: Option<String>,
    /// Range end, as --start.
    #[arg(long)]
    pub end: Option<String>,
    /// Resolution of the range: the scrape interval the rules will see.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub step: Duration,
    /// Directory for `<series>.csv` (timestamp,value,anomaly_score,active) and
    /// `<series>.events.csv` (a timestamp per firing).
    #[arg(long)]
    pub out: PathBuf,
    /// Known incidents to grade the rules against: NAB's combined_windows.json shape, or a
    /// CSV `series,start,end`. Prints incidents caught, time to detect, false alerts per day
    /// and the NAB score, per series and in total.
    #[arg(long)]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Rules file to validate.
    #[arg(long, env = "ANOMALY_SIDECAR_RULES", default_value = "./rules.yaml")]
    pub rules: PathBuf,
    /// Web config file to validate too (its certificates and keys are loaded).
    #[arg(long = "web.config.file", env = "ANOMALY_SIDECAR_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Rules file (reloaded on SIGHUP, on POST /-/reload and when its content changes).
    #[arg(long, env = "ANOMALY_SIDECAR_RULES", default_value = "./rules.yaml")]
    pub rules: PathBuf,
    /// Exporter URL to scrape, e.g. http://127.0.0.1:9100/metrics (repeatable; comma-separated in the environment).
    #[arg(
        long = "target",
        env = "ANOMALY_SIDECAR_TARGET",
        required_unless_present = "targets_file"
    )]
    pub targets: Vec<String>,
    /// Targets that need credentials or TLS settings (bearer token, basic auth, CA, client
    /// certificate), in Prometheus' scrape_config field names; added to the --target ones.
    #[arg(long = "targets-file", env = "ANOMALY_SIDECAR_TARGETS_FILE")]
    pub targets_file: Option<PathBuf>,
    /// This replica's share of the targets, for a StatefulSet of N: `I/N` scrapes the
    /// targets whose address hashes (Prometheus' hashmod) to I; `auto/N` takes I from the pod
    /// name's ordinal (`anomaly-sidecar-2`: `$POD_NAME`, else the hostname); `auto` takes N
    /// from the StatefulSet's spec.replicas too, and follows it (`kubectl scale` reshards).
    #[arg(long, env = "ANOMALY_SIDECAR_SHARD", default_value = "0/1")]
    pub shard: String,
    /// Address to serve /metrics, /-/healthy, /-/ready and /-/reload on.
    #[arg(long, env = "ANOMALY_SIDECAR_LISTEN", default_value = "0.0.0.0:9477")]
    pub listen: SocketAddr,
    /// Directory of the sled history store.
    #[arg(long, env = "ANOMALY_SIDECAR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// How often each target is scraped.
    #[arg(long, env = "ANOMALY_SIDECAR_SCRAPE_INTERVAL", default_value = "15s", value_parser = duration)]
    pub scrape_interval: Duration,
    /// Prometheus (HTTP API base URL) to read the recent history of series the store lacks
    /// from, at start and for each new series, so a fresh pod judges its first scrape.
    /// Unreachable: a warning, and the series start from scratch.
    #[arg(long = "warmup-from", env = "ANOMALY_SIDECAR_WARMUP_FROM")]
    pub warmup_from: Option<String>,
    /// Label matchers added to every warm-start query, to pick this pod's copy of a series
    /// from its replicas' (e.g. `pod="$(POD_NAME)"`).
    #[arg(
        long = "warmup-selector",
        env = "ANOMALY_SIDECAR_WARMUP_SELECTOR",
        default_value = ""
    )]
    pub warmup_selector: String,
    /// Longest a target's first scrape waits for its history.
    #[arg(long = "warmup-timeout", env = "ANOMALY_SIDECAR_WARMUP_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub warmup_timeout: Duration,
    /// Scrape timeout; defaults to the smaller of 10s and the interval.
    #[arg(long, env = "ANOMALY_SIDECAR_SCRAPE_TIMEOUT", value_parser = duration)]
    pub scrape_timeout: Option<Duration>,
    /// Series not seen for this long are removed from the store.
    #[arg(long, env = "ANOMALY_SIDECAR_RETENTION", default_value = "1h", value_parser = duration)]
    pub retention: Duration,
    /// Series kept per target; beyond it a target's new series are dropped and counted.
    #[arg(long, env = "ANOMALY_SIDECAR_MAX_SERIES", default_value_t = 100_000)]
    pub max_series: usize,
    /// Most samples one scrape may hold (0: no limit); more fail the scrape whole. Per target
    /// in --targets-file as `sample_limit`, as in Prometheus' scrape config.
    #[arg(
        long = "sample-limit",
        env = "ANOMALY_SIDECAR_SAMPLE_LIMIT",
        default_value_t = 0
    )]
    pub sample_limit: usize,
    /// Most labels a series may have (0: no limit); one with more fails its scrape.
    #[arg(
        long = "label-limit",
        env = "ANOMALY_SIDECAR_LABEL_LIMIT",
        default_value_t = 64
    )]
    pub label_limit: usize,
    /// Longest label name, in bytes (0: no limit).
    #[arg(
        long = "label-name-length-limit",
        env = "ANOMALY_SIDECAR_LABEL_NAME_LENGTH_LIMIT",
        default_value_t = 256
    )]
    pub label_name_length_limit: usize,
    /// Longest label value, in bytes (0: no limit): long enough for the URLs and queries some
    /// exporters put in labels.
    #[arg(
        long = "label-value-length-limit",
        env = "ANOMALY_SIDECAR_LABEL_VALUE_LENGTH_LIMIT",
        default_value_t = 16384
    )]
    pub label_value_length_limit: usize,
    /// Largest scrape body accepted, in bytes; a larger one fails the scrape.
    #[arg(long, env = "ANOMALY_SIDECAR_MAX_SCRAPE_BYTES", default_value_t = 64 << 20)]
    pub max_scrape_bytes: u64,
    /// Serve POST /-/reload (off by default, as in Prometheus).
    #[arg(
        long = "web.enable-lifecycle",
        env = "ANOMALY_SIDECAR_WEB_ENABLE_LIFECYCLE"
    )]
    pub web_enable_lifecycle: bool,
    /// Web configuration in Prometheus exporter-toolkit's format: TLS, basic auth (bcrypt),
    /// response headers and a rate limit for every endpoint. Re-read when it changes.
    #[arg(long = "web.config.file", env = "ANOMALY_SIDECAR_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Longest a client may take to read a response: a /metrics reader that stalls past it is
    /// disconnected, freeing its place for others (16 /metrics responses are sent at a time).
    #[arg(long = "web.write-timeout", env = "ANOMALY_SIDECAR_WEB_WRITE_TIMEOUT", default_value = "1m", value_parser = duration)]
    pub web_write_timeout: Duration,
    /// How often the rules file is checked for changes (covers ConfigMap symlink swaps).
    #[arg(long, env = "ANOMALY_SIDECAR_RULES_CHECK_INTERVAL", default_value = "5s", value_parser = duration)]
    pub rules_check_interval: Duration,
    /// Webhook receiver URL: each firing and resolution is POSTed as an Alertmanager webhook
    /// payload (repeatable; comma-separated in the environment).
    #[arg(long = "webhook", env = "ANOMALY_SIDECAR_WEBHOOK")]
    pub webhooks: Vec<String>,
    /// Body of --webhook requests: Alertmanager's webhook payload, a Slack-style incoming
    /// webhook message (text + blocks, for chat rooms), or one plain event object.
    #[arg(
        long,
        env = "ANOMALY_SIDECAR_WEBHOOK_FORMAT",
        value_enum,
        default_value = "alertmanager"
    )]
    pub webhook_format: WebhookFormat,
    /// Alertmanager base URL, e.g. http://alertmanager:9093: alerts are pushed to its API v2 the
    /// way Prometheus does (repeatable; comma-separated in the environment).
    #[arg(long = "alertmanager", env = "ANOMALY_SIDECAR_ALERTMANAGER")]
    pub alertmanagers: Vec<String>,
    /// How often firing alerts are re-sent to Alertmanager.
    #[arg(long, env = "ANOMALY_SIDECAR_RESEND_DELAY", default_value = "1m", value_parser = duration)]
    pub resend_delay: Duration,
    /// Base URL of a local Ollama that explains firing events (llm_* annotations), e.g.
    /// http://ollama:11434. Off when absent.
    #[arg(long, env = "ANOMALY_SIDECAR_LLM_URL")]
    pub llm_url: Option<String>,
    /// Model the LLM is asked with.
    #[arg(long, env = "ANOMALY_SIDECAR_LLM_MODEL", default_value = "llama3.2")]
    pub llm_model: String,
    /// Longest an event waits for its explanation; past it the event goes out without.
    #[arg(long, env = "ANOMALY_SIDECAR_LLM_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub llm_timeout: Duration,
    /// File holding the secret that signs each webhook body (X-Anomaly-Signature: sha256=HMAC).
    #[arg(long, env = "ANOMALY_SIDECAR_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Longest wait between delivery retries to a failing receiver.
    #[arg(long, env = "ANOMALY_SIDECAR_MAX_RETRY_INTERVAL", default_value = "5m", value_parser = duration)]
    pub max_retry_interval: Duration,
    /// Events kept per receiver while it is unreachable; past it the oldest are dropped.
    #[arg(
        long,
        env = "ANOMALY_SIDECAR_OUTBOX_MAX_EVENTS",
        default_value_t = 10_000
    )]
    pub outbox_max_events: usize,
    /// URL under which this sidecar is reachable (externalURL and generatorURL in payloads);
    /// defaults to http://<hostname>:<listen port>.
    #[arg(long = "web.external-url", env = "ANOMALY_SIDECAR_WEB_EXTERNAL_URL")]
    pub web_external_url: Option<String>,
    /// sled page cache size in bytes (sled's own default of 1 GiB is far too much for a sidecar).
    #[arg(long, env = "ANOMALY_SIDECAR_STORE_CACHE_BYTES", default_value_t = 16 << 20)]
    pub store_cache_bytes: u64,
}

/// What a webhook request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebhookFormat {
    Alertmanager,
    Slack,
    Json,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rules file; defaults to the rules.yaml built into the binary (the repo's file).
    #[arg(long, env = "ANOMALY_SIDECAR_RULES")]
    pub rules: Option<PathBuf>,
    /// Address to serve the sidecar's /metrics on.
    #[arg(long, env = "ANOMALY_SIDECAR_LISTEN", default_value = "127.0.0.1:9477")]
    pub listen: SocketAddr,
    /// Scrape interval of the demo (short, so anomalies show within a minute or two).
    #[arg(long, env = "ANOMALY_SIDECAR_SCRAPE_INTERVAL", default_value = "1s", value_parser = duration)]
    pub scrape_interval: Duration,
    /// Stop after this long (runs until Ctrl-C when absent).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
}

impl RunArgs {
    /// The effective scrape timeout.
    pub fn effective_scrape_timeout(&self) -> Duration {
        self.scrape_timeout
            .unwrap_or_else(|| self.scrape_interval.min(Duration::from_secs(10)))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 15s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_limit_flags_default_to_limits_default_and_commas_stay_on_the_command_line() {
        let cli = Cli::try_parse_from([
            "anomaly-sidecar",
            "run",
            "--target",
            "http://a:1/metrics?x=1,2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        assert_eq!(args.limits(), crate::scrape::Limits::default());
        assert_eq!(args.targets, ["http://a:1/metrics?x=1,2"]);
    }
}
