"""Precomputed encoder states: ``westkit-encode`` writes them, the loader reads them per sample.

A frozen encoder gives the same states for an utterance every time, and on a small paired set
it is most of the cost of a WhisTLE step. ``westkit-encode`` runs it once over shard folders
and writes a *states folder*:

    states-000000.tar   KEY.npy per utterance: float16 (T', D) encoder states
    index.json          {"version", "model", "fingerprint", "pad_to_30s", "dim", "count",
                         "shards": [{"name", "samples": [[key, offset, size], ...]}]}

A loader given ``states: FOLDER`` (`westkit.data.loader.LoaderConfig`) reads each sample's
member by offset like its audio, so memory stays one batch deep and every rank does the same
work in ``forward`` (ZeRO-3 safe). The fingerprint of the encoder's weights is recorded;
recipes refuse states made by another encoder (`check_states`).

    westkit-encode general-train --out exp/states/general-train --model whisper-tiny.en

As a job array (`slurm/shards.sh` with ``TOOL=westkit-encode``): ``--slice I/N`` encodes the
I-th of N contiguous runs of the input's shard files into ``OUT/slices/slice-I-of-N`` (skipped
when already complete), and ``--merge OUT`` joins the slices into one states folder once all
are there (`westkit.data.prepare` does the same for shards).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from westkit.data.shards import _TarWriter

INDEX = "index.json"
VERSION = 1


def read_states_index(folder: str | Path) -> dict:
    """The index of a states folder, with a clear error when it is not one."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise ValueError(f"{folder} is not a states folder (no {INDEX}): make one with "
                         f"`westkit-encode SHARDS --out {folder} --model NAME`")
    index = json.loads(path.read_text())
    if index.get("kind") != "states":
        raise ValueError(f"{folder} is not a states folder (its {INDEX} was not made by westkit-encode): "
                         f"make one with `westkit-encode SHARDS --out NEW_FOLDER --model NAME`")
    return index


def check_states(folder: str | Path, fingerprint: str, pad_to_30s: bool = True) -> None:
    """Raise unless the states in ``folder`` were made by the encoder with ``fingerprint``."""
    index = read_states_index(folder)
    if index["fingerprint"] != fingerprint:
        raise ValueError(f"{folder}: states were made by another encoder ({index['model']}): run "
                         f"westkit-encode again with this recipe's model, into a new folder")
    if bool(index["pad_to_30s"]) != pad_to_30s:
        raise ValueError(f"{folder}: states were made with pad_to_30s={index['pad_to_30s']}, this "
                         f"recipe needs pad_to_30s={pad_to_30s}")


def encode_states(shards: list[str], out: str | Path, model: str, pad_to_30s: bool = True,
                  batch_size: int = 16, device: str = "cpu", shard_bytes: int = 512 * 2**20,
                  progress: bool = True, prefix: str = "states", allow_empty: bool = False) -> dict:
    """Encode every utterance of ``shards`` with the Whisper encoder of ``model`` into ``out``."""
    import torch
    from tqdm import tqdm

    from westkit.data.loader import LoaderConfig, build_loader
    from westkit.models.whisper import WhisperAudioEncoder, encoder_fingerprint, load_whisper_encoder

    out = Path(out)
    encoder = WhisperAudioEncoder(load_whisper_encoder(model), pad_to_30s=pad_to_30s).to(device).eval()
    cfg = LoaderConfig(shards=list(shards), max_batch_size=batch_size, max_batch_seconds=1e9,
                       shuffle=False, min_duration=0.0, max_duration=30.0, min_text_chars=0,
                       max_text_chars=1 << 30, num_workers=1)
    loader = build_loader(cfg, train=False)
    if not loader.catalog.has_audio.any() and not allow_empty:
        raise ValueError(f"{shards}: no audio to encode (text-only shards need no states)")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    tars, writer, count = [], None, 0
    for batch in tqdm(loader, desc="encode", unit="batch", total=len(loader), disable=not progress):
        if "audio" not in batch:
            continue
        with torch.no_grad():
            states, lens = encoder(batch["audio"].to(device), batch["audio_lens"].to(device))
        states = states.half().cpu().numpy()
        for key, s, n in zip(batch["keys"], states, lens.tolist()):
            if writer is None or writer.tar.offset > shard_bytes:
                if writer is not None:
                    tars.append(writer.close())
                writer = _TarWriter(tmp / f"{prefix}-{len(tars):06d}.tar")
            buf = io.BytesIO()
            np.save(buf, s if pad_to_30s else s[:n])
            data = buf.getvalue()
            writer.rows.append([key, writer.add(f"{key}.npy", data), len(data)])
            count += 1
    if writer is not None:
        tars.append(writer.close())
    index = {"kind": "states", "version": VERSION, "model": model,
             "fingerprint": encoder_fingerprint(encoder.encoder), "pad_to_30s": pad_to_30s,
             "dim": encoder.dim, "count": count, "shards": [{"name": t["name"], "samples": t["samples"]}
                                                             for t in tars]}
    (tmp / INDEX).write_text(json.dumps(index) + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)  # published whole or not at all
    return index


