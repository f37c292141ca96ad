"""Training step time: westkit's WeST batches vs a WeST-v1-style batch, same models, same audio.

    python benchmarks/west_step_time.py [--batches 3] [--batch-size 4] [--device cpu]

ours:  duration-bucketed batch, encoder on the real length, audio embeddings per utterance
       length, left-padded prompt to the batch's longest row, logits only for target positions.
v1:    every utterance padded to Whisper's 30 s window (1500 encoder states -> 1500/rate audio
       embeddings each) and the token sequence padded to 512, logits over the whole sequence
       (WeST v1's `model_max_length 512`).
Both: one forward + backward of the same frozen whisper + frozen LLM with a trainable projector
(fp32 on CPU, bf16 autocast on GPU), on the same utterances. Prints per-step times and the ratio.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.models.projector import ProjectorConfig
from westkit.models.west import WestConfig, WestModel
from westkit.models.losses import token_cross_entropy
from westkit.train import freeze

V1_LEN = 512


def v1_step(model: WestModel, batch: dict) -> float:
    """WeST v1: 30 s audio windows, right-padded to 512 tokens, full-sequence logits."""
    model.encoder.pad_to_30s = True
    try:
        inputs = model.prompt_inputs(batch["audio"], batch["audio_lens"], batch["texts"])
    finally:
        model.encoder.pad_to_30s = False
    pad = V1_LEN - inputs["inputs_embeds"].shape[1]
    if pad < 0:
        raise ValueError(f"a v1 row is {inputs['inputs_embeds'].shape[1]} tokens, over {V1_LEN}")
    emb = torch.nn.functional.pad(inputs["inputs_embeds"], (0, 0, 0, pad))
    mask = torch.nn.functional.pad(inputs["attention_mask"], (0, pad))
    labels = torch.nn.functional.pad(inputs["labels"], (0, pad), value=-100)
    logits = model.llm(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
    loss, _ = token_cross_entropy(logits[:, :-1], labels[:, 1:])
    loss.backward()
    return float(loss)


def ours_step(model: WestModel, batch: dict) -> float:
    loss = model(batch)["loss"]
    loss.backward()
    return float(loss)


def timed(fn, model, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        fn(model, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="whisper-tiny.en")
    p.add_argument("--llm", default="smollm2-135m-instruct")
    p.add_argument("--rate", type=int, default=4)
    p.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = WestModel.from_config(WestConfig(encoder=args.encoder, llm=args.llm,
                                             projector=ProjectorConfig(rate=args.rate))).to(device)
    freeze(model, ["projector.*"])
    loader = build_loader(LoaderConfig(shards=[str(corpora.make("general-train"))], max_batch_size=args.batch_size,
                                       max_batch_seconds=1e9, seed=0, num_workers=0), train=True)
    batches = []
    for batch in loader:
        if len(batch["keys"]) == args.batch_size:
            batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        if len(batches) == args.batches + 1:
            break
    print(f"device {device} ({torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"{args.encoder} + {args.llm}, conv1d rate {args.rate}, batch {args.batch_size}")
    totals = {"ours": 0.0, "v1": 0.0}
    for i, batch in enumerate(batches):
        audio_s = float(batch["audio_lens"].sum()) / 16000
        row = {}
        for name, fn in (("ours", ours_step), ("v1", v1_step)):  # alternate: same load on both
            row[name] = timed(fn, model, batch, device)
            if i:
                totals[name] += row[name]
        tag = "warm-up" if i == 0 else f"batch {i}"
        print(f"{tag:>8}: {audio_s:5.1f} s audio  ours {row['ours']:7.2f} s  v1 {row['v1']:7.2f} s  "
              f"x{row['v1'] / row['ours']:.1f}")
    n = max(len(batches) - 1, 1)
    print(f"mean step: ours {totals['ours'] / n:.2f} s, v1 {totals['v1'] / n:.2f} s, "
          f"speed-up x{totals['v1'] / totals['ours']:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
