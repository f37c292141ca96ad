"""Loader throughput: westkit's shard loader + on-device LogMel vs a naive per-sample loop.

The naive loop is what WeST-style code does: read a jsonl line, `soundfile.read` the wav,
run `WhisperFeatureExtractor` (30 s padding) one utterance at a time. westkit reads planned
batches from shards in DataLoader workers and computes variable-length log-mels batched in torch.
Both see the same utterances (one pass over a corpus); the table reports utterances/s and
audio-seconds/s. Preparing the naive loop's wav files and jsonl is not timed.

    python benchmarks/data_loader.py                       # general-train, 2 workers
    python benchmarks/data_loader.py --corpus asterisk-test --workers 4 --device cuda
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch


def prepare_jsonl(folder: Path, out: Path) -> tuple[Path, int]:
    """Export a shard folder to wav files + a WeST jsonl (the naive loop's input)."""
    from westkit.data.loader import LoaderConfig, build_loader

    cfg = LoaderConfig(shards=[str(folder)], num_workers=0, shuffle=False, max_duration=1e9, min_duration=0.0)
    lines = []
    for batch in build_loader(cfg, train=False):
        for key, audio, n, text in zip(batch["keys"], batch["audio"], batch["audio_lens"], batch["texts"]):
            wav = out / f"{key}.wav"
            sf.write(wav, audio[:n].numpy(), 16000, subtype="PCM_16")
            lines.append(json.dumps({"wav": str(wav), "txt": text}))
    path = out / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines)


def naive(jsonl: Path, n_mels: int) -> tuple[int, float]:
    """jsonl -> soundfile -> WhisperFeatureExtractor, one utterance at a time."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    n, seconds = 0, 0.0
    for line in jsonl.read_text().splitlines():
        item = json.loads(line)
        audio, sr = sf.read(item["wav"], dtype="float32")
        feats = fe(audio, sampling_rate=sr, return_tensors="pt").input_features
        assert feats.shape[-1] == 3000
        n, seconds = n + 1, seconds + len(audio) / sr
    return n, seconds


def westkit_loader(folder: Path, workers: int, n_mels: int, device: str, features: bool,
                   pad_to_30s: bool = False) -> tuple[int, float]:
    """One evaluation pass of the shard loader (+ LogMel on ``device``)."""
    from westkit.models.features import LogMel
    from westkit.data.loader import LoaderConfig, build_loader

    cfg = LoaderConfig(shards=[str(folder)], num_workers=workers, shuffle=False, max_duration=1e9,
                       min_duration=0.0, max_batch_seconds=200.0, max_batch_size=32)
    mel = LogMel(n_mels).to(device)
    n, seconds = 0, 0.0
    for batch in build_loader(cfg, train=False):
        if features:
            feats, _ = mel(batch["audio"].to(device), batch["audio_lens"].to(device), pad_to_30s=pad_to_30s)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        n += len(batch["keys"])
        seconds += float(batch["audio_lens"].sum()) / 16000
    return n, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="general-train", help="a westkit.data.corpora name (built if needed)")
    p.add_argument("--shards", default=None, help="a shard folder instead of --corpus")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from westkit.data import corpora

    folder = Path(args.shards) if args.shards else corpora.make(args.corpus)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, count = prepare_jsonl(folder, Path(tmp))
        runs = [("naive: jsonl -> soundfile -> WhisperFeatureExtractor (30 s)", lambda: naive(jsonl, args.n_mels)),
                (f"westkit loader, {args.workers} workers, no features",
                 lambda: westkit_loader(folder, args.workers, args.n_mels, args.device, False)),
                (f"westkit loader, {args.workers} workers + LogMel on {args.device}",
                 lambda: westkit_loader(folder, args.workers, args.n_mels, args.device, True)),
                (f"westkit loader, {args.workers} workers + LogMel(pad_to_30s) on {args.device}",
                 lambda: westkit_loader(folder, args.workers, args.n_mels, args.device, True, True))]
        for name, fn in runs:
            start = time.perf_counter()
            n, seconds = fn()
            wall = time.perf_counter() - start
            assert n == count, (name, n, count)
            rows.append((name, n, seconds, wall))
    print(f"\n{count} utterances from {folder}, {args.n_mels} mel bins, torch threads {torch.get_num_threads()}\n")
    print("| pipeline | utterances | wall s | utterances/s | audio s/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, seconds, wall in rows:
        print(f"| {name} | {n} | {wall:.2f} | {n / wall:.1f} | {seconds / wall:.0f} |")


if __name__ == "__main__":
    main()
