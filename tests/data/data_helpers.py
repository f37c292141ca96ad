"""Helpers for the data-layer tests: deterministic synthetic audio and shard folders."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from westkit.data.shards import Entry, write_shards


@dataclass(frozen=True)
class Tone:
    """Deterministic test audio: a tone of ``seconds`` at 16 kHz (an Entry audio object)."""
    seconds: float
    freq: float = 440.0

    def load(self) -> np.ndarray:
        t = np.arange(int(self.seconds * 16000)) / 16000
        return (0.3 * np.sin(2 * np.pi * self.freq * t)).astype(np.float32)


def tone_shards(folder: Path, durations: list[float], shard_bytes: int = 2**20, prefix: str = "train",
                text_only: int = 0) -> Path:
    """Write utterances u0000.. of the given durations (+ text-only t0000..) as shards."""
    entries = [Entry(key=f"u{i:04d}", text=f"utterance {i}", audio=Tone(d, 200 + 10 * i))
               for i, d in enumerate(durations)]
    entries += [Entry(key=f"t{i:04d}", text=f"text only {i}") for i in range(text_only)]
    write_shards(entries, folder, prefix=prefix, shard_bytes=shard_bytes, workers=1, progress=False)
    return folder


def write_wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1, value=None) -> Path:
    """A WAV of noise (or a constant ``value``) with the given rate and channel count."""
    rng = np.random.default_rng(int(seconds * 1000) + sr + channels)
    data = rng.uniform(-0.3, 0.3, size=(int(seconds * sr), channels)).astype(np.float32)
    if value is not None:
        data[:] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="FLOAT" if value is not None else "PCM_16")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
