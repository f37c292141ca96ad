"""Input formats -> `Entry` streams for the shard writer. Readers only parse; they never load audio.

Formats (``FORMATS``; ``detect`` picks one from the path):
    jsonl        WeST: one ``{"wav" (or "audio"): path, "txt" (or "text"): text}`` per line, optional "key", "lang",
                 "speaker", "instruction", "context" (prompt text for LLM recognisers, kept in the
                 shard json); a line without "wav" is a text-only sample. Relative paths are
                 relative to the jsonl's folder.
    csv          Whisper-CLI ``metadata.csv`` with columns file_name,transcription (paths
                 relative to its folder).
    dir          a folder of audio files with a ``.txt`` transcript beside each (same stem).
    librispeech  a LibriSpeech tree: ``*/*/*.trans.txt`` lines "ID TEXT" + ``ID.flac``.
    kaldi        a Kaldi data folder (or its wav.scp): ``wav.scp`` "UTT PATH" + ``text``
                 "UTT WORDS", optional ``utt2spk``. Only plain paths: a piped command or an
                 ark offset is rejected with its reason. With a ``segments`` file ("UTT REC
                 START END") wav.scp lists recordings and each segment is cut out of its one.
    text         one sentence per line: text-only samples.
    lhotse, nemo, hf, subtitles   other toolkits' datasets and long recordings with subtitle
                 cues: see `westkit.data.interop`.
Keys: a sample's key is its audio path relative to the manifest's folder (the jsonl's, the
csv's, the ``dir`` folder itself), without the suffix, so ``spk1/001.wav`` and ``spk2/001.wav``
stay two samples (the shard writer then makes keys tar-safe: ``spk1_001``). A jsonl "key" and
Kaldi/LibriSpeech utterance ids are used as they are.
A problem found while parsing (bad UTF-8, a malformed line, a piped command) becomes an Entry
with ``problem`` set, so the writer reports it with its file and line like any other.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Iterator

from westkit.data import interop
from westkit.data.pipeline import PROMPT_FIELDS
from westkit.data.shards import Entry

FORMATS = ("jsonl", "csv", "dir", "librispeech", "kaldi", "text") + tuple(interop.READERS)
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".g722", ".aiff", ".au")


def detect(path: str | Path) -> str:
    """The input format of ``path`` (see the module docstring); ValueError if it cannot tell."""
    p = Path(path)
    if p.is_dir():
        if (p / "wav.scp").is_file():
            return "kaldi"
        if (p / "metadata.csv").is_file():
            return "csv"
        if next(p.glob("*/*/*.trans.txt"), None) is not None:
            return "librispeech"
        return interop.sniff(p) or "dir"
    if p.name == "wav.scp":
        return "kaldi"
    if interop.sniff(p):
        return interop.sniff(p)
    if p.suffix == ".jsonl" or p.suffix == ".json":
        return "jsonl"
    if p.suffix == ".csv":
        return "csv"
    if p.suffix == ".txt":
        return "text"
    raise ValueError(f"{path}: cannot tell the input format; pass --format with one of {', '.join(FORMATS)}")


def read(path: str | Path, fmt: str = "auto", lang: str = "en", source: str | None = None) -> Iterator[Entry]:
    """Entries of one input in the given (or detected) format."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input {path} does not exist")
    fmt = detect(p) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of auto, {', '.join(FORMATS)}")
    source = source or (p.stem if p.is_file() else p.name)
    return {"jsonl": _jsonl, "csv": _csv, "dir": _dir, "librispeech": _librispeech,
            "kaldi": _kaldi, "text": _text, **interop.READERS}[fmt](p, lang, source)


def _lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, decoded line or None if not UTF-8, detail) for each non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield n, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if line.strip():
                yield n, line, ""


def _bad(path: Path, n: int, reason: str, detail: str, key: str = "") -> Entry:
    return Entry(key=key or f"{path.stem}-line{n}", text="", input=str(path), line=n, problem=(reason, detail))


