"""Readers for other toolkits' datasets and for long recordings with segment times.

Each reader yields `westkit.data.shards.Entry` objects for the shard writer, like those in
`westkit.data.sources` (which registers them as input formats):

    lhotse     a Lhotse CutSet manifest (``cuts.jsonl.gz``), or a folder with a recordings and
               a supervisions manifest (``*recordings*.jsonl.gz`` + ``*supervisions*.jsonl.gz``).
               Read with lhotse; cuts are trimmed to their supervisions (one utterance each,
               overlapping speech not kept), keyed by supervision id.
    nemo       a NeMo manifest: one ``{"audio_filepath", "text", "duration", "offset"?}`` per
               line; with "offset" the line is the segment [offset, offset + duration] of a
               longer file. Relative paths are relative to the manifest's folder.
    hf         a Hugging Face ``datasets`` folder written by ``save_to_disk`` (one split; a
               DatasetDict's split is its subfolder): the Audio column, read undecoded (the
               file bytes), and a text column (text, sentence, transcription, transcript or
               normalized_text); keys from an "id" column, else ``FOLDER-ROW``.
    subtitles  a folder of long recordings with an SRT or WebVTT file beside each (same stem):
               each cue is cut out as one utterance (parsed with pysubs2), keyed ``STEM-NNNN``.
Kaldi folders with a ``segments`` file ("UTT REC START END") are cut the same way (see
`westkit.data.sources`). Audio is only read later, in the writer's processes: `Segment`,
`LhotseAudio` and `EncodedAudio` are the ``Entry.audio`` objects with ``load()``.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from westkit.data.audio import BadInput, conform, read_audio
from westkit.data.shards import Entry

# a segment may end this far past its file's end (subtitle and manifest times are rounded)
END_SLACK = 0.5
TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")


@dataclass(frozen=True)
class Segment:
    """Seconds [start, end) of an audio file (end None: to the end); ``load()`` -> 16 kHz mono."""
    path: str
    start: float
    end: float | None

    def load(self) -> np.ndarray:
        import soundfile as sf

        if not os.path.isfile(self.path):
            raise BadInput("missing_file", self.path)
        try:
            info = sf.info(self.path)
        except Exception as e:
            raise BadInput("unreadable_audio", f"{self.path}: {e}") from None
        length = info.frames / info.samplerate
        end = length if self.end is None else self.end
        if not 0 <= self.start < end or self.start >= length or end > length + END_SLACK:
            raise BadInput("bad_segment", f"{self.path}: [{self.start:.3f}, {end:.3f}] s is not inside "
                                          f"the file's {length:.3f} s")
        data, sr = sf.read(self.path, start=int(round(self.start * info.samplerate)),
                           stop=min(info.frames, int(round(end * info.samplerate))),
                           dtype="float32", always_2d=True)
        return conform(data, sr)


@dataclass(frozen=True)
class LhotseAudio:
    """A Lhotse cut's audio (any channel layout and rate lhotse reads) -> 16 kHz mono."""
    cut: Any

    def load(self) -> np.ndarray:
        try:
            audio = self.cut.load_audio()  # (channels, T)
        except Exception as e:
            raise BadInput("unreadable_audio", f"cut {self.cut.id}: {e}") from None
        return conform(np.asarray(audio, dtype=np.float32).T, self.cut.sampling_rate)


@dataclass(frozen=True)
class EncodedAudio:
    """An audio file's bytes (a `datasets` Audio column read undecoded), or its path."""
    data: bytes | None
    path: str | None

    def load(self) -> np.ndarray:
        import soundfile as sf

        if self.data is None:
            if not self.path:
                raise BadInput("missing_file", "the audio column holds neither bytes nor a path")
            return read_audio(self.path)
        try:
            audio, sr = sf.read(io.BytesIO(self.data), dtype="float32", always_2d=True)
        except Exception as e:
            raise BadInput("unreadable_audio", f"{self.path or 'audio bytes'}: {e}") from None
        return conform(audio, sr)


def _bad(path: Path, n: int, reason: str, detail: str, key: str = "") -> Entry:
    return Entry(key=key or f"{path.stem}-line{n}", text="", input=str(path), line=n, problem=(reason, detail))


