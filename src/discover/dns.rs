//! `dns_sd`: the addresses behind DNS names (a headless Service's A/AAAA records, or its SRV
//! records), asked again every `refresh_interval`, for clusters where the sidecar may not read
//! the Kubernetes API. A stub resolver of our own (UDP, TCP when the answer is truncated), so
//! the servers can be set per config and a test can point it at a real server on loopback.

use super::dns_wire::{self, Record, TYPE_A, TYPE_AAAA, TYPE_SRV};
use super::{Discovered, Update};
use crate::config::targets::{DnsKind, DnsSd};
use crate::export::self_metrics::SelfMetrics;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Why a name could not be looked up (NXDOMAIN is not an error: no targets).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no nameserver to ask (none given and none in /etc/resolv.conf)")]
    NoServer,
    #[error("{server}: {message}")]
    Server { server: SocketAddr, message: String },
}

/// Where and how names are asked.
#[derive(Debug, Clone)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    /// Domains tried for a relative name (`search` in resolv.conf).
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
}

impl Resolver {
    /// The given servers, names taken as absolute; or, with none, the system's
    /// (`/etc/resolv.conf`: nameserver, search, options ndots and timeout).
    pub fn new(servers: &[SocketAddr]) -> Self {
        if !servers.is_empty() {
            return Self {
                servers: servers.to_vec(),
                search: Vec::new(),
                ndots: 1,
                timeout: Duration::from_secs(2),
            };
        }
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Self::from_resolv_conf(&text)
    }