def _catalog_paths(shards: list[str]) -> list[str]:
    """The shard files of ``shards`` in order (what a slice is cut from)."""
    from westkit.data.loader import Catalog, LoaderConfig

    return Catalog(LoaderConfig(shards=list(shards), min_duration=0.0, max_duration=1e9, min_text_chars=0,
                                max_text_chars=1 << 30)).paths


def encode_slice(shards: list[str], out: str | Path, i: int, n: int, model: str, **kw) -> dict | None:
    """Encode slice ``i`` of ``n`` (contiguous shard files) into ``out/slices``; None if done."""
    from westkit.data.prepare import SLICES, slice_name

    out = Path(out)
    folder = out / SLICES / slice_name(i, n)
    if (out / INDEX).exists() or (folder / INDEX).exists():
        return None
    paths = _catalog_paths(shards)
    if n > len(paths):
        raise ValueError(f"{n} slices for {len(paths)} shard files: use at most {len(paths)} slices")
    part = paths[len(paths) * i // n:len(paths) * (i + 1) // n]
    # a slice of text-only shards has nothing to encode: an empty states folder says it is done
    return encode_states(part, folder, model, prefix=f"states-s{i:05d}", allow_empty=True, **kw)


def merge_states(out: str | Path) -> dict:
    """Join complete slices into the states folder ``out`` (one index.json, tars moved up)."""
    import os
    import shutil

    from westkit.data.prepare import SLICES, slice_name, slice_status

    out = Path(out)
    if (out / INDEX).exists():
        return read_states_index(out)
    n, missing = slice_status(out)
    if n is None or missing:
        raise ValueError(f"{out}: " + (f"slices {', '.join(map(str, missing))} of {n} are not written; rerun "
                                       "them, then merge again" if n else "no slices to merge"))
    parts = [(out / SLICES / slice_name(i, n), read_states_index(out / SLICES / slice_name(i, n))) for i in range(n)]
    first = parts[0][1]
    for folder, index in parts:
        for k in ("fingerprint", "pad_to_30s", "dim"):
            if index[k] != first[k]:
                raise ValueError(f"{folder}: {k} {index[k]!r} differs from slice 0's {first[k]!r}: "
                                 "every slice must be encoded with the same model and options")
    shards = []
    for folder, index in parts:
        for s in index["shards"]:
            if (folder / s["name"]).exists():
                os.replace(folder / s["name"], out / s["name"])
            shards.append(s)
    index = dict(first, count=sum(ix["count"] for _, ix in parts), shards=shards)
    (out / (INDEX + ".tmp")).write_text(json.dumps(index) + "\n")
    os.replace(out / (INDEX + ".tmp"), out / INDEX)
    shutil.rmtree(out / SLICES)
    return index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="westkit-encode", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="*", help="shard folders, globs or built-in corpus names")
    p.add_argument("--out", help="the states folder to write")
    p.add_argument("--model", help="Whisper: built-in name, hub id or folder")
    p.add_argument("--slice", metavar="I/N", default=None,
                   help="encode only slice I of N of the shard files under OUT/slices (a job array task)")
    p.add_argument("--merge", metavar="FOLDER", help="join the slices written under FOLDER/slices")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-pad-to-30s", dest="pad_to_30s", action="store_false",
                   help="encode each utterance's real length (default: Whisper's 30 s window)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not args.merge and not (args.shards and args.out and args.model):
        p.error("give SHARDS, --out and --model (or --merge FOLDER)")
    try:
        if args.merge:
            index = merge_states(args.merge)
            print(f"westkit-encode: merged {index['count']} utterances into {args.merge}", file=sys.stderr)
            return 0
        kw = dict(pad_to_30s=args.pad_to_30s, batch_size=args.batch_size, device=args.device,
                  progress=not args.no_progress)
        if args.slice:
            from westkit.data.prepare import parse_slice
            index = encode_slice(args.shards, args.out, *parse_slice(args.slice), args.model, **kw)
            if index is None:
                print(f"westkit-encode: slice {args.slice} of {args.out} is written already; nothing to do",
                      file=sys.stderr)
                return 0
        else:
            index = encode_states(args.shards, args.out, args.model, **kw)
    except ValueError as e:
        print(f"westkit-encode: error: {e}", file=sys.stderr)
        return 2
    print(f"westkit-encode: {index['count']} utterances -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
