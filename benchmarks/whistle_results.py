"""The multi-seed WhisTLE tables of docs/whistle.md: stage-2 adaptations of whisper-tiny.en to a
domain from its text, each over several seeds, scored on the domain and on real human speech.

    python benchmarks/whistle_results.py --out exp/whistle_results --domain special --tle TLE \\
        --seeds 0 1 2 [--steps 60] [--systems "tts only" ...]

Per seed and system: ``recipes/whisper/train.py --config recipes/whisper/conf/whistle_stage2.yaml``
with the system's mix weights, ``train.seed`` and every loader's seed set to the seed, the
stage-1 TLE ``--tle`` (frozen; the same for every seed) and precomputed encoder states of every
speech source; then one ``westkit-recognize`` call scores that seed's models (and, once, the base
model) on every test set, greedy, at most 128 new tokens. Results accumulate in
``OUT/results.json`` (a finished seed/system is not run again); the printed table gives each
system's mean and min-max over seeds, and the mean change from the base model.

Domains: ``special`` adapts on 80 special-text sentences (TTS: special-tts, espeak-ng) and
replays real speech (asterisk-train, one speaker's telephone prompts) besides espeak-ng
general-train; it is tested on special-test (held-out espeak-ng voice), special-test-piper
(a neural voice no training set uses), asterisk-test (real speech, not the domain) and
general-test. ``asterisk`` adapts on 80 asterisk-adapt transcripts (TTS: espeak-ng of them);
real Asterisk audio would be paired in-domain data there, so it replays only general-train and
is tested on asterisk-test and general-test.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from whisper_results import ROOT, sh

SYSTEMS = {  # name: (mix.text, mix.tts, real speech replayed)
    "replay only": (0, 0, True),
    "TTS only": (0, 1, True),
    "TLE only": (1, 0, True),
    "TLE + TTS": (1, 1, True),
    "TLE + TTS, no real replay": (1, 1, False),
}
DECODE = ["--tokens-per-second", "0", "--base-tokens", "128", "--max-new-tokens", "128",
          "--max-batch-seconds", "1e9", "--num-workers", "1"]


def domain_data(domain: str, states: Path, asterisk_test: int) -> dict:
    """Shard folders (and their precomputed states) of one domain's sources and test sets."""
    sys.path.insert(0, str(ROOT))
    from westkit.data import corpora

    def corpus(name, limit=None):
        return str(corpora.make(name, limit=limit, progress=False))

    def encoded(shards: str) -> str:
        folder = states / Path(shards).name
        if not (folder / "index.json").is_file():
            sh([sys.executable, "-m", "westkit.data.states", shards, "--out", str(folder), "--model",
                "whisper-tiny.en"], states / f"{folder.name}.log")
        return str(folder)

    states.mkdir(parents=True, exist_ok=True)
    general = corpus("general-train")
    tests = {"asterisk-test": corpus("asterisk-test", asterisk_test), "general-test": corpus("general-test")}
    if domain == "special":
        text, tts = corpus("special-text", 80), corpus("special-tts", 80)
        tests = {"special-test": corpus("special-test"), "special-test-piper": corpus("special-test-piper"), **tests}
        real = corpus("asterisk-train")
    else:
        text = corpus("asterisk-adapt", 80)
        tts = str(states.parent / "asterisk-tts")
        if not (Path(tts) / "index.json").is_file():
            sh([sys.executable, "recipes/tle/make_tts.py", "--text", text, "--out", tts], states.parent / "asterisk-tts.log")
        real = None
    return {"text": text, "general": (general, encoded(general)), "tts": (tts, encoded(tts)),
            "real": (real, encoded(real)) if real else None, "tests": tests}


