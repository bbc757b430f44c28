#!/usr/bin/env bash
# Scores a rules file on the labelled NAB series in ../shared/eval (see its README):
#   bench/nab.sh [RULES]        (default bench/nab-rules.yaml; NAB_OUT=DIR keeps the outputs)
# Runs `anomaly-sidecar backtest` over every CSV there with one rules file for all series,
# as an operator would have, then prints the scorer's summary twice: for the events (the
# rules' own operating point: where alerts fired) and for the scores (threshold tuned by
# the scorer).
#   bench/nab.sh --cv [GRID]   leave-one-category-out choice over a grid of rules
#                              (default bench/nab-grid.json; see bench/nab_cv.py)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--cv" ]; then
  bin=${ANOMALY_SIDECAR:-$root/target/release/anomaly-sidecar}
  [ -x "$bin" ] || cargo build --release --manifest-path "$root/Cargo.toml"
  exec python3 "$root/bench/nab_cv.py" --bin "$bin" --grid "${2:-$root/bench/nab-grid.json}"
fi
rules=${1:-$root/bench/nab-rules.yaml}
eval_dir=${NAB_EVAL:-$root/../shared/eval}
bin=${ANOMALY_SIDECAR:-$root/target/release/anomaly-sidecar}
if [ ! -x "$bin" ]; then
  cargo build --release --manifest-path "$root/Cargo.toml"
fi
work=${NAB_OUT:-$(mktemp -d)}
mkdir -p "$work/backtest"
for dir in "$eval_dir"/nab/data/*/; do
  category=$(basename "$dir")
  "$bin" backtest --rules "$rules" --csv "$dir"*.csv --out "$work/backtest/$category" \
    > "$work/backtest/$category.summary.txt" 2>/dev/null || {
      "$bin" backtest --rules "$rules" --csv "$dir"*.csv --out "$work/backtest/$category" >/dev/null
      exit 1
    }
  mkdir -p "$work/scores/$category" "$work/events/$category"
  for f in "$dir"*.csv; do
    name=$(basename "$f" .csv)
    cp "$work/backtest/$category/$name.csv" "$work/scores/$category/$name.csv"
    cp "$work/backtest/$category/$name.events.csv" "$work/events/$category/$name.csv"
  done
done
echo "rules: $rules"
echo "== events (the rules' own operating point)"
python3 "$eval_dir/nab_score.py" "$work/events" --events
echo "== scores (threshold tuned by the scorer)"
python3 "$eval_dir/nab_score.py" "$work/scores"
[ -n "${NAB_OUT:-}" ] || rm -rf "$work"
