"""What ``westkit transcribe / evaluate / compare`` do: Whisper decoding and scoring of files and
data sets with the one decoder (`westkit.decode.recognizers.WhisperRecognizer`) and the one
scorer (`westkit.decode.scoring`), with the real-time factor of every decode.

A model is a built-in asset name (``whisper-tiny.en``), a hub id, a Whisper HF folder, or a run
folder of ``recipes/whisper/train.py`` (its ``hf/`` export; ``RUN/best`` for the best one).
Data is anything the Whisper recipe reads: shard folders, built-in corpora, a folder with
metadata.csv or audio + .txt pairs, a WeST jsonl (converted once, cached in
``WESTKIT_HOME/cache/eval``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from westkit.data.sources import AUDIO_EXTS
from westkit.models.features import SAMPLE_RATE


@dataclasses.dataclass
class Decoded:
    """Hypotheses of one model over one input set, with timing (RTF = decode seconds / audio seconds)."""
    model: str
    rows: list[dict]          # key, ref, hyp, duration (seconds)
    audio_seconds: float
    decode_seconds: float

    @property
    def rtf(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def model_folder(name: str) -> str:
    """A Whisper to load: a run folder becomes its ``hf/`` export; anything else passes through
    to `westkit.assets.resolve` (asset name, hub id, HF folder), which names the fix if wrong."""
    p = Path(name)
    if p.is_dir() and not (p / "config.json").is_file():
        if (p / "hf" / "config.json").is_file():
            return str(p / "hf")
        raise ValueError(f"--model {name}: a folder without config.json or hf/; give a Whisper HF folder, "
                         "a run folder of recipes/whisper/train.py (with hf/), an asset name or a hub id")
    return name


def load_recognizer(name: str, beam: int = 1, language: str | None = None, device: str = "cpu",
                    backend: str = "transformers", compute_type: str | None = None):
    """A Whisper recogniser of either backend (`westkit.decode.ct2.whisper_recognizer`)."""
    from westkit.decode.ct2 import whisper_recognizer
    from westkit.decode.search import GenerateConfig

    return whisper_recognizer(name if backend == "ctranslate2" else model_folder(name), GenerateConfig(beam=beam),
                              backend, device, torch.float32, compute_type, language)


def audio_files(inputs: list[str]) -> list[Path]:
    """Audio files named or found (recursively) in folders; ValueError names a bad input."""
    files = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTS)
            if not found:
                raise ValueError(f"{spec}: no audio files ({', '.join(AUDIO_EXTS)}) in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{spec}: no such file or folder")
    return files


def read_files(files: list[Path]) -> list:
    """Each file's 16 kHz mono audio (T,) float32; ValueError names a file that cannot be read."""
    from westkit.data.audio import BadInput, read_audio

    audios = []
    for f in files:
        try:
            audios.append(read_audio(str(f)))
        except BadInput as e:
            raise ValueError(f"{f}: cannot read this audio ({e})") from None
    return audios


def _batches_of_files(files: list[Path], audios: list, max_batch_size: int = 16):
    from westkit.data.pipeline import collate

    samples = [{"key": str(f), "audio": torch.from_numpy(a), "text": "", "lang": "en",
                "duration": len(a) / SAMPLE_RATE} for f, a in zip(files, audios)]
    samples.sort(key=lambda s: -s["duration"])
    return [collate(samples[i:i + max_batch_size]) for i in range(0, len(samples), max_batch_size)]


def decode(recognizer, batches, name: str, total: int | None = None) -> Decoded:
    """Run ``recognizer`` over collated batches (``keys``, ``texts``, ``audio``, ``audio_lens``)."""
    rows, audio_s, started = [], 0.0, time.perf_counter()
    for batch in tqdm(batches, desc=f"decoding {name}", total=total, unit="batch", file=sys.stderr):
        for i, t in enumerate(recognizer(batch["audio"], batch["audio_lens"])):
            seconds = int(batch["audio_lens"][i]) / SAMPLE_RATE
            rows.append({"key": batch["keys"][i], "ref": batch["texts"][i], "hyp": t.text,
                         "duration": round(seconds, 3), "hit_limit": t.hit_limit})
            audio_s += seconds
    return Decoded(name, sorted(rows, key=lambda r: r["key"]), audio_s, time.perf_counter() - started)


def transcribe(inputs: list[str], model: str, beam: int = 1, language: str | None = None,
               word_timestamps: bool = False, backend: str = "transformers", compute_type: str | None = None,
               batch_size: int = 16) -> Decoded:
    """Transcribe audio files (or folders of them) of any length.

    Files up to Whisper's 30 s window decode whole, in length-sorted batches. Longer files, and
    every file with ``word_timestamps``, go through `westkit.decode.longform` (silero-vad
    windows of at most 30 s for the long ones, the whole file as one window for the others),
    and each row then also holds the `westkit.decode.timestamps.result_dict` fields: ``words``
    with start, end and confidence, ``segments``, ``audio_duration``, ``flags``.
    """
    from westkit.decode import longform

    files = audio_files(inputs)  # before the model loads: a typo fails at once
    audios = read_files(files)
    rec = load_recognizer(model, beam, language, backend=backend, compute_type=compute_type)
    window = int(longform.LongformConfig().max_window * SAMPLE_RATE)
    whole = [i for i, a in enumerate(audios) if len(a) <= window and not word_timestamps]
    short = decode(rec, _batches_of_files([files[i] for i in whole], [audios[i] for i in whole], batch_size), model)
    rest = sorted(set(range(len(files))) - set(whole))
    if not rest:
        return short
    cfg = longform.LongformConfig(batch_size=batch_size)
    started = time.perf_counter()
    windows = [longform.file_windows(audios[i], cfg) for i in rest]
    results = longform.transcribe(rec, [audios[i] for i in rest], cfg, windows, progress=f"decoding {model}")
    rows = short.rows + [{"key": str(files[i]), "ref": "", "hyp": r.pop("text"), "duration": r["audio_duration"],
                          "hit_limit": "truncated" in r["flags"], **r} for i, r in zip(rest, results)]
    return Decoded(model, sorted(rows, key=lambda r: r["key"]), short.audio_seconds + sum(len(audios[i]) for i in rest) / SAMPLE_RATE,
                   short.decode_seconds + time.perf_counter() - started)


