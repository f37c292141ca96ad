"""Any training input -> shard folders, converted once and cached (the Whisper recipe's data).

`as_shards` takes what a user points a recipe at and returns shard specs the loader reads:

* shard folders (with index.json), globs of ``*.tar``, index.json paths and built-in corpus
  names pass through unchanged;
* anything `westkit.data.sources` reads (a folder with ``metadata.csv``, a folder of audio +
  ``.txt`` pairs, a WeST jsonl, a Kaldi or LibriSpeech folder) is written as shards into
  ``cache/<name>-<hash>/`` by `westkit.data.shards.write_shards`, once: the hash covers the
  input's path, size and modification time and the split, so a changed input is converted anew.

``test_split`` > 0 holds out a deterministic fraction of each converted input: a sample is in
the held-out part when the SHA-1 of its key falls below the fraction, so the split does not
depend on order, rank or seed, and growing the data keeps old samples on their side.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
from pathlib import Path

from westkit.data import corpora, sources
from westkit.data.shards import INDEX, write_shards

PARTS = ("train", "test")


def is_shards(spec: str) -> bool:
    """True when the loader reads ``spec`` as it is (shards, an index.json, a corpus name)."""
    p = Path(spec)
    if spec in corpora.NAMES and not p.exists():
        return True
    if p.is_dir():
        return (p / INDEX).is_file()
    if p.name == INDEX:
        return True
    return not p.exists() and bool(glob.glob(spec)) and all(m.endswith(".tar") for m in glob.glob(spec))


def held_out(key: str, fraction: float) -> bool:
    """Deterministic membership of the held-out part (see the module docstring)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) < fraction * 2**32


def _fingerprint(path: Path, fraction: float) -> str:
    digest = hashlib.sha1(f"{path.resolve()}|{fraction}".encode())
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


def convert(spec: str, cache: Path, test_split: float = 0.0, progress: bool = True) -> dict[str, Path]:
    """One source input -> {"train": folder[, "test": folder]} of shards under ``cache``
    (reused when already made; several processes may call it at once, one converts)."""
    from filelock import FileLock

    path = Path(spec)
    folder = cache / f"{path.stem or path.name}-{_fingerprint(path, test_split)}"
    parts = PARTS if test_split > 0 else PARTS[:1]
    done = {part: folder / part for part in parts}
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if all((f / INDEX).is_file() for f in done.values()):
            return done
        entries = list(sources.read(path))
        split = {part: [e for e in entries if held_out(e.key, test_split) == (part == "test")] for part in parts}
        if test_split > 0 and not split["test"]:
            raise ValueError(f"data.test_split={test_split} holds out none of the {len(entries)} samples "
                             f"of {spec}; raise it or give eval_data")
        for part, chosen in split.items():
            if not chosen:
                raise ValueError(f"{spec}: no samples left for {part} (data.test_split={test_split})")
            tmp = folder / f".{part}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            summary = write_shards(chosen, tmp, prefix=part, shard_bytes=64 * 2**20, total=len(chosen),
                                   progress=progress)
            if not summary.written:
                raise ValueError(f"{spec}: none of its {len(chosen)} samples could be read; see {tmp}/rejects.jsonl")
            shutil.rmtree(done[part], ignore_errors=True)
            os.replace(tmp, done[part])
    return done


def as_shards(specs: list[str], cache: Path, test_split: float = 0.0,
              progress: bool = True) -> tuple[list[str], list[str]]:
    """(train specs, held-out specs) for the loader; held-out is empty when ``test_split`` is 0.

    Raises ValueError when a split is asked of inputs that are shards already (split them
    when writing, or give the held-out data separately).
    """
    train, test = [], []
    for spec in specs:
        if is_shards(spec):
            if test_split > 0:
                raise ValueError(f"data.test_split={test_split}: {spec} is already shards, which are "
                                 "not split; give eval_data.shards (or point data at the raw folder)")
            train.append(spec)
            continue
        parts = convert(spec, cache, test_split, progress)
        train.append(str(parts["train"]))
        if "test" in parts:
            test.append(str(parts["test"]))
    return train, test
