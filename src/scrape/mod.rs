//! Fetching targets: one loop per target, scrapes never overlap, each result (samples or the
//! reason it failed) goes to the pipeline. Never touches the store.

pub mod parse;
