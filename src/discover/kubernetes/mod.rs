//! `kubernetes_sd`: targets found by kube-rs' watcher (list, then watch from its
//! resourceVersion; a watch that ends is resumed, a 410 Gone relists, errors back off): one
//! per running pod (`pods`), or per endpoint of a Service (`endpoints`, joined with the pods
//! for their container and workload), with namespace, pod, container, node and workload (and
//! service) as target labels. Which objects give which targets are pure functions.

mod endpoints;
mod pods;
pub mod replicas;

pub use pods::pod_targets;

use super::{Discovered, Update};
use crate::config::kube_sd::{KubernetesSd, Role};
use crate::export::self_metrics::SelfMetrics;
use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config, ResourceExt};
use pods::PodInfo;
use std::collections::HashMap;
use tokio::sync::{mpsc, watch};

/// Why the API cannot be reached with the configuration given (at start, before the store is
/// opened or the port bound).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes API to watch: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig}); set kubeconfig in the entry or $KUBECONFIG")]
    NoConfig {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client for the entry's API server, and the namespace watched when the entry names none.
pub struct Connection {
    client: Client,
    default_namespace: String,
}

/// The entry's kubeconfig; else the in-cluster service account; else `$KUBECONFIG` (or
/// `~/.kube/config`).
pub async fn connect(sd: &KubernetesSd) -> Result<Connection, ConnectError> {
    connect_to(sd.kubeconfig.as_deref()).await
}

/// A client from `kubeconfig`, else in-cluster, else `$KUBECONFIG`.
async fn connect_to(kubeconfig: Option<&std::path::Path>) -> Result<Connection, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| ConnectError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => match Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| ConnectError::NoConfig {
                    in_cluster: in_cluster.to_string(),
                    kubeconfig: e.to_string(),
                })?,
        },
    };
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))?;
    Ok(Connection {
        client,
        default_namespace,
    })
}

/// Objects of one kind in each watched namespace as the watcher last told them, reduced to
/// what discovery needs of each (`V`; an object reduced to nothing is not kept).
struct Listed<V> {
    /// Per namespace: object name → what was kept of it.
    live: Vec<HashMap<String, V>>,
    /// Per namespace: a relist in progress (Init .. InitDone).
    relist: Vec<Option<HashMap<String, V>>>,
    /// Per namespace: listed at least once.
    listed: Vec<bool>,
}

impl<V: Clone + PartialEq> Listed<V> {
    fn new(namespaces: usize) -> Self {
        Self {
            live: vec![HashMap::new(); namespaces],
            relist: vec![None; namespaces],
            listed: vec![false; namespaces],
        }
    }

