"""Synthesise a TTS adaptation set: espeak-ng audio of a text-only shard folder's sentences.

Voices, rates and pitches are drawn (seeded per sentence) from the training voices of
`westkit.data.corpora`, never its held-out test voice, exactly like the built-in
``special-tts`` corpus does for ``special-text``. Used by run_table.sh for the Asterisk
adaptation text, which has no built-in TTS set.

    python recipes/tle/make_tts.py --text asterisk-adapt --out exp/whistle/asterisk-tts
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.shards import INDEX, Entry, write_shards


def read_texts(shards: str) -> list[tuple[str, str]]:
    """(key, text) of every sample in a shard folder or built-in corpus name, in order."""
    folder = corpora.shard_folder(shards)
    cfg = LoaderConfig(shards=[folder], shuffle=False, num_workers=0, max_batch_size=256)
    out = []
    for batch in build_loader(cfg, train=False):
        out += list(zip(batch["keys"], batch["texts"]))
    return sorted(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="text-only shard folder or built-in corpus name")
    p.add_argument("--out", required=True, help="new shard folder for the synthetic speech")
    p.add_argument("--limit", type=int, default=None, help="first N sentences only")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / INDEX).is_file():
        print(f"{out} exists; delete it to rebuild", file=sys.stderr)
        return 0
    items = read_texts(args.text)[:args.limit]
    entries = []
    for key, text in items:
        rng = random.Random(f"tts/{key}")
        voice = rng.choice(corpora.TRAIN_VOICES) + rng.choice(corpora.TRAIN_VARIANTS)
        entries.append(Entry(key=f"tts-{key}", text=text, source="tts-" + Path(args.text).name,
                             audio=corpora.Espeak(text, voice, rng.randint(130, 190), rng.randint(30, 70)),
                             speaker=voice, input=args.text))
    summary = write_shards(entries, out, prefix="tts", total=len(entries), strict=True)
    print(summary.line(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
