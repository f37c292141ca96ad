"""A frozen Whisper encoder that runs on variable-length input.

Whisper's own encoder insists on 30 s of log-mel (3000 frames) and attends over the padding.
`WhisperAudioEncoder` runs the same weights on each utterance's real length: the positional
embeddings are sliced to the input length, padded frames are zeroed after each convolution and
masked out of self-attention, so an utterance's output does not depend on what it is batched
with. ``pad_to_30s=True`` gives Whisper's original behaviour for comparison.
"""
from __future__ import annotations

import torch
from torch import nn

from westkit.data.features import HOP, LogMel


def load_whisper_encoder(name_or_path: str, dtype: torch.dtype = torch.float32):
    """The encoder half of any Whisper checkpoint (built-in asset name, hub id or local folder).

    Returns transformers' ``WhisperEncoder`` (weights only; `WhisperAudioEncoder` runs it).
    """
    from transformers import WhisperModel

    from westkit.assets import resolve

    whisper = WhisperModel.from_pretrained(resolve(name_or_path), dtype=dtype)
    encoder = whisper.get_encoder()
    del whisper.decoder  # the decoder is half the weights and never used here
    return encoder


def load_whisper(name_or_path: str):
    """(WhisperForConditionalGeneration, WhisperTokenizerFast) of any Whisper checkpoint
    (built-in asset name, hub id or local folder): the whole model, for recipes that train or
    decode with its decoder."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    from westkit.assets import resolve

    path = resolve(name_or_path)
    return WhisperForConditionalGeneration.from_pretrained(path), WhisperTokenizerFast.from_pretrained(path)


class WhisperAudioEncoder(nn.Module):
    """Audio (B, T) at 16 kHz -> encoder states (B, F', D) with lengths (B,).

    F' = ceil(F / 2) where F = T // 160 log-mel frames (50 states per second). No gradients
    flow through it: the encoder is frozen in every recipe that uses it, and running it under
    ``torch.no_grad`` saves the activation memory of a model that never learns.
    """

    def __init__(self, encoder: nn.Module, pad_to_30s: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pad_to_30s = pad_to_30s
        # kept out of the module tree: a precision cast of the model (``.bfloat16()``, as
        # mixed-precision engines do) would otherwise round the float32 mel filter bank too
        object.__setattr__(self, "_logmel", LogMel(n_mels=encoder.config.num_mel_bins))

    @classmethod
    def from_pretrained(cls, name_or_path: str, pad_to_30s: bool = False) -> WhisperAudioEncoder:
        return cls(load_whisper_encoder(name_or_path), pad_to_30s=pad_to_30s)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @property
    def max_frames(self) -> int:
        """Longest input in log-mel frames (3000 = 30 s for every released Whisper)."""
        return self.encoder.config.max_source_positions * 2

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """audio (B, T) zero-padded float, audio_lens (B,) samples -> (states (B, F', D), lens (B,))."""
        with torch.no_grad():
            feats, feat_lens = self.logmel(audio, audio_lens, pad_to_30s=self.pad_to_30s)
            feats = feats.float()
            if feats.shape[-1] > self.max_frames:
                raise ValueError(f"audio of {feats.shape[-1] * HOP / 16000:.1f} s is longer than "
                                 f"Whisper's 30 s window: filter long utterances in the data config")
            return self.encode(feats, feat_lens)

    @property
    def logmel(self) -> LogMel:
        """The log-mel front end (float32), on the device of the encoder's weights."""
        device = self.encoder.conv1.weight.device
        if self._logmel.window.device != device:
            object.__setattr__(self, "_logmel", self._logmel.to(device))
        return self._logmel

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        """Log-mel (B, n_mels, F) with lengths (B,) -> (states (B, ceil(F/2), D), lens (B,))."""
        enc = self.encoder
        dtype = enc.conv1.weight.dtype
        x = feats.to(dtype)
        if self.pad_to_30s:
            # Whisper's own behaviour: every frame of the 30 s window is valid, padding included
            x = nn.functional.pad(x, (0, self.max_frames - x.shape[-1]))
            feat_lens = torch.full_like(feat_lens, self.max_frames)
        frame_mask = _length_mask(feat_lens, x.shape[-1])  # (B, F)
        # Zero padded frames before each convolution so the last real frames see the same
        # zeros whatever the batch's longest utterance is.
        x = x * frame_mask[:, None, :].to(dtype)
        x = nn.functional.gelu(enc.conv1(x))
        x = x * frame_mask[:, None, :].to(dtype)
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (B, F', D)
        lens = (feat_lens + 1) // 2
        state_mask = _length_mask(lens, x.shape[1])  # (B, F')
        # through the module (not .weight) so engines that shard weights can gather them
        x = x + enc.embed_positions(torch.arange(x.shape[1], device=x.device)).to(dtype)
        # additive key mask, (B, 1, F', F'): padded keys get -inf-like scores
        bias = torch.zeros(state_mask.shape, dtype=dtype, device=x.device)
        bias = bias.masked_fill(~state_mask, torch.finfo(dtype).min)
        bias = bias[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        for layer in enc.layers:
            x = layer(x, bias)
            if isinstance(x, tuple):  # older transformers return (hidden, attn)
                x = x[0]
        x = enc.layer_norm(x)
        return x * state_mask[..., None].to(dtype), lens


def _length_mask(lens: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) lengths -> (B, width) bool, True on real positions."""
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]

