"""Shard writing and reading: tar shards of ``KEY.flac`` + ``KEY.json`` with an ``index.json``.

Layout of a shard folder (WebDataset-compatible tars):

    train-000000.tar   KEY.flac (16 kHz mono, 16-bit FLAC) + KEY.json per utterance;
                       a text-only sample is KEY.json alone
    index.json         per shard: count, audio seconds, bytes and one row per sample
                       [key, duration, n_chars, json_offset, json_size, flac_offset, flac_size]
                       (flac_offset -1 for text-only), plus totals and rejects per reason
    rejects.jsonl      one line per skipped input: {input, line, key, reason, detail}

``KEY.json`` holds ``{"text", "duration", "sample_rate", "lang", "speaker", "source"}``.
The per-sample rows let the loader plan batches from metadata alone and read one member by
offset without scanning a tar.

Writing is parallel (a process pool decodes, checks and encodes; the parent writes tars in
input order), deterministic (tar headers carry no time, owner or mode from the machine) and
never dies on bad input: each problem is skipped, counted per reason and reported, unless
``strict`` is set, in which case the first problem raises ValueError naming file and line.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from westkit.data.audio import SAMPLE_RATE, BadInput, encode_flac, read_audio

INDEX = "index.json"
REJECTS = "rejects.jsonl"
INDEX_VERSION = 1
# row layout of index.json "samples"
KEY, DURATION, N_CHARS, JSON_OFFSET, JSON_SIZE, FLAC_OFFSET, FLAC_SIZE = range(7)


@dataclass
class Entry:
    """One input utterance before checking, as a source reader found it.

    audio: a file path, an object with ``load() -> (T,) float32 at 16 kHz`` (synthesis), or
    None for a text-only sample. ``problem`` is set by a reader that already knows the entry is
    bad (a piped Kaldi command, undecodable text) so it is reported with its file and line.
    """
    key: str
    text: str
    audio: Any = None
    lang: str = "en"
    speaker: str = ""
    source: str = ""
    input: str = ""
    line: int = 0
    problem: tuple[str, str] | None = None
    extra: dict = field(default_factory=dict)   # optional json fields kept as given ("instruction", "context")


@dataclass
class WriteLimits:
    """What the writer accepts; anything outside is rejected with reason ``absurd_duration``."""
    min_duration: float = 0.05
    max_duration: float = 600.0


@dataclass
class WriteSummary:
    """What a write produced: counts, audio seconds, rejects per reason, the shard paths."""
    out_dir: Path
    written: int = 0
    text_only: int = 0
    duration: float = 0.0
    rejected: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human line for logs and the CLI."""
        rej = sum(self.rejected.values())
        why = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        audio = f"{self.duration / 3600:.2f} h" if self.duration >= 360 else f"{self.duration:.1f} s"
        return (f"wrote {self.written} samples ({audio} audio, "
                f"{self.text_only} text-only) in {len(self.shards)} shards to {self.out_dir}; "
                f"rejected {rej}" + (f" ({why}; see {self.out_dir / REJECTS})" if rej else ""))


def clean_key(key: str) -> str:
    """A tar-safe key: WebDataset splits member names at the first dot, so no dots or slashes."""
    return key.strip().replace("/", "_").replace(".", "_").replace(" ", "_")


def _prepare(entry: Entry, limits: WriteLimits) -> tuple[Entry, dict | None, bytes | None, tuple | None]:
    """Check and encode one entry (runs in a pool worker).

    Returns (entry, meta json dict, flac bytes or None, None) or (entry, None, None, (reason, detail)).
    """
    try:
        if entry.problem:
            raise BadInput(*entry.problem)
        text = " ".join(entry.text.split())
        if not text:
            raise BadInput("empty_text", "transcript is empty")
        flac, duration = None, 0.0
        if entry.audio is not None:
            audio = entry.audio.load() if hasattr(entry.audio, "load") else read_audio(str(entry.audio))
            duration = len(audio) / SAMPLE_RATE
            if not limits.min_duration <= duration <= limits.max_duration:
                raise BadInput("absurd_duration", f"{duration:.3f} s outside [{limits.min_duration}, "
                                                  f"{limits.max_duration}] s")
            flac = encode_flac(audio)
        meta = {"text": text, "duration": round(duration, 4), "sample_rate": SAMPLE_RATE,
                "lang": entry.lang, "speaker": entry.speaker, "source": entry.source, **entry.extra}
        return entry, meta, flac, None
    except BadInput as e:
        return entry, None, None, (e.reason, e.detail)


