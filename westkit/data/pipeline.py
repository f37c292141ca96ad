"""Data steps: pure ``sample -> sample`` functions, chained in one place (`STEPS`), and collation.

Schemas
-------
raw member (what the loader reads from a tar by offset):
    {"key": str, "json": bytes, "flac": bytes | None}
sample (after `STEPS`; one utterance, the project's sample schema):
    {"key": str, "audio": np.float32 (T,) 16 kHz mono, "sample_rate": SAMPLE_RATE, "text": str,
     "duration": float s, "lang": str, "speaker": str, "source": str}
    a text-only sample has no "audio" and duration 0.
    optional, from the shard json when it has them: "instruction": str, "context": str (e.g.
    rare words or the previous sentence, for prompt-aware LLM recognisers).
    optional, added by recipe steps and the loader:
    "prompt_ids": (prefix ids, suffix ids) around the audio (`prompt_tokens`);
    "prefix_ids": list[int] the decoder prefix of the sample's language (`decoder_prefix`);
    "targets" / "text_ids": list[int] (`tokenize`: what the model learns to say, or reads);
    "states": np.float16 (T', D) precomputed encoder states (`westkit.data.states`).
batch (`collate`):
    {"keys": list[str], "audio": FloatTensor (B, T) zero-padded, "audio_lens": LongTensor (B,),
     "texts": list[str], "langs": list[str]}; a text-only batch has keys, texts, langs only;
    with targets: "targets" LongTensor (B, L) padded with -100, "target_lens" (B,) and
    "num_targets" int (what the engine weighs micro-batches by); with text_ids: "text_ids"
    (B, L) padded with 0 and "text_lens" (B,); with states: "states" HalfTensor (B, T', D);
    with instructions / contexts: "instructions" / "contexts" list[str | None]; with prompt_ids:
    "prompts" list of (prefix ids, suffix ids); with prefix_ids: "prefix_ids" LongTensor (B, P).
"""
from __future__ import annotations

import functools
import io
import json
from typing import Callable

import numpy as np
import torch

from westkit.data.audio import SAMPLE_RATE, conform, decode_flac

IGNORE_INDEX = -100   # label padding, as `westkit.models.losses` expects
TOKEN_FIELDS = {"targets": ("target_lens", IGNORE_INDEX), "text_ids": ("text_lens", 0)}
PROMPT_FIELDS = ("instruction", "context")   # optional per-utterance prompt text in the json


def parse_meta(raw: dict) -> dict:
    """raw member -> sample without decoded audio: the json fields plus "key" (and "flac" bytes)."""
    meta = json.loads(raw["json"])
    sample = {"key": raw["key"], "text": meta["text"], "duration": float(meta.get("duration", 0.0)),
              "lang": meta.get("lang", ""), "speaker": meta.get("speaker", ""),
              "source": meta.get("source", ""), "sample_rate": int(meta.get("sample_rate", SAMPLE_RATE))}
    for optional in PROMPT_FIELDS:
        if meta.get(optional) is not None:
            sample[optional] = str(meta[optional])
    if raw.get("flac") is not None:
        sample["flac"] = raw["flac"]
    if raw.get("states") is not None:
        sample["states"] = np.load(io.BytesIO(raw["states"]), allow_pickle=False)
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


def _tokenize(sample: dict, field: str, encode: Callable[[str], list[int]]) -> dict:
    return dict(sample, **{field: encode(sample["text"])})


def tokenize(field: str, encode: Callable[[str], list[int]]) -> Callable[[dict], dict]:
    """A step that adds ``sample[field] = encode(sample["text"])``; ``field`` is one of
    `TOKEN_FIELDS`. ``encode`` comes from the model (its tokenizer and prompt), e.g.
    ``tokenize("targets", model.prompt.target)``; it runs in the loader's workers."""
    if field not in TOKEN_FIELDS:
        raise ValueError(f"tokenize: field {field!r} is not one of {sorted(TOKEN_FIELDS)}")
    return functools.partial(_tokenize, field=field, encode=encode)


