"""Word-timestamp accuracy and confidence quality of Whisper and WeST models on speech with known timings.

    python benchmarks/timestamps.py --out exp/ts_bench [--sentences 8] [--voices en-us en-gb ...] [--seed 0]
    python benchmarks/timestamps.py --out exp/ts_base --model whisper-base --language en
    python benchmarks/timestamps.py --out exp/ts_west --west exp/west_ts --methods westkit westkit-nosnap even-spread

Data: the first ``--sentences`` lines of westkit's ``general.txt`` sentence list, each spoken by
every voice with `westkit.decode.aligned_speech.make_utterance` (words synthesised one at a
time by espeak-ng, joined by 50-350 ms silences drawn with seed ``seed + utterance index``): the
true start/end of every word is known to the sample.

Methods, on the same audio:
* ``westkit``: `westkit.decode.longform.transcribe` with one window per utterance (alignment
  only, no VAD);
* ``westkit-nosnap``: the same without the snap of word edges to loud frames (DTW alone);
* ``westkit+vad``: the same through the long-form path (silero-vad windows);
* ``transformers``: ``WhisperForConditionalGeneration.generate(return_token_timestamps=True)``
  on the feature extractor's 30 s features, words grouped by the same `split_words` (Whisper only);
* ``forced`` (WeST only): the *reference* transcript teacher-forced through the chosen heads
  (forced alignment), then the snap: the attention's timing whatever the model recognises;
  ``forced-even`` the same transcript with its tokens spread evenly (no attention), then the snap;
  ``-nosnap`` variants of both without the snap;
* ``even-spread``: a baseline without attention: the same hypotheses, their tokens spread evenly
  over the window, then the snap; what attention adds is the gap between it and ``westkit``.

``--west RUN`` measures a WeST run (its ``alignment_heads.json``, `westkit.decode.align_heads`)
instead of the Whisper ``--model``.
Hypothesis words are matched to reference words (normalised, difflib matching blocks); start
and end errors are measured on matched words. Confidence: AUC of "word is wrong" against
(1 - confidence) over all hypothesis words (a word is wrong when it is not matched), and WER of
utterances kept vs flagged at utterance confidence < ``--min-confidence``.

Writes ``OUT/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from westkit.data.pipeline import pad_audio  # noqa: E402
from westkit.decode import longform, timestamps as ts  # noqa: E402
from westkit.decode.aligned_speech import VOICES, make_utterance  # noqa: E402
from westkit.models.features import SAMPLE_RATE  # noqa: E402


def norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def match(ref: list[str], hyp: list[str]) -> list[tuple[int, int]]:
    """(ref index, hyp index) of words the two sequences share, in order."""
    sm = difflib.SequenceMatcher(None, [norm(w) for w in ref], [norm(w) for w in hyp], autojunk=False)
    return [(b.a + k, b.b + k) for b in sm.get_matching_blocks() for k in range(b.size)]


def auc(scores_pos: list[float], scores_neg: list[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    if not scores_pos or not scores_neg:
        return None
    pos, neg = np.asarray(scores_pos)[:, None], np.asarray(scores_neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def add_noise(u, snr_db: float, seed: int) -> np.ndarray:
    """The utterance's audio plus white noise ``snr_db`` below the mean power of its words."""
    if snr_db == float("inf"):
        return u.audio
    speech = np.concatenate([u.audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] for s, e in zip(u.starts, u.ends)])
    sigma = np.sqrt(np.mean(speech.astype(np.float64) ** 2) / 10 ** (snr_db / 10))
    return (u.audio + sigma * np.random.default_rng(seed).standard_normal(len(u.audio))).astype(np.float32)


