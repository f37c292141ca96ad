"""westkit-recognize: decode and score WeST and Whisper models on test sets, several in one run.

    westkit-recognize --west exp/west_tiny --shards ~/.cache/westkit/data/general-test --out exp/dec
    westkit-recognize --whisper whisper-tiny.en --jsonl test.jsonl --out exp/dec_whisper
    westkit-recognize --west exp/west_tiny --audio a.wav b.flac --out exp/dec --beam 4
    westkit-recognize --whisper base=whisper-tiny.en tle=exp/x/hf --shards special-test general-test --out exp/eval

Models: ``--whisper`` / ``--west`` take ``NAME=PATH`` entries (a plain PATH names one model by its
path). A Whisper model is an asset name, hub id or folder; a WeST model is a training run folder
(``trainable.safetensors`` + ``config.yaml``) or ``--weights FILE --config YAML``. Whisper models
whose encoders are byte-identical (every WhisTLE model keeps its base encoder) share one
encoder pass per batch; only their decoders run per model. ``--backend ctranslate2`` runs
Whisper models with CTranslate2 instead of transformers (`westkit.decode.ct2`).

Sets: each ``--shards`` entry (a shard folder or built-in corpus name) and each ``--jsonl``
(``{"key", "audio" or "wav": path, "text"}`` per line) is one set; ``--audio`` files are the set
``audio`` (no references, output in input order). Decoding: `westkit.decode.search` (greedy or
beam, KV cache) in length-sorted batches, a token budget per utterance tied to its duration.

Without ``--word-timestamps``, audio over Whisper's 30 s window is decoded on its first 30 s
and flagged ``truncated_30s``; with it, Whisper and WeST models decode whole files of any length
(`westkit.decode.longform`: silero-vad windows of at most 30 s) and each row gains ``words``,
``segments``, ``audio_duration`` and ``confidence``, with ``subtitles/KEY.{json,srt,vtt}`` beside
hyps.jsonl (docs/timestamps.md). An unreadable audio file becomes a row flagged ``unreadable``;
nothing is dropped silently (wer.json counts both). ``--min-confidence C`` flags hypotheses whose
mean token probability is below C (``low_confidence``); wer.json gives WER on all, unflagged
(``filtered``) and ``flagged`` utterances.

Writes per model and set ``hyps.jsonl`` (key, ref, hyp, flags, duration) and ``wer.json``
(WER/CER on all scored utterances and on the unflagged ones, `westkit.decode.guards`): in OUT
itself for one model on one set, else in ``OUT/<model>/<set>/``; and ``OUT/results.json``
(model -> set -> wer.json) and ``OUT/table.md`` (WER %, models x sets) for every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from westkit.decode import ct2, guards, longform, ranks, timestamps
from westkit.decode.recognizers import WestRecognizer, WhisperRecognizer
from westkit.decode.search import GenerateConfig
from westkit.decode.scoring import score
from westkit.models.features import SAMPLE_RATE

log = logging.getLogger("westkit.recognize")
WINDOW = 30 * SAMPLE_RATE  # Whisper's window, which every model here encodes at most


# -- inputs: sets of batches in the project's batch schema ---------------------------------------

@dataclasses.dataclass
class TestSet:
    """A named set: a shard ``loader``, or ``items`` (key, path, ref) of a jsonl / audio files,
    read by `read_list_set` into ``batches`` (+ ``unreadable`` rows) once the models loaded."""
    name: str
    loader: object = None
    items: list | None = None
    batches: list | None = None
    unreadable: list[dict] = dataclasses.field(default_factory=list)


def list_items(jsonl: str | None, audio: list[str]) -> list[tuple[str, str, str]]:
    """(key, audio path, reference) from a jsonl or audio paths; ValueError names a bad line."""
    from westkit.data import sources  # the one jsonl reader, the shard writer's

    items = []
    if jsonl:
        if not os.path.isfile(jsonl):
            raise ValueError(f"--jsonl {jsonl}: no such file")
        for e in sources.read(jsonl, "jsonl"):
            if e.problem:
                raise ValueError(f"{jsonl}:{e.line}: {e.problem[1]}")
            if e.audio is None:
                raise ValueError(f"{jsonl}:{e.line}: needs an \"audio\" (or \"wav\") path")
            items.append((e.key, e.audio, e.text))
    for path in audio or []:
        items.append((Path(path).stem, path, ""))
    return items


def read_samples(items: list[tuple[str, str, str]]) -> tuple[list[dict], list[dict]]:
    """Read the audio of ``items``: (samples with ``index`` = input position, unreadable rows)."""
    from westkit.data.audio import BadInput, read_audio

    samples, bad = [], []
    for i, (key, path, text) in enumerate(tqdm(items, desc="reading audio", disable=len(items) < 50)):
        try:
            audio = read_audio(path)
        except BadInput as e:
            log.warning("%s: cannot read (%s); reported as unreadable", path, e)
            bad.append({"key": key, "ref": text, "hyp": "", "flags": ["unreadable"], "duration": 0.0,
                        "error": str(e), "index": i})
            continue
        samples.append({"key": key, "audio": audio, "text": text, "lang": "",
                        "duration": len(audio) / SAMPLE_RATE, "index": i})
    return samples, bad


def list_batches(samples: list[dict], max_batch_size: int, max_batch_seconds: float) -> list[dict]:
    """Longest first, batches of similar length within ``max_batch_size`` utterances and
    ``max_batch_seconds`` of padded audio (size x longest, counted up to the 30 s decoded)."""
    from westkit.data.pipeline import collate

    order = sorted(samples, key=lambda s: -len(s["audio"]))
    batches, cur = [], []

    def flush():  # the samples' input positions travel along, to restore the input order
        batches.append(dict(collate(cur), index=[s.get("index") for s in cur]))
    for s in order:
        longest = min(cur[0]["duration"] if cur else s["duration"], WINDOW / SAMPLE_RATE)
        if cur and (len(cur) >= max_batch_size or (len(cur) + 1) * longest > max_batch_seconds):
            flush()
            cur = []
        cur.append(s)
    if cur:
        flush()
    return batches


def shard_batches(shards: list[str], max_batch_size: int, max_batch_seconds: float, num_workers: int,
                  rank: int = 0, world: int = 1):
    """One pass over shard folders through the data layer's loader (duration buckets). Nothing
    is filtered out: long utterances come through and are flagged when decoded."""
    from westkit.data.loader import LoaderConfig, build_loader

    cfg = LoaderConfig(shards=shards, max_batch_size=max_batch_size, max_batch_seconds=max_batch_seconds,
                       shuffle=False, min_duration=0.0, max_duration=float("inf"), min_text_chars=0,
                       max_text_chars=1 << 30, num_workers=num_workers)
    return build_loader(cfg, rank, world, train=False)


def test_sets(args, rank: int = 0, world: int = 1) -> list[TestSet]:
    """The sets named on the command line; metadata only (shard indexes, jsonl lines)."""
    sets = []
    for spec in args.shards:
        loader = shard_batches([spec], args.batch_size, args.max_batch_seconds, args.num_workers, rank, world)
        sets.append(TestSet(Path(spec.rstrip("/")).name, loader=loader))
    for jsonl in args.jsonl:
        sets.append(TestSet(Path(jsonl).stem, items=list_items(jsonl, [])))
    if args.audio:
        sets.append(TestSet("audio", items=list_items(None, args.audio)))
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two test sets are both named {dup[0]!r} (a set is named by its folder or "
                         "file name): rename one")
    return sets


def read_list_set(ts: TestSet, args) -> None:
    """Read a jsonl / audio set's audio and make its batches (after the models loaded)."""
    samples, ts.unreadable = read_samples(ts.items)
    ts.batches = list_batches(samples, args.batch_size, args.max_batch_seconds)


