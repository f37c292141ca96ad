"""The two WhisTLE training models (arXiv 2509.10452), plain modules over collated batches.

* `TLERegression` (stage 1): a `TLE` learns to regress the frozen Whisper encoder's states of
  paired speech from the transcript.
* `WhisTLE` (stage 2, and plain Whisper fine-tuning: ``recipes/whisper/train.py``): fine-tunes
  Whisper (full, LoRA or QLoRA; encoder frozen or not); a text-only batch gets encoder states
  from the frozen TLE, an audio batch from the real encoder. The real encoder is what decodes at
  inference, so the artifact is an ordinary Whisper folder (plus, on request, the PEFT adapter
  and a CTranslate2 folder). One Whisper training model serves both recipes.

Batch schema (`westkit.data.pipeline`): ``keys``, ``texts``, ``langs``; ``text_ids`` (B, L) +
``text_lens`` (B,) for the TLE and ``targets`` (B, L) + ``target_lens`` for the decoder (made
by the data pipeline with `westkit.models.whisper.WhisperText`), with ``prefix_ids`` (B, P)
the decoder prefix of each row's language (multilingual models); audio batches also have
``audio`` (B, T) + ``audio_lens`` and, when the shards were encoded beforehand
(``westkit-encode``), ``states`` (B, 1500, D) float16. Without precomputed states the frozen
encoder runs in ``forward`` on every rank alike, and its states are rounded through float16
exactly as stored ones are, so both ways give the same numbers (and ZeRO-3 gathers match).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from westkit.models.features import SAMPLE_RATE
from westkit.models.tle import TLE, TLE_WEIGHTS, language_ids, save_tle, speech_frames, tle_loss
from westkit.models.whisper import (WhisperAudioEncoder, WhisperText, decoder_batch, decoder_loss,
                                    load_whisper_tokenizer, spec_augment)


def frozen_states(encoder: WhisperAudioEncoder, batch: dict) -> torch.Tensor:
    """(B, 1500, D) float32 encoder states of an audio batch: the precomputed ``states`` when
    the batch has them, else the frozen encoder's, rounded through float16 like stored ones."""
    if "states" in batch:
        return batch["states"].float()
    with torch.no_grad():
        states, _ = encoder(batch["audio"], batch["audio_lens"])
    return states.half().float()