def _prepare_star(args):
    return _prepare(*args)


def _meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()


class _TarWriter:
    """Deterministic tar writing that remembers where each member's data starts."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = tarfile.open(path, "w", format=tarfile.GNU_FORMAT)
        self.rows: list[list] = []
        self.duration = 0.0

    def add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
        self.tar.addfile(info, io.BytesIO(data))
        # after addfile the stream is at the end of the 512-byte padded data block
        return self.tar.offset - (-(-len(data) // 512) * 512)

    def size_with(self, key: str, meta: dict, flac: bytes | None) -> int:
        """The file size after adding this sample and closing (tar pads to 10 KiB records)."""
        end = self.tar.offset + 1024  # + the two zero blocks that end an archive
        for name, data in ((f"{key}.flac", flac), (f"{key}.json", _meta_bytes(meta))):
            if data is not None:
                end += 512 + -(-len(data) // 512) * 512 + (1024 if len(name) >= 100 else 0)
        return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def add_sample(self, key: str, meta: dict, flac: bytes | None) -> None:
        jb = _meta_bytes(meta)
        f_off, f_size = -1, 0
        if flac is not None:
            f_off, f_size = self.add(f"{key}.flac", flac), len(flac)
        j_off = self.add(f"{key}.json", jb)
        self.rows.append([key, meta["duration"], len(meta["text"]), j_off, len(jb), f_off, f_size])
        self.duration += meta["duration"]

    def close(self) -> dict:
        self.tar.close()
        return {"name": self.path.name, "count": len(self.rows), "duration": round(self.duration, 3),
                "bytes": self.path.stat().st_size, "samples": self.rows}


def write_shards(entries: Iterable[Entry], out_dir: str | Path, *, prefix: str = "train",
                 shard_bytes: int = 256 * 2**20, workers: int | None = None, strict: bool = False,
                 limits: WriteLimits | None = None, progress: bool = True,
                 total: int | None = None) -> WriteSummary:
    """Write entries as tar shards + index.json + rejects.jsonl into ``out_dir`` (made if absent).

    Samples keep input order; a shard is closed once adding the next sample would pass
    ``shard_bytes``. The same entries give byte-identical output. Raises ValueError if
    ``out_dir`` already holds an index.json, or (``strict``) at the first bad entry.
    """
    out_dir = Path(out_dir)
    if (out_dir / INDEX).exists():
        raise ValueError(f"{out_dir} already holds shards ({INDEX}); choose an empty output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    limits = limits or WriteLimits()
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    summary = WriteSummary(out_dir)
    seen: set[str] = set()

    def checked() -> Iterator[tuple[Entry, WriteLimits]]:
        # duplicates are decided here, in input order, so the first occurrence always wins
        for e in entries:
            e.key = clean_key(e.key)
            if e.problem is None:
                if e.key in seen:
                    e.problem = ("duplicate_key", f"key {e.key!r} seen before")
                seen.add(e.key)
            yield e, limits

    shards: list[dict] = []
    writer: _TarWriter | None = None
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(_prepare_star, checked(), chunksize=4) if pool else map(_prepare_star, checked())
    try:
        with open(out_dir / REJECTS, "w", encoding="utf-8") as rejects:
            for entry, meta, flac, problem in tqdm(results, total=total, disable=not progress,
                                                   desc=f"shards {out_dir.name}", unit="utt"):
                if problem:
                    reason, detail = problem
                    if strict:
                        raise ValueError(f"{entry.input}:{entry.line}: {reason}: {detail} (key {entry.key!r}); "
                                         "fix the input or drop --strict to skip and report such entries")
                    summary.rejected[reason] += 1
                    rejects.write(json.dumps({"input": entry.input, "line": entry.line, "key": entry.key,
                                              "reason": reason, "detail": detail}, ensure_ascii=False) + "\n")
                    continue
                if writer is not None and writer.size_with(entry.key, meta, flac) > shard_bytes:
                    shards.append(writer.close())
                    writer = None
                if writer is None:
                    writer = _TarWriter(out_dir / f"{prefix}-{len(shards):06d}.tar")
                writer.add_sample(entry.key, meta, flac)
                summary.written += 1
                summary.text_only += flac is None
                summary.duration += meta["duration"]
            if writer is not None:
                shards.append(writer.close())
                writer = None
    finally:
        if pool:
            pool.terminate()
        if writer is not None:  # an exception mid-shard: do not leave a half tar looking valid
            writer.tar.close()
            writer.path.unlink()
    summary.shards = [str(out_dir / s["name"]) for s in shards]
    index = {"version": INDEX_VERSION, "shards": shards,
             "totals": {"shards": len(shards), "samples": summary.written, "text_only": summary.text_only,
                        "duration": round(summary.duration, 3)},
             "rejected": dict(sorted(summary.rejected.items()))}
    tmp = out_dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")))
    os.replace(tmp, out_dir / INDEX)  # index.json last: its presence means the folder is complete
    return summary


def read_index(folder: str | Path) -> dict:
    """Load a shard folder's index.json; ValueError with what to do if missing or foreign."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise ValueError(f"{folder}: no {INDEX}; write shards with `westkit-shards` "
                         f"(or index existing WebDataset tars with `westkit-shards --index {folder}`)")
    index = json.loads(path.read_text())
    if index.get("version") != INDEX_VERSION:
        raise ValueError(f"{path}: index version {index.get('version')!r}, expected {INDEX_VERSION}")
    return index