def _resolve(base: Path, audio: str) -> str:
    p = Path(audio)
    return str(p if p.is_absolute() else base / p)


def _key(base: Path, audio: str) -> str:
    """The key of the audio file ``audio`` (as written in a manifest in folder ``base``): its
    path relative to ``base`` without the suffix. A path outside ``base`` keeps its parts as
    written, less the root and any ``..``."""
    p = Path(audio)
    if p.is_absolute():
        try:
            p = Path(os.path.abspath(p)).relative_to(os.path.abspath(base))
        except ValueError:
            p = p.relative_to(p.anchor)
    parts = [part for part in p.parts if part not in (".", "..")]
    return str(Path(*parts).with_suffix(""))


def _jsonl(path: Path, lang: str, source: str) -> Iterator[Entry]:
    for n, line, detail in _lines(path):
        if line is None:
            yield _bad(path, n, "bad_encoding", detail)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield _bad(path, n, "bad_line", f"not JSON: {e}")
            continue
        text = obj.get("txt", obj.get("text", "")) if isinstance(obj, dict) else None  # none: empty_text
        wav = obj.get("wav", obj.get("audio")) if isinstance(obj, dict) else None
        if not isinstance(text, str) or not (wav is None or isinstance(wav, str)):
            yield _bad(path, n, "bad_line", 'expected {"wav": path, "txt": text}')
            continue
        key = str(obj.get("key") or (_key(path.parent, wav) if wav else f"{path.stem}-{n:08d}"))
        yield Entry(key=key, text=text, audio=_resolve(path.parent, wav) if wav else None,
                    lang=str(obj.get("lang", lang)), speaker=str(obj.get("speaker", "")),
                    source=source, input=str(path), line=n,
                    extra={k: str(obj[k]) for k in PROMPT_FIELDS if obj.get(k) is not None})


def _csv(path: Path, lang: str, source: str) -> Iterator[Entry]:
    if path.is_dir():
        path = path / "metadata.csv"
    header = None
    for n, line, detail in _lines(path):
        if line is None:
            yield _bad(path, n, "bad_encoding", detail)
            continue
        row = next(csv.reader([line]))
        if header is None:
            header = [c.strip() for c in row]
            if "file_name" not in header or "transcription" not in header:
                raise ValueError(f"{path}:{n}: expected a header with file_name,transcription, got {line!r}")
            continue
        rec = dict(zip(header, row))
        if len(row) != len(header):
            yield _bad(path, n, "bad_line", f"{len(row)} fields, header has {len(header)}")
            continue
        audio = rec["file_name"].strip()
        yield Entry(key=_key(path.parent, audio), text=rec["transcription"], audio=_resolve(path.parent, audio),
                    lang=rec.get("lang", lang) or lang, speaker=rec.get("speaker", ""), source=source,
                    input=str(path), line=n)


def _dir(path: Path, lang: str, source: str) -> Iterator[Entry]:
    for audio in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTS):
        txt = audio.with_suffix(".txt")
        key = _key(path, str(audio.relative_to(path)))
        if not txt.is_file():
            yield Entry(key=key, text="", input=str(audio), problem=("missing_text", f"no {txt.name} beside it"))
            continue
        try:
            text = txt.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            yield Entry(key=key, text="", input=str(txt), problem=("bad_encoding", f"not UTF-8 ({e.reason})"))
            continue
        yield Entry(key=key, text=text, audio=str(audio), lang=lang, source=source, input=str(txt), line=1)


def _librispeech(path: Path, lang: str, source: str) -> Iterator[Entry]:
    for trans in sorted(path.rglob("*.trans.txt")):
        for n, line, detail in _lines(trans):
            if line is None:
                yield _bad(trans, n, "bad_encoding", detail)
                continue
            utt, _, text = line.partition(" ")
            yield Entry(key=utt, text=text, audio=str(trans.parent / f"{utt}.flac"), lang=lang,
                        speaker=utt.split("-")[0], source=source, input=str(trans), line=n)


