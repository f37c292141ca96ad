"""Decoding fixtures: a tiny random Whisper with the real tokenizer, and real long speech."""
import subprocess
from pathlib import Path

import pytest

from decode_helpers import LONG_TEXT, make_tiny_whisper


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_whisper") / "whisper"
    make_tiny_whisper(folder)
    return folder


@pytest.fixture(scope="session")
def long_wav(tmp_path_factory) -> Path:
    """About 39 s of espeak-ng speech (LONG_TEXT): longer than Whisper's 30 s window."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    subprocess.run(["espeak-ng", "-w", str(path), LONG_TEXT], check=True)
    return path
