"""Does a rare-word context lower the error on those words? A trained WeST run decodes the
held-out specialised test set twice, without a context (``special-test``) and with one
(``special-test-context``: the same audio, each utterance's json carrying its own rare words
and 5 distractors, `westkit.data.corpora.rare_word_context`), and both are scored on:

- WER (all words, insertions included);
- rare-word error: the share of the references' rare words (`corpora.rare_words`: in neither
  an English dictionary nor the general sentences) that the alignment substitutes or deletes
  (B-WER without insertions, `westkit.decode.scoring.word_errors`);
- other-word error: the same share for every other reference word;
- distractor copies: words of the context that the reference does not hold but the hypothesis
  does (what a model that copies the whole list would add);
- of the listed words the hypothesis writes, the share that were spoken, against the share a
  model picking them at random from its list would reach (own words / list length): above
  chance means the audio, not just the list, chooses what is written.

    python benchmarks/west_context.py --west exp/west_rare --out exp/west_rare/context

Spread: 95% intervals from 2000 bootstrap resamples of the test utterances (the same resample
for both decodings, so the interval of the difference is paired). One trained model: the
intervals say how much the test set moves the figures, not how much training seeds would.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from westkit.data import corpora  # noqa: E402
from westkit.decode import recognize  # noqa: E402
from westkit.decode.scoring import normalize, score, word_errors  # noqa: E402

SETS = ("special-test", "special-test-context")


def utterance_counts(row: dict) -> dict:
    """One utterance's error counts: rare-word and other-word misses, word errors, distractor copies."""
    ref, hyp = row["ref"], row["hyp"]
    rare = {normalize(w) for w in corpora.rare_words(ref)}
    counts = word_errors([ref], [hyp], [rare])
    s = score([ref], [hyp])
    base_key = "special-test" + row["key"][len("special-test-context"):] if "-context-" in row["key"] else row["key"]
    context = corpora.rare_word_context(base_key, ref, test=True).split(", ")
    said, written = set(normalize(ref).split()), set(normalize(hyp).split())
    listed = [w for w in context if normalize(w) in written]
    spoken = sum(normalize(w) in said for w in listed)
    # a model that picked the written ones at random from the list would be right own/len(list) of the time
    chance = len(listed) * sum(normalize(w) in said for w in context) / len(context)
    return counts | {"word_errors": s.substitutions + s.deletions + s.insertions, "ref_words": s.ref_words,
                     "copies": len(listed) - spoken, "listed_written": len(listed), "listed_spoken": spoken,
                     "listed_chance": chance}


def rates(rows: list[dict]) -> dict:
    tot = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {"wer": 100 * tot["word_errors"] / tot["ref_words"], "rare": 100 * tot["errors"] / tot["words"],
            "other": 100 * tot["other_errors"] / tot["other_words"], "copies": tot["copies"],
            "rare_words": tot["words"], "listed_written": tot["listed_written"],
            "listed_precision": 100 * tot["listed_spoken"] / max(tot["listed_written"], 1),
            "listed_chance": 100 * tot["listed_chance"] / max(tot["listed_written"], 1)}


def bootstrap(plain: list[dict], ctx: list[dict], n: int = 2000, seed: int = 0) -> dict:
    """95% intervals of each rate with and without context and of their difference (paired)."""
    rng = random.Random(seed)
    draws = {k: [] for k in ("plain", "ctx", "diff")}
    for _ in range(n):
        idx = [rng.randrange(len(plain)) for _ in plain]
        if not sum(plain[i]["words"] for i in idx):
            continue
        a, b = rates([plain[i] for i in idx]), rates([ctx[i] for i in idx])
        draws["plain"].append(a)
        draws["ctx"].append(b)
        draws["diff"].append({k: b[k] - a[k] for k in ("wer", "rare", "other")})

    def ci(side, k):
        xs = sorted(d[k] for d in draws[side])
        return [round(xs[int(0.025 * len(xs))], 1), round(xs[int(0.975 * len(xs)) - 1], 1)]

    return {side: {k: ci(side, k) for k in ("wer", "rare", "other")} for side in draws}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--west", required=True, help="a trained west run (recipes/west/train.py --out)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    out = Path(args.out)
    if not (out / "west" / SETS[1] / "hyps.jsonl").is_file():
        shards = [str(corpora.make(s, progress=False)) for s in SETS]
        rc = recognize.main(["--west", f"west={args.west}", "--shards", *shards, "--out", str(out),
                             "--batch-size", str(args.batch_size), "--num-workers", "1"])
        if rc:
            return rc
    rows = {}
    for s in SETS:
        with open(out / "west" / s / "hyps.jsonl") as f:
            rows[s] = sorted((json.loads(line) for line in f), key=lambda r: r["key"][-7:])
    plain, ctx = ([utterance_counts(r) for r in rows[s]] for s in SETS)
    if [r["ref"] for r in rows[SETS[0]]] != [r["ref"] for r in rows[SETS[1]]]:
        raise SystemExit("the two decodings do not hold the same utterances in the same order")
    result = {"run": args.west, "utterances": len(plain), "without": rates(plain), "with": rates(ctx),
              "ci95": bootstrap(plain, ctx)}
    (out / "context.json").write_text(json.dumps(result, indent=1) + "\n")
    ci = result["ci95"]
    print(f"{args.west}: {len(plain)} utterances of special-test, {result['without']['rare_words']} rare words; "
          "% [95% bootstrap interval]")
    print("| decoding | WER | rare-word error | other-word error | distractor copies | listed words written: "
          "spoken % (chance %) |\n|---|---|---|---|---|---|")
    for name, side, key in (("no context", "without", "plain"), ("rare-word context", "with", "ctx")):
        r = result[side]
        print(f"| {name} | {r['wer']:.1f} {ci[key]['wer']} | {r['rare']:.1f} {ci[key]['rare']} | "
              f"{r['other']:.1f} {ci[key]['other']} | {r['copies']} | {r['listed_written']}: "
              f"{r['listed_precision']:.0f} ({r['listed_chance']:.0f}) |")
    d = {k: result["with"][k] - result["without"][k] for k in ("wer", "rare", "other")}
    print(f"| change | {d['wer']:+.1f} {ci['diff']['wer']} | {d['rare']:+.1f} {ci['diff']['rare']} | "
          f"{d['other']:+.1f} {ci['diff']['other']} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