def _kaldi_table(path: Path) -> dict[str, str]:
    table = {}
    if path.is_file():
        for _, line, _ in _lines(path):
            if line is not None:
                k, _, v = line.strip().partition(" ")
                table[k] = v.strip()
    return table


def _kaldi(path: Path, lang: str, source: str) -> Iterator[Entry]:
    folder = path.parent if path.is_file() else path
    scp = folder / "wav.scp"
    if not (folder / "text").is_file():
        raise ValueError(f"{folder}: a Kaldi data folder needs wav.scp and text; text is missing")
    texts, spk = _kaldi_table(folder / "text"), _kaldi_table(folder / "utt2spk")
    if (folder / "segments").is_file():
        yield from _kaldi_segments(folder, texts, spk, lang, source)
        return
    for n, line, detail in _lines(scp):
        if line is None:
            yield _bad(scp, n, "bad_encoding", detail)
            continue
        utt, _, wav = line.strip().partition(" ")
        wav = wav.strip()
        if wav.endswith("|") or wav.startswith("|"):
            yield _bad(scp, n, "piped_entry", "a command pipe; convert that audio to a file first "
                       "(e.g. run the command into a .wav) and list the file", key=utt)
        elif not wav or re.search(r"\.ark:\d+$", wav):
            yield _bad(scp, n, "bad_line", f"unsupported wav.scp entry {wav!r}: plain audio paths only", key=utt)
        elif utt not in texts:
            yield _bad(scp, n, "missing_text", f"utterance {utt} has no line in {folder / 'text'}", key=utt)
        else:
            yield Entry(key=utt, text=texts[utt], audio=_resolve(folder, wav), lang=lang,
                        speaker=spk.get(utt, ""), source=source, input=str(scp), line=n)


def _kaldi_segments(folder: Path, texts: dict, spk: dict, lang: str, source: str) -> Iterator[Entry]:
    """A Kaldi folder with ``segments``: wav.scp lists recordings, each segment is cut out."""
    recordings = {}
    for _, line, _ in _lines(folder / "wav.scp"):
        if line is not None:
            rec, _, wav = line.strip().partition(" ")
            recordings[rec] = wav.strip()
    seg = folder / "segments"
    for n, line, detail in _lines(seg):
        if line is None:
            yield _bad(seg, n, "bad_encoding", detail)
            continue
        parts = line.split()
        try:
            utt, rec, start, end = parts[0], parts[1], float(parts[2]), float(parts[3])
        except (IndexError, ValueError):
            yield _bad(seg, n, "bad_line", f"expected 'UTT RECORDING START END', got {line!r}")
            continue
        wav = recordings.get(rec, "")
        if wav.endswith("|") or wav.startswith("|") or re.search(r"\.ark:\d+$", wav) or not wav:
            why = f"recording {rec} is not in wav.scp" if not wav else f"unsupported wav.scp entry {wav!r}"
            yield _bad(seg, n, "piped_entry" if "|" in wav else "bad_line", why + ": plain audio paths only", key=utt)
        elif utt not in texts:
            yield _bad(seg, n, "missing_text", f"utterance {utt} has no line in {folder / 'text'}", key=utt)
        else:
            yield Entry(key=utt, text=texts[utt], audio=interop.Segment(_resolve(folder, wav), start, end),
                        lang=lang, speaker=spk.get(utt, ""), source=source, input=str(seg), line=n)


def _text(path: Path, lang: str, source: str) -> Iterator[Entry]:
    for n, line, detail in _lines(path):
        if line is None:
            yield _bad(path, n, "bad_encoding", detail)
            continue
        yield Entry(key=f"{path.stem}-{n:08d}", text=line, lang=lang, source=source, input=str(path), line=n)
