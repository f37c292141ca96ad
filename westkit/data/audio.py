"""Reading, checking, converting and encoding audio: everything ends up 16 kHz mono float32.

`read_audio` is the one door for audio files (any format libsndfile reads, plus G.722 through
ffmpeg); `conform` turns any (samples, rate) pair into 16 kHz mono with soxr; `encode_flac` /
`decode_flac` are the shard format. Problems raise `BadInput(reason, detail)`, which the shard
writer counts per reason instead of dying.
"""
from __future__ import annotations

import io
import os
import re
import subprocess

import numpy as np
import soundfile as sf
import soxr

from westkit.models.features import SAMPLE_RATE  # the one sample-rate constant: what the models' front end expects


class BadInput(Exception):
    """An input the writer skips and reports: ``reason`` is a short stable tag, ``detail`` free text."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def conform(audio: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio -> mono float32 at ``target_rate``.

    audio: (T,) or (T, C) samples in [-1, 1]. Returns (T',) float32. Stereo is averaged,
    other rates are resampled with soxr (high quality). Raises BadInput on empty or NaN/inf audio.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if audio.size == 0:
        raise BadInput("empty_audio", "no samples")
    if not np.isfinite(audio).all():
        raise BadInput("nonfinite_audio", f"{int((~np.isfinite(audio)).sum())} NaN/inf samples")
    if sample_rate != target_rate:
        audio = soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32)
    return audio


def read_audio(path: str) -> np.ndarray:
    """Read an audio file as 16 kHz mono float32 (T,); raises BadInput naming what is wrong."""
    if os.path.isdir(path):
        raise BadInput("not_a_file", f"{path} is a folder, not an audio file")
    if not os.path.isfile(path):
        raise BadInput("missing_file", path)
    if path.endswith(".g722"):
        return conform(_read_g722(path), SAMPLE_RATE)
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile's errors are plain RuntimeError/LibsndfileError
        raise BadInput("unreadable_audio", f"{path}: {e}") from None
    # libsndfile silently shortens a WAV whose data chunk runs past the end of the file;
    # its log says "data : N (should be M)", which is the only trace of the truncation
    if re.search(r"^data\s*:\s*\d+\s*\(should be", info.extra_info, re.M):
        raise BadInput("truncated_audio", f"{path}: data chunk longer than the file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise BadInput("truncated_audio", f"{path}: {e}") from None
    if info.frames > 0 and len(data) < info.frames:
        raise BadInput("truncated_audio", f"{path}: header says {info.frames} frames, read {len(data)}")
    return conform(data, sr)


def _read_g722(path: str) -> np.ndarray:
    """G.722 (Asterisk prompts) decoded by ffmpeg to 16 kHz mono float32."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", path,
           "-ar", str(SAMPLE_RATE), "-ac", "1", "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise BadInput("unreadable_audio", f"{path}: ffmpeg: {proc.stderr.decode(errors='replace')[:200]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def encode_flac(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """(T,) float32 -> FLAC bytes, 16-bit (lossless for 16-bit sources). Deterministic."""
    buf = io.BytesIO()
    # clip first: libsndfile's float -> int conversion does not saturate by default
    sf.write(buf, np.clip(audio, -1.0, 32767 / 32768), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC (or any libsndfile format) bytes -> ((T,) or (T, C) float32, sample rate)."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    return audio, sr
