//! anomaly-sidecar as a library: the pipeline's modules, for the binary (`main.rs`), the
//! fuzz targets (`fuzz/`) and benchmarks. The folders follow the pipeline: scrape → store →
//! detect → alert → export and notify, with config at the side.

pub mod alert;
pub mod app;
pub mod backtest;
pub mod config;
pub mod demo;
pub mod detect;
pub mod discover;
pub mod export;
pub mod failpoint;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod notify;
pub mod pipeline;
pub mod prefetch;
pub mod promapi;
pub mod scrape;
pub mod server;
pub mod store;
pub mod util;
