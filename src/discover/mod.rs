//! Where targets come from besides `--target`: discovery configs in `--targets-file` (DNS,
//! Kubernetes) each send their whole current set of addresses when it changes, and `--shard` picks this
//! replica's share. The target manager (`scrape::manager`) turns the sets into scrape loops.

pub mod dns;
pub mod dns_wire;
pub mod kubernetes;
pub mod shard;

pub use shard::{Shard, ShardSpec};

/// One address a discovery config found, with the target labels it gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// `host:port`: the scrape address and the `target` label.
    pub address: String,
    /// Target labels added to every series scraped from it, sorted by name.
    pub labels: Vec<(String, String)>,
    /// The path and scheme when the target says its own (annotations), else the entry's.
    pub path: Option<String>,
    pub scheme: Option<String>,
}

/// The whole current set of one discovery config (its index in the targets file's list).
#[derive(Debug, Clone)]
pub struct Update {
    pub provider: usize,
    pub targets: Vec<Discovered>,
}

/// A discovery config ready to run, its API client made at start (a bad kubeconfig stops
/// the start before the store is opened or the port bound).
pub enum Provider {
    Dns(crate::config::targets::DnsSd),
    Kubernetes(crate::config::kube_sd::KubernetesSd, kubernetes::Connection),
}

impl Provider {
    /// Connects what needs connecting.
    pub async fn prepare(
        spec: &crate::config::targets::DiscoverySpec,
    ) -> Result<Self, kubernetes::ConnectError> {
        use crate::config::targets::Mechanism;
        Ok(match &spec.mechanism {
            Mechanism::Dns(sd) => Provider::Dns(sd.clone()),
            Mechanism::Kubernetes(sd) => {
                Provider::Kubernetes(sd.clone(), kubernetes::connect(sd).await?)
            }
        })
    }

    /// Follows the config until shutdown, sending its whole set on every change.
    pub async fn run(
        self,
        index: usize,
        config: String,
        updates: tokio::sync::mpsc::Sender<Update>,
        metrics: crate::export::self_metrics::SelfMetrics,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        match self {
            Provider::Dns(sd) => {
                tracing::info!(config = %config, names = ?sd.names, "DNS discovery");
                dns::run(index, config, sd, updates, metrics, shutdown).await
            }
            Provider::Kubernetes(sd, conn) => {
                tracing::info!(config = %config, selector = ?sd.selector, namespaces = ?sd.namespaces, "Kubernetes discovery");
                kubernetes::run(index, config, sd, conn, updates, metrics, shutdown).await
            }
        }
    }
}