class TLERegression(nn.Module):
    """Stage 1: the TLE learns to regress a frozen Whisper encoder's states of paired speech.

    ``teacher`` is a `WhisperAudioEncoder` with ``pad_to_30s=True`` (the states Whisper's
    decoder sees at inference: 1500 frames, speech first, encoded silence after).

    With ``decoder_ce > 0`` (and ``reader``, the frozen Whisper, and ``text``, its
    `WhisperText`) the loss also has ``decoder_ce`` x the frozen decoder's teacher-forced
    cross-entropy of the transcript on the TLE's states (true length): supervision through the
    decoder that will read the latents, beside the regression. The batch then needs
    ``targets`` (``tokenize("targets", text.targets)``). The reader stays outside the module
    tree (frozen, not checkpointed; the caller puts it on the device).
    """

    export_scope = "full"   # the TLE's buffers (tail template, KL schedule) are part of it

    def __init__(self, tle: TLE, teacher: WhisperAudioEncoder, decoder_ce: float = 0.0, reader=None,
                 text: WhisperText | None = None):
        super().__init__()
        if not teacher.pad_to_30s:
            raise ValueError("the TLE's teacher must encode Whisper's 30 s window (pad_to_30s=True)")
        grid = teacher.encoder.config.max_source_positions
        if (tle.cfg.n_frames, tle.cfg.d_model) != (grid, teacher.dim):
            raise ValueError(f"tle.n_frames={tle.cfg.n_frames}, tle.d_model={tle.cfg.d_model} must match "
                             f"the Whisper encoder's {grid} frames and width {teacher.dim}")
        self.tle = tle
        self.teacher = teacher
        if decoder_ce < 0 or (decoder_ce > 0 and (reader is None or text is None)):
            raise ValueError("stage1.decoder_ce must be >= 0, and > 0 needs the frozen Whisper and its text")
        self.decoder_ce = decoder_ce
        if decoder_ce > 0:
            reader.requires_grad_(False)
        object.__setattr__(self, "_reader", reader)  # not a submodule: frozen, never saved
        self.text = text

    def outputs(self, batch: dict, n: torch.Tensor | None = None):
        """The TLE's output for the batch's text (``n``: speech frames, None: predicted)."""
        langs = language_ids(batch["langs"], self.tle.cfg.langs, batch["text_ids"].device)
        return self.tle(batch["text_ids"], batch["text_lens"], n=n, langs=langs)

    def forward(self, batch: dict) -> dict:
        teacher = frozen_states(self.teacher, batch)
        n = speech_frames(batch["audio_lens"], self.tle.cfg.n_frames)
        out = self.outputs(batch, n)
        if self.training:
            self.tle.update_tail_template(teacher, n)
            self.tle.num_updates += 1
        losses = tle_loss(out, teacher, n, self.tle.cfg, self.tle.beta())
        if self.decoder_ce > 0:
            reader = self._reader
            input_ids, labels = decoder_batch(batch.get("prefix_ids", self.text.prefix), batch["targets"],
                                              batch["target_lens"], self.text.eot)
            ce, _ = decoder_loss(reader, out.states.to(reader.proj_out.weight.dtype), input_ids, labels)
            losses["decoder_ce"] = ce.detach()
            losses["loss"] = losses["loss"] + self.decoder_ce * ce
        losses["audio_seconds"] = batch["audio_lens"].sum().float() / SAMPLE_RATE
        return losses

    def export(self, folder: Path, state: dict[str, torch.Tensor]) -> list[Path]:
        """``folder/tle.json`` + ``folder/tle.safetensors``, what stage 2 loads (`load_tle`)."""
        keep = set(self.tle.state_dict())  # parameters and persistent buffers
        save_tle(folder, self.tle.cfg, {k[len("tle."):]: v for k, v in state.items()
                                        if k.startswith("tle.") and k[len("tle."):] in keep})
        return [folder / TLE_WEIGHTS]


STRATEGIES = ("full", "lora", "qlora")
EXPORTS = ("hf", "adapter", "ct2")


@dataclass
class WhisperLora:
    """PEFT LoRA on Whisper's linear layers (``whisper.lora``)."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Linear layer names (q_proj, k_proj, v_proj, out_proj, fc1, fc2); in the decoder only
    when the encoder is frozen, in both halves otherwise."""

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise ValueError(f"whisper.lora: need r >= 1, alpha > 0, 0 <= dropout < 1 and at least one "
                             f"target module, got r={self.r} alpha={self.alpha} dropout={self.dropout} "
                             f"target_modules={self.target_modules}")


@dataclass
class SpecAugmentConfig:
    """SpecAugment on the log-mel of training batches (``whisper.spec_augment``; null: off)."""
    freq_masks: int = 2
    freq_width: int = 27        # mel bins per band, at most
    time_masks: int = 2
    time_width: float = 0.05    # fraction of the utterance per span, at most


@dataclass
class WhisperFinetuneConfig:
    """The ``whisper:`` section: what Whisper to fine-tune and how."""
    model: str = "whisper-tiny.en"
    """Built-in asset name, hub id (``openai/whisper-large-v3``) or local HF folder."""
    strategy: Literal["full", "lora", "qlora"] = "full"
    """full: every weight of the trained part; lora: PEFT LoRA adapters on a frozen base;
    qlora: LoRA on a 4-bit NF4 base (bitsandbytes)."""
    freeze_encoder: bool = True
    """true: only the decoder learns (the encoder runs without gradients); false: both halves."""
    lora: WhisperLora = field(default_factory=WhisperLora)
    spec_augment: SpecAugmentConfig | None = None
    language: str | None = None
    """Multilingual models: the language token of the prefix (``de``); null keeps the model's."""
    task: Literal["transcribe", "translate"] = "transcribe"
    export: list[str] = field(default_factory=lambda: ["hf"])
    """Artifacts written at the end: hf (a plain, merged Whisper folder), adapter (the PEFT
    adapter alone, LoRA strategies), ct2 (a CTranslate2 folder converted from hf)."""

    def __post_init__(self):
        unknown = [e for e in self.export if e not in EXPORTS]
        if unknown:
            raise ValueError(f"whisper.export: unknown artifact {unknown[0]!r}; choose from {', '.join(EXPORTS)}")
        if "adapter" in self.export and self.strategy == "full":
            raise ValueError("whisper.export names `adapter`, but whisper.strategy=full trains no adapter; "
                             "drop it or use strategy lora/qlora")
        if "ct2" in self.export and "hf" not in self.export:
            raise ValueError("whisper.export: ct2 is converted from the hf folder; list hf too")

    def trainable_patterns(self) -> list[str]:
        """``train.trainable`` for a `WhisTLE` of this strategy: the decoder (or all of
        Whisper), or the adapters (which sit in the encoder too when it is not frozen)."""
        if self.strategy != "full":
            return ["whisper.*lora_*"]
        return ["whisper.model.decoder.*"] if self.freeze_encoder else ["whisper.*"]


