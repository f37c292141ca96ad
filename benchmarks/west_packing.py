"""Training step throughput: packed vs padded (bucketed) WeST batches, side by side.

    python benchmarks/west_packing.py [--batches 3] [--max-batch-seconds 30] [--device cpu]

Three modes run one forward + backward of the same model (frozen whisper-tiny.en + trainable
conv1d projector + frozen SmolLM2-135M-Instruct) on the same batches, in turn, for two batch
plans of general-train: tiny.yaml's fine duration buckets, and the loader's default coarse
buckets (2, 4, 6, ... s; more padding); the order of the modes rotates from batch to batch:
  padded   left-padded rows (the default);
  block    ``model.pack`` on plain sdpa: the rows concatenated into one sequence without
           padding, positions restarting per utterance, attention over the whole sequence
           under a block-diagonal causal mask;
  packed   ``model.pack`` as shipped: the same sequence, attention on each utterance alone
           (`westkit.models.packed_attention`; flash-attention varlen where installed).
All three give the same loss (checked per batch). Prints LLM padding and target tokens/s.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from westkit.config import load_yaml
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.pipeline import tokenize
from westkit.models.packed_attention import PACKED_SDPA
from westkit.models.projector import ProjectorConfig
from westkit.models.west import WestConfig, WestModel
from westkit.train import freeze

MODES = ("padded", "block", "packed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(model: WestModel, batch: dict, mode: str, device) -> tuple[float, dict]:
    model.pack = mode != "padded"
    model.llm.set_attn_implementation("sdpa" if mode == "block" else PACKED_SDPA)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(batch)
    out["loss"].backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=3, help="timed batches per plan (after one warm-up)")
    p.add_argument("--max-batch-seconds", type=float, default=30.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = WestModel.from_config(WestConfig(projector=ProjectorConfig(rate=5), pack=True)).to(device)
    freeze(model, ["projector.*"])
    tiny_buckets = load_yaml(os.path.join(ROOT, "recipes/west/conf/tiny.yaml"))["data"]["buckets"]
    print(f"device {device} ({torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"LLM attention {model.llm.config._attn_implementation}); whisper-tiny.en + SmolLM2-135M, "
          f"batches of <= {args.max_batch_seconds:g} s")
    for plan, buckets in (("tiny.yaml buckets", tiny_buckets), ("default buckets", LoaderConfig(shards=["general-train"]).buckets)):
        cfg = LoaderConfig(shards=["general-train"], max_batch_seconds=args.max_batch_seconds, max_batch_size=16,
                           buckets=list(buckets), seed=0, num_workers=0)
        loader = build_loader(cfg, steps=[tokenize("targets", model.prompt.target)])
        sums = {**dict.fromkeys(MODES, 0.0), "tokens": 0, "llm_padding": 0.0}
        for i, batch in enumerate(loader):
            if i > args.batches:
                break
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            times, outs = {}, {}
            first = i % len(MODES)  # each mode goes first in turn
            for mode in MODES[first:] + MODES[:first]:
                times[mode], outs[mode] = step(model, batch, mode, device)
            ref = float(outs["padded"]["loss"].detach())
            for mode in MODES:
                assert abs(float(outs[mode]["loss"].detach()) - ref) < 1e-3 * max(1.0, abs(ref)), mode
            out = outs["padded"]
            tag = "warm-up" if i == 0 else f"batch {i}"
            print(f"  {plan:<17} {tag:>8}: {len(batch['keys']):2d} utts, {int(out['num_tokens']):4d} targets, "
                  f"LLM padding {100 * float(out['llm_padding']):4.1f}%  "
                  + "  ".join(f"{m} {times[m]:5.2f} s" for m in MODES)
                  + f"  packed x{times['padded'] / times['packed']:.2f}")
            if i:
                for mode in MODES:
                    sums[mode] += times[mode]
                sums["tokens"] += int(out["num_tokens"])
                sums["llm_padding"] += float(out["llm_padding"])
        n = args.batches
        rates = ", ".join(f"{m} {sums['tokens'] / sums[m]:.1f}" for m in MODES)
        print(f"{plan}: mean LLM padding {100 * sums['llm_padding'] / n:.1f}%; target tokens/s {rates} "
              f"(packed/padded x{sums['padded'] / sums['packed']:.2f}, block/padded x{sums['padded'] / sums['block']:.2f})")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