    /// Takes one event of namespace `ns` in; whether what is kept changed (a first listing
    /// always counts).
    fn apply<K: kube::Resource>(
        &mut self,
        ns: usize,
        event: Event<K>,
        keep: impl Fn(&K) -> Option<V>,
    ) -> bool {
        match event {
            Event::Init => {
                self.relist[ns] = Some(HashMap::new());
                false
            }
            Event::InitApply(o) => {
                if let (Some(buffer), Some(v)) = (&mut self.relist[ns], keep(&o)) {
                    buffer.insert(o.name_any(), v);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist[ns].take().unwrap_or_default();
                let first = !self.listed[ns];
                self.listed[ns] = true;
                let changed = listed != self.live[ns];
                self.live[ns] = listed;
                changed || first
            }
            Event::Apply(o) => {
                let live = &mut self.live[ns];
                match keep(&o) {
                    None => live.remove(&o.name_any()).is_some(),
                    Some(v) => live.insert(o.name_any(), v.clone()).as_ref() != Some(&v),
                }
            }
            Event::Delete(o) => self.live[ns].remove(&o.name_any()).is_some(),
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(|&l| l)
    }
}

/// `ip:port`, an IPv6 address in brackets (as Prometheus' `__address__`).
fn address(ip: &str, port: impl std::fmt::Display) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Every target, sorted by address.
fn sorted(mut targets: Vec<Discovered>) -> Vec<Discovered> {
    targets.sort_by(|a, b| a.address.cmp(&b.address));
    targets
}

/// A watcher per namespace of objects `K`, merged, each event with its namespace's index.
fn watch_all<K>(
    client: &Client,
    namespaces: &[String],
    wc: &watcher::Config,
) -> BoxStream<'static, (usize, Result<Event<K>, watcher::Error>)>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let streams = namespaces.iter().enumerate().map(|(i, ns)| {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        watcher::watcher(api, wc.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    stream::select_all(streams).boxed()
}

/// The stream's next item; None at its end or at shutdown.
async fn next_until<S: futures_util::Stream + Unpin>(
    events: &mut S,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<S::Item> {
    tokio::select! {
        _ = shutdown.changed() => None,
        e = events.next() => e,
    }
}

/// One event of the watches an entry runs.
enum Watched {
    // (a pod is large: boxed, so the other events do not carry its size)
    Pod(Box<Event<Pod>>),
    Slice(Event<EndpointSlice>),
    Endpoints(Event<Endpoints>),
}

/// Watches the entry's objects in each of its namespaces and sends the whole set of targets
/// when it changes, first once every watch has listed. A failing API keeps the last set
/// (the watcher retries with backoff, logged once per outage).
pub async fn run(
    provider: usize,
    config: String,
    sd: KubernetesSd,
    conn: Connection,
    updates: mpsc::Sender<Update>,
    metrics: SelfMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let namespaces = if sd.namespaces.is_empty() {
        vec![conn.default_namespace.clone()]
    } else {
        sd.namespaces.clone()
    };
    let mut wc = watcher::Config::default();
    if let Some(s) = &sd.selector {
        wc = wc.labels(s);
    }
    if let Some(f) = &sd.field_selector {
        wc = wc.fields(f);
    }
    let client = &conn.client;
    let n = namespaces.len();
    // The selectors are the role's objects'; the pods a Service role joins are all of the
    // namespace's (a pod's labels need not match its Service's).
    let mut events: BoxStream<'static, (usize, Result<Watched, watcher::Error>)> = match sd.role {
        Role::Pod => watch_all::<Pod>(client, &namespaces, &wc)
            .map(|(i, e)| (i, e.map(|e| Watched::Pod(Box::new(e)))))
            .boxed(),
        Role::EndpointSlice | Role::Endpoints => {
            let pods = watch_all::<Pod>(client, &namespaces, &watcher::Config::default())
                .map(|(i, e)| (i, e.map(|e| Watched::Pod(Box::new(e)))));
            let objects = if sd.role == Role::EndpointSlice {
                watch_all::<EndpointSlice>(client, &namespaces, &wc)
                    .map(|(i, e)| (i, e.map(Watched::Slice)))
                    .boxed()
            } else {
                watch_all::<Endpoints>(client, &namespaces, &wc)
                    .map(|(i, e)| (i, e.map(Watched::Endpoints)))
                    .boxed()
            };
            stream::select(pods, objects).boxed()
        }
    };
    let mut targets = Targets::new(&sd, n);
    let mut failing = false;
    loop {
        let Some((ns, event)) = next_until(&mut events, &mut shutdown).await else {
            return;
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                metrics
                    .sd_refresh_failures_total
                    .with_label_values(&["kubernetes"])
                    .inc();
                if !failing {
                    tracing::warn!(config = %config, namespace = %namespaces[ns], error = %e, "Kubernetes watch failed; its last targets stay, retrying with backoff");
                }
                failing = true;
                continue;
            }
        };
        metrics
            .sd_lookups_total
            .with_label_values(&["kubernetes"])
            .inc();
        let (changed, recovered) = targets.apply(ns, event);
        if failing && recovered {
            tracing::info!(config = %config, "Kubernetes watch recovered");
            failing = false;
        }
        if !changed || !targets.all_listed() {
            continue;
        }
        let update = Update {
            provider,
            targets: targets.all(),
        };
        if updates.send(update).await.is_err() {
            return;
        }
    }
}

/// What an entry's watches have told, and the targets it makes.
struct Targets<'a> {
    sd: &'a KubernetesSd,
    /// The pod role: each pod's targets. The Service roles: what endpoints need of a pod.
    pod_targets: Listed<Vec<Discovered>>,
    pods: Listed<PodInfo>,
    slices: Listed<EndpointSlice>,
    endpoints: Listed<Endpoints>,
}

impl<'a> Targets<'a> {
    fn new(sd: &'a KubernetesSd, namespaces: usize) -> Self {
        Self {
            sd,
            pod_targets: Listed::new(namespaces),
            pods: Listed::new(namespaces),
            slices: Listed::new(namespaces),
            endpoints: Listed::new(namespaces),
        }
    }

