"""Whisper decoding backends side by side: transformers (float32) vs CTranslate2 (float32, int8),
real-time factor and WER on the same batches, with and without word timestamps.

    python benchmarks/backends.py [--model whisper-tiny.en] [--data asterisk-test] [--utterances 99]
                                  [--batch-sizes 16] [--rounds 1] [--word-timestamps] [--json FILE]

Every batch is decoded by every backend in turn (the order rotates from batch to batch), so a
noisy machine slows all of them alike: read the ratios, not the absolute seconds. RTF = decoding
seconds / audio seconds (features, encoder, search, and the alignment pass with
``--word-timestamps``; reading audio is not timed). The check column compares each backend's
greedy token ids with the transformers path's. On a GPU, ``--batch-sizes 16 1`` adds batch-1 rows.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.decode.ct2 import whisper_recognizer
from westkit.decode.scoring import score
from westkit.decode.search import GenerateConfig
from westkit.models.features import SAMPLE_RATE

BACKENDS = {"transformers fp32": ("transformers", None), "ctranslate2 float32": ("ctranslate2", "float32"),
            "ctranslate2 int8": ("ctranslate2", "int8")}


def batches(data: str, utterances: int, batch_size: int) -> list[dict]:
    cfg = LoaderConfig(shards=[corpora.shard_folder(data)], max_batch_size=batch_size, max_batch_seconds=batch_size * 30.0,
                       shuffle=False, min_duration=0.0, min_text_chars=0, max_text_chars=1 << 30, num_workers=0)
    out, n = [], 0
    for b in build_loader(cfg, train=False):
        out.append(b)
        n += len(b["keys"])
        if n >= utterances:
            break
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-tiny.en")
    p.add_argument("--data", default="asterisk-test", help="shard folder or built-in corpus")
    p.add_argument("--utterances", type=int, default=99)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--rounds", type=int, default=1, help="passes over the data (times are summed)")
    p.add_argument("--word-timestamps", action="store_true", help="also time the word-alignment pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the table here too")
    args = p.parse_args()
    gen = GenerateConfig()
    backends = dict(BACKENDS)
    if args.device != "cpu":
        backends["ctranslate2 float16"] = ("ctranslate2", "float16")
    recs = {name: whisper_recognizer(args.model, gen, kind, args.device, torch.float32, ct)
            for name, (kind, ct) in backends.items()}
    rows = []
    for bs in args.batch_sizes:
        data = batches(args.data, args.utterances, bs)
        audio_s = sum(int(n) for b in data for n in b["audio_lens"]) / SAMPLE_RATE
        seconds = dict.fromkeys(recs, 0.0)
        hyps = {name: {} for name in recs}
        ids = {name: {} for name in recs}
        for r in range(args.rounds):
            for i, b in enumerate(data):
                names = list(recs)
                names = names[(i + r) % len(names):] + names[:(i + r) % len(names)]
                for name in names:
                    rec = recs[name]
                    audio, lens = b["audio"].to(rec.device), b["audio_lens"].to(rec.device)
                    start = time.perf_counter()
                    if args.word_timestamps:
                        outs, _ = rec.decode_words(audio, lens)
                    else:
                        outs = rec.decode_states(rec.encode(audio, lens), lens)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    seconds[name] += time.perf_counter() - start
                    for k, ref, t in zip(b["keys"], b["texts"], outs):
                        hyps[name][k] = (ref, t.text)
                        ids[name][k] = t.ids
        base = "transformers fp32"
        for name in recs:
            keys = sorted(hyps[name])
            s = score([hyps[name][k][0] for k in keys], [hyps[name][k][1] for k in keys])
            same = sum(ids[name][k] == ids[base][k] for k in keys)
            rows.append({"backend": name, "batch": bs, "utterances": len(keys), "audio_s": round(audio_s, 1),
                         "decode_s": round(seconds[name] / args.rounds, 2),
                         "rtf": round(seconds[name] / args.rounds / audio_s, 4),
                         "speed_vs_transformers": round(seconds[base] / seconds[name], 2),
                         "wer": round(100 * s.wer, 2), "ids_equal_transformers": f"{same}/{len(keys)}"})
    cols = list(rows[0])
    print(f"model {args.model}, data {args.data}, device {args.device}, threads {torch.get_num_threads()}, "
          f"rounds {args.rounds}, word timestamps {args.word_timestamps}")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