def _prompt_tokens(sample: dict, encode) -> dict:
    return dict(sample, prompt_ids=encode(sample))


def prompt_tokens(encode: Callable[[dict], tuple[list[int], list[int]]]) -> Callable[[dict], dict]:
    """A step that adds ``sample["prompt_ids"] = encode(sample)``: the (prefix, suffix) ids
    around the audio from the sample's "instruction" / "context", e.g.
    ``prompt_tokens(model.prompt.for_sample)``; it runs in the loader's workers."""
    return functools.partial(_prompt_tokens, encode=encode)


def _decoder_prefix(sample: dict, encode) -> dict:
    return dict(sample, prefix_ids=encode(sample["lang"]))


def decoder_prefix(encode: Callable[[str], list[int]]) -> Callable[[dict], dict]:
    """A step that adds ``sample["prefix_ids"] = encode(sample["lang"])``: the decoder prefix
    of the sample's language, e.g. ``decoder_prefix(model.text.sample_prefix)`` (Whisper's
    ``<|startoftranscript|><|de|><|transcribe|><|notimestamps|>``); it runs in the workers."""
    return functools.partial(_decoder_prefix, encode=encode)


# the per-sample pipeline, in order; filtering and batching happen earlier, on metadata.
# Recipes append their model's steps (`tokenize`) through `build_loader(..., steps=...)`.
STEPS = (parse_meta, decode_audio, to_16k_mono)


def run_steps(raw: dict, extra: tuple = ()) -> dict:
    """Apply `STEPS`, then the recipe's ``extra`` steps, to one raw member."""
    sample = raw
    for step in STEPS + tuple(extra):
        sample = step(sample)
    return sample


def pad_audio(waves: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (T_i,) (arrays or tensors) -> (audio (B, max T) float32 zero-padded, lens (B,))."""
    lens = [len(w) for w in waves]
    audio = np.zeros((len(waves), max(lens)), dtype=np.float32)
    for i, w in enumerate(waves):
        audio[i, :lens[i]] = np.asarray(w, dtype=np.float32)
    return torch.from_numpy(audio), torch.tensor(lens, dtype=torch.long)


def collate(samples: list[dict]) -> dict:
    """Samples -> one batch (see the module docstring); audio zero-padded to the longest."""
    batch = {"keys": [s["key"] for s in samples], "texts": [s["text"] for s in samples],
             "langs": [s["lang"] for s in samples]}
    if any("audio" in s for s in samples):
        assert all("audio" in s for s in samples), "the planner never mixes text-only and audio samples"
        batch["audio"], batch["audio_lens"] = pad_audio([s["audio"] for s in samples])
    for field, (lens_key, pad) in TOKEN_FIELDS.items():
        if field in samples[0]:
            rows = [s[field] for s in samples]
            lens = [len(r) for r in rows]
            ids = torch.full((len(rows), max(lens)), pad, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :lens[i]] = torch.tensor(r, dtype=torch.long)
            batch[field], batch[lens_key] = ids, torch.tensor(lens, dtype=torch.long)
    for field in PROMPT_FIELDS:
        if any(field in s for s in samples):
            batch[field + "s"] = [s.get(field) for s in samples]
    if "prompt_ids" in samples[0]:
        batch["prompts"] = [s["prompt_ids"] for s in samples]
    if "prefix_ids" in samples[0]:
        assert len({len(s["prefix_ids"]) for s in samples}) == 1, "one model's prefixes have one length"
        batch["prefix_ids"] = torch.tensor([s["prefix_ids"] for s in samples], dtype=torch.long)
    if "targets" in batch:
        batch["num_targets"] = int(batch["target_lens"].sum())
    if "states" in samples[0]:
        width = max(len(s["states"]) for s in samples)
        states = np.zeros((len(samples), width, samples[0]["states"].shape[-1]), dtype=np.float16)
        for i, s in enumerate(samples):
            states[i, :len(s["states"])] = s["states"]
        batch["states"] = torch.from_numpy(states)
    return batch
