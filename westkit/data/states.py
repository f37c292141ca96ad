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

With ``--layer N`` each member is float16 (T', 2D): the last layer's states and, after them,
those of block N from the same forward (the TASTE recipe's keys and values); the index
records ``"layer": N``.
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


def check_states(folder: str | Path, fingerprint: str, pad_to_30s: bool = True,
                 layer: int | None = None) -> None:
    """Raise unless the states in ``folder`` were made by the encoder with ``fingerprint``
    (and, given ``layer``, carry that middle layer too)."""
    index = read_states_index(folder)
    if layer is not None and index.get("layer") != layer:
        raise ValueError(f"{folder}: states carry middle layer {index.get('layer')}, this recipe needs layer "
                         f"{layer}: run `westkit-encode SHARDS --out NEW_FOLDER --model NAME --layer {layer} "
                         f"--no-pad-to-30s`")
    if index["fingerprint"] != fingerprint:
        raise ValueError(f"{folder}: states were made by another encoder ({index['model']}): run "
                         f"westkit-encode again with this recipe's model, into a new folder")
    if bool(index["pad_to_30s"]) != pad_to_30s:
        raise ValueError(f"{folder}: states were made with pad_to_30s={index['pad_to_30s']}, this "
                         f"recipe needs pad_to_30s={pad_to_30s}")


def encode_states(shards: list[str], out: str | Path, model: str, pad_to_30s: bool = True,
                  batch_size: int = 16, device: str = "cpu", shard_bytes: int = 512 * 2**20,
                  progress: bool = True, layer: int | None = None) -> dict:
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
    if not loader.catalog.has_audio.any():
        raise ValueError(f"{shards}: no audio to encode (text-only shards need no states)")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    tars, writer, count = [], None, 0
    for batch in tqdm(loader, desc="encode", unit="batch", total=len(loader), disable=not progress):
        if "audio" not in batch:
            continue
        with torch.no_grad():
            if layer is None:
                states, lens = encoder(batch["audio"].to(device), batch["audio_lens"].to(device))
            else:
                last, hidden, lens = encoder.forward_layers(batch["audio"].to(device),
                                                            batch["audio_lens"].to(device), layer)
                states = torch.cat([last, hidden], -1)
        states = states.half().cpu().numpy()
        for key, s, n in zip(batch["keys"], states, lens.tolist()):
            if writer is None or writer.tar.offset > shard_bytes:
                if writer is not None:
                    tars.append(writer.close())
                writer = _TarWriter(tmp / f"states-{len(tars):06d}.tar")
            buf = io.BytesIO()
            np.save(buf, s if pad_to_30s else s[:n])
            data = buf.getvalue()
            writer.rows.append([key, writer.add(f"{key}.npy", data), len(data)])
            count += 1
    if writer is not None:
        tars.append(writer.close())
    index = {"kind": "states", "version": VERSION, "model": model,
             "fingerprint": encoder_fingerprint(encoder.encoder), "pad_to_30s": pad_to_30s, "layer": layer,
             "n_layers": encoder.num_layers,
             "dim": encoder.dim, "count": count, "shards": [{"name": t["name"], "samples": t["samples"]}
                                                             for t in tars]}
    (tmp / INDEX).write_text(json.dumps(index) + "\n")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)  # published whole or not at all
    return index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="westkit-encode", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", help="shard folders, globs or built-in corpus names")
    p.add_argument("--out", required=True, help="the states folder to write")
    p.add_argument("--model", required=True, help="Whisper: built-in name, hub id or folder")
    p.add_argument("--no-pad-to-30s", dest="pad_to_30s", action="store_false",
                   help="encode each utterance's real length (default: Whisper's 30 s window)")
    p.add_argument("--layer", type=int, default=None,
                   help="also keep block N's states: members become (T', 2D) [last | layer N]")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        index = encode_states(args.shards, args.out, args.model, args.pad_to_30s, args.batch_size,
                              args.device, layer=args.layer)
    except ValueError as e:
        print(f"westkit-encode: error: {e}", file=sys.stderr)
        return 2
    print(f"westkit-encode: {index['count']} utterances -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
