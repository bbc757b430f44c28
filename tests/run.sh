#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (promtool, node_exporter,
# Alertmanager) and runs every check CI runs: formatting, clippy, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v promtool >/dev/null || ! command -v prometheus-node-exporter >/dev/null \
  || ! command -v prometheus-alertmanager >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter prometheus-alertmanager >/dev/null
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# CI=true makes integration tests fail, not skip, when a tool is missing.
CI="${CI:-true}" cargo test --locked
