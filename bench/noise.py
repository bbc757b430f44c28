#!/usr/bin/env python3
"""False firings on incident-free noise: every method with only its required parameters.

    python3 bench/noise.py [--days 7] [--seeds 3] [--bin target/release/anomaly-sidecar]

Writes a week of 15 s samples per seed for two kinds of noise that contain no incident:
white (i.i.d. normal) and AR(1) with phi = 0.9 (consecutive samples correlated, as most
real gauges are), replays each through `anomaly-sidecar backtest` with a rules file that
says only `method: X` (plus what the method requires), and prints the firings per week.
Every firing here is a false page. Goal: at most 7 a week for every method and noise.
`threshold` is left out: its only parameter is the line itself, which is the operator's.
Extra rule keys for every method can be given with --extra z_threshold=4 (or 'key: value').
"""
import argparse
import csv
import datetime as dt
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile

METHODS = ["zscore", "iqr", "mad", "ewma", "seasonal", "trend"]
STEP_S = 15


def series(kind, n, seed):
    rng = random.Random(seed)
    x = 0.0
    out = []
    for _ in range(n):
        e = rng.gauss(0.0, 1.0)
        if kind == "white":
            x = e
        else:  # AR(1), phi 0.9, scaled to unit variance
            x = 0.9 * x + math.sqrt(1 - 0.81) * e
        out.append(100.0 + 5.0 * x)
    return out


def write_csv(path, values):
    start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        for i, v in enumerate(values):
            t = start + dt.timedelta(seconds=STEP_S * i)
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S"), f"{v:.6f}"])


def firings(binary, rules, csvs, out):
    p = subprocess.run(
        [binary, "backtest", "--rules", rules, "--csv", *csvs, "--out", out],
        capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"backtest failed: {p.stderr}")
    counts = {}
    for c in csvs:
        name = os.path.splitext(os.path.basename(c))[0]
        with open(os.path.join(out, name + ".events.csv")) as f:
            counts[name] = sum(1 for _ in f) - 1
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bin", default="target/release/anomaly-sidecar")
    ap.add_argument("--extra", action="append", default=[],
                    help="a rule key for every method, e.g. 'window: 240'")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    n = int(args.days * 86400 / STEP_S)
    work = tempfile.mkdtemp(prefix="noise-")
    csvs = []
    for kind in ["white", "ar1"]:
        for seed in range(args.seeds):
            path = os.path.join(work, f"{kind}_{seed}.csv")
            write_csv(path, series(kind, n, 1000 + seed))
            csvs.append(path)
    week = 7 / args.days
    print(f"{n} samples per series ({args.days:g} days at {STEP_S}s), {args.seeds} seeds; "
          f"firings per week (median of seeds, then each seed)")
    print(f"{'method':10} {'white':>8} {'ar1':>8}   white seeds / ar1 seeds")
    worst = 0.0
    for m in args.methods.split(","):
        rules = os.path.join(work, f"{m}.yaml")
        with open(rules, "w") as f:
            f.write("rules:\n  - name: noise\n    match: '{__name__=~\".+\"}'\n")
            f.write(f"    method: {m}\n")
            for e in args.extra:
                f.write(f"    {e.replace('=', ': ', 1) if ':' not in e else e}\n")
        counts = firings(args.bin, rules, csvs, os.path.join(work, m))
        row = {}
        for kind in ["white", "ar1"]:
            per = [counts[f"{kind}_{s}"] * week for s in range(args.seeds)]
            row[kind] = per
            worst = max(worst, max(per))
        print(f"{m:10} {statistics.median(row['white']):8.1f} {statistics.median(row['ar1']):8.1f}"
              f"   {' '.join(f'{v:.0f}' for v in row['white'])} / "
              f"{' '.join(f'{v:.0f}' for v in row['ar1'])}")
    print(f"worst seed: {worst:.0f} firings per week (goal <= 7)")


if __name__ == "__main__":
    main()
