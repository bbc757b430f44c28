//! Integration tests: each runs the real binary against peers served on 127.0.0.1.

mod common;

mod alertmanager;
mod backtest;
mod check;
mod crash;
mod deploy;
mod detection;
mod discovery;
mod disk;
mod failures;
mod faults;
mod kubernetes;
mod lifecycle;
mod llm;
mod node_exporter;
mod notify;
mod prometheus_path;
mod reload;
mod scrape_auth;
mod seasonal;
mod store;
mod warmup;
mod web;