def transformers_words(rec, utts, batch_size: int, language: str | None = None) -> list[list[ts.Word]]:
    """transformers' own token timestamps, grouped into words like ours."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(rec.whisper.config.name_or_path)
    out = []
    for i in range(0, len(utts), batch_size):
        chunk = utts[i:i + batch_size]
        f = fe([u.audio for u in chunk], sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        lang = {"language": language, "task": "transcribe"} if language else {}
        g = rec.whisper.generate(f.input_features, attention_mask=f.attention_mask, return_token_timestamps=True,
                                 return_dict_in_generate=True, **lang)
        for seq, tt in zip(g["sequences"].tolist(), g["token_timestamps"].tolist()):
            body = [t for t in seq if t < rec.eot]
            first = seq.index(body[0]) if body else 1
            # as transformers' own word timestamps read them (WhisperTokenizer._decode_asr):
            # token_timestamps[i] is where token i ends, so token i starts at [i - 1]
            starts = np.asarray(tt[first - 1:first + len(body)] + [tt[-1]] * 2)[:len(body) + 1]
            out.append(ts.words_from_tokens(rec.tokenizer, body, starts, []))
    return out


class EvenSpread:
    """A recognizer's transcripts with their tokens spread evenly over the window: the
    no-attention baseline (``decode_words`` as `westkit.decode.longform` calls it)."""

    def __init__(self, rec):
        self.rec, self.device = rec, rec.device
        self.tokenizer = rec.tokenizer if hasattr(rec, "tokenizer") else rec.model.prompt.tokenizer

    def decode_words(self, audio, lens, offsets):
        outs = self.rec(audio, lens)
        words = [ts.words_from_tokens(self.tokenizer, t.ids, np.linspace(0, n / SAMPLE_RATE, len(t.ids) + 1),
                                      t.logprobs, off, off + n / SAMPLE_RATE)
                 for t, n, off in zip(outs, lens.tolist(), offsets)]
        return outs, words


def forced_words(rec, utts, batch_size: int, even: bool = False, snap: bool = True) -> list[list[ts.Word]]:
    """WeST: each reference transcript teacher-forced through the run's heads (``even``: its
    tokens spread evenly over the audio instead, the no-attention baseline), then snapped."""
    from westkit.decode.recognizers import Transcript

    m, out = rec.model, []
    for i in range(0, len(utts), batch_size):
        chunk = utts[i:i + batch_size]
        audio, lens = pad_audio([u.audio for u in chunk])
        with torch.no_grad():
            emb, n = m.audio_embeddings(audio, lens)
        refs = [Transcript(u.text, m.prompt.target(u.text)[:-1], False, []) for u in chunk]
        timed = ([ts.words_from_tokens(m.prompt.tokenizer, t.ids, np.linspace(0, len(u.audio) / SAMPLE_RATE, len(t.ids) + 1), [])
                  for t, u in zip(refs, chunk)] if even else ts.west_words(rec, emb, n, refs))
        for u, words in zip(chunk, timed):
            if snap:
                ts.snap_to_speech(words, u.audio)
            out.append(words)
    return out


def evaluate(utts, words_per_utt, min_conf: float) -> dict:
    from westkit.decode.scoring import score

    s_err, e_err, s_bias, e_bias, pos, neg = [], [], [], [], [], []
    kept, flagged, n_ref = [], [], 0
    per_utt = []  # (utterance, voice, start errors, end errors): for the spread
    for u, words in zip(utts, words_per_utt):
        n_ref += len(u.words)
        pairs = match(u.words, [w.word for w in words])
        per_utt.append((u.voice, [abs(words[h].start - u.starts[r]) for r, h in pairs],
                        [abs(words[h].end - u.ends[r]) for r, h in pairs]))
        hit = {h for _, h in pairs}
        for r, h in pairs:
            s_bias.append(words[h].start - u.starts[r])
            e_bias.append(words[h].end - u.ends[r])
            s_err.append(abs(s_bias[-1]))
            e_err.append(abs(e_bias[-1]))
        for k, w in enumerate(words):
            (neg if k in hit else pos).append(1.0 - w.confidence)  # positive = wrong word
        conf = ts.confidence(words)
        (kept if conf is not None and conf >= min_conf else flagged).append(
            (u.text, " ".join(w.word for w in words)))
    s_err, e_err = np.asarray(s_err), np.asarray(e_err)
    both = np.maximum(s_err, e_err)

    def wer(pairs):
        return None if not pairs else round(score([p[0] for p in pairs], [p[1] for p in pairs]).wer, 4)
    rng = np.random.default_rng(0)
    boot = {"start_mae_ms": [], "end_mae_ms": [], "within_50ms": [], "within_100ms": [], "within_200ms": []}
    for _ in range(1000):  # utterances resampled with replacement
        pick = [per_utt[i] for i in rng.integers(0, len(per_utt), len(per_utt))]
        bs, be = np.concatenate([p[1] for p in pick] or [[]]), np.concatenate([p[2] for p in pick] or [[]])
        if bs.size:
            boot["start_mae_ms"].append(1000 * bs.mean())
            boot["end_mae_ms"].append(1000 * be.mean())
            for c in (50, 100, 200):
                boot[f"within_{c}ms"].append((np.maximum(bs, be) <= c / 1000).mean())
    ci = {f"{k}_ci95": [round(float(np.percentile(v, 2.5)), 3), round(float(np.percentile(v, 97.5)), 3)]
          for k, v in boot.items() if v}
    voices = sorted({p[0] for p in per_utt})
    by_voice = {}
    for v in voices:
        vs = np.concatenate([p[1] for p in per_utt if p[0] == v] or [[]])
        ve = np.concatenate([p[2] for p in per_utt if p[0] == v] or [[]])
        by_voice[v] = round(float((np.maximum(vs, ve) <= 0.1).mean()), 3) if vs.size else None
    return {"ref_words": n_ref, **ci, "within_100ms_by_voice": by_voice, "matched_words": int(len(s_err)),
            "start_mae_ms": round(1000 * float(s_err.mean()), 1), "end_mae_ms": round(1000 * float(e_err.mean()), 1),
            "start_bias_ms": round(1000 * float(np.mean(s_bias)), 1), "end_bias_ms": round(1000 * float(np.mean(e_bias)), 1),
            "start_median_ms": round(1000 * float(np.median(s_err)), 1),
            "end_median_ms": round(1000 * float(np.median(e_err)), 1),
            **{f"within_{c}ms": round(float((both <= c / 1000).mean()), 3) for c in (50, 100, 200)},
            **{f"start_within_{c}ms": round(float((s_err <= c / 1000).mean()), 3) for c in (50, 100, 200)},
            "error_auc": None if auc(pos, neg) is None else round(auc(pos, neg), 3),
            "wrong_words": len(pos), "wer_all": wer(kept + flagged), "wer_kept": wer(kept), "wer_flagged": wer(flagged),
            "kept_utts": len(kept), "flagged_utts": len(flagged)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sentences", type=int, default=8)
    p.add_argument("--voices", nargs="+", default=VOICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-confidence", type=float, default=0.7)
    p.add_argument("--model", default="whisper-tiny.en", help="a Whisper asset name, hub id or folder")
    p.add_argument("--west", metavar="RUN", help="measure this WeST run instead of --model")
    p.add_argument("--language", help="a multilingual Whisper's language (whisper-base: en); without it, its "
                   "decoder starts with no language token and recognises poorly")
    p.add_argument("--snr", type=float, nargs="+", default=[float("inf"), 20.0],
                   help="conditions: white noise at this SNR (dB, over the speech's power) added; inf = clean")
    p.add_argument("--methods", nargs="+", default=["westkit", "westkit-nosnap", "westkit+vad", "transformers"])
    args = p.parse_args(argv)
    from westkit.decode.recognizers import WestRecognizer, WhisperRecognizer
    from westkit.decode.search import GenerateConfig

    if args.west and "transformers" in args.methods:
        p.error("--west: the transformers method is Whisper's own; leave it out of --methods")
    if not args.west and any(m.startswith("forced") for m in args.methods):
        p.error("--methods forced: WeST runs only (--west RUN)")

    torch.manual_seed(args.seed)
    lines = (Path(__file__).resolve().parents[1] / "westkit/data/sentences/general.txt").read_text().splitlines()
    texts = [t for t in lines if t.strip()][:args.sentences]
    t0 = time.perf_counter()
    utts = [make_utterance(t, v, args.seed + k) for k, (t, v) in
            enumerate((t, v) for v in args.voices for t in texts)]
    print(f"{len(utts)} utterances, {sum(len(u.audio) for u in utts) / SAMPLE_RATE:.1f} s, "
          f"{sum(len(u.words) for u in utts)} words, synthesised in {time.perf_counter() - t0:.1f} s")
    if args.west:
        rec = WestRecognizer.load(args.west, None, None, GenerateConfig(), torch.device("cpu"), torch.float32)
        if rec.heads is None:
            p.error(f"--west {args.west}: no {ts.HEADS_FILE}; run python -m westkit.decode.align_heads --west {args.west}")
    else:
        rec = WhisperRecognizer.load(args.model, GenerateConfig(), torch.device("cpu"), torch.float32, args.language)
    cfg = longform.LongformConfig(batch_size=args.batch_size)
    clean = utts
    results = {}
    for snr in args.snr:
        utts = [dataclasses.replace(u, audio=add_noise(u, snr, args.seed + k)) for k, u in enumerate(clean)]
        audios, whole = [u.audio for u in utts], [[(0, len(u.audio))] for u in utts]
        runs = {
            "westkit": lambda: longform.transcribe(rec, audios, cfg, whole),
            "westkit-nosnap": lambda: longform.transcribe(rec, audios, dataclasses.replace(cfg, snap=False), whole),
            "westkit+vad": lambda: longform.transcribe(rec, audios, cfg),
            "transformers": lambda: transformers_words(rec, utts, args.batch_size, args.language),
            "even-spread": lambda: longform.transcribe(EvenSpread(rec), audios, cfg, whole),
            "forced": lambda: forced_words(rec, utts, args.batch_size),
            "forced-nosnap": lambda: forced_words(rec, utts, args.batch_size, snap=False),
            "forced-even": lambda: forced_words(rec, utts, args.batch_size, even=True),
            "forced-even-nosnap": lambda: forced_words(rec, utts, args.batch_size, even=True, snap=False),
        }
        cond = "clean" if snr == float("inf") else f"snr{snr:g}"
        for name in args.methods:
            t0 = time.perf_counter()
            got = runs[name]()
            seconds = round(time.perf_counter() - t0, 1)
            words = got if name == "transformers" or name.startswith("forced") else [[ts.Word(**w) for w in r["words"]] for r in got]
            r = evaluate(utts, words, args.min_confidence) | {"seconds": seconds}
            if name == "transformers" or name.startswith("forced"):  # no log-probs of the model's own choice: no confidence
                r.update(error_auc=None, wer_kept=None, wer_flagged=None, kept_utts=None, flagged_utts=None)
            results[f"{cond}/{name}"] = r
            print(cond, name, json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"sentences": texts, "voices": args.voices, "seed": args.seed, "model": args.west or args.model,
            "snr": args.snr, "heads": None if not args.west else [list(h) for h in rec.heads.heads],
            "utterances": len(utts), "audio_seconds": round(sum(len(u.audio) for u in utts) / SAMPLE_RATE, 1)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str) + "\n")
    keys = ["matched_words", "start_mae_ms", "start_mae_ms_ci95", "end_mae_ms", "end_mae_ms_ci95", "start_bias_ms", "end_bias_ms", "within_50ms", "within_100ms", "within_200ms", "within_100ms_ci95",
            "start_within_50ms", "start_within_100ms", "start_within_200ms", "error_auc", "wer_all", "seconds"]
    print("| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
