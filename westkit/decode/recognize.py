"""westkit-recognize: batch decoding and scoring of a trained WeST model or a plain Whisper model.

    westkit-recognize --west exp/west_tiny --shards ~/.cache/westkit/data/general-test --out exp/dec
    westkit-recognize --whisper whisper-tiny.en --jsonl test.jsonl --out exp/dec_whisper
    westkit-recognize --west exp/west_tiny --audio a.wav b.flac --out exp/dec --beam 4

A WeST model is a training run folder (the engine's ``trainable.safetensors`` + the recipe's
``config.yaml``) or ``--weights FILE --config YAML``. Inputs are shard folders (index.json),
a jsonl (``{"key", "audio" or "wav": path, "text"}`` per line) or audio files. Utterances are
decoded in length-sorted batches (left-padded prompts, KV cache, greedy or beam search) with a
token budget per utterance tied to its duration.

Writes ``OUT/hyps.jsonl`` (key, ref, hyp, flags, duration per line) and ``OUT/wer.json``: WER/CER
on all utterances and on those no hallucination guard flagged (`westkit.decode.guards`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from westkit.decode import guards
from westkit.decode.recognizers import WestRecognizer, WhisperRecognizer
from westkit.decode.search import GenerateConfig
from westkit.decode.scoring import score

log = logging.getLogger("westkit.recognize")


# -- inputs: batches in the project's batch schema ---------------------------------------------

def read_list(args) -> list[dict]:
    """Samples (key, audio (T,), text, duration) from --jsonl or --audio."""
    from westkit.data.audio import BadInput, read_audio

    items = []
    if args.jsonl:
        with open(args.jsonl) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{args.jsonl}:{n}: not JSON ({e})") from None
                path = rec.get("audio") or rec.get("wav")
                if not path:
                    raise ValueError(f"{args.jsonl}:{n}: needs an \"audio\" (or \"wav\") path")
                if not os.path.isabs(path):
                    path = os.path.join(os.path.dirname(os.path.abspath(args.jsonl)), path)
                items.append((rec.get("key") or Path(path).stem, path, rec.get("text", rec.get("txt", ""))))
    for path in args.audio or []:
        items.append((Path(path).stem, path, ""))
    samples = []
    for key, path, text in tqdm(items, desc="reading audio", disable=len(items) < 50):
        try:
            audio = read_audio(path)
        except BadInput as e:
            raise ValueError(f"{path}: cannot read ({e})") from None
        samples.append({"key": key, "audio": audio, "text": text, "lang": "",
                        "duration": len(audio) / 16000})
    return samples


def list_batches(samples: list[dict], max_batch_size: int, max_batch_seconds: float) -> list[dict]:
    """Longest first, batches of similar length within ``max_batch_size`` utterances and
    ``max_batch_seconds`` of padded audio (size x longest)."""
    from westkit.data.pipeline import collate

    order = sorted(samples, key=lambda s: -len(s["audio"]))
    batches, cur = [], []
    for s in order:
        longest = cur[0]["duration"] if cur else s["duration"]
        if cur and (len(cur) >= max_batch_size or (len(cur) + 1) * longest > max_batch_seconds):
            batches.append(collate(cur))
            cur = []
        cur.append(s)
    if cur:
        batches.append(collate(cur))
    return batches


def shard_batches(shards: list[str], max_batch_size: int, max_batch_seconds: float, num_workers: int):
    """One pass over shard folders through the data layer's loader (duration buckets)."""
    from westkit.data.loader import LoaderConfig, build_loader

    cfg = LoaderConfig(shards=shards, max_batch_size=max_batch_size, max_batch_seconds=max_batch_seconds,
                       shuffle=False, min_duration=0.0, min_text_chars=0, max_text_chars=1 << 30,
                       num_workers=num_workers)
    return build_loader(cfg, train=False)


# -- decoding and scoring ----------------------------------------------------------------------

def decode(recognizer, batches, device, guard_cfg: guards.GuardConfig, total: int | None = None) -> list[dict]:
    """Run ``recognizer`` over ``batches``; one row per utterance: key, ref, hyp, flags, duration."""
    rows = []
    for batch in tqdm(batches, desc="decoding", total=total, unit="batch"):
        audio, lens = batch["audio"].to(device), batch["audio_lens"].to(device)
        for i, t in enumerate(recognizer(audio, lens)):
            n, text, hit = int(batch["audio_lens"][i]), t.text, t.hit_limit
            rows.append({"key": batch["keys"][i], "ref": batch["texts"][i], "hyp": text,
                         "flags": guards.check(text, batch["audio"][i, :n].numpy(), guard_cfg, hit),
                         "duration": round(n / 16000, 3)})
    return rows