def index_tars(folder: str | Path, progress: bool = True) -> dict:
    """Build and write index.json for existing WebDataset tars (KEY.json with text, KEY.flac/.wav).

    Scans every ``*.tar`` in ``folder``; a damaged tar contributes the samples before the
    damage, and samples that cannot be indexed are counted under "rejected". A sample whose
    json lacks "duration" gets it from the audio header.
    """
    folder = Path(folder)
    shards, rejected = [], Counter()
    for path in tqdm(sorted(folder.glob("*.tar")), disable=not progress, desc="index", unit="shard"):
        rows, bad = _scan_tar(path)
        rejected["unreadable_member"] += bad
        shards.append({"name": path.name, "count": len(rows), "duration": round(sum(r[DURATION] for r in rows), 3),
                       "bytes": path.stat().st_size, "samples": rows})
    index = {"version": INDEX_VERSION, "shards": shards,
             "totals": {"shards": len(shards), "samples": sum(s["count"] for s in shards),
                        "text_only": sum(r[FLAC_OFFSET] < 0 for s in shards for r in s["samples"]),
                        "duration": round(sum(s["duration"] for s in shards), 3)},
             "rejected": {k: v for k, v in rejected.items() if v}}
    (folder / INDEX).write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")))
    return index


def _scan_tar(path: Path) -> tuple[list[list], int]:
    """Index rows of one tar and the number of samples that could not be indexed."""
    import soundfile as sf

    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    rows, bad = [], 0
    try:
        tar = tarfile.open(path, "r")
    except (tarfile.TarError, OSError):
        return rows, 1  # not a tar from its first header on
    with tar:
        try:
            for m in tar:
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = m  # dicts keep first-seen (tar) order
        except (tarfile.TarError, OSError):
            bad += 1  # truncated: keep what came before
        for key, ms in members.items():
            audio = ms.get("flac") or ms.get("wav")
            try:
                meta = json.loads(tar.extractfile(ms["json"]).read())
                dur = meta.get("duration")
                if dur is None:
                    dur = sf.info(io.BytesIO(tar.extractfile(audio).read())).duration if audio else 0.0
                rows.append([key, float(dur), len(meta["text"]), ms["json"].offset_data, ms["json"].size,
                             audio.offset_data if audio else -1, audio.size if audio else 0])
            except Exception:  # no json, bad json, no text, unreadable audio header
                bad += 1
    return rows, bad


__all__ = ["Entry", "WriteLimits", "WriteSummary", "write_shards", "read_index", "index_tars",
           "clean_key", "INDEX", "REJECTS"]
