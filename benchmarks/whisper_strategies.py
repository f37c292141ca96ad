"""Step time and peak memory of each Whisper fine-tuning strategy, side by side, on CPU.

    python benchmarks/whisper_strategies.py [--model whisper-tiny.en] [--batch 8] [--steps 3]

Each strategy runs in its own process (so peak memory is its own): `WhisTLE.from_config` on the
real weights, the strategy's ``train.trainable`` patterns, torch AdamW, and ``--steps`` timed
optimiser steps (after one untimed) on one fixed batch of real speech (the first ``--batch``
Asterisk test prompts). Step time is wall time and CPU time of the process (on a shared
machine the CPU time is the steadier number). Peak memory is the process's peak RSS (``ru_maxrss``) and its growth
over the loaded model; the adapter size is what ``OUT/adapter`` holds (float32 LoRA weights).
The GPU numbers of a real run differ (bf16, fused kernels); these compare the strategies.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "full, encoder frozen": {"strategy": "full", "freeze_encoder": True},
    "full, encoder trained": {"strategy": "full", "freeze_encoder": False},
    "full, encoder frozen, grad ckpt": {"strategy": "full", "freeze_encoder": True, "ckpt": True},
    "lora r16 (q,v)": {"strategy": "lora", "freeze_encoder": True},
    "lora r16 (q,v), encoder too": {"strategy": "lora", "freeze_encoder": False},
    "qlora r16 (q,v)": {"strategy": "qlora", "freeze_encoder": True},
}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, model_name: str, batch_size: int, steps: int) -> dict:
    import torch

    from westkit.data.corpora import make
    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.data.pipeline import tokenize
    from westkit.models.whistle import WhisperFinetuneConfig, WhisTLE
    from westkit.train import freeze
    from westkit.train.engine import enable_gradient_checkpointing

    spec = STRATEGIES[name]
    cfg = WhisperFinetuneConfig(model=model_name, strategy=spec["strategy"], freeze_encoder=spec["freeze_encoder"])
    model = WhisTLE.from_config(cfg)
    names = freeze(model, cfg.trainable_patterns())
    if spec.get("ckpt"):
        enable_gradient_checkpointing(model)
    loader = build_loader(LoaderConfig(shards=[str(make("asterisk-test", limit=60, progress=False))],
                                       max_batch_size=batch_size, max_batch_seconds=1e9, shuffle=False,
                                       num_workers=0), train=False,
                          steps=[tokenize("targets", model.text.targets)])
    batch = next(iter(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    loaded = rss_mb()
    model.train()
    times, cpu = [], []
    for i in range(steps + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    trainable = sum(p.numel() for p in params)
    adapter = sum(p.numel() * 4 for n, p in model.named_parameters() if "lora_" in n)
    return {"strategy": name, "trainable": trainable, "tensors": len(names),
            "total": sum(p.numel() for p in model.parameters()), "batch": len(batch["keys"]),
            "audio_s": round(float(batch["audio_lens"].sum()) / 16000, 1),
            "step_s": sum(times) / len(times), "cpu_s": sum(cpu) / len(cpu), "step_s_min": min(times), "step_s_max": max(times),
            "peak_rss_mb": rss_mb(), "growth_mb": rss_mb() - loaded, "adapter_mb": adapter / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-tiny.en")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", nargs="*", default=list(STRATEGIES))
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)   # child process: measure this strategy
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.batch, args.steps)))
        return 0
    rows = []
    for name in args.only:
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--model", args.model, "--batch",
                               str(args.batch), "--steps", str(args.steps)], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{name}: {r['step_s']:.2f} s/step, peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    print("| strategy | trainable params | step wall s (min-max) | step CPU s | peak RSS MB | growth MB | adapter MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        adapter = f"{r['adapter_mb']:.2f}" if r["adapter_mb"] else "-"
        print(f"| {r['strategy']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
              f"{r['step_s']:.2f} ({r['step_s_min']:.2f}-{r['step_s_max']:.2f}) | {r['cpu_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['growth_mb']:.0f} | {adapter} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
