"""Where westkit keeps what it makes: models materialised from wheels, corpora, caches.

Everything lives under one root, ``$WESTKIT_HOME`` (default ``~/.cache/westkit``), so a cluster
can point it at a shared filesystem and a test can point it at a temporary folder.
"""
import os
import tempfile
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


def writable(folder: Path) -> Path:
    """``folder``, created if missing, once a file could be written in it; otherwise a
    one-line ValueError saying to point ``WESTKIT_HOME`` somewhere writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write to {folder} ({e.strerror}); westkit keeps its models and "
                         f"corpora under WESTKIT_HOME={home()}: point it at a writable folder, "
                         f"e.g. export WESTKIT_HOME=$HOME/westkit") from None
    return folder
