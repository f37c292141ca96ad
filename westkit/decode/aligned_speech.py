"""Speech with exactly known word boundaries, for measuring word timestamps.

Each word is synthesised on its own by espeak-ng (``espeak-ng -v VOICE -s RATE --stdout WORD``),
resampled to 16 kHz, trimmed to where its 5 ms frames rise above ``trim_db`` below the word's
loudest frame, and the words are joined with silences drawn from a seeded generator. A word's
true start/end are the first/last sample of its trimmed audio in the joined file.
"""
from __future__ import annotations

import dataclasses
import io
import subprocess

import numpy as np

from westkit.models.features import SAMPLE_RATE

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3"]


@dataclasses.dataclass
class AlignedUtterance:
    """audio (T,) float32 at 16 kHz; words with true (start, end) seconds."""
    audio: np.ndarray
    words: list[str]
    starts: list[float]
    ends: list[float]
    voice: str

    @property
    def text(self) -> str:
        return " ".join(self.words)


def synth_word(word: str, voice: str, rate: int = 160, trim_db: float = 35.0) -> np.ndarray:
    """One word from espeak-ng, 16 kHz float32, silence trimmed off both ends."""
    import soundfile as sf

    from westkit.data.audio import conform

    try:
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", word],
                             check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise ValueError("espeak-ng is not installed: apt-get install espeak-ng") from None
    data, sr = sf.read(io.BytesIO(wav), dtype="float32")
    audio = conform(data, sr)
    hop = SAMPLE_RATE // 200
    frames = audio[:len(audio) // hop * hop].reshape(-1, hop)
    level = 20 * np.log10(np.sqrt((frames.astype(np.float64) ** 2).mean(1)) + 1e-12)
    loud = np.flatnonzero(level > level.max() - trim_db)
    return audio[loud[0] * hop:(loud[-1] + 1) * hop].copy()


def make_utterance(text: str, voice: str, seed: int, rate: int = 160, gap: tuple[float, float] = (0.05, 0.35),
                   lead: tuple[float, float] = (0.2, 0.8)) -> AlignedUtterance:
    """``text``'s words one at a time in ``voice``, joined by random silences (seconds drawn
    uniformly from ``gap``; ``lead`` before the first word and after the last)."""
    rng = np.random.default_rng(seed)
    words = text.split()
    parts, starts, ends = [], [], []
    t = int(rng.uniform(*lead) * SAMPLE_RATE)
    parts.append(np.zeros(t, np.float32))
    for i, w in enumerate(words):
        a = synth_word(w, voice, rate)
        starts.append(t / SAMPLE_RATE)
        t += len(a)
        ends.append(t / SAMPLE_RATE)
        parts.append(a)
        n = int(rng.uniform(*(lead if i == len(words) - 1 else gap)) * SAMPLE_RATE)
        parts.append(np.zeros(n, np.float32))
        t += n
    audio = np.concatenate(parts)
    return AlignedUtterance(0.5 * audio / max(1e-6, float(np.abs(audio).max())), words, starts, ends, voice)
