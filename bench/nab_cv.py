#!/usr/bin/env python3
"""Leave-one-category-out choice of a preset on the labelled NAB series (bench/nab.sh --cv).

    python3 bench/nab_cv.py [--grid bench/nab-grid.json] [--bin target/release/anomaly-sidecar]

Every candidate of the grid (one rules file each) is backtested once over the shared NAB
subset and scored at its own operating point (events: where its alerts fired), standard
profile. Then, for each category in turn, the candidate with the best score on the other
three is chosen and scored on the held-out one. A preset is only as good as its held-out
scores: the in-sample score (the best candidate on all four) minus the held-out mean is how
much of it is fitted. artificialNoAnomaly has no labelled window, so its held-out "score" is
its false events (a NAB score needs windows); the mean is over the three other categories.
The candidate chosen on all four is what the shipped preset should be.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.environ.get("NAB_EVAL", os.path.join(ROOT, "..", "shared", "eval"))
sys.path.insert(0, EVAL)
import nab_score  # noqa: E402  (the shared scorer: load, tally, summarise)

TP, FP, FN = nab_score.PROFILES["standard"][:3]


def candidates(grid):
    """Each combination of the grid's lists: {"name": ..., "rule": {key: value}}."""
    out = []
    for family in grid:
        keys = sorted(family["vary"])
        for combo in itertools.product(*(family["vary"][k] for k in keys)):
            rule = dict(family["fixed"])
            rule.update(dict(zip(keys, combo)))
            name = family["name"] + "".join(f" {k}={v}" for k, v in zip(keys, combo))
            out.append({"name": name, "rule": rule})
    return out


def rules_yaml(rule):
    lines = ["rules:", "  - name: nab", "    match: '{__name__=~\".+\"}'"]
    for k, v in rule.items():
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{a}: {b}" for a, b in v.items()) + "}"
        lines.append(f"    {k}: {v}")
    return "\n".join(lines) + "\n"


def backtest(binary, rules_path, work):
    """Events of every data file, laid out for the scorer: work/<category>/<file>.csv."""
    data = os.path.join(EVAL, "nab", "data")
    for category in sorted(os.listdir(data)):
        csvs = sorted(os.path.join(data, category, f) for f in os.listdir(os.path.join(data, category)))
        out = os.path.join(work, "bt", category)
        p = subprocess.run([binary, "backtest", "--rules", rules_path, "--csv", *csvs, "--out", out],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"backtest failed on {rules_path}: {p.stderr}")
        os.makedirs(os.path.join(work, "ev", category), exist_ok=True)
        for c in csvs:
            name = os.path.basename(c)
            os.replace(os.path.join(out, name[:-4] + ".events.csv"),
                       os.path.join(work, "ev", category, name))
    files = nab_score.load(os.path.join(work, "ev"), os.path.join(EVAL, "nab", "combined_windows.json"),
                           data, True)
    return [(f, nab_score.tally(f["rows"], 1.0)) for f in files]


def score(pairs, categories):
    chosen = [p for p in pairs if p[0]["category"] in categories]
    norm, det, n, fp_rows, _ = nab_score.summarise(chosen, TP, FP, FN)
    return norm, fp_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=os.path.join(ROOT, "bench", "nab-grid.json"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "anomaly-sidecar"))
    ap.add_argument("--top", type=int, default=5, help="candidates listed, best first")
    args = ap.parse_args()
    with open(args.grid) as f:
        grid = json.load(f)
    cands = candidates(grid)
    work = tempfile.mkdtemp(prefix="nab-cv-")
    results = []
    for i, c in enumerate(cands):
        path = os.path.join(work, f"c{i}.yaml")
        with open(path, "w") as f:
            f.write(rules_yaml(c["rule"]))
        results.append(backtest(args.bin, path, os.path.join(work, f"c{i}")))
    categories = sorted({f["category"] for f, _ in results[0]})
    with_windows = [c for c in categories if any(f["windows"] for f, _ in results[0] if f["category"] == c)]
    everything = score_all = [score(r, categories)[0] for r in results]
    order = sorted(range(len(cands)), key=lambda i: -(score_all[i] or -1e9))
    print(f"{len(cands)} candidates; events, standard profile\n")
    print(f"{'in-sample':>9}  " + "  ".join(f"{c[:14]:>14}" for c in categories) + "  candidate")
    for i in order[:args.top]:
        per = [score(results[i], [c]) for c in categories]
        cells = [f"{'fp ' + str(fp):>14}" if s is None else f"{s:14.1f}" for s, fp in per]
        print(f"{everything[i]:9.1f}  " + "  ".join(cells) + f"  {cands[i]['name']}")
    print("\nleave one category out: chosen on the other three, scored on the held-out one")
    held = []
    for c in categories:
        train = [x for x in categories if x != c]
        best = max(range(len(cands)), key=lambda i: score(results[i], train)[0] or -1e9)
        s, fp = score(results[best], [c])
        train_s = score(results[best], train)[0]
        shown = f"fp {fp}" if s is None else f"{s:.1f}"
        print(f"  {c:<24} held-out {shown:>8}  (train {train_s:.1f})  {cands[best]['name']}")
        if s is not None:
            held.append(s)
    best_all = order[0]
    mean = sum(held) / len(held)
    print(f"\nin-sample {everything[best_all]:.1f}  held-out mean {mean:.1f} "
          f"(over {', '.join(with_windows)})  gap {everything[best_all] - mean:.1f}")
    print(f"chosen on all four: {cands[best_all]['name']}")


if __name__ == "__main__":
    main()
