"""Writing shards as many independent tasks (a SLURM job array), then merging them into one set.

    westkit-shards INPUTS -o OUT --slice I/N     # task I of N: OUT/slices/slice-0000I-of-0000N/
    westkit-shards --merge OUT                   # once all N are written: OUT/index.json + rejects.jsonl

Every task reads the whole input list (parsing manifests is cheap; audio is only read for its
slice) and writes the contiguous slice ``[I*len/N, (I+1)*len/N)`` of it, so slices are
deterministic and the merged set holds the samples in the order one process would write them.
Duplicate keys are decided over the whole input list before slicing (the first occurrence
wins, as in `westkit.data.shards.write_shards`), so a key repeated in another slice is
rejected as ``duplicate_key`` exactly as in a single run.

A slice is complete when its index.json exists (`write_shards` writes it last). A task finds
its slice complete and does nothing, or removes a half-written one (killed, failed) and writes
it again, so rerunning the array redoes only what is missing; `slurm/shards.sh` submits just
those tasks. The merge moves the tars up into OUT (names ``PREFIX-sIIIII-NNNNNN.tar`` are unique
across slices), concatenates the rejects in slice order, writes OUT/index.json last and removes
the slice folders; it refuses to run while a slice is missing and names them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from westkit.data.shards import INDEX, INDEX_VERSION, REJECTS, Entry, WriteSummary, clean_key, read_index, write_shards

SLICES = "slices"
SLICE_RE = re.compile(r"^slice-(\d{5})-of-(\d{5})$")


def slice_name(i: int, n: int) -> str:
    return f"slice-{i:05d}-of-{n:05d}"


def parse_slice(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); ValueError naming the expected form."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--slice {text!r}: expected I/N with 0 <= I < N, e.g. "
                         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return int(m.group(1)), int(m.group(2))


def write_slice(entries: list[Entry], out_dir: str | Path, i: int, n: int, prefix: str = "train",
                **write_kw) -> WriteSummary | None:
    """Write slice ``i`` of ``n`` of ``entries`` under ``out_dir/slices``; None if already done."""
    out = Path(out_dir)
    if (out / INDEX).exists():
        return None  # merged already
    folder = out / SLICES / slice_name(i, n)
    if (folder / INDEX).exists():
        return None
    seen: set[str] = set()
    for e in entries:  # duplicates over the whole input, in input order, before slicing
        e.key = clean_key(e.key)
        if e.problem is None:
            if e.key in seen:
                e.problem = ("duplicate_key", f"key {e.key!r} seen before")
            seen.add(e.key)
    if folder.exists():
        shutil.rmtree(folder)  # a killed or failed attempt
    lo, hi = len(entries) * i // n, len(entries) * (i + 1) // n
    return write_shards(entries[lo:hi], folder, prefix=f"{prefix}-s{i:05d}", total=hi - lo, **write_kw)


def slice_status(out_dir: str | Path) -> tuple[int | None, list[int]]:
    """(N, the slice numbers not yet complete) of ``out_dir/slices``; N None if none found."""
    root = Path(out_dir) / SLICES
    names = [m for m in (SLICE_RE.match(p.name) for p in root.iterdir()) if m] if root.is_dir() else []
    counts = {int(m.group(2)) for m in names}
    if len(counts) > 1:
        raise ValueError(f"{root} holds slices of different counts {sorted(counts)}; remove the "
                         "stale ones (a rerun must use the same number of slices)")
    if not counts:
        return None, []
    n = counts.pop()
    return n, [i for i in range(n) if not (root / slice_name(i, n) / INDEX).is_file()]


def merge_slices(out_dir: str | Path) -> dict:
    """Merge complete slices into ``out_dir``'s index.json and rejects.jsonl (see module doc)."""
    out = Path(out_dir)
    if (out / INDEX).exists():
        return read_index(out)
    n, missing = slice_status(out)
    if n is None:
        raise ValueError(f"{out}: no slices to merge under {out / SLICES}; write them with "
                         "westkit-shards ... --slice I/N")
    if missing:
        raise ValueError(f"{out}: slices {', '.join(map(str, missing))} of {n} are not written (failed, "
                         f"killed or still running); rerun them (slurm/shards.sh submits only those), "
                         "then merge again")
    shards, rejected, rejects = [], Counter(), []
    for i in range(n):
        folder = out / SLICES / slice_name(i, n)
        index = read_index(folder)
        for s in index["shards"]:
            if (folder / s["name"]).exists():  # moved already by an interrupted merge otherwise
                os.replace(folder / s["name"], out / s["name"])
            shards.append(s)
        rejected.update(index["rejected"])
        rejects.append((folder / REJECTS).read_text(encoding="utf-8"))
    (out / REJECTS).write_text("".join(rejects), encoding="utf-8")
    index = {"version": INDEX_VERSION, "shards": shards,
             "totals": {"shards": len(shards), "samples": sum(s["count"] for s in shards),
                        "text_only": sum(r[5] < 0 for s in shards for r in s["samples"]),
                        "duration": round(sum(s["duration"] for s in shards), 3)},
             "rejected": dict(sorted(rejected.items())), "slices": n}
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")))
    os.replace(tmp, out / INDEX)
    shutil.rmtree(out / SLICES)
    return index