# -- models ---------------------------------------------------------------------------------------

def model_specs(args) -> list[tuple[str, str, str]]:
    """(name, kind, path) per model; a plain PATH is named by its last component."""
    specs = []
    for kind, entries in (("whisper", args.whisper), ("west", args.west)):
        for entry in entries:
            name, sep, path = entry.partition("=")
            if not sep:
                name, path = Path(entry.rstrip("/")).name, entry
            if not re.fullmatch(r"[\w.+-]+", name) or not path:
                raise ValueError(f"--{kind} {entry!r}: expected NAME=PATH or PATH, NAME made of "
                                 "letters, digits, '.', '+', '-' or '_' (it names an output folder)")
            specs.append((name, kind, path))
    if args.weights:
        specs.append(("west", "west", None))
    names = [s[0] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two models are both named {dup[0]!r}: give them NAME=PATH names")
    return specs


def load_models(specs, args, gen, device, dtype) -> dict:
    models = {}
    for name, kind, path in specs:
        log.info("loading %s model %s (%s)", kind, name, path or args.weights)
        if kind == "whisper":
            models[name] = ct2.whisper_recognizer(path, gen, args.backend, device, dtype, args.compute_type,
                                                  args.language)
        else:
            models[name] = WestRecognizer.load(path, args.weights, args.config, gen, device, dtype, args.set)
    return models


def same_encoder(a: WhisperRecognizer, b: WhisperRecognizer) -> bool:
    """Whether two Whisper models' encoders hold exactly the same weights (bytes, not closeness)."""
    sa, sb = a.whisper.model.encoder.state_dict(), b.whisper.model.encoder.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def encoder_groups(models: dict) -> list[list[str]]:
    """Whisper models grouped by identical encoders (each group encodes once); a WeST model is
    a group of its own."""
    groups: list[list[str]] = []
    for name, rec in models.items():
        for g in groups:
            first = models[g[0]]
            if (isinstance(rec, WhisperRecognizer) and isinstance(first, WhisperRecognizer)
                    and same_encoder(first, rec)):
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


# -- decoding and scoring ----------------------------------------------------------------------

def decode(models: dict, groups: list[list[str]], batches, device, guard_cfg: guards.GuardConfig,
           total: int | None = None, desc: str = "decoding", word_timestamps: bool = False) -> tuple[dict, dict]:
    """Run every model over ``batches``: ({model: rows}, {model: seconds}); one row per utterance
    with key, ref, hyp, flags, duration (of the whole file; only the first 30 s are decoded)."""
    rows = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    for batch in tqdm(batches, desc=desc, total=total, unit="batch"):
        full = batch["audio_lens"]
        lens = full.clamp(max=WINDOW)
        audio = batch["audio"][:, :int(lens.max())]
        dev_audio, dev_lens = audio.to(device), lens.to(device)
        for group in groups:
            start = time.perf_counter()
            first = models[group[0]]
            if word_timestamps:  # whole files, windows of their own: no shared encoder pass
                for name in group:
                    start = time.perf_counter()
                    rows[name] += _longform_rows(models[name], batch, guard_cfg)
                    seconds[name] += time.perf_counter() - start
            elif isinstance(first, (WhisperRecognizer, ct2.Ct2WhisperRecognizer)):
                states = first.encode(dev_audio, dev_lens)
                shared = time.perf_counter() - start
                for name in group:
                    start = time.perf_counter()
                    outs = models[name].decode_states(states, dev_lens, langs=batch.get("langs"))
                    seconds[name] += shared + time.perf_counter() - start
                    rows[name] += _rows(batch, outs, audio, lens, full, guard_cfg)
            else:
                outs = first(dev_audio, dev_lens, prompts=first.batch_prompts(batch))  # shard json context
                seconds[group[0]] += time.perf_counter() - start
                rows[group[0]] += _rows(batch, outs, audio, lens, full, guard_cfg)
    return rows, seconds


def _rows(batch, outs, audio, lens, full, guard_cfg) -> list[dict]:
    rows = []
    for i, t in enumerate(outs):
        n = int(lens[i])
        conf = timestamps.token_confidence(t.logprobs)
        flags = guards.check(t.text, audio[i, :n].numpy(), guard_cfg, t.hit_limit, conf)
        if not t.text.strip():
            flags.append("empty")
        if int(full[i]) > n:
            flags.append("truncated_30s")
        row = {"key": batch["keys"][i], "ref": batch["texts"][i], "hyp": t.text, "flags": flags,
               "duration": round(int(full[i]) / SAMPLE_RATE, 3),
               "confidence": None if conf is None else round(conf, 4)}
        if batch.get("langs"):
            row["lang"] = batch["langs"][i]
        _carry_order(batch, i, row)
        rows.append(row)
    return rows


def _carry_order(batch: dict, i: int, row: dict) -> None:
    """Input position and place in the plan (`ranks`), so rows go back in order."""
    for extra in ("index", "order"):
        if extra in batch:
            row[extra] = batch[extra][i]


def _longform_rows(rec, batch, guard_cfg) -> list[dict]:
    """Rows of whole files decoded long-form with word timestamps (`westkit.decode.longform`)."""
    audios = [batch["audio"][i, :n].numpy() for i, n in enumerate(batch["audio_lens"].tolist())]
    rows = []
    for i, res in enumerate(longform.transcribe(rec, audios, longform.LongformConfig())):
        conf = timestamps.confidence([timestamps.Word(**w) for w in res["words"]])
        flags = guards.check(res["text"], audios[i], guard_cfg, "truncated" in res["flags"], conf)
        flags += [f for f in res.pop("flags") if f != "truncated"] + ([] if res["text"].strip() else ["empty"])
        row = {"key": batch["keys"][i], "ref": batch["texts"][i], "hyp": res.pop("text"), "flags": flags,
               "duration": res["audio_duration"], "confidence": None if conf is None else round(conf, 4), **res}
        _carry_order(batch, i, row)
        rows.append(row)
    return rows


def report(rows: list[dict]) -> dict:
    """WER/CER on every decoded utterance with a reference and on those without flags, and
    counts of what was not decoded whole: truncated at 30 s, or unreadable (left out of WER)."""
    decoded = [r for r in rows if "unreadable" not in r["flags"]]
    scored = [r for r in decoded if r["ref"]]
    clean = [r for r in scored if not r["flags"]]
    cut = [r for r in decoded if "truncated_30s" in r["flags"]]
    bad = [r for r in rows if "unreadable" in r["flags"]]
    out = {"utterances": len(rows), "flag_counts": dict(Counter(f for r in rows for f in r["flags"])),
           "flagged_utterances": sum(bool(r["flags"]) for r in rows),
           "truncated_30s": {"utterances": len(cut), "seconds_not_decoded":
                             round(sum(r["duration"] - WINDOW / SAMPLE_RATE for r in cut), 3)},
           "left_out": {"utterances": len(bad), "unreadable": [r["key"] for r in bad]}}
    for name, part in (("all", scored), ("filtered", clean), ("flagged", [r for r in scored if r["flags"]])):
        if part:
            out[name] = _score(part)
    langs = sorted({r.get("lang", "") for r in scored})
    if len(langs) > 1:   # a set of several languages: WER of each too (all decoded rows)
        out["languages"] = {lang or "unknown": _score([r for r in scored if r.get("lang", "") == lang])
                            for lang in langs}
    return out


def _score(rows: list[dict]) -> dict:
    """WER/CER of rows, each normalised by its own language's rule (`westkit.decode.scoring`)."""
    return score([r["ref"] for r in rows], [r["hyp"] for r in rows], langs=[r.get("lang", "") for r in rows]).as_dict()


def format_report(rep: dict) -> str:
    lines = [f"{rep['utterances']} utterances, {rep['audio_seconds']:.1f} s of audio decoded in "
             f"{rep['decode_seconds']:.1f} s (RTF {rep['rtf']})"]
    for name in ("all", "filtered"):
        if name in rep:
            s = rep[name]
            lines.append(f"{name:>8}: WER {100 * s['wer']:.2f}%  CER {100 * s['cer']:.2f}%  "
                         f"(S {s['substitutions']} D {s['deletions']} I {s['insertions']} / "
                         f"{s['ref_words']} words, {s['utterances']} utts)")
    for lang, s in rep.get("languages", {}).items():
        lines.append(f"{lang:>8}: WER {100 * s['wer']:.2f}%  CER {100 * s['cer']:.2f}%  ({s['utterances']} utts)")
    lines.append(f"flagged: {rep['flagged_utterances']} {rep['flag_counts']}")
    t, left = rep["truncated_30s"], rep["left_out"]
    if t["utterances"]:
        lines.append(f"truncated: {t['utterances']} utterances over 30 s decoded on their first 30 s "
                     f"({t['seconds_not_decoded']:.1f} s not heard)")
    if left["utterances"]:
        lines.append(f"left out: {left['utterances']} unreadable files (no WER): {left['unreadable'][:5]}")
    return "\n".join(lines)


def markdown_table(results: dict, sets: list[str]) -> str:
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, per_set in results.items():
        cells = [f"{100 * per_set[s]['all']['wer']:.1f}" if "all" in per_set[s] else "-" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="westkit-recognize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("models (any number)")
    model.add_argument("--whisper", nargs="+", default=[], metavar="[NAME=]PATH",
                       help="Whisper models: asset name, hub id or folder")
    model.add_argument("--west", nargs="+", default=[], metavar="[NAME=]RUN",
                       help="west training run folders (trainable.safetensors + config.yaml)")
    model.add_argument("--weights", help="a west trainable-weights .safetensors (with --config)")
    model.add_argument("--config", help="the recipe YAML the weights were trained with")
    model.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="overrides of the west recipe config, e.g. model.llm=/path/to/llm")
    data = p.add_argument_group("test sets (any number)")
    data.add_argument("--shards", nargs="*", default=[], help="shard folders / corpus names, one set each")
    data.add_argument("--jsonl", nargs="*", default=[], help="one {\"key\", \"audio\", \"text\"} per line")
    data.add_argument("--audio", nargs="*", help="audio files (no reference: no WER)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--length-penalty", type=float, default=GenerateConfig.length_penalty)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch-seconds", type=float, default=480.0)
    p.add_argument("--tokens-per-second", type=float, default=GenerateConfig.tokens_per_second)
    p.add_argument("--base-tokens", type=int, default=GenerateConfig.base_tokens)
    p.add_argument("--max-new-tokens", type=int, default=GenerateConfig.max_new_tokens)
    p.add_argument("--language", help="Whisper only: language code for multilingual models")
    p.add_argument("--backend", choices=ct2.BACKENDS, default="transformers",
                   help="Whisper only: ctranslate2 runs faster-whisper's runtime (converted once, cached)")
    p.add_argument("--compute-type", choices=ct2.COMPUTE_TYPES,
                   help="--backend ctranslate2: default int8 on CPU, float16 on GPU")
    p.add_argument("--word-timestamps", action="store_true",
                   help="Whisper only: whole files of any length (VAD windows), word times and confidence, "
                        "subtitles/KEY.{json,srt,vtt}")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="flag hypotheses whose mean token probability is below this (low_confidence)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--debug", action="store_true", help="tracebacks for errors (or WESTKIT_DEBUG=1)")
    args = p.parse_args(argv)
    if not (args.whisper or args.west or args.weights):
        p.error("name a model: --west RUN (or --weights + --config), or --whisper NAME")
    if args.weights and args.west:
        p.error("--weights/--config name one west model: use them without --west")
    if not (args.shards or args.jsonl or args.audio):
        p.error("no input: give --shards, --jsonl or --audio")
    if args.word_timestamps:
        runs = [e.partition("=")[2] or e for e in args.west] + ([os.path.dirname(args.weights)] if args.weights else [])
        for run in runs:  # WeST word timing needs the heads chosen for that run (docs/timestamps.md)
            if not os.path.isfile(os.path.join(run, timestamps.HEADS_FILE)):
                p.error(f"--word-timestamps: {run} has no {timestamps.HEADS_FILE}; choose its alignment heads "
                        f"first: python -m westkit.decode.align_heads --west {run}")
    if args.beam < 1 or args.batch_size < 1:
        p.error("--beam and --batch-size must be >= 1")
    return args


