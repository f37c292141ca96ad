"""The two WhisTLE training models (arXiv 2509.10452), plain modules over collated batches.

* `TLERegression` (stage 1): a `TLE` learns to regress the frozen Whisper encoder's states of
  paired speech from the transcript.
* `WhisTLE` (stage 2): fine-tunes the Whisper decoder; a text-only batch gets encoder states
  from the frozen TLE, an audio batch from the frozen real encoder. The real encoder is what
  decodes at inference, so the artifact is an ordinary Whisper folder.

Batch schema (`westkit.data.pipeline`): ``keys``, ``texts``, ``langs``; ``text_ids`` (B, L) +
``text_lens`` (B,) for the TLE and ``targets`` (B, L) + ``target_lens`` for the decoder (made
by the data pipeline with `westkit.models.whisper.WhisperText`); audio batches also have
``audio`` (B, T) + ``audio_lens`` and, when the shards were encoded beforehand
(``westkit-encode``), ``states`` (B, 1500, D) float16. Without precomputed states the frozen
encoder runs in ``forward`` on every rank alike, and its states are rounded through float16
exactly as stored ones are, so both ways give the same numbers (and ZeRO-3 gathers match).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from westkit.models.features import SAMPLE_RATE
from westkit.models.tle import TLE, TLE_WEIGHTS, language_ids, save_tle, speech_frames, tle_loss
from westkit.models.whisper import WhisperAudioEncoder, WhisperText, decoder_batch, decoder_loss


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
    """

    export_scope = "full"   # the TLE's buffers (tail template, KL schedule) are part of it

    def __init__(self, tle: TLE, teacher: WhisperAudioEncoder):
        super().__init__()
        if not teacher.pad_to_30s:
            raise ValueError("the TLE's teacher must encode Whisper's 30 s window (pad_to_30s=True)")
        grid = teacher.encoder.config.max_source_positions
        if (tle.cfg.n_frames, tle.cfg.d_model) != (grid, teacher.dim):
            raise ValueError(f"tle.n_frames={tle.cfg.n_frames}, tle.d_model={tle.cfg.d_model} must match "
                             f"the Whisper encoder's {grid} frames and width {teacher.dim}")
        self.tle = tle
        self.teacher = teacher

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
        losses["audio_seconds"] = batch["audio_lens"].sum().float() / SAMPLE_RATE
        return losses

    def export(self, folder: Path, state: dict[str, torch.Tensor]) -> list[Path]:
        """``folder/tle.json`` + ``folder/tle.safetensors``, what stage 2 loads (`load_tle`)."""
        keep = set(self.tle.state_dict())  # parameters and persistent buffers
        save_tle(folder, self.tle.cfg, {k[len("tle."):]: v for k, v in state.items()
                                        if k.startswith("tle.") and k[len("tle."):] in keep})
        return [folder / TLE_WEIGHTS]


class WhisTLE(nn.Module):
    """Stage 2: Whisper whose encoder states come from the TLE for text-only batches.

    whisper: ``WhisperForConditionalGeneration`` (decoder trained, encoder frozen by the
    engine's ``trainable`` patterns); tle: a trained `TLE` (frozen), or None when every batch
    has audio (TTS-only adaptation). A batch without ``"audio"`` is text-only: the TLE makes
    1500 states from its text with the predicted speech length (z sampled from q(z|text) when
    ``sample_z``, else its mean). A batch with audio goes through the real encoder, exactly as
    at inference. Both frozen parts stay in eval mode (no dropout) whatever mode the engine sets.
    """

    export_scope = "full"   # the artifact is the whole Whisper, written from the live weights

    def __init__(self, whisper: nn.Module, tle: TLE | None, tokenizer, sample_z: bool = True):
        super().__init__()
        self.whisper = whisper
        self.tle = tle
        # the encoder's weights are registered once, under whisper.model.encoder; the wrapper
        # that runs them is kept out of the module tree
        self._audio = [WhisperAudioEncoder(whisper.model.encoder, pad_to_30s=True)]
        self.tokenizer = tokenizer
        self.text = WhisperText(tokenizer, whisper.config.max_target_positions)
        self.sample_z = sample_z
        if tle is not None and (tle.cfg.n_frames, tle.cfg.d_model) != (
                whisper.config.max_source_positions, whisper.config.d_model):
            raise ValueError(f"the TLE makes {tle.cfg.n_frames} x {tle.cfg.d_model} states but this Whisper "
                             f"expects {whisper.config.max_source_positions} x {whisper.config.d_model}: "
                             f"train the TLE against this Whisper's encoder")

    @property
    def audio_encoder(self) -> WhisperAudioEncoder:
        return self._audio[0]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tle is not None:
            self.tle.eval()
        self.whisper.model.encoder.eval()
        return self

    def encoder_states(self, batch: dict) -> torch.Tensor:
        """(B, T, D) states in the decoder's dtype: real encoder for audio batches, TLE for
        text-only ones (no grad)."""
        dtype = self.whisper.proj_out.weight.dtype
        with torch.no_grad():
            if "audio" in batch:
                return frozen_states(self.audio_encoder, batch).to(dtype)
            if self.tle is None:
                raise ValueError("a text-only batch reached a WhisTLE without a TLE: give the "
                                 "stage-1 run (stage2.tle) or drop the text-only source")
            langs = language_ids(batch["langs"], self.tle.cfg.langs, batch["text_ids"].device)
            return self.tle(batch["text_ids"], batch["text_lens"], langs=langs,
                            sample=self.sample_z).states.to(dtype)

    def forward(self, batch: dict) -> dict:
        states = self.encoder_states(batch)
        input_ids, labels = decoder_batch(self.text.prefix, batch["targets"], batch["target_lens"],
                                          self.text.eot)
        loss, num = decoder_loss(self.whisper, states, input_ids, labels)
        text_only = "audio" not in batch
        return {"loss": loss, "num_tokens": num,
                "text_only_batches": torch.tensor(float(text_only)),
                "audio_seconds": (torch.tensor(0.0) if text_only
                                  else batch["audio_lens"].sum().float().cpu() / SAMPLE_RATE)}

    def export(self, folder: Path, state: dict[str, torch.Tensor]) -> list[Path]:
        """``folder/hf``: an ordinary Whisper folder (weights, config, generation config,
        tokenizer, feature extractor) written from the trained weights, with the real encoder
        in place. Nothing is reloaded, so a hub id as the base works as well as a folder."""
        from transformers import WhisperFeatureExtractor

        out = folder / "hf"
        tmp = folder / "hf.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        weights = {k[len("whisper."):]: v for k, v in state.items() if k.startswith("whisper.")}
        self.whisper.save_pretrained(tmp, state_dict=weights)
        self.tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=self.whisper.config.num_mel_bins).save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return [out]
