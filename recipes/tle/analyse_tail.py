"""How predictable are Whisper's states after the speech? Evidence for the TLE's tail design.

Reads precomputed teacher states (a `westkit-encode` states folder, 30 s windows) of a paired
shard folder, fits
the per-position silence template (mean of states at t >= n + margin) on part of the
utterances, and on the rest reports the MSE of three ways to fill frames after the speech:
the per-position template, one global silence vector (a learned constant at best), and the
template as a function of the distance from the end of speech (how far speech leaks).

    westkit-encode general-train --out exp/whistle/states/general-train --model whisper-tiny.en
    python recipes/tle/analyse_tail.py --shards general-train --states exp/whistle/states/general-train
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from westkit.data.loader import LoaderConfig, build_loader
from westkit.models.tle import speech_frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="paired shard folder or built-in corpus name")
    p.add_argument("--states", required=True, help="its states folder (westkit-encode)")
    p.add_argument("--margin", type=int, default=25)
    p.add_argument("--fit-fraction", type=float, default=0.7)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    loader = build_loader(LoaderConfig(shards=[args.shards], states=args.states, shuffle=False,
                                       num_workers=0), train=False)
    items = []
    for batch in loader:
        n = speech_frames(batch["audio_lens"], batch["states"].shape[1])
        items += [(k, int(m), s) for k, m, s in zip(batch["keys"], n, batch["states"])]
    items.sort(key=lambda item: item[0])
    if len(items) < 10:
        raise ValueError(f"only {len(items)} utterances in {args.shards}: the analysis needs 10 or more")
    cut = int(len(items) * args.fit_fraction)
    fit, held = items[:cut], items[cut:]
    T, D = items[0][2].shape
    t = torch.arange(T)
    tsum, tcount, gsum, gcount = torch.zeros(T, D, dtype=torch.float64), torch.zeros(T), torch.zeros(D, dtype=torch.float64), 0
    for _, n, f in fit:
        s = f.double()
        tail = t >= n + args.margin
        tsum[tail] += s[tail]
        tcount[tail] += 1
        gsum += s[tail].sum(0)
        gcount += int(tail.sum())
    template = (tsum / tcount.clamp(min=1)[:, None]).float()
    glob = (gsum / max(gcount, 1)).float()
    edges = [0, 5, 10, 25, 50, 100, 200, T]
    acc = {k: [0.0, 0] for k in ("template", "global", "speech_var", "tail_var")}
    by_dist = {f"{a}-{b}": [0.0, 0] for a, b in zip(edges[:-1], edges[1:])}
    for _, n, f in held:
        s = f.float()
        after = t >= n + args.margin
        ok = after & (tcount > 0)
        acc["template"][0] += float(((s[ok] - template[ok]) ** 2).sum()); acc["template"][1] += int(ok.sum()) * D
        acc["global"][0] += float(((s[ok] - glob) ** 2).sum()); acc["global"][1] += int(ok.sum()) * D
        sp = s[:n]
        acc["speech_var"][0] += float(((sp - sp.mean(0)) ** 2).sum()); acc["speech_var"][1] += sp.numel()
        tl = s[ok]
        acc["tail_var"][0] += float(((tl - tl.mean(0)) ** 2).sum()); acc["tail_var"][1] += tl.numel()
        d = t - n
        for a, b in zip(edges[:-1], edges[1:]):
            m = (d >= a) & (d < b) & (tcount > 0)
            by_dist[f"{a}-{b}"][0] += float(((s[m] - template[m]) ** 2).sum())
            by_dist[f"{a}-{b}"][1] += int(m.sum()) * D
    mean = lambda v: v[0] / max(v[1], 1)
    speech_frames = sum(n for _, n, _ in held)
    result = {"utterances_fit": len(fit), "utterances_held_out": len(held), "margin": args.margin,
              "speech_fraction_of_grid": speech_frames / (len(held) * T),
              "tail_mse_template": mean(acc["template"]), "tail_mse_global_vector": mean(acc["global"]),
              "speech_frame_variance": mean(acc["speech_var"]), "tail_frame_variance": mean(acc["tail_var"]),
              "template_mse_by_frames_after_speech": {k: mean(v) for k, v in by_dist.items()}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
