"""recognize throughput: batched (length-sorted, left-padded, KV cache) vs batch size 1,
with a check that both give identical hypotheses.

    python benchmarks/recognize_batching.py [--west RUN_DIR] [--utterances 16] [--batch-size 16]

Without ``--west`` the model is whisper-tiny.en + SmolLM2-135M-Instruct with a freshly
initialised projector: its hypotheses are not transcripts, but the work per utterance (prompt,
audio, generated tokens up to the duration-tied budget) is what decoding costs.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.decode.recognize import list_batches
from westkit.decode.recognizers import WestRecognizer
from westkit.decode.search import GenerateConfig


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--west", help="a west run folder; default: real assets, untrained projector")
    p.add_argument("--utterances", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    gen = GenerateConfig(max_new_tokens=args.max_new_tokens)
    if args.west:
        rec = WestRecognizer.load(args.west, None, None, gen, device, torch.float32)
    else:
        from westkit.models.west import WestConfig, WestModel
        torch.manual_seed(0)
        rec = WestRecognizer(WestModel.from_config(WestConfig()).to(device), gen)
    shards = corpora.make("general-test", limit=args.utterances)
    samples = []
    for b in build_loader(LoaderConfig(shards=[str(shards)], max_batch_size=1, shuffle=False, num_workers=0),
                          train=False):
        n = int(b["audio_lens"][0])
        samples.append({"key": b["keys"][0], "audio": b["audio"][0, :n].numpy(), "text": b["texts"][0],
                        "lang": "", "duration": n / 16000})
    audio_s = sum(s["duration"] for s in samples)
    print(f"device {device} ({torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"{len(samples)} utterances, {audio_s:.1f} s of audio; model: {args.west or 'untrained projector'}")
    results = {}
    for bs in (args.batch_size, 1):
        hyps, tokens = {}, 0
        start = time.perf_counter()
        for batch in list_batches(samples, bs, 1e9):
            out = rec(batch["audio"].to(device), batch["audio_lens"].to(device))
            for key, t in zip(batch["keys"], out):
                hyps[key] = text = t.text
                tokens += len(rec.model.prompt.tokenizer(text, add_special_tokens=False).input_ids)
        seconds = time.perf_counter() - start
        results[bs] = hyps
        print(f"batch {bs:>3}: {seconds:7.1f} s  ({audio_s / seconds:5.2f} s of audio per s, "
              f"{len(samples) / seconds:5.2f} utt/s, ~{tokens} tokens out)")
    same = results[args.batch_size] == results[1]
    print(f"identical hypotheses at batch {args.batch_size} and batch 1: {same}")
    if not same:
        diff = [k for k in results[1] if results[1][k] != results[args.batch_size][k]]
        print(f"differ on {len(diff)}: {diff[:5]}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