    fn from_resolv_conf(text: &str) -> Self {
        let mut r = Self {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        r.servers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search" | "domain") => {
                    r.search = words.map(|w| w.trim_end_matches('.').to_string()).collect()
                }
                Some("options") => {
                    for o in words {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            r.ndots = n;
                        }
                        if let Some(t) = o.strip_prefix("timeout:").and_then(|n| n.parse().ok()) {
                            r.timeout = Duration::from_secs(t);
                        }
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// The names to ask for `name`, in order, as glibc's resolver tries them.
    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_suffix('.') {
            return vec![abs.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }

    /// The records of `qtype` for `name`: the first candidate name that exists answers; none
    /// existing is an empty answer.
    pub async fn lookup(&self, name: &str, qtype: u16) -> Result<Vec<Record>, LookupError> {
        for candidate in self.candidates(name) {
            let answer = self.ask(&candidate, qtype).await?;
            if !answer.nxdomain {
                return Ok(answer.records);
            }
        }
        Ok(Vec::new())
    }

    /// One name at the first server that answers (then the next, on a timeout or an error).
    async fn ask(&self, name: &str, qtype: u16) -> Result<dns_wire::Answer, LookupError> {
        let mut last = LookupError::NoServer;
        for &server in &self.servers {
            match exchange(server, name, qtype, self.timeout).await {
                Ok(a) => return Ok(a),
                Err(message) => last = LookupError::Server { server, message },
            }
        }
        Err(last)
    }
}

fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

/// One question to one server: over UDP, again over TCP when the answer is truncated.
async fn exchange(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<dns_wire::Answer, String> {
    let id = random_id();
    let query = dns_wire::query(id, name, qtype).map_err(|e| e.to_string())?;
    let udp = tokio::time::timeout(timeout, udp_exchange(server, &query, id, qtype))
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))??;
    if !udp.truncated {
        return Ok(udp);
    }
    tokio::time::timeout(timeout, tcp_exchange(server, &query, id, qtype))
        .await
        .map_err(|_| format!("no TCP answer in {timeout:?}"))?
}

async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    qtype: u16,
) -> Result<dns_wire::Answer, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| e.to_string())?;
    // Connected: datagrams from anyone else are dropped by the kernel.
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; dns_wire::UDP_PAYLOAD as usize];
    loop {
        let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
        match dns_wire::parse(&buf[..n], id, qtype) {
            // A late answer to an earlier question: wait for ours.
            Err(dns_wire::WireError::OtherId(_)) => continue,
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    qtype: u16,
) -> Result<dns_wire::Answer, String> {
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await.map_err(|e| e.to_string())?;
    let len = s.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    dns_wire::parse(&buf, id, qtype).map_err(|e| e.to_string())
}

/// The scrape addresses (`host:port`) the records give, sorted and without repeats.
pub fn addresses(records: &[Record], port: Option<u16>) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::A(ip) => Some(format!("{ip}:{}", port?)),
            Record::Aaaa(ip) => Some(format!("[{ip}]:{}", port?)),
            // The SRV target's name, as Prometheus keeps it: it is resolved at each scrape.
            Record::Srv { port, target } => {
                Some(format!("{}:{port}", target.trim_end_matches('.')))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Asks every name each `refresh_interval` and sends the whole set when it changes. A name
/// that cannot be asked keeps its last addresses (a DNS blip does not retire targets); one that
/// does not exist has none. The first set waits for a round in which some name answered: sent
/// empty, it would resolve every alert restored from before a restart during a DNS outage as
/// gone (the target manager's grace ends them as `discovery_unavailable` instead).
pub async fn run(
    provider: usize,
    config: String,
    sd: DnsSd,
    updates: mpsc::Sender<Update>,
    metrics: SelfMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let resolver = Resolver::new(&sd.nameservers);
    let qtype = match sd.kind {
        DnsKind::A => TYPE_A,
        DnsKind::Aaaa => TYPE_AAAA,
        DnsKind::Srv => TYPE_SRV,
    };
    let mut per_name: Vec<Option<Vec<String>>> = vec![None; sd.names.len()];
    let mut failing = vec![false; sd.names.len()];
    let mut sent: Option<Vec<String>> = None;
    let mut ticker = tokio::time::interval(sd.refresh_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (i, name) in sd.names.iter().enumerate() {
            metrics.sd_lookups_total.with_label_values(&["dns"]).inc();
            match resolver.lookup(name, qtype).await {
                Ok(records) => {
                    if failing[i] {
                        tracing::info!(config = %config, name = %name, "DNS lookup recovered");
                    }
                    failing[i] = false;
                    per_name[i] = Some(addresses(&records, sd.port));
                }
                Err(e) => {
                    metrics
                        .sd_refresh_failures_total
                        .with_label_values(&["dns"])
                        .inc();
                    if !failing[i] {
                        tracing::warn!(config = %config, name = %name, error = %e, "DNS lookup failed; its last targets stay");
                    }
                    failing[i] = true;
                }
            }
        }
        if sent.is_none() && failing.iter().all(|&f| f) {
            continue;
        }
        let mut all: Vec<String> = per_name.iter().flatten().flatten().cloned().collect();
        all.sort();
        all.dedup();
        if sent.as_ref() != Some(&all) {
            let targets = all
                .iter()
                .map(|a| Discovered {
                    address: a.clone(),
                    ..Discovered::default()
                })
                .collect();
            if updates.send(Update { provider, targets }).await.is_err() {
                return;
            }
            sent = Some(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_search_list_is_tried_as_glibc_does() {
        let r = Resolver::from_resolv_conf(
            "# kubelet\nnameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(r.servers, vec!["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(r.timeout, Duration::from_secs(1));
        // Fewer dots than ndots: the search list first, as pods resolve names.
        assert_eq!(
            r.candidates("api-headless"),
            [
                "api-headless.shop.svc.cluster.local",
                "api-headless.svc.cluster.local",
                "api-headless.cluster.local",
                "api-headless"
            ]
        );
        assert_eq!(r.candidates("api.shop.svc.cluster.local.").len(), 1);
        let plain = Resolver::from_resolv_conf("nameserver ::1\nsearch corp\n");
        assert_eq!(plain.candidates("a.b"), ["a.b", "a.b.corp"]);
        assert_eq!(plain.servers, vec!["[::1]:53".parse().unwrap()]);
        // Servers given: names are taken as they are written.
        let given = Resolver::new(&["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(given.candidates("api"), ["api"]);
    }

    #[test]
    fn addresses_are_host_port_sorted_once() {
        let recs = [
            Record::A([10, 0, 0, 2].into()),
            Record::A([10, 0, 0, 1].into()),
            Record::A([10, 0, 0, 2].into()),
            Record::Aaaa("fd00::1".parse().unwrap()),
        ];
        assert_eq!(
            addresses(&recs, Some(8080)),
            ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]
        );
        let srv = [Record::Srv {
            port: 9100,
            target: "10-0-0-1.api.shop.svc.cluster.local.".into(),
        }];
        assert_eq!(
            addresses(&srv, None),
            ["10-0-0-1.api.shop.svc.cluster.local:9100"]
        );
    }
}
