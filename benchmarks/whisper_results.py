"""The numbers of docs/whisper.md: fine-tune whisper-tiny.en on Asterisk (real telephone speech)
with each strategy and score it on held-out Asterisk prompts and on general-domain speech.

    python benchmarks/whisper_results.py --out exp/whisper_results [--steps 30] [--seeds 0 1 2] [--runs lora ...]

Per run and seed: ``recipes/whisper/train.py --config recipes/whisper/conf/tiny.yaml`` on
asterisk-train (271 prompts) for ``--steps`` steps with ``train.seed`` = ``data.seed`` = the seed,
then ``westkit evaluate`` of its ``hf/`` export (and, once, of the base model) on the first
``--limit`` utterances of asterisk-test and general-test (espeak-ng). QLoRA runs also keep the
recipe's own end-of-training evaluation on asterisk-test (the live 4-bit model, ``live_wer``),
which must agree with its merged export; for full and LoRA the export is the trained model
itself, so it is not decoded twice. Results accumulate in ``OUT/results.json`` (a finished
run/seed is not run again); the printed table gives, per run, the mean and min-max over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # name: overrides
    "full (encoder frozen)": ["whisper.strategy=full", "whisper.freeze_encoder=true"],
    "full (encoder trained)": ["whisper.strategy=full", "whisper.freeze_encoder=false"],
    "lora": ["whisper.strategy=lora"],
    "qlora": ["whisper.strategy=qlora"],
}
LIVE_EVAL = {"qlora"}   # runs whose training-time evaluation is recorded beside the export's


def sh(cmd: list[str], log: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    (log.with_suffix(".out")).write_text(proc.stdout)
    if proc.returncode:
        raise SystemExit(f"failed (exit {proc.returncode}): see {log}")
    return proc.stdout


def evaluate(model: str, data: str, log: Path) -> dict:
    out = sh([sys.executable, "-m", "westkit.cli", "evaluate", data, "--model", model, "--worst", "3"], log)
    row = out.splitlines()[1].split()
    return {"wer": float(row[-8]), "rtf": float(row[-1])}


def train_and_evaluate(name: str, seed: int, steps: int, sets: dict[str, str], out: Path) -> dict:
    """One recipe run of ``RUNS[name]`` with ``seed``, then its export scored on every set."""
    run = out / re.sub(r"\W+", "_", f"{name} seed {seed}").strip("_")
    evals = ([f"eval_data.shards=[{sets['asterisk-test']}]"] if name in LIVE_EVAL else ["eval_data=null"])
    started = time.time()
    sh([sys.executable, "recipes/whisper/train.py", "--config", "recipes/whisper/conf/tiny.yaml",
        "--out", str(run), *RUNS[name], f"train.seed={seed}", f"data.seed={seed}",
        f"train.max_steps={steps}", "train.eval_every=0", "train.save_every=0",
        f"train.warmup_steps={max(1, steps // 10)}", "data.max_batch_size=8", *evals,
        "train.log_every=5"], run.with_suffix(".log"))
    train_s = time.time() - started
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    result = {s: evaluate(str(run / "hf"), d, out / f"{run.name}_{s}.log") for s, d in sets.items()}
    result.update(seed=seed, train_seconds=round(train_s), losses={r["step"]: r["loss"] for r in train_rows},
                  step_time=sum(r["step_time"] for r in train_rows) / len(train_rows))
    live = [r["dev_wer"] for r in rows if "dev_wer" in r]
    if live:
        result["live_wer"] = 100 * live[-1]
    return result


def summary(results: dict, names: list[str]) -> str:
    """Markdown: base, then per run the mean (min-max) over its seeds of each set's WER."""
    lines = ["| model | seeds | Asterisk test WER % mean (min-max) | general-test WER % mean (min-max) |",
             "|---|---|---|---|"]
    base = results["base"]
    lines.append(f"| base | - | {base['asterisk-test']['wer']:.2f} | {base['general-test']['wer']:.2f} |")
    for name in names:
        rows = [r for k, r in results.items() if k.startswith(f"{name} seed ")]
        if not rows:
            continue
        cells = []
        for s in ("asterisk-test", "general-test"):
            w = [r[s]["wer"] for r in rows]
            cells.append(f"{sum(w) / len(w):.2f} ({min(w):.2f}-{max(w):.2f})")
        seeds = ",".join(str(r["seed"]) for r in rows)
        lines.append(f"| {name} | {seeds} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", nargs="*", default=list(RUNS))
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from westkit.data import corpora
    sets = {name: str(corpora.make(name, limit=args.limit, progress=False)) for name in ("asterisk-test", "general-test")}
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if "base" not in results:
        results["base"] = {s: evaluate("whisper-tiny.en", d, out / f"base_{s}.log") for s, d in sets.items()}
        path.write_text(json.dumps(results, indent=1))
    for seed in args.seeds:          # seeds outermost: an interrupted sweep has whole seeds
        for name in args.runs:
            key = f"{name} seed {seed}"
            if key not in results:
                results[key] = train_and_evaluate(name, seed, args.steps, sets, out)
                path.write_text(json.dumps(results, indent=1))
    print(summary(results, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
