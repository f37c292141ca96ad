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


def load_recognizer(name: str, beam: int = 1, language: str | None = None, device: str = "cpu"):
    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig

    return WhisperRecognizer.load(model_folder(name), GenerateConfig(beam=beam), torch.device(device),
                                  torch.float32, language)


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


def _batches_of_files(files: list[Path], max_batch_size: int = 16):
    from westkit.data.audio import BadInput, read_audio
    from westkit.data.pipeline import collate

    samples = []
    for f in files:
        try:
            audio = read_audio(str(f))
        except BadInput as e:
            raise ValueError(f"{f}: cannot read this audio ({e})") from None
        samples.append({"key": str(f), "audio": torch.from_numpy(audio), "text": "", "lang": "en",
                        "duration": len(audio) / SAMPLE_RATE})
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


def transcribe(inputs: list[str], model: str, beam: int = 1, language: str | None = None) -> Decoded:
    files = audio_files(inputs)  # before the model loads: a typo fails at once
    return decode(load_recognizer(model, beam, language), _batches_of_files(files), model)


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


def evaluate(data: str, model: str, beam: int = 1, language: str | None = None) -> Decoded:
    loader = data_loader(data)
    return decode(load_recognizer(model, beam, language), loader, model, total=len(loader))


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
