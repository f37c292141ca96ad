"""Fixtures for the data-layer tests: a private WESTKIT_HOME for corpora built during the session.

The home is shared by every data test (corpora are built once) but set only while a data test
runs, so later tests in the session see the WESTKIT_HOME they started with.
"""
from pathlib import Path

import pytest

# `data_home` (the shared folder) is in tests/conftest.py: model tests read built corpora too


@pytest.fixture(autouse=True)
def westkit_home(data_home, monkeypatch) -> Path:
    """WESTKIT_HOME = `data_home` for the duration of one data test."""
    monkeypatch.setenv("WESTKIT_HOME", str(data_home))
    return data_home
