"""The numbers of docs/whisper.md: fine-tune whisper-tiny.en on Asterisk (real telephone speech)
with each strategy and score it on held-out Asterisk prompts and on general-domain speech.

    python benchmarks/whisper_results.py --out exp/whisper_results [--steps 30] [--seeds 0]

Per run: ``recipes/whisper/train.py --config recipes/whisper/conf/tiny.yaml`` on asterisk-train
(271 prompts) for ``--steps`` steps, then ``westkit evaluate`` of its ``hf/`` export and of the
base model on the first ``--limit`` utterances of asterisk-test and general-test (espeak-ng).
Writes ``OUT/results.json`` and prints a markdown table.
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
    for name in args.runs:
        for seed in args.seeds:
            key = f"{name} seed {seed}"
            if key in results:
                continue
            run = out / re.sub(r"\W+", "_", key).strip("_")
            started = time.time()
            sh([sys.executable, "recipes/whisper/train.py", "--config", "recipes/whisper/conf/tiny.yaml",
                "--out", str(run), *RUNS[name], f"train.seed={seed}", f"data.seed={seed}",
                f"train.max_steps={args.steps}", "train.eval_every=0", "train.save_every=0",
                f"train.warmup_steps={max(1, args.steps // 10)}", "data.max_batch_size=8",
                f"eval_data.shards=[{sets['asterisk-test']}]", "train.log_every=5"], run.with_suffix(".log"))
            train_s = time.time() - started
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            train_rows = [r for r in rows if r.get("kind") == "train"]
            results[key] = {s: evaluate(str(run / "hf"), d, out / f"{run.name}_{s}.log") for s, d in sets.items()}
            results[key].update(train_seconds=round(train_s), final_loss=train_rows[-1]["loss"],
                                step_time=sum(r["step_time"] for r in train_rows) / len(train_rows))
            path.write_text(json.dumps(results, indent=1))
    print(f"| model | Asterisk test WER % | general-test WER % | final train loss |")
    print("|---|---|---|---|")
    for key, r in results.items():
        print(f"| {key} | {r['asterisk-test']['wer']:.2f} | {r['general-test']['wer']:.2f} | {r.get('final_loss', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
