"""`westkit-shards`: write tar shards + index.json from speech/text inputs (see docs/data.md).

    westkit-shards train.jsonl -o shards/train                 # WeST jsonl
    westkit-shards data/metadata.csv -o shards/train           # Whisper-CLI metadata.csv
    westkit-shards LibriSpeech/dev-clean -o shards/dev         # LibriSpeech tree
    westkit-shards data/train -o shards/train                  # Kaldi folder (wav.scp + text)
    westkit-shards corpus.txt --lang de -o shards/text         # text only
    westkit-shards --index existing_wds_folder                 # index foreign WebDataset tars
    westkit-shards cuts.jsonl.gz -o shards/train               # Lhotse CutSet (also NeMo, HF datasets, SRT/VTT)
    westkit-shards in.jsonl -o shards/train --slice 3/16       # one task of an array (slurm/shards.sh)
    westkit-shards --merge shards/train                        # then merge the 16 slices
"""
from __future__ import annotations

import argparse
import re
import sys

from westkit.data import prepare, sources
from westkit.data.shards import WriteLimits, index_tars, write_shards


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256M or 1G")
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="westkit-shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="input files or folders (format detected unless --format)")
    p.add_argument("-o", "--out", help="output folder (must not already hold an index.json)")
    p.add_argument("--format", default="auto", choices=("auto",) + sources.FORMATS)
    p.add_argument("--lang", default="en", help="language of samples that do not name one (default en)")
    p.add_argument("--source", default=None, help="source name stored with each sample (default: input name)")
    p.add_argument("--prefix", default="train", help="shard name prefix: PREFIX-000000.tar (default train)")
    p.add_argument("--shard-size", type=_size, default="256M", help="target shard size (default 256M)")
    p.add_argument("--workers", type=int, default=None, help="processes decoding audio (default: CPUs, max 8)")
    p.add_argument("--min-duration", type=float, default=WriteLimits.min_duration)
    p.add_argument("--max-duration", type=float, default=WriteLimits.max_duration)
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--index", metavar="FOLDER", help="only write index.json for existing WebDataset tars")
    p.add_argument("--slice", metavar="I/N", default=None,
                   help="write only slice I of N of the inputs under OUT/slices (a job array task)")
    p.add_argument("--merge", metavar="FOLDER", help="merge the slices written under FOLDER/slices")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.index:
        index = index_tars(args.index, progress=not args.no_progress)
        print(f"indexed {index['totals']['samples']} samples in {index['totals']['shards']} shards of {args.index}")
        return 0
    if args.merge:
        try:
            index = prepare.merge_slices(args.merge)
        except ValueError as e:
            print(f"westkit-shards: error: {e}", file=sys.stderr)
            return 2
        rej = sum(index["rejected"].values())
        print(f"merged {index.get('slices', '?')} slices into {args.merge}: {index['totals']['samples']} samples "
              f"in {index['totals']['shards']} shards; rejected {rej}")
        return 0
    if not args.inputs or not args.out:
        p.error("give at least one input and -o OUT (or --index FOLDER, --merge FOLDER)")
    try:
        part = prepare.parse_slice(args.slice) if args.slice else None
        entries = [e for path in args.inputs
                   for e in sources.read(path, args.format, lang=args.lang, source=args.source)]
        kw = dict(prefix=args.prefix, shard_bytes=args.shard_size, workers=args.workers, strict=args.strict,
                  limits=WriteLimits(args.min_duration, args.max_duration), progress=not args.no_progress)
        if part:
            summary = prepare.write_slice(entries, args.out, *part, **kw)
            if summary is None:
                print(f"slice {args.slice} of {args.out} is written already; nothing to do")
                return 0
        else:
            summary = write_shards(entries, args.out, total=len(entries), **kw)
    except ValueError as e:
        print(f"westkit-shards: error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
