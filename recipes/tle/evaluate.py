"""Score several Whisper models that share one frozen encoder on several test sets, cheaply.

Every model that WhisTLE produces keeps the base encoder, so each test utterance is encoded
once (states cached in fp16 by `westkit.models.whisper_decoder.StateCache`, which refuses a
model whose encoder differs) and only the decoders run per model: greedy decoding, WER with
Whisper's English normaliser (`westkit.decode.scoring`).

    python recipes/tle/evaluate.py --models base=whisper-tiny.en tle=exp/whistle/special_tle/hf \\
        --sets special-test general-test --cache-dir exp/whistle/state_cache --out exp/whistle/eval

Writes ``OUT/<model>/<set>.jsonl`` (key, ref, hyp), ``OUT/results.json`` and ``OUT/table.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.decode.scoring import score
from westkit.models.whisper import WhisperAudioEncoder, load_whisper
from westkit.models.whisper_decoder import StateCache, greedy_decode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="NAME=PATH (asset name, hub id or HF folder)")
    p.add_argument("--sets", nargs="+", required=True, help="shard folders or built-in corpus names")
    p.add_argument("--cache-dir", default=None, help="encoder-state cache folder (default: memory)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    return p.parse_args(argv)


def load_models(specs: list[str]) -> dict:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ValueError(f"--models {spec!r}: expected NAME=PATH, e.g. base=whisper-tiny.en")
        model, tokenizer = load_whisper(path)
        models[name] = (model.eval(), tokenizer)
    return models


@torch.no_grad()
def main(argv=None) -> int:
    args = parse_args(argv)
    models = load_models(args.models)
    first = next(iter(models.values()))[0]
    cache = StateCache(first.model.encoder, args.cache_dir)
    ref = first.model.encoder.state_dict()
    for name, (model, _) in models.items():  # the shared states are only right for one encoder
        if any(not torch.equal(v, ref[k]) for k, v in model.model.encoder.state_dict().items()):
            raise ValueError(f"model {name} has another encoder than {next(iter(models))}: score it separately")
    encoder = WhisperAudioEncoder(first.model.encoder, pad_to_30s=True)
    out = Path(args.out)
    results = {}
    for spec in args.sets:
        folder = corpora.shard_folder(spec)
        set_name = Path(spec).name
        loader = build_loader(LoaderConfig(shards=[folder], shuffle=False, num_workers=1,
                                           max_batch_size=args.batch_size, max_batch_seconds=1e9), train=False)
        rows = {name: [] for name in models}
        for batch in tqdm(loader, desc=set_name, total=len(loader)):
            states = cache.states(encoder, batch)
            for name, (model, tok) in models.items():
                hyps = greedy_decode(model, states, tok, args.max_new_tokens)
                rows[name] += [{"key": k, "ref": r, "hyp": h} for k, r, h in zip(batch["keys"], batch["texts"], hyps)]
        for name, rs in rows.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            with open(out / name / f"{set_name}.jsonl", "w") as f:
                for r in rs:
                    f.write(json.dumps(r) + "\n")
            s = score([r["ref"] for r in rs], [r["hyp"] for r in rs])
            results.setdefault(name, {})[set_name] = dict(s.as_dict(), utterances=len(rs))
            print(f"{name:>12} {set_name:>16}: WER {100 * s.wer:.2f}% ({len(rs)} utts)", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    sets = [Path(s).name for s in args.sets]
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, per_set in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * per_set[s]['wer']:.1f}" for s in sets) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
