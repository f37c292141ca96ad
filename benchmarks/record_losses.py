"""Record the loss curves of the tiny WeST, WhisTLE stage-1 and stage-2 runs (2 processes).

A refactor must keep these curves identical: run this before and after, and compare.

    python benchmarks/record_losses.py --out exp/losses_before
    python benchmarks/record_losses.py --out exp/losses_after --compare exp/losses_before/losses.json
    python benchmarks/record_losses.py --out exp/losses_stage2 --runs stage1 stage2 \
        --compare benchmarks/recorded_losses.json       # only the recipes a change touched

Each run uses the shipped config with the real built-in models (whisper-tiny.en,
smollm2-135m-instruct), fixed seeds, ``torchrun --nproc_per_node 2`` on CPU (gloo) and one
record per step. Writes ``OUT/losses.json``: run -> list of (step, loss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = ["train.log_every=1", "train.save_every=0", "train.eval_every=0", "train.warmup_steps=2"]
RUNS = {
    "west": ("recipes/west/train.py", "recipes/west/conf/tiny.yaml",
             ["train.max_steps=6", "data.max_batch_size=4", "data.num_workers=0", "eval_data=null"]),
    "stage1": ("recipes/tle/train.py", "recipes/tle/conf/tle_tiny.yaml",
               ["train.max_steps=6", "data.max_batch_size=4", "data.num_workers=0", "eval_data=null"]),
    # WhisTLE stage 2 is the Whisper recipe with a text (TLE) and a tts source
    "stage2": ("recipes/whisper/train.py", "recipes/whisper/conf/whistle_stage2.yaml",
               ["train.max_steps=6", "mix.tts=1", "text.data.max_batch_size=4",
                "data.max_batch_size=4", "tts.max_batch_size=4",
                "data.num_workers=0", "tts.num_workers=0"]),
}


def run(name: str, out: Path, extra: list[str]) -> list[tuple[int, float]]:
    script, config, overrides = RUNS[name]
    run_dir = out / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29400 + list(RUNS).index(name)), script, "--config", config, "--out", str(run_dir),
           *COMMON, *overrides, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print("$ " + " ".join(cmd), flush=True)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and "loss" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--compare", help="a losses.json of an earlier run to compare with")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS),
                   help="record only these (stage2 trains on stage1's TLE, so it needs stage1)")
    args = p.parse_args(argv)
    if "stage2" in args.runs and "stage1" not in args.runs:
        p.error("--runs stage2 trains on the TLE of stage1: add stage1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = {"stage2": [f"text.tle={out / 'stage1'}"]}
    losses = {name: run(name, out, extra.get(name, [])) for name in RUNS if name in args.runs}
    (out / "losses.json").write_text(json.dumps(losses, indent=1) + "\n")
    for name, rows in losses.items():
        print(f"{name}: " + " ".join(f"{loss:.6f}" for _, loss in rows))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        for name, rows in losses.items():
            old = [tuple(r) for r in before.get(name, [])]
            worst = max((abs(a[1] - b[1]) for a, b in zip(rows, old)), default=float("nan"))
            same = [tuple(r) for r in rows] == old
            print(f"{name}: {'identical' if same else 'DIFFERENT'} (max |diff| {worst:.3g}, "
                  f"{len(rows)} vs {len(old)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