# ------------------------------------------------------------------------------------------
def read_lhotse(path: Path, lang: str, source: str) -> Iterator[Entry]:
    """Utterances of a Lhotse CutSet file or recordings + supervisions folder."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    if path.is_dir():
        recs = sorted(path.glob("*recordings*.jsonl*"))
        sups = sorted(path.glob("*supervisions*.jsonl*"))
        if len(recs) != 1 or len(sups) != 1:
            raise ValueError(f"{path}: a Lhotse folder needs one *recordings*.jsonl(.gz) and one "
                             f"*supervisions*.jsonl(.gz) manifest, found {len(recs)} and {len(sups)}; "
                             "or give a CutSet manifest file")
        cuts = CutSet.from_manifests(recordings=RecordingSet.from_file(recs[0]),
                                     supervisions=SupervisionSet.from_file(sups[0]))
        where = sups[0]
    else:
        cuts, where = CutSet.from_file(path), path
    for n, cut in enumerate(cuts.trim_to_supervisions(keep_overlapping=False), 1):
        sup = cut.supervisions[0] if cut.supervisions else None
        if sup is None or not (sup.text or "").strip():
            yield _bad(where, n, "missing_text", f"cut {cut.id} has no supervision text", key=cut.id)
            continue
        yield Entry(key=cut.id, text=" ".join(s.text or "" for s in cut.supervisions),
                    audio=LhotseAudio(cut), lang=sup.language or lang, speaker=sup.speaker or "",
                    source=source, input=str(where), line=n)


def read_nemo(path: Path, lang: str, source: str) -> Iterator[Entry]:
    """Utterances of a NeMo JSON-lines manifest (segments when a line has "offset")."""
    from westkit.data.sources import _key, _lines, _resolve

    for n, line, detail in _lines(path):
        if line is None:
            yield _bad(path, n, "bad_encoding", detail)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield _bad(path, n, "bad_line", f"not JSON: {e}")
            continue
        audio, text = (obj.get("audio_filepath"), obj.get("text")) if isinstance(obj, dict) else (None, None)
        if not isinstance(audio, str) or not isinstance(text, str):
            yield _bad(path, n, "bad_line", 'expected {"audio_filepath": path, "text": text, "duration": s}')
            continue
        key = _key(path.parent, audio)
        offset = obj.get("offset")
        if offset is not None:
            try:
                offset, duration = float(offset), float(obj["duration"])
            except (KeyError, TypeError, ValueError):
                yield _bad(path, n, "bad_line", 'a line with "offset" needs a numeric "duration"', key=key)
                continue
            clip: Any = Segment(_resolve(path.parent, audio), offset, offset + duration)
            key = f"{key}-{int(round(offset * 1000)):08d}"
        else:
            clip = _resolve(path.parent, audio)
        yield Entry(key=key, text=text, audio=clip, lang=str(obj.get("lang", obj.get("language", lang))),
                    speaker=str(obj.get("speaker", "")), source=source, input=str(path), line=n)


def read_hf(path: Path, lang: str, source: str) -> Iterator[Entry]:
    """Utterances of a `datasets` folder saved with ``save_to_disk``."""
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise ValueError(f"{path} is a DatasetDict with splits {', '.join(splits)}; give one split's "
                         f"folder, e.g. {path / (splits[0] if splits else 'train')}")
    ds = datasets.load_from_disk(str(path))
    audio_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Audio)]
    text_cols = [c for c in TEXT_COLUMNS if c in ds.features]
    if not audio_cols or not text_cols:
        raise ValueError(f"{path}: expected an Audio column and a text column ({', '.join(TEXT_COLUMNS)}); "
                         f"it has {dict(ds.features)}; cast or rename the columns and save it again")
    audio_col, text_col = audio_cols[0], text_cols[0]
    ds = ds.cast_column(audio_col, datasets.Audio(decode=False))  # bytes: no decoder needed here
    for n, row in enumerate(ds, 1):
        key = str(row["id"]) if "id" in row and row["id"] is not None else f"{path.name}-{n:08d}"
        audio = row[audio_col] or {}
        text = row[text_col]
        if not isinstance(text, str):
            yield _bad(path, n, "missing_text", f"row {n}: {text_col} is {text!r}", key=key)
            continue
        yield Entry(key=key, text=text, audio=EncodedAudio(audio.get("bytes"), audio.get("path")),
                    lang=str(row.get("lang") or row.get("language") or lang),
                    speaker=str(row.get("speaker_id") or row.get("speaker") or ""), source=source,
                    input=str(path), line=n)


SUBTITLE_EXTS = (".srt", ".vtt")


def read_subtitles(path: Path, lang: str, source: str) -> Iterator[Entry]:
    """Utterances cut from long recordings by the cues of an .srt/.vtt file beside each."""
    import pysubs2

    from westkit.data.sources import AUDIO_EXTS, _key

    audio_by_stem = {}
    for audio in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTS):
        audio_by_stem.setdefault(audio.with_suffix(""), audio)
    subs = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUBTITLE_EXTS)
    for sub in subs:
        audio = audio_by_stem.get(sub.with_suffix(""))
        stem = _key(path, str(sub.relative_to(path)))
        if audio is None:
            yield Entry(key=stem, text="", input=str(sub),
                        problem=("missing_file", f"no audio file named {sub.stem}.* beside it"))
            continue
        try:
            cues = pysubs2.load(str(sub), encoding="utf-8")
        except Exception as e:  # not UTF-8, not a subtitle file
            yield Entry(key=stem, text="", input=str(sub), problem=("bad_line", f"cannot parse: {e}"))
            continue
        for n, cue in enumerate(cues, 1):
            text = " ".join(cue.plaintext.split())
            if not text:
                continue
            yield Entry(key=f"{stem}-{n:04d}", text=text, audio=Segment(str(audio), cue.start / 1000, cue.end / 1000),
                        lang=lang, source=source, input=str(sub), line=n)


def sniff(path: Path) -> str | None:
    """One of lhotse / nemo / hf / subtitles if ``path`` looks like it, else None."""
    if path.is_dir():
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file() \
                or (path / "dataset_dict.json").is_file():
            return "hf"
        if next(path.glob("*supervisions*.jsonl*"), None) and next(path.glob("*recordings*.jsonl*"), None):
            return "lhotse"
        if next((p for p in path.rglob("*") if p.suffix.lower() in SUBTITLE_EXTS), None):
            return "subtitles"
        return None
    if path.name.endswith((".jsonl.gz", ".json.gz")):
        return "lhotse"
    if path.suffix in (".json", ".jsonl"):
        with open(path, "rb") as f:
            first = next((line for line in f if line.strip()), b"")
        try:
            obj = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(obj, dict) and "audio_filepath" in obj:
            return "nemo"
        if isinstance(obj, dict) and "supervisions" in obj and ("recording" in obj or "start" in obj):
            return "lhotse"
    return None


READERS = {"lhotse": read_lhotse, "nemo": read_nemo, "hf": read_hf, "subtitles": read_subtitles}
