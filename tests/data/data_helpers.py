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


class HttpShards:
    """`tests/data/http_shards.py` serving ``folder`` in a child process, for at most ``lifetime``
    seconds; ``url`` is its base, ``requests()`` the (path, status) of every GET so far."""

    def __init__(self, folder: Path, lifetime: float = 300.0, flaky: bool = False):
        import subprocess
        import sys

        self.log = Path(folder).parent / f"{Path(folder).name}-requests-{id(self)}.log"
        self.log.write_text("")
        cmd = [sys.executable, str(Path(__file__).with_name("http_shards.py")), str(folder),
               "--lifetime", str(lifetime), "--log", str(self.log)] + (["--flaky"] if flaky else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), f"http_shards.py did not start: {line!r}"
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def requests(self, starts: bool = False) -> list[tuple]:
        """(path, status) of every GET, or (path, status, first byte) with ``starts``."""
        rows = [(p, int(s), int(b)) for p, s, b in (l.split() for l in self.log.read_text().splitlines())]
        return rows if starts else [r[:2] for r in rows]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
