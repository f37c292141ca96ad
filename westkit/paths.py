"""Where westkit keeps what it makes: models materialised from wheels, corpora, caches.

Everything lives under one root, ``$WESTKIT_HOME`` (default ``~/.cache/westkit``), so a cluster
can point it at a shared filesystem and a test can point it at a temporary folder.
"""
import os
from pathlib import Path


def home() -> Path:
    """The westkit cache root: ``$WESTKIT_HOME`` or ``~/.cache/westkit``."""
    return Path(os.environ.get("WESTKIT_HOME") or Path.home() / ".cache" / "westkit")


def models_dir() -> Path:
    """Materialised built-in models, one standard Hugging Face folder each."""
    return home() / "models"


def data_dir() -> Path:
    """Offline corpora and shards made from them."""
    return home() / "data"