def report(rows: list[dict]) -> dict:
    """WER/CER on every utterance and on the ones without hallucination flags."""
    scored = [r for r in rows if r["ref"]]
    clean = [r for r in scored if not r["flags"]]
    out = {"utterances": len(rows), "flag_counts": dict(Counter(f for r in rows for f in r["flags"])),
           "flagged_utterances": sum(bool(r["flags"]) for r in rows)}
    if scored:
        out["all"] = score([r["ref"] for r in scored], [r["hyp"] for r in scored]).as_dict()
    if clean:
        out["filtered"] = score([r["ref"] for r in clean], [r["hyp"] for r in clean]).as_dict()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="westkit-recognize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model (one of)")
    model.add_argument("--west", help="a west training run folder (trainable.safetensors + config.yaml)")
    model.add_argument("--weights", help="a west trainable-weights .safetensors (with --config)")
    model.add_argument("--config", help="the recipe YAML the weights were trained with")
    model.add_argument("--whisper", help="a plain Whisper model: asset name, hub id or folder")
    model.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="overrides of the recipe config, e.g. model.llm=/path/to/llm")
    data = p.add_argument_group("inputs (any of)")
    data.add_argument("--shards", nargs="*", default=[], help="shard folders / globs / corpus names")
    data.add_argument("--jsonl", help="one {\"key\", \"audio\", \"text\"} per line")
    data.add_argument("--audio", nargs="*", help="audio files (no reference: no WER)")
    p.add_argument("--out", required=True, help="output folder for hyps.jsonl and wer.json")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch-seconds", type=float, default=480.0)
    p.add_argument("--tokens-per-second", type=float, default=GenerateConfig.tokens_per_second)
    p.add_argument("--max-new-tokens", type=int, default=GenerateConfig.max_new_tokens)
    p.add_argument("--language", help="Whisper only: language code for multilingual models")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args(argv)
    if bool(args.whisper) == bool(args.west or args.weights):
        p.error("name exactly one model: --west RUN (or --weights + --config), or --whisper NAME")
    if not (args.shards or args.jsonl or args.audio):
        p.error("no input: give --shards, --jsonl or --audio")
    if args.beam < 1 or args.batch_size < 1:
        p.error("--beam and --batch-size must be >= 1")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    gen = GenerateConfig(beam=args.beam, tokens_per_second=args.tokens_per_second,
                         max_new_tokens=args.max_new_tokens)
    try:
        if args.whisper:
            recognizer = WhisperRecognizer.load(args.whisper, gen, device, dtype, args.language)
        else:
            recognizer = WestRecognizer.load(args.west, args.weights, args.config, gen, device, dtype, args.set)
        batches, total = [], 0
        if args.jsonl or args.audio:
            lb = list_batches(read_list(args), args.batch_size, args.max_batch_seconds)
            batches.append(lb)
            total += len(lb)
        if args.shards:
            loader = shard_batches(args.shards, args.batch_size, args.max_batch_seconds,
                                   args.num_workers)
            batches.append(loader)
            total += len(loader)
    except ValueError as e:
        print(f"westkit-recognize: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = [r for bs in batches for r in decode(recognizer, bs, device, guards.GuardConfig(), total)]
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "hyps.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    rep = report(rows)
    audio_s = sum(r["duration"] for r in rows)
    rep.update(decode_seconds=round(elapsed, 2), audio_seconds=round(audio_s, 2),
               rtf=round(elapsed / audio_s, 4) if audio_s else None,
               options={k: v for k, v in vars(args).items() if k != "set"} | {"set": args.set},
               generate=dataclasses.asdict(gen))
    (out / "wer.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(format_report(rep))
    return 0


def format_report(rep: dict) -> str:
    lines = [f"{rep['utterances']} utterances, {rep['audio_seconds']:.1f} s of audio decoded in "
             f"{rep['decode_seconds']:.1f} s (RTF {rep['rtf']})"]
    for name in ("all", "filtered"):
        if name in rep:
            s = rep[name]
            lines.append(f"{name:>8}: WER {100 * s['wer']:.2f}%  CER {100 * s['cer']:.2f}%  "
                         f"(S {s['substitutions']} D {s['deletions']} I {s['insertions']} / "
                         f"{s['ref_words']} words, {s['utterances']} utts)")
    lines.append(f"flagged: {rep['flagged_utterances']} {rep['flag_counts']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
