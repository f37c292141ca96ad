"""Data steps: pure ``sample -> sample`` functions, chained in one place (`STEPS`), and collation.

Schemas
-------
raw member (what the loader reads from a tar by offset):
    {"key": str, "json": bytes, "flac": bytes | None}
sample (after `STEPS`; one utterance, the project's sample schema):
    {"key": str, "audio": np.float32 (T,) 16 kHz mono, "sample_rate": 16000, "text": str,
     "duration": float s, "lang": str, "speaker": str, "source": str}
    a text-only sample has no "audio" and duration 0.
batch (`collate`):
    {"keys": list[str], "audio": FloatTensor (B, T) zero-padded, "audio_lens": LongTensor (B,),
     "texts": list[str], "langs": list[str]}; a text-only batch has keys, texts, langs only.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from westkit.data.audio import SAMPLE_RATE, conform, decode_flac


def parse_meta(raw: dict) -> dict:
    """raw member -> sample without decoded audio: the json fields plus "key" (and "flac" bytes)."""
    meta = json.loads(raw["json"])
    sample = {"key": raw["key"], "text": meta["text"], "duration": float(meta.get("duration", 0.0)),
              "lang": meta.get("lang", ""), "speaker": meta.get("speaker", ""),
              "source": meta.get("source", ""), "sample_rate": int(meta.get("sample_rate", SAMPLE_RATE))}
    if raw.get("flac") is not None:
        sample["flac"] = raw["flac"]
    return sample


def decode_audio(sample: dict) -> dict:
    """Replace "flac" bytes by "audio" (T,) or (T, C) float32 and the file's "sample_rate"."""
    if "flac" not in sample:
        return sample
    out = {k: v for k, v in sample.items() if k != "flac"}
    out["audio"], out["sample_rate"] = decode_flac(sample["flac"])
    return out


def to_16k_mono(sample: dict) -> dict:
    """Average channels and resample (soxr) to 16 kHz; shards from `westkit-shards` already are."""
    if "audio" not in sample:
        return sample
    audio = conform(sample["audio"], sample["sample_rate"])
    return dict(sample, audio=audio, sample_rate=SAMPLE_RATE, duration=len(audio) / SAMPLE_RATE)


# the whole per-sample pipeline, in order; filtering and batching happen earlier, on metadata
STEPS = (parse_meta, decode_audio, to_16k_mono)


def run_steps(raw: dict) -> dict:
    """Apply `STEPS` to one raw member."""
    sample = raw
    for step in STEPS:
        sample = step(sample)
    return sample


def collate(samples: list[dict]) -> dict:
    """Samples -> one batch (see the module docstring); audio zero-padded to the longest."""
    batch = {"keys": [s["key"] for s in samples], "texts": [s["text"] for s in samples],
             "langs": [s["lang"] for s in samples]}
    if any("audio" in s for s in samples):
        assert all("audio" in s for s in samples), "the planner never mixes text-only and audio samples"
        lens = [len(s["audio"]) for s in samples]
        audio = np.zeros((len(samples), max(lens)), dtype=np.float32)
        for i, s in enumerate(samples):
            audio[i, :lens[i]] = s["audio"]
        batch["audio"] = torch.from_numpy(audio)
        batch["audio_lens"] = torch.tensor(lens, dtype=torch.long)
    return batch