def result_of(row: dict) -> dict:
    """A `transcribe` row as the `westkit.decode.timestamps.result_dict` schema (``text``, and
    ``words``, ``segments``, ``audio_duration``, ``flags`` where word timestamps were made)."""
    keep = ("words", "segments", "audio_duration", "flags", "decoded_seconds")
    doc = {"text": row["hyp"], "duration": row["duration"], **{k: row[k] for k in keep if k in row}}
    if "words" in row:
        from westkit.decode.timestamps import Word, confidence

        conf = confidence([Word(**w) for w in row["words"]])
        doc["confidence"] = None if conf is None else round(conf, 4)
    return doc


def data_loader(data: str, max_batch_size: int = 16):
    """One ordered pass over ``data`` (see the module docstring) through the data layer."""
    from westkit import paths
    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.data.convert import as_shards

    shards, _ = as_shards([data], paths.home() / "cache" / "eval")
    cfg = LoaderConfig(shards=shards, max_batch_size=max_batch_size, max_batch_seconds=16 * 30.0,
                       shuffle=False, min_duration=0.0, min_text_chars=0, max_text_chars=1 << 30,
                       num_workers=0)
    loader = build_loader(cfg, train=False)
    loader.require_audio(f"decoding {data}")
    return loader


def evaluate(data: str, model: str, beam: int = 1, language: str | None = None, backend: str = "transformers",
             compute_type: str | None = None) -> Decoded:
    loader = data_loader(data)
    return decode(load_recognizer(model, beam, language, backend=backend, compute_type=compute_type), loader,
                  model, total=len(loader))


def utterance_wer(ref: str, hyp: str) -> float:
    from westkit.decode.scoring import score

    return score([ref], [hyp]).wer


def wer_table(results: list[Decoded]) -> str:
    from westkit.decode.scoring import score

    lines = [f"{'model':<28} {'WER %':>7} {'CER %':>7} {'S':>5} {'D':>5} {'I':>5} {'words':>6} {'utts':>5} {'RTF':>6}"]
    for d in results:
        s = score([r["ref"] for r in d.rows], [r["hyp"] for r in d.rows])
        lines.append(f"{d.model[-28:]:<28} {100 * s.wer:7.2f} {100 * s.cer:7.2f} {s.substitutions:5d} "
                     f"{s.deletions:5d} {s.insertions:5d} {s.ref_words:6d} {s.utterances:5d} {d.rtf:6.3f}")
    return "\n".join(lines)


def worst(d: Decoded, n: int) -> str:
    rows = sorted(d.rows, key=lambda r: (-utterance_wer(r["ref"], r["hyp"]), r["key"]))[:n]
    out = [f"worst {len(rows)} utterances:"]
    for r in rows:
        out += [f"  {r['key']}  WER {100 * utterance_wer(r['ref'], r['hyp']):.0f}%",
                f"    ref: {r['ref']}", f"    hyp: {r['hyp']}"]
    return "\n".join(out)


def mark_differences(ref: str, hyp: str) -> str:
    """``hyp`` with the words that differ from ``ref`` (after normalisation) in [brackets];
    words ``ref`` has and ``hyp`` lacks as [-word]."""
    import difflib

    from westkit.decode.scoring import normalize

    a, b = normalize(ref).split(), normalize(hyp).split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += b[j1:j2]
        elif op == "delete":
            out += [f"[-{w}]" for w in a[i1:i2]]
        else:
            out += [f"[{w}]" for w in b[j1:j2]]
    return " ".join(out)


def side_by_side(results: list[Decoded], show: int) -> str:
    """Utterances where the models' hypotheses differ: the reference, then each model's
    hypothesis with its errors marked (`mark_differences`)."""
    by_key = [{r["key"]: r for r in d.rows} for d in results]
    keys = [k for k in by_key[0] if len({m[k]["hyp"] for m in by_key if k in m}) > 1]
    width = max(len(d.model) for d in results)
    out = [f"{len(keys)} of {len(by_key[0])} utterances decoded differently" + (f" (first {show})" if len(keys) > show else "")]
    for k in keys[:show]:
        ref = by_key[0][k]["ref"]
        out.append(f"{k}\n  {'ref':<{width}}  {ref}")
        for d, m in zip(results, by_key):
            out.append(f"  {d.model:<{width}}  {mark_differences(ref, m[k]['hyp'])}")
    return "\n".join(out)


def bar_plot(results: list[Decoded], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from westkit.decode.scoring import score

    wers = [100 * score([r["ref"] for r in d.rows], [r["hyp"] for r in d.rows]).wer for d in results]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(results), 3.2))
    bars = ax.bar([d.model for d in results], wers, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("WER %")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
