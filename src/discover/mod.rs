//! Where targets come from besides `--target`: discovery configs in `--targets-file` (DNS)
//! each send their whole current set of addresses when it changes, and `--shard` picks this
//! replica's share. The target manager (`scrape::manager`) turns the sets into scrape loops.

pub mod dns;
pub mod dns_wire;
pub mod shard;

pub use shard::Shard;

/// One address a discovery config found, with the target labels it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// `host:port`: the scrape address and the `target` label.
    pub address: String,
    pub labels: Vec<(String, String)>,
}

/// The whole current set of one discovery config (its index in the targets file's list).
#[derive(Debug, Clone)]
pub struct Update {
    pub provider: usize,
    pub targets: Vec<Discovered>,
}