def lora_config(cfg: WhisperFinetuneConfig):
    """PEFT ``LoraConfig`` for the Whisper inside a `WhisTLE` (module names under it)."""
    from peft import LoraConfig

    half = "decoder" if cfg.freeze_encoder else "(encoder|decoder)"
    names = "|".join(cfg.lora.target_modules)
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=rf"model\.{half}\.layers\.\d+\..*\b({names})")


def load_base(name_or_path: str, quantize: bool = False):
    """Whisper (``WhisperForConditionalGeneration``) in float32, or with every linear layer but
    the output head as a bitsandbytes NF4 ``Linear4bit`` (float32 compute, so it runs on CPU)."""
    from transformers import WhisperForConditionalGeneration

    from westkit.assets import resolve

    path = resolve(name_or_path)
    if not quantize:
        return WhisperForConditionalGeneration.from_pretrained(path)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("whisper.strategy=qlora needs bitsandbytes: pip install 'bitsandbytes==0.50.*' "
                         "(or use strategy lora)") from None
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                           bnb_4bit_use_double_quant=False)
    try:
        whisper = WhisperForConditionalGeneration.from_pretrained(path, quantization_config=q, device_map={"": "cpu"})
    except (RuntimeError, ImportError) as e:
        raise ValueError(f"whisper.strategy=qlora: bitsandbytes cannot quantise here ({e}); "
                         "use strategy lora") from None
    return same_4bit_path_in_eval(whisper)


def same_4bit_path_in_eval(model: nn.Module) -> nn.Module:
    """Make every bitsandbytes ``Linear4bit`` in ``model`` compute in eval mode as it does in
    training (dequantise, float32 matmul); returns ``model``.

    bitsandbytes 0.50, on a CPU whose library reports AVX512-BF16, switches a ``Linear4bit``
    to another kernel on its first eval-mode forward without gradients: it repacks the weight
    in place into a CPU layout and multiplies in bfloat16 through ``gemv_4bit``. Training-time
    evaluation of a QLoRA model therefore decoded through numerics the adapters were never
    trained on, and left the weights repacked, so the training steps after it ran through that
    kernel too. Forced on where the library does not report the feature, it returns output
    uncorrelated with the layer's (relative error 1.4 = sqrt(2)), and gradients to match; the
    untrained 4-bit whisper-tiny.en then decodes only commas. Turning it off keeps one path per layer, on any
    host (`tests/models/test_whisper_finetune.py::test_qlora_live_eval_matches_merged_export`).
    """
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