def train(system: str, seed: int, data: dict, tle: str, steps: int, real_weight: float, run: Path) -> dict:
    text_w, tts_w, real = SYSTEMS[system]
    seeds = [f"{k}={seed}" for k in ("train.seed", "data.seed", "text.data.seed", "tts.seed")]
    overrides = [f"text.tle={tle}", f"text.data.shards=[{data['text']}]",
                 f"data.shards=[{data['general'][0]}]", f"data.states={data['general'][1]}",
                 f"tts.shards=[{data['tts'][0]}]", f"tts.states={data['tts'][1]}",
                 f"mix.text={text_w}", f"mix.tts={tts_w}", f"train.max_steps={steps}", "train.lr=3.0e-5"]
    if real and data["real"]:
        overrides += [f"real.shards=[{data['real'][0]}]", f"real.states={data['real'][1]}",
                      "real.max_batch_seconds=60", "real.max_batch_size=16", f"real.seed={seed}",
                      f"mix.real={real_weight}"]
    started = time.time()
    sh([sys.executable, "recipes/whisper/train.py", "--config", "recipes/whisper/conf/whistle_stage2.yaml",
        "--out", str(run), *overrides, *seeds], run.with_suffix(".log"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if r.get("kind") == "train" and "step_time" in r]
    return {"train_seconds": round(time.time() - started),
            "step_time": sum(r["step_time"] for r in train_rows) / max(len(train_rows), 1)}


def score(models: dict[str, str], tests: dict[str, str], out: Path) -> dict:
    """{model: {set: {wer, substitutions, deletions, insertions, ref_words}}} from one
    westkit-recognize call."""
    sh([sys.executable, "-m", "westkit.decode.recognize", "--whisper", *[f"{k}={v}" for k, v in models.items()],
        "--shards", *tests.values(), "--out", str(out), *DECODE], out.with_suffix(".log"))
    results = json.loads((out / "results.json").read_text())
    names = {Path(folder).name: label for label, folder in tests.items()}
    keys = ("wer", "substitutions", "deletions", "insertions", "ref_words")
    return {m: {names[s]: {k: r["all"][k] for k in keys} for s, r in per_set.items()}
            for m, per_set in results.items()}


def summary(results: dict, systems: list[str], tests: list[str]) -> str:
    """Markdown: base, then per system the mean (min-max) WER % over seeds per set, and the
    mean change from base in points."""
    base = results["base"]
    words = "".join(f" | {t} ({base[t]['ref_words']} words)" for t in tests)
    lines = [f"| system | seeds{words} |", "|---" * (len(tests) + 2) + "|",
             "| base | - | " + " | ".join(f"{100 * base[t]['wer']:.1f}" for t in tests) + " |"]
    for name in systems:
        runs = results.get(name, {})
        if not runs:
            continue
        cells = []
        for t in tests:
            w = [100 * r[t]["wer"] for r in runs.values()]
            mean = sum(w) / len(w)
            cells.append(f"{mean:.1f} ({min(w):.1f}-{max(w):.1f}) {mean - 100 * base[t]['wer']:+.1f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--domain", choices=("special", "asterisk"), default="special")
    p.add_argument("--tle", required=True, help="stage-1 TLE folder (recipes/tle/train.py --out)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--systems", nargs="*", default=None, help=f"default: all of {list(SYSTEMS)} that apply")
    p.add_argument("--real-weight", type=float, default=1.0, help="mix.real of systems that replay real speech")
    p.add_argument("--asterisk-test", type=int, default=140, help="asterisk-test prompts scored (of 280)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve() / args.domain
    data = domain_data(args.domain, out.parent / "states", args.asterisk_test)
    systems = args.systems or list(SYSTEMS)
    if not data["real"]:   # without real speech to replay, the "no real replay" row repeats TLE + TTS
        systems = [s for s in systems if not s.endswith("no real replay")]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in args.seeds:          # seeds outermost: an interrupted sweep has whole seeds
        todo = [s for s in systems if str(seed) not in results.get(s, {})]
        models = {} if "base" in results else {"base": "whisper-tiny.en"}
        runs = {}
        for system in todo:
            run = out / re.sub(r"\W+", "_", f"{system} seed {seed}").strip("_")
            if not (run / "hf" / "model.safetensors").is_file():
                runs[system] = train(system, seed, data, args.tle, args.steps, args.real_weight, run)
            models[f"{system} seed {seed}"] = str(run / "hf")
        if not models:
            continue
        scored = score({re.sub(r"\W+", "_", k).strip("_"): v for k, v in models.items()}, data["tests"],
                       out / f"score_seed{seed}")
        for label in models:
            row = scored[re.sub(r"\W+", "_", label).strip("_")]
            if label == "base":
                results["base"] = row
            else:
                system = label.rsplit(" seed ", 1)[0]
                results.setdefault(system, {})[str(seed)] = row | runs.get(system, {})
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(summary(results, systems, list(data["tests"])), flush=True)
    print(summary(results, systems, list(data["tests"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
