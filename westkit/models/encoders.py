"""Speech encoders by name: ``model.encoder_kind`` is a key of `ENCODERS`.

Every encoder is a frozen ``nn.Module`` with the same contract, so the projector, the padding
masks and the WeST layout follow it whatever it is:

* ``forward(audio (B, T) float zero-padded at 16 kHz, audio_lens (B,) samples)``
  -> ``(states (B, F, D) with padded frames zeroed, lens (B,) frames)``, no gradients;
* ``dim``: D, the width the projector maps from;
* ``frame_rate``: states per second (50 for Whisper and for wav2vec2-style models), which with
  ``projector.rate`` sets the LLM embeddings per second.

An utterance's states do not depend on what it is batched with (tested for every family).

Kinds:
- ``whisper``: any Whisper checkpoint (tiny .. large-v3), `westkit.models.whisper.WhisperAudioEncoder`
  on each utterance's real length.
- ``ssl``: the CTC / self-supervised encoders transformers' ``AutoModel`` loads: wav2vec2
  (base models with group norm and large ones with layer norm), HuBERT, MMS (a
  ``Wav2Vec2ForCTC`` checkpoint: its CTC head is dropped). Run without SpecAugment, dropout or
  LayerDrop even while the rest of the model trains.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from westkit.models.features import SAMPLE_RATE
from westkit.models.whisper import WhisperAudioEncoder, load_whisper_encoder

ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str):
    """Decorator: make a builder ``(name_or_path, pad_to_30s) -> encoder`` selectable by
    ``model.encoder_kind: name``."""
    def add(fn):
        ENCODERS[name] = fn
        return fn
    return add


def build_encoder(kind: str, name_or_path: str, pad_to_30s: bool = False) -> nn.Module:
    """The pretrained encoder ``name_or_path`` (asset name, hub id or folder) of kind ``kind``."""
    if kind not in ENCODERS:
        raise ValueError(f"model.encoder_kind: unknown encoder kind {kind!r}; choose one of {sorted(ENCODERS)}")
    if pad_to_30s and kind != "whisper":
        raise ValueError(f"model.pad_to_30s: only Whisper has a 30 s window; set it false for {kind!r}")
    return ENCODERS[kind](name_or_path, pad_to_30s)


@register_encoder("whisper")
def _whisper(name_or_path: str, pad_to_30s: bool) -> WhisperAudioEncoder:
    return WhisperAudioEncoder(load_whisper_encoder(name_or_path), pad_to_30s=pad_to_30s)


class SSLAudioEncoder(nn.Module):
    """wav2vec2 / HuBERT / MMS encoder (transformers' ``Wav2Vec2Model`` or ``HubertModel``)
    on real lengths: (B, T), (B,) -> (B, F, D), (B,) with F from the conv stack's strides.

    Batch invariance: each waveform is normalised over its own samples (as the checkpoint's
    feature extractor does when ``normalize``); a group-norm feature encoder (base models)
    normalises over time, so it runs per utterance on the real length; the transformer gets the
    padding mask (padded frames zeroed before the positional convolution, masked keys).
    """

    def __init__(self, model: nn.Module, normalize: bool = True):
        super().__init__()
        if getattr(model.config, "add_adapter", False):
            raise ValueError(f"model.encoder: {model.config.name_or_path or type(model).__name__} has an "
                             "adapter stack after the encoder (add_adapter), which changes the frame rate; "
                             "use a checkpoint without it")
        self.model = model.eval()
        self.normalize = normalize
        self.per_utterance = model.config.feat_extract_norm == "group"

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> SSLAudioEncoder:
        from transformers import AutoModel

        from westkit.assets import resolve

        path = resolve(name_or_path)
        model = AutoModel.from_pretrained(path)
        if not hasattr(model, "feature_extractor"):
            raise ValueError(f"model.encoder: {name_or_path!r} loads as {type(model).__name__}, not a "
                             "wav2vec2/HuBERT-style encoder; use encoder_kind: whisper for Whisper")
        pre = Path(path) / "preprocessor_config.json"
        normalize = json.loads(pre.read_text()).get("do_normalize", True) if pre.is_file() else True
        return cls(model, normalize)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: no dropout, LayerDrop or SpecAugment, ever
        return self

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def frame_rate(self) -> float:
        stride = 1
        for s in self.model.config.conv_stride:
            stride *= s
        return SAMPLE_RATE / stride

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        m = self.model
        with torch.no_grad():
            dtype = m.feature_extractor.conv_layers[0].conv.weight.dtype
            x = audio.float()
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < audio_lens[:, None]
            x = x * valid
            if self.normalize:
                n = audio_lens[:, None].clamp(min=1)
                mean = x.sum(1, keepdim=True) / n
                var = ((x - mean) * valid).pow(2).sum(1, keepdim=True) / n
                x = (x - mean) / torch.sqrt(var + 1e-7) * valid
            lens = m._get_feat_extract_output_lengths(audio_lens).long()
            width = int(lens.max())
            if self.per_utterance:
                feats = torch.zeros(x.shape[0], m.config.conv_dim[-1], width, dtype=dtype, device=x.device)
                for i, n in enumerate(audio_lens.tolist()):
                    f = m.feature_extractor(x[i:i + 1, :n].to(dtype))
                    feats[i, :, :f.shape[-1]] = f[0]
            else:
                feats = m.feature_extractor(x.to(dtype))[..., :width]
            h = m.feature_projection(feats.transpose(1, 2))
            h = h[0] if isinstance(h, tuple) else h   # wav2vec2 returns (hidden, normed features)
            mask = torch.arange(width, device=x.device)[None, :] < lens[:, None]
            h = m.encoder(h, attention_mask=mask).last_hidden_state
            return h * mask[..., None].to(h.dtype), lens


@register_encoder("ssl")
def _ssl(name_or_path: str, pad_to_30s: bool) -> SSLAudioEncoder:
    return SSLAudioEncoder.from_pretrained(name_or_path)
