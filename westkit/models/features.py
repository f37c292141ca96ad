"""Whisper log-mel features computed in torch on the batch's device, for variable-length batches.

Matches transformers' `WhisperFeatureExtractor` utterance by utterance: for ``pad_to_30s=False``
each row equals the extractor run on that utterance alone (``padding="longest"``), i.e. the
reflection at the end of the STFT uses the utterance's own samples, not the batch's zero padding,
and the "max - 8" dynamic-range floor uses only its own frames. For ``pad_to_30s=True`` each row
equals the extractor's default (audio zero-padded or cut to 30 s, 3000 frames).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE


def mel_filters(n_mels: int) -> np.ndarray:
    """(N_FFT // 2 + 1, n_mels) Slaney mel filter bank, the one Whisper's extractor uses."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")


class LogMel(nn.Module):
    """Batched Whisper log-mel spectrogram (no parameters; two buffers follow ``.to(device)``)."""

    def __init__(self, n_mels: int = 80):
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels)).float().T.contiguous(),
                             persistent=False)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor,
                pad_to_30s: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T) float zero-padded at 16 kHz, audio_lens (B,) -> feats (B, n_mels, F), feat_lens (B,).

        Without padding F = max(audio_lens) // 160 and feat_lens = audio_lens // 160; frames past
        an utterance's length are 0 (they are masked by feat_lens anyway). With ``pad_to_30s``
        F = 3000 and feat_lens = min(audio_lens, 480000) // 160 (the frames holding speech).
        """
        audio = audio.float()
        lens = audio_lens.to(audio.device).long()
        if pad_to_30s:
            # frames whose window holds only padding are exactly log10(1e-10): compute the STFT
            # up to a window past the longest utterance and fill the rest (a 10x saving on short audio)
            lens = lens.clamp(max=CHUNK_SAMPLES)
            needed = min(CHUNK_SAMPLES, -(-(int(lens.max()) + N_FFT) // HOP) * HOP) if len(lens) else CHUNK_SAMPLES
            audio = torch.nn.functional.pad(audio, (0, max(0, needed - audio.shape[1])))[:, :needed]
            valid_to = torch.full_like(lens, CHUNK_SAMPLES)  # the extractor sees 30 s of signal
        else:
            audio = audio[:, :int(lens.max())] if len(lens) else audio
            valid_to = lens
        B, T = audio.shape
        half = N_FFT // 2
        # centre padding as torch.stft(center=True, pad_mode="reflect") would do on each row
        # cut at its own end: index t of the padded row reads sample reflect(t - half) in [0, L)
        pos = torch.arange(T + 2 * half, device=audio.device) - half
        L = valid_to.unsqueeze(1)
        idx = pos.abs().unsqueeze(0).expand(B, -1)
        idx = torch.where(idx >= L, 2 * (L - 1) - idx, idx).clamp(min=0)
        padded = torch.gather(audio, 1, idx.clamp(max=T - 1))
        frames = padded.unfold(1, N_FFT, HOP)  # (B, T // HOP + 1, N_FFT)
        # always fp32, even inside a model cast to bf16: the buffers follow the module's dtype
        spec = torch.fft.rfft(frames * self.window.float(), dim=-1).abs() ** 2
        power = spec[:, :-1].transpose(1, 2)  # (B, N_FFT//2+1, F): Whisper drops the last frame
        mel = torch.matmul(self.filters.float(), power)  # (B, n_mels, F)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        if pad_to_30s:
            floor = torch.tensor(1e-10, device=audio.device).log10()
            log_spec = torch.nn.functional.pad(log_spec, (0, CHUNK_SAMPLES // HOP - log_spec.shape[-1]), value=float(floor))
        n_valid = valid_to // HOP
        mask = torch.arange(log_spec.shape[-1], device=audio.device).unsqueeze(0) < n_valid.unsqueeze(1)
        peak = log_spec.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        feats = ((log_spec + 4.0) / 4.0) * mask.unsqueeze(1)
        return feats, lens // HOP
