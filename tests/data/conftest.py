"""Fixtures for the data-layer tests: a private WESTKIT_HOME for corpora built during the session."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def westkit_home(tmp_path_factory) -> Path:
    """A fresh WESTKIT_HOME for the session, so corpora are built by the code under test."""
    home = tmp_path_factory.mktemp("westkit_home")
    old = os.environ.get("WESTKIT_HOME")
    os.environ["WESTKIT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("WESTKIT_HOME", None)
    else:
        os.environ["WESTKIT_HOME"] = old