class WhisTLE(nn.Module):
    """Whisper fine-tuning; stage 2 of WhisTLE when a TLE stands in for speech.

    whisper: ``WhisperForConditionalGeneration`` (what trains is chosen by the engine's
    ``trainable`` patterns, `trainable_patterns` gives them); tle: a trained `TLE` (frozen), or
    None when every batch has audio. A batch without ``"audio"`` is text-only: the TLE makes
    1500 states from its text with the predicted speech length (z sampled from q(z|text) when
    ``sample_z``, else its mean). A batch with audio goes through the real encoder, exactly as
    at inference: frozen (no grad, states rounded through float16 like precomputed ones) or,
    with ``freeze_encoder=False``, with gradients; ``spec_augment`` masks its log-mel while
    training. Frozen parts stay in eval mode (no dropout) whatever mode the engine sets.

    ``finetune`` (a `WhisperFinetuneConfig`, as `from_config` passes it) says which strategy
    built the model and which artifacts `export` writes; None is stage 2's full-decoder setup.
    """

    def __init__(self, whisper: nn.Module, tle: TLE | None, tokenizer, sample_z: bool = True,
                 finetune: WhisperFinetuneConfig | None = None):
        super().__init__()
        self.whisper = whisper
        self.tle = tle
        self.finetune = finetune or WhisperFinetuneConfig(model=whisper.name_or_path)
        self.freeze_encoder = self.finetune.freeze_encoder
        # the full model's artifact is written from all its weights; an adapter's from the base
        # checkpoint and the trained (LoRA) weights only
        self.export_scope = "full" if self.finetune.strategy == "full" else "trainable"
        # the encoder's weights are registered once, under whisper.model.encoder; the wrapper
        # that runs them is kept out of the module tree
        self._audio = [WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True,
                                           trainable=not self.freeze_encoder)]
        self.tokenizer = tokenizer
        self.text = WhisperText(tokenizer, whisper.config.max_target_positions)
        self.sample_z = sample_z
        if tle is not None and (tle.cfg.n_frames, tle.cfg.d_model) != (
                whisper.config.max_source_positions, whisper.config.d_model):
            raise ValueError(f"the TLE makes {tle.cfg.n_frames} x {tle.cfg.d_model} states but this Whisper "
                             f"expects {whisper.config.max_source_positions} x {whisper.config.d_model}: "
                             f"train the TLE against this Whisper's encoder")

    @classmethod
    def from_config(cls, cfg: WhisperFinetuneConfig, tle: TLE | None = None, sample_z: bool = True) -> WhisTLE:
        """Load ``cfg.model`` (NF4-quantised for qlora), add LoRA adapters for lora/qlora, set
        the tokenizer's language and task."""
        whisper = load_base(cfg.model, quantize=cfg.strategy == "qlora")
        tokenizer = load_whisper_tokenizer(cfg.model)
        if cfg.language or cfg.task != "transcribe":
            if not whisper.config.vocab_size > 51864:   # English-only models have no language tokens
                raise ValueError(f"whisper.language/task: {cfg.model} is English-only; drop them or use "
                                 "a multilingual model (whisper-base, openai/whisper-large-v3)")
            tokenizer.set_prefix_tokens(language=cfg.language, task=cfg.task)
        if cfg.strategy != "full":
            from peft import get_peft_model

            # LoRA layers go into ``whisper`` in place; the PeftModel wrapper is not kept
            get_peft_model(whisper, lora_config(cfg))
        return cls(whisper, tle, tokenizer, sample_z=sample_z, finetune=cfg)

    @property
    def audio_encoder(self) -> WhisperAudioEncoder:
        return self._audio[0]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tle is not None:
            self.tle.eval()
        if self.freeze_encoder:
            self.whisper.model.encoder.eval()
        return self

    def encoder_states(self, batch: dict) -> torch.Tensor:
        """(B, T, D) states in the decoder's dtype: real encoder for audio batches, TLE for
        text-only ones (no grad)."""
        dtype = self.whisper.proj_out.weight.dtype
        augment = self.training and self.finetune.spec_augment is not None
        if "audio" in batch and not augment and self.freeze_encoder:
            with torch.no_grad():
                return frozen_states(self.audio_encoder, batch).to(dtype)
        if "audio" in batch:
            if "states" in batch:
                raise ValueError("precomputed encoder states (data.states) cannot be used with "
                                 "whisper.spec_augment or whisper.freeze_encoder=false: drop data.states")
            enc = self.audio_encoder
            feats, feat_lens = enc.features(batch["audio"], batch["audio_lens"])
            if augment:
                a = self.finetune.spec_augment
                feats = spec_augment(feats, feat_lens, a.freq_masks, a.freq_width, a.time_masks, a.time_width)
            with torch.set_grad_enabled(not self.freeze_encoder and torch.is_grad_enabled()):
                states, _ = enc.encode(feats, feat_lens)
            return (states.half().float() if self.freeze_encoder else states).to(dtype)
        with torch.no_grad():
            if self.tle is None:
                raise ValueError("a text-only batch reached a WhisTLE without a TLE: give the "
                                 "stage-1 run (text.tle) or drop the text-only source")
            langs = language_ids(batch["langs"], self.tle.cfg.langs, batch["text_ids"].device)
            return self.tle(batch["text_ids"], batch["text_lens"], langs=langs,
                            sample=self.sample_z).states.to(dtype)

    def forward(self, batch: dict) -> dict:
        states = self.encoder_states(batch)
        # per-row language prefixes from the pipeline (``prefix_ids``), else the model's one
        input_ids, labels = decoder_batch(batch.get("prefix_ids", self.text.prefix), batch["targets"],
                                          batch["target_lens"], self.text.eot)
        loss, num = decoder_loss(self.whisper, states, input_ids, labels)
        text_only = "audio" not in batch
        return {"loss": loss, "num_tokens": num,
                "text_only_batches": torch.tensor(float(text_only)),
                "audio_seconds": (torch.tensor(0.0) if text_only
                                  else batch["audio_lens"].sum().float().cpu() / SAMPLE_RATE)}

    def export(self, folder: Path, state: dict[str, torch.Tensor]) -> list[Path]:
        """The artifacts of ``finetune.export`` under ``folder``, written from the trained
        weights in ``state`` (nothing is reloaded for the full strategy, so a hub id as the base
        works as well as a folder):

        * ``hf/``: an ordinary Whisper folder (weights, config, generation config, tokenizer,
          feature extractor) with the real encoder; LoRA strategies: the adapters merged into
          the float32 base checkpoint (so QLoRA's merged model is not 4-bit rounded);
        * ``adapter/``: the PEFT adapter alone (``PeftModel.from_pretrained(base, adapter/)``);
        * ``ct2/``: ``hf/`` converted by CTranslate2's converter (float32), with the tokenizer.
        """
        weights = {k[len("whisper."):]: v for k, v in state.items() if k.startswith("whisper.")}
        written = []
        if self.finetune.strategy == "full":
            whisper, peft = self.whisper, None
        else:
            whisper, peft = self._fresh_with_adapter(weights)
            weights = None
        if "adapter" in self.finetune.export:
            written.append(_publish(folder / "adapter", lambda tmp: peft.save_pretrained(tmp)))
        if "hf" in self.finetune.export:
            if peft is not None:
                whisper = peft.merge_and_unload()
            written.append(_publish(folder / "hf", lambda tmp: self._save_hf(whisper, weights, tmp)))
        if "ct2" in self.finetune.export:
            written.append(_publish(folder / "ct2", lambda tmp: export_ct2(folder / "hf", tmp)))
        return written

    def _fresh_with_adapter(self, weights: dict[str, torch.Tensor]):
        """A float32 copy of the base with the same LoRA layers and the trained weights."""
        from peft import get_peft_model

        peft = get_peft_model(load_base(self.finetune.model), lora_config(self.finetune))
        missing, unexpected = peft.base_model.model.load_state_dict(weights, strict=False)
        lora_missing = [k for k in missing if "lora_" in k]
        if unexpected or lora_missing:
            raise RuntimeError(f"adapter weights do not fit a fresh base: unexpected {unexpected[:3]}, "
                               f"missing {lora_missing[:3]}")
        return peft.eval(), peft

    def _save_hf(self, whisper, weights, tmp: Path) -> None:
        from transformers import WhisperFeatureExtractor

        whisper.save_pretrained(tmp, state_dict=weights)
        self.tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins).save_pretrained(tmp)


def _publish(out: Path, write) -> Path:
    """Run ``write(tmp)`` into ``out.partial`` and rename it to ``out`` (never half a folder)."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_ct2(hf_folder: Path, out: Path, quantization: str | None = None) -> Path:
    """A Whisper HF folder -> CTranslate2 folder (``faster-whisper``'s format) with CTranslate2's
    own converter, copying the tokenizer and feature-extractor files beside ``model.bin``."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise ValueError("whisper.export: ct2 needs ctranslate2: pip install ctranslate2") from None
    copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if (Path(hf_folder) / f).is_file()]
    TransformersConverter(str(hf_folder), copy_files=copy).convert(str(out), quantization=quantization, force=True)
    return out
