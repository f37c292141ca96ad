"""Choose the LLM attention heads that time words for a WeST run, on speech with known timings.

    python -m westkit.decode.align_heads --west exp/west_ts [--sentences 24] [--voices en-029 en-gb-x-rp]

VoxLM v2 times words by DTW over attention between the transcript and the audio embeddings;
in a WeST model that attention is the LLM's own self-attention from the transcript tokens to
the audio-embedding positions of its input. Which of its layers x heads follow the audio is an
empirical question (Whisper's checkpoints ship their ``alignment_heads``; a WeST run has none),
so this script measures it:

1. utterances with sample-exact word boundaries (`westkit.decode.aligned_speech`: words
   synthesised one at a time, joined by random pauses), from sentences and voices the
   timestamp benchmark does not use (``general.txt`` lines from ``--first``);
2. one teacher-forced pass over each reference transcript (`timestamps.west_attention`, every
   layer and head), each token's attention over the audio positions normalised to sum 1;
3. each head's score: the mean share of a token's audio attention that falls on its own word's
   true span (`timestamps.head_scores`; uniform attention scores the ``chance`` level);
4. the best ``k`` heads (k in ``--k``) and median filter width (``--widths``, in audio
   embeddings) whose DTW word times (`timestamps.dtw_starts`, no snap) have the lowest mean
   start/end error on the same utterances.

Writes ``RUN/alignment_heads.json`` (`timestamps.WestHeads`), which `WestRecognizer.load` reads,
so ``westkit-recognize --west RUN --word-timestamps`` uses those heads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from westkit.data.pipeline import pad_audio
from westkit.decode import timestamps as ts
from westkit.models.features import SAMPLE_RATE

SELECTION_VOICES = ["en-029", "en-gb-x-rp"]


def attention_data(rec, utts, batch_size: int = 8) -> list[dict]:
    """Per utterance whose reference groups into its true words: ``att`` (L*H, n + 1, N) every
    head's attention from the reference's token queries to the audio embeddings, ``token_word``
    (n,), ``spans`` [(start, end)] s, ``n_words``."""
    m = rec.model
    tok = m.prompt.tokenizer
    out = []
    for i in range(0, len(utts), batch_size):
        chunk = utts[i:i + batch_size]
        audio, lens = pad_audio([u.audio for u in chunk])
        ids = [m.prompt.target(u.text)[:-1] for u in chunk]
        with torch.no_grad():
            emb, n = m.audio_embeddings(audio.to(rec.device), lens.to(rec.device))
        att = ts.west_attention(m, emb, n, ids)
        for u, a, r in zip(chunk, att, ids):
            groups = ts.split_words(tok, r)
            if len(groups) != len(u.words):  # a reference that does not split into its words
                continue
            token_word = [0] * len(r)
            for w, (_, g) in enumerate(groups):
                for p in g:
                    token_word[p] = w
            out.append({"att": a, "token_word": token_word, "spans": list(zip(u.starts, u.ends)),
                        "n_words": len(u.words)})
    return out


def dtw_error(data: list[dict], heads: list[int], width: int, seconds: float) -> dict:
    """Mean |start| and |end| error (ms) of DTW word times over ``heads`` (indices into att)."""
    s_err, e_err = [], []
    for d in data:
        starts = ts.dtw_starts(d["att"][heads], width, seconds)
        s, e = ts.word_times(starts, d["token_word"], d["n_words"])
        s_err += [abs(a - t[0]) for a, t in zip(s, d["spans"])]
        e_err += [abs(b - t[1]) for b, t in zip(e, d["spans"])]
    return {"start_mae_ms": round(1000 * float(np.mean(s_err)), 1), "end_mae_ms": round(1000 * float(np.mean(e_err)), 1),
            "mae_ms": round(500 * float(np.mean(s_err) + np.mean(e_err)), 1)}


def select(data: list[dict], n_heads: int, seconds: float, ks=(1, 2, 4, 8, 16), widths=(1, 3)) -> ts.WestHeads:
    """Score every head (`timestamps.head_scores`, token-weighted over ``data``), then keep the
    (k best heads, median width) with the lowest DTW error. ``n_heads``: heads per layer."""
    total, share, tokens, chance = None, None, 0, 0.0
    for d in data:
        n = len(d["token_word"])
        inside = ts.span_mask(d["spans"], d["token_word"], d["att"].shape[-1], seconds)
        sc = ts.head_scores(d["att"][:, :n].double(), inside) * n
        on_audio = d["att"][:, :n].double().sum(-1).sum(-1)  # (K,) attention on the audio at all
        total = sc if total is None else total + sc
        share = on_audio if share is None else share + on_audio
        tokens += n
        chance += float(inside.double().mean(-1).sum())
    scores, share = (total / tokens).numpy(), (share / tokens).numpy()
    order = np.argsort(-scores)
    trials = {}
    for k in ks:
        for w in widths:
            trials[f"k{k}_w{w}"] = dtw_error(data, order[:k].tolist(), w, seconds) | {"k": k, "width": w}
    trials["all_w1"] = dtw_error(data, order.tolist(), 1, seconds) | {"k": len(order), "width": 1}
    best = min((t for name, t in trials.items() if not name.startswith("all")), key=lambda t: t["mae_ms"])
    pairs = [divmod(int(h), n_heads) for h in order[:best["k"]]]
    info = {"score": "mean share of a token's audio attention on its own word's true span",
            "chance": round(chance / tokens, 4), "mean_score": round(float(scores.mean()), 4),
            "top_scores": [[*divmod(int(h), n_heads), round(float(scores[h]), 4)] for h in order[:16]],
            # how much of a token's attention goes to the audio at all (the rest: prompt, text)
            "audio_share_mean": round(float(share.mean()), 4), "audio_share_max": round(float(share.max()), 4),
            "audio_share_top": [round(float(share[h]), 4) for h in order[:16]],
            "dtw_trials": trials, "utterances": len(data), "tokens": tokens}
    return ts.WestHeads(pairs, best["width"], info)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m westkit.decode.align_heads", description=__doc__.split("\n\n")[0])
    p.add_argument("--west", required=True, metavar="RUN", help="a west run folder (trainable.safetensors + config.yaml)")
    p.add_argument("--sentences", type=int, default=12)
    p.add_argument("--first", type=int, default=200, help="first line of general.txt to use (the benchmark uses 0..)")
    p.add_argument("--voices", nargs="+", default=SELECTION_VOICES)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--widths", type=int, nargs="+", default=[1, 3])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="where to write the heads (default RUN/alignment_heads.json)")
    args = p.parse_args(argv)
    if any(w < 1 or w % 2 == 0 for w in args.widths):
        p.error("--widths: median filter widths must be odd and >= 1")
    from westkit.decode.aligned_speech import make_utterance
    from westkit.decode.recognizers import WestRecognizer
    from westkit.decode.search import GenerateConfig

    lines = [t for t in (Path(__file__).resolve().parents[1] / "data/sentences/general.txt").read_text().splitlines()
             if t.strip()]
    texts = lines[args.first:args.first + args.sentences]
    if not texts:
        p.error(f"--first {args.first}: general.txt has only {len(lines)} sentences")
    t0 = time.perf_counter()
    utts = [make_utterance(t, v, args.seed + k) for k, (t, v) in
            enumerate((t, v) for v in args.voices for t in texts)]
    rec = WestRecognizer.load(args.west, None, None, GenerateConfig(), torch.device("cpu"), torch.float32)
    data = attention_data(rec, utts, args.batch_size)
    llm_cfg = rec.model.llm.config
    heads = select(data, llm_cfg.num_attention_heads, rec.model.seconds_per_embedding, args.k, args.widths)
    heads.info.update(sentences=f"general.txt[{args.first}:{args.first + len(texts)}]", voices=args.voices,
                      seed=args.seed, layers=llm_cfg.num_hidden_layers, heads_per_layer=llm_cfg.num_attention_heads,
                      seconds_per_embedding=rec.model.seconds_per_embedding,
                      audio_seconds=round(sum(len(u.audio) for u in utts) / SAMPLE_RATE, 1),
                      seconds=round(time.perf_counter() - t0, 1))
    out = Path(args.out or Path(args.west) / ts.HEADS_FILE)
    heads.save(out)
    i = heads.info
    print(f"{i['utterances']} utterances, {i['tokens']} tokens; head score (share of attention on the "
          f"token's word): chance {i['chance']}, mean over heads {i['mean_score']}, best {i['top_scores'][:4]}; "
          f"attention on the audio at all: mean {i['audio_share_mean']}, most {i['audio_share_max']}, "
          f"best heads {i['audio_share_top'][:4]}")
    for name, t in i["dtw_trials"].items():
        print(f"  {name}: start {t['start_mae_ms']} ms, end {t['end_mae_ms']} ms")
    print(f"chose {len(heads.heads)} heads {heads.heads}, median width {heads.median_filter_width} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
