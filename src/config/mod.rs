//! Configuration: command-line flags (each also an `ANOMALY_SIDECAR_*` variable) and the
//! validated rules file.

pub mod flags;
pub mod glob;
pub mod kube_sd;
pub mod rules;
pub mod selector;
pub mod targets;
pub mod template;
pub mod web;
pub mod yaml;

pub use rules::{Rule, RuleSet, Transform};
