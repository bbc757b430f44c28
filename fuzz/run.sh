#!/usr/bin/env bash
# Fuzzes the sidecar's input paths with libFuzzer through cargo-fuzz:
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default 300 s, every target)
# Targets: rules_yaml, selector, exposition, detector (src/fuzzing.rs says what each feeds and
# checks). The corpus grows in fuzz/corpus/ (not committed), seeded from fuzz/seeds/. A crash
# stops with the input in fuzz/artifacts/<target>/: fix it, then copy that input into
# fuzz/regressions/<target>/ so `cargo test` replays it from then on.
# cargo-fuzz wants nightly for its sanitizer flags; RUSTC_BOOTSTRAP lets the stable toolchain
# build them. Our few `unsafe` lines (prefetch hints, one UTF-8 conversion after simdutf8's
# check) touch no memory they could corrupt, so no sanitizer (--sanitizer none): full speed.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(rules_yaml selector exposition detector); fi

TOOLS="$PWD/../target/tools"
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

cargo fuzz build --sanitizer none -O
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${SECONDS_PER_TARGET}s"
  cargo fuzz run --sanitizer none -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done)" || true
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "$t: found a failing input in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