def prepare_out(path: str) -> Path:
    """The output folder, made and proven writable before anything heavy runs."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".westkit-write-test-{os.getpid()}"  # one per process: ranks run this at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e}); name a folder you can write") from None
    return out


def main(argv=None) -> int:
    from westkit.noise import silence_known

    silence_known()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # user errors; anything else is a bug and keeps its traceback
        if args.debug or os.environ.get("WESTKIT_DEBUG") == "1":
            raise
        lines = [x for x in str(e).splitlines() if x.strip()][:2]
        print(f"westkit-recognize: error: {' / '.join(lines) or type(e).__name__}"
              " (--debug for a traceback)", file=sys.stderr)
        return 2


def run(args) -> int:
    rank, world = ranks.init()  # under torchrun: this rank's share, one report from rank 0
    device = ranks.device(args.device)
    if world > 1:
        log.info("rank %d of %d decodes every %d-th batch", rank, world, world)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    gen = GenerateConfig(beam=args.beam, tokens_per_second=args.tokens_per_second, base_tokens=args.base_tokens,
                         max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty)
    out = prepare_out(args.out)
    specs = model_specs(args)
    sets = test_sets(args, rank, world)
    models = load_models(specs, args, gen, device, dtype)
    groups = encoder_groups(models)
    if len(models) > 1:
        log.info("encoder passes shared by: %s", "; ".join(", ".join(g) for g in groups))
    nested = len(models) > 1 or len(sets) > 1
    results: dict = {name: {} for name in models}
    for ts in sets:
        if ts.items is not None:
            read_list_set(ts, args)
        batches = ts.loader if ts.loader is not None else ranks.deal(ts.batches, rank, world)
        rows, seconds = decode(models, groups, ranks.number(batches, rank, world), device,
                               guards.GuardConfig(min_confidence=args.min_confidence), len(batches),
                               desc=ts.name, word_timestamps=args.word_timestamps)
        rows, seconds = ranks.merge(rows, seconds, world)
        for name, rs in rows.items() if rank == 0 else ():
            rs = rs + [dict(r) for r in ts.unreadable]
            if ts.items is not None:  # a list of files: rows in input order
                rs.sort(key=lambda r: r["index"])
            for r in rs:
                r.pop("index", None)
            folder = out / name / ts.name if nested else out
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "hyps.jsonl", "w") as f:
                for r in rs:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            for r in rs:
                if "words" in r:  # --word-timestamps: subtitles beside hyps.jsonl
                    res = timestamps.result_dict(r["hyp"], [], r["segments"], r["audio_duration"])
                    timestamps.write_outputs(res | {"words": r["words"]}, folder / "subtitles",
                                             re.sub(r"[^\w.+-]", "_", r["key"]))
            rep = report(rs)
            audio_s = sum(r["duration"] if "words" in r else min(r["duration"], WINDOW / SAMPLE_RATE) for r in rs)
            rep.update(model=name, set=ts.name, decode_seconds=round(seconds[name], 2),
                       audio_seconds=round(audio_s, 2),
                       rtf=round(seconds[name] / audio_s, 4) if audio_s else None,
                       options={k: v for k, v in vars(args).items() if k != "set"} | {"set": args.set},
                       generate=dataclasses.asdict(gen))
            (folder / "wer.json").write_text(json.dumps(rep, indent=2) + "\n")
            results[name][ts.name] = rep
            print(f"== {name} on {ts.name}\n{format_report(rep)}")
    if rank:
        return 0
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown_table(results, [s.name for s in sets])
    (out / "table.md").write_text(table + "\n")
    if nested:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
