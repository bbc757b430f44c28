//! `--shard auto`: N is the sidecar's own StatefulSet's `spec.replicas`, read at start and
//! followed while it runs, so `kubectl scale` (or a values change) reshards every replica
//! without restarting them. `spec`, not the ready count: a replica restarting is still a
//! shard, and its targets wait for it rather than moving twice.

use super::{connect_to, ConnectError};
use crate::discover::Shard;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;

/// Why `--shard auto` cannot know N (at start, before the store is opened or the port bound).
#[derive(Debug, thiserror::Error)]
pub enum ReplicasError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("reading StatefulSet {namespace}/{name}, whose replicas are N (the ServiceAccount needs get, list and watch on it): {message}")]
    Read {
        namespace: String,
        name: String,
        message: String,
    },
}

/// The StatefulSet this replica belongs to.
pub struct Replicas {
    api: Api<StatefulSet>,
    namespace: String,
    name: String,
    index: u64,
}

impl Replicas {
    /// Connects (in-cluster, else `$KUBECONFIG`) and reads the set `name` of the pod's
    /// namespace (`$POD_NAMESPACE`, else the service account's or the context's): ordinal
    /// `index`'s shard now.
    pub async fn start(index: u64, name: &str) -> Result<(Self, Shard), ReplicasError> {
        let conn = connect_to(None).await?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or(conn.default_namespace);
        let api: Api<StatefulSet> = Api::namespaced(conn.client, &namespace);
        let set = api.get(name).await.map_err(|e| ReplicasError::Read {
            namespace: namespace.clone(),
            name: name.to_string(),
            message: e.to_string(),
        })?;
        let me = Self {
            api,
            namespace,
            name: name.to_string(),
            index,
        };
        let shard = me.shard(&set);
        Ok((me, shard))
    }

    /// This replica's shard by the set's spec (`replicas` unset is 1, as the API defaults it).
    fn shard(&self, set: &StatefulSet) -> Shard {
        let count = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        Shard {
            index: self.index,
            count: u64::try_from(count).unwrap_or(0),
        }
    }

    /// Follows the set until shutdown, sending each new shard. A failing API keeps the last
    /// N (the watch retries with backoff, logged once per outage); a deleted set too (its
    /// pods are going).
    pub async fn follow(self, shards: watch::Sender<Shard>, mut shutdown: watch::Receiver<bool>) {
        let mut events = watcher::watch_object(self.api.clone(), &self.name)
            .default_backoff()
            .boxed();
        let mut failing = false;
        loop {
            let Some(event) = super::next_until(&mut events, &mut shutdown).await else {
                return;
            };
            let set = match event {
                Ok(set) => set,
                Err(e) => {
                    if !failing {
                        tracing::warn!(statefulset = %self.name, namespace = %self.namespace, error = %e, "Watching the StatefulSet for --shard auto failed; sharding stays as it is, retrying with backoff");
                    }
                    failing = true;
                    continue;
                }
            };
            if failing {
                tracing::info!(statefulset = %self.name, "StatefulSet watch recovered");
                failing = false;
            }
            let Some(set) = set else {
                tracing::warn!(statefulset = %self.name, namespace = %self.namespace, "StatefulSet not found; sharding stays as it is");
                continue;
            };
            let shard = self.shard(&set);
            shards.send_if_modified(|now| {
                if *now == shard {
                    return false;
                }
                if shard.index >= shard.count {
                    tracing::warn!(from = %now, to = %shard, statefulset = %self.name, "StatefulSet scaled below this replica: it hands its targets off and scrapes none until stopped");
                } else {
                    tracing::info!(from = %now, to = %shard, statefulset = %self.name, "StatefulSet scaled: resharding");
                }
                *now = shard;
                true
            });
        }
    }
}
