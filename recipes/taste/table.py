"""Summarise TASTE runs: the last eval record of each run folder as a markdown table, and the
mean +- standard deviation over seeds of runs that differ only in ``train.seed``.

    python recipes/taste/table.py exp/taste/d0_s0 exp/taste/d0_s1 exp/taste/d4_s0 exp/taste/d4_s1
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from westkit.train.logger import read_metrics

COLUMNS = ("acc_taste", "acc_baseline", "uer_taste", "uer_baseline", "eval_loss_taste", "eval_loss_baseline",
           "bitrate", "codebook_usage", "codebook_perplexity")


def last_eval(run: Path) -> dict:
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"]
    if not evals:
        raise ValueError(f"{run}: no eval record in metrics.jsonl (did the run finish?)")
    return evals[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    groups: dict[str, list[dict]] = {}
    print("| run | depth | seed | step | " + " | ".join(COLUMNS) + " |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    for run in args.runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        r = last_eval(run)
        depth, seed = cfg["model"]["rvq_depth"], cfg["train"]["seed"]
        groups.setdefault(f"rvq_depth={depth}", []).append(r)
        cells = [f"{r[c]:.4f}" if c in r else "-" for c in COLUMNS]
        print(f"| {run.name} | {depth} | {seed} | {int(r['step'])} | " + " | ".join(cells) + " |")
    print()
    print("| setting | runs | " + " | ".join(COLUMNS) + " |")
    print("|---" * (2 + len(COLUMNS)) + "|")
    for name, rows in groups.items():
        cells = []
        for c in COLUMNS:
            vals = [r[c] for r in rows if c in r]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4f}")
            else:
                cells.append(f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}")
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"table.py: error: {e}", file=sys.stderr)
        sys.exit(2)