    /// Takes an event in: whether the targets may have changed, and whether it was news from
    /// the API (a listing's end or a change) rather than the start of a relist.
    fn apply(&mut self, ns: usize, event: Watched) -> (bool, bool) {
        let sd = self.sd;
        match event {
            Watched::Pod(e) if sd.role == Role::Pod => {
                let n = is_news(&e);
                let keep = |p: &Pod| Some(pod_targets(p, sd)).filter(|t| !t.is_empty());
                (self.pod_targets.apply(ns, *e, keep), n)
            }
            Watched::Pod(e) => {
                let n = is_news(&e);
                (self.pods.apply(ns, *e, |p| Some(PodInfo::of(p))), n)
            }
            Watched::Slice(e) => {
                let n = is_news(&e);
                (self.slices.apply(ns, e, |s| Some(s.clone())), n)
            }
            Watched::Endpoints(e) => {
                let n = is_news(&e);
                (self.endpoints.apply(ns, e, |s| Some(s.clone())), n)
            }
        }
    }

    fn all_listed(&self) -> bool {
        match self.sd.role {
            Role::Pod => self.pod_targets.all_listed(),
            Role::EndpointSlice => self.pods.all_listed() && self.slices.all_listed(),
            Role::Endpoints => self.pods.all_listed() && self.endpoints.all_listed(),
        }
    }

    fn all(&self) -> Vec<Discovered> {
        let sd = self.sd;
        let mut out = Vec::new();
        match sd.role {
            Role::Pod => {
                for ns in &self.pod_targets.live {
                    out.extend(ns.values().flatten().cloned());
                }
            }
            Role::EndpointSlice => {
                for (ns, slices) in self.slices.live.iter().enumerate() {
                    let pods = &self.pods.live[ns];
                    for s in slices.values() {
                        out.extend(endpoints::slice_targets(s, sd, pods));
                    }
                }
            }
            Role::Endpoints => {
                for (ns, eps) in self.endpoints.live.iter().enumerate() {
                    let pods = &self.pods.live[ns];
                    for e in eps.values() {
                        out.extend(endpoints::endpoints_targets(e, sd, pods));
                    }
                }
            }
        }
        // A pod behind two Services (or two slices of one) is one target.
        let mut out = sorted(out);
        out.dedup_by(|a, b| a.address == b.address);
        out
    }
}

/// Whether a watch event is news from the API (its end of a listing, or a change).
fn is_news<K>(e: &Event<K>) -> bool {
    matches!(e, Event::InitDone | Event::Apply(_) | Event::Delete(_))
}

#[cfg(test)]
mod tests {
    use super::pods::tests::{addresses, pod, sd};
    use super::*;
    use crate::config::kube_sd::PortRef;

    #[test]
    fn the_set_follows_list_watch_and_relist() {
        let s = sd(Some(PortRef::Name("metrics".into())), false);
        let mut set = Targets::new(&s, 1);
        let running = |n: &str, ip: &str| pod(n, "Running", Some(ip), serde_json::json!({}));
        let apply = |set: &mut Targets, e: Event<Pod>| set.apply(0, Watched::Pod(Box::new(e))).0;
        assert!(!apply(&mut set, Event::Init));
        assert!(!apply(&mut set, Event::InitApply(running("a", "10.0.0.1"))));
        assert!(!set.all_listed());
        // The first listing is news even when empty of targets.
        assert!(apply(&mut set, Event::InitDone));
        assert_eq!(addresses(&set.all()), ["10.0.0.1:9090"]);
        assert!(apply(&mut set, Event::Apply(running("b", "10.0.0.2"))));
        // A status update that changes nothing scraped is not news.
        assert!(!apply(&mut set, Event::Apply(running("b", "10.0.0.2"))));
        assert!(apply(&mut set, Event::Delete(running("a", "10.0.0.1"))));
        // A relist (after a 410 Gone) replaces the set whole: pods deleted meanwhile go.
        apply(&mut set, Event::Init);
        apply(&mut set, Event::InitApply(running("c", "10.0.0.3")));
        assert_eq!(addresses(&set.all()), ["10.0.0.2:9090"]);
        assert!(apply(&mut set, Event::InitDone));
        assert_eq!(addresses(&set.all()), ["10.0.0.3:9090"]);
    }
}
