"""The streaming loader: a global batch plan from metadata, dealt to ranks, read by workers.

How it works (and why the guarantees hold):

1. `Catalog` reads the index.json of every shard folder: per sample its shard, duration, text
   length and the byte offsets of its members. Filters (duration, text length) apply here.
2. `plan_epoch` decides every batch of one epoch from that metadata alone (Lhotse's principle):
   seeded by (seed, epoch) it shuffles the shard order, mixes the samples of ``shuffle_window``
   consecutive shards, sorts them into duration buckets and fills batches while
   ``batch size x longest duration <= max_batch_seconds`` and ``size <= max_batch_size``
   (text-only samples are batched apart, by ``max_batch_size``). The batch order is shuffled too.
3. The plan is evened out for ``world_size`` ranks: training drops the last ``n % world_size``
   batches (the next epoch's plan differs, so nothing is lost for good); evaluation splits the
   largest batches until the count divides evenly, so every sample is seen exactly once. Rank r
   takes batches r, r + world_size, ... Every rank therefore yields the same number of batches,
   whatever the shard sizes, and training repeats epochs forever (training is by steps).
4. A `torch.utils.data.DataLoader` asks for planned batches by (epoch, position); its workers
   read members with one ``pread`` each (and, with precomputed states, the state member),
   run `westkit.data.pipeline.STEPS` plus the recipe's steps (tokenisation) and collate.
5. The loader's state is the (epoch, position) of the next batch it will hand out, so
   ``load_state_dict`` resumes with exactly the batches the uninterrupted run would have seen.

Damaged shards (truncated tar, corrupt member) lose only the affected samples; each is counted
and logged, and past ``max_read_errors`` per worker the loader fails with a clear message.

Shards on a web server or object store (``http(s)://``, ``pipe:`` commands) cannot be read by
offset: ``mode: stream`` (chosen automatically for such entries) reads them front to back,
split by rank and worker at shard level, with the same guarantees (`westkit.data.streaming`).

Elastic resume: a state saved with another world size (or, streaming, another number of
workers) resumes within its epoch. The samples the old layout had handed out are worked out
from the metadata (every rank's first ``position`` batches of its plan) and the rest of the
epoch is planned for the new layout without them, split rather than dropped, so no sample of
the epoch is repeated or skipped; the state carries that history (``"history"``) so a further
resume in the same epoch works too. The next epoch is planned normally.
"""
from __future__ import annotations

import atexit
import dataclasses
import glob
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from westkit.data.mixing import MixedLoader, temperature_probs
from westkit.data.pipeline import collate, run_steps
from westkit.data import corpora, streaming
from westkit.data.shards import (DURATION, FLAC_OFFSET, FLAC_SIZE, INDEX, INDEX_VERSION, JSON_OFFSET,
                                 JSON_SIZE, N_CHARS, read_index)

log = logging.getLogger(__name__)


# open shard files per process: a corpus of thousands of shards must stay under `ulimit -n`
MAX_OPEN_SHARDS = 64
MODES = ("auto", "offset", "stream")


def streams(cfg: "LoaderConfig") -> bool:
    """Whether ``cfg`` reads its shards by streaming (``mode``, or "auto" with a URL entry)."""
    remote = [s for s in cfg.shards if streaming.is_remote(s)]
    if cfg.mode == "offset" and remote:
        raise ValueError(f"data config: shards entry {remote[0]!r} is a URL or command, which cannot be "
                         "read by offset; set mode: stream (or auto)")
    if cfg.mode == "auto" and remote and cfg.states:
        raise ValueError(f"data config: states cannot be streamed, and shards entry {remote[0]!r} needs "
                         "streaming; copy the shards to local disk for use with states")
    return cfg.mode == "stream" or (cfg.mode == "auto" and bool(remote))

@dataclass
class LoaderConfig:
    """What to read and how to batch it.

    shards: shard folders (with index.json), globs of ``*.tar`` inside such folders, paths to
        index.json files, or built-in corpus names (`westkit.data.corpora.NAMES`, made on first use). max_batch_seconds bounds the padded audio per batch (size x longest).
    buckets: duration bucket upper edges in seconds; samples are batched within a bucket.
    shuffle_window: how many consecutive (shuffled) shards have their samples mixed together;
        larger mixes better, smaller reads more locally.
    langs: instead of ``shards``, language -> its shard entries (``{en: [general-train], de:
        [general-train-de]}``): training then draws every batch whole from one language with
        p_l ~ n_l ** ``alpha`` over the languages' utterance counts (`LanguageMix`); evaluation
        reads all of them once.
    """
    shards: list[str] = field(default_factory=list)
    langs: dict[str, list[str]] | None = None
    alpha: float = 0.5
    """Temperature of ``langs`` sampling: 1 as in the data, 0 uniform over languages."""
    max_batch_seconds: float = 200.0
    max_batch_size: int = 32
    min_duration: float = 0.1
    max_duration: float = 30.0
    min_text_chars: int = 1
    max_text_chars: int = 2000
    buckets: list[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0, 11.0, 15.0, 20.0, 30.0])
    shuffle: bool = True
    shuffle_window: int = 16
    seed: int = 0
    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool = False
    max_read_errors: int = 100
    states: str | None = None
    """A states folder made by ``westkit-encode`` for these shards: each sample then carries
    its precomputed encoder states (``batch["states"]``), read by offset like its audio."""
    mode: str = "auto"
    """How shards are read: "offset" (local files, one pread per member, batches planned
    across shards), "stream" (front to back through WebDataset, split by rank and worker at
    shard level: http(s):// URLs, pipe: commands, local paths), or "auto": stream when an entry
    is a URL or pipe: command, else offset."""
    shuffle_buffer: int = 2000
    """Streaming: samples held by each worker's shuffle buffer (training)."""
    retries: int = 3
    """Streaming: attempts after a network error before a shard is skipped."""
    retry_backoff: float = 1.0
    """Streaming: seconds before the first retry, doubled for each further one."""
    timeout: float = 60.0
    """Streaming: seconds an HTTP connection or read may stall before it counts as failed (a
    ``pipe:`` command gets no timeout from here: give it its own, e.g. ``timeout 600 aws ...``)."""

    def __post_init__(self):
        # `westkit.config.build` puts the file and section (data, eval_data, ...) in front
        checks = [
            (self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}"),
            (self.max_batch_seconds > 0, f"max_batch_seconds must be > 0, got {self.max_batch_seconds}"),
            (self.num_workers >= 0, f"num_workers must be >= 0 (0 reads in the main process), "
                                    f"got {self.num_workers}"),
            (self.prefetch_factor >= 1, f"prefetch_factor must be >= 1, got {self.prefetch_factor}"),
            (self.min_duration >= 0, f"min_duration must be >= 0, got {self.min_duration}"),
            (self.min_duration <= self.max_duration,
             f"min_duration ({self.min_duration}) must be <= max_duration ({self.max_duration})"),
            (self.min_text_chars <= self.max_text_chars,
             f"min_text_chars ({self.min_text_chars}) must be <= max_text_chars ({self.max_text_chars})"),
            (self.max_read_errors >= 0, f"max_read_errors must be >= 0, got {self.max_read_errors}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}"),
            (self.retries >= 0, f"retries must be >= 0, got {self.retries}"),
            (self.retry_backoff >= 0, f"retry_backoff must be >= 0, got {self.retry_backoff}"),
            (self.timeout > 0, f"timeout must be > 0, got {self.timeout}"),
            (not (self.states and self.mode == "stream"),
             "states cannot be streamed (they are read by offset); use mode: offset with local shards"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.langs is not None:
            self._check_langs()

    def _check_langs(self) -> None:
        if self.shards:
            raise ValueError("give either shards or langs (language -> shards), not both: move the "
                             "shards under their language in langs")
        if not isinstance(self.langs, dict) or not self.langs:
            raise ValueError(f"langs must map languages to shard lists ({{en: [...], de: [...]}}), got {self.langs!r}")
        for lang, specs in self.langs.items():
            if not isinstance(lang, str):   # YAML reads a bare `no:` (Norwegian) as false
                raise ValueError(f"langs: language {lang!r} must be a string; quote it (\"no\": [...])")
            if not isinstance(specs, list) or not specs or not all(isinstance(x, str) for x in specs):
                raise ValueError(f"langs.{lang} must be a non-empty list of shard entries, got {specs!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (1: as in the data, 0: uniform), got {self.alpha}")
        if self.states:
            raise ValueError("states cannot be combined with langs (one states folder per section): "
                             "drop states or give one language's shards")

    def all_shards(self) -> list[str]:
        """``shards``, or every language's shards in ``langs`` order."""
        return [s for specs in self.langs.values() for s in specs] if self.langs else list(self.shards)


class Catalog:
    """Metadata of every sample that passes the filters, as flat arrays (no audio is read).

    Attributes: paths (shard files), shard (N,) int, duration (N,) float, has_audio (N,) bool,
    rows (N, 4) int64 [json_offset, json_size, flac_offset, flac_size], keys list[str],
    bounds (S + 1,) where shard s holds ids bounds[s]:bounds[s + 1]; with ``cfg.states``:
    state_paths (state tar files) and state_rows (N, 3) int64 [file, offset, size].
    """

    def __init__(self, cfg: LoaderConfig):
        if not cfg.shards:
            raise ValueError("data config: `shards` is empty; list shard folders (with index.json) "
                             "or globs of their .tar files")
        self.paths: list[str] = []
        keys, shard, dur, nchars, rows = [], [], [], [], []
        for folder, index, names, url_of in _sources(cfg):
            by_name = {s["name"]: s for s in index["shards"]}
            for name in names if names is not None else list(by_name):
                if name not in by_name:
                    raise ValueError(f"{url_of(name)} is not listed in {url_of(INDEX)}; "
                                     "re-index the folder with `westkit-shards --index`")
                for r in by_name[name]["samples"]:
                    keys.append(r[0])
                    shard.append(len(self.paths))
                    dur.append(r[DURATION])
                    nchars.append(r[N_CHARS])
                    rows.append((r[JSON_OFFSET], r[JSON_SIZE], r[FLAC_OFFSET], r[FLAC_SIZE]))
                self.paths.append(url_of(name))
        dur, nchars = np.asarray(dur, dtype=np.float64), np.asarray(nchars)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        has_audio = rows[:, 2] >= 0
        keep = ((~has_audio | ((dur >= cfg.min_duration) & (dur <= cfg.max_duration)))
                & (nchars >= cfg.min_text_chars) & (nchars <= cfg.max_text_chars))
        if not keep.any():
            raise ValueError(f"data config: no sample of {len(keep)} in {cfg.shards} passes the filters "
                             f"(duration {cfg.min_duration}-{cfg.max_duration} s, text "
                             f"{cfg.min_text_chars}-{cfg.max_text_chars} chars)")
        if (~keep).any():
            log.warning("data: %d of %d samples filtered out by duration/text length", (~keep).sum(), len(keep))
        idx = np.flatnonzero(keep)
        self.keys = [keys[i] for i in idx]
        self.shard = np.asarray(shard, dtype=np.int64)[idx]
        self.duration = dur[idx]
        self.has_audio = has_audio[idx]
        self.rows = rows[idx]
        # samples are stored shard by shard, so shard s owns ids bounds[s]:bounds[s + 1]
        self.bounds = np.searchsorted(self.shard, np.arange(len(self.paths) + 1))
        self.state_paths: list[str] = []
        self.state_rows = None
        if cfg.states:
            self._add_states(cfg.states)

    def _add_states(self, folder: str) -> None:
        """Look every audio sample's states member up in the states folder's index."""
        from westkit.data.states import read_states_index

        index = read_states_index(folder)
        where = {}
        for shard in index["shards"]:
            for key, offset, size in shard["samples"]:
                where[key] = (len(self.state_paths), offset, size)
            self.state_paths.append(str(Path(folder) / shard["name"]))
        missing = [k for k, a in zip(self.keys, self.has_audio) if a and k not in where]
        if missing:
            raise ValueError(f"data config: states {folder} has no states for {len(missing)} of these "
                             f"samples (e.g. {missing[0]!r}): run westkit-encode on the same shards")
        self.state_rows = np.asarray([where.get(k, (-1, -1, 0)) for k in self.keys],
                                     dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.keys)


def _sources(cfg: LoaderConfig):
    """(folder, its index, shard names or None for all, name -> path or URL) per shards entry;
    a remote index is fetched here, once."""
    for spec in cfg.shards:
        if streaming.is_remote(spec):
            index_url, one, url_of = streaming.locate(spec, INDEX)
            index = streaming.fetch_index(index_url, cfg.timeout, cfg.retries, cfg.retry_backoff)
            if index.get("version") != INDEX_VERSION:
                raise ValueError(f"{index_url}: index version {index.get('version')!r}, expected {INDEX_VERSION}")
            yield spec, index, [one] if one else None, url_of
            continue
        for folder, names in _resolve_shards([spec]):
            yield folder, read_index(folder), names, lambda name, folder=folder: str(folder / name)


def _resolve_shards(specs: list[str]) -> list[tuple[Path, list[str] | None]]:
    """Shard specs -> [(folder with index.json, shard names or None for all)]."""
    out: list[tuple[Path, list[str] | None]] = []
    for spec in specs:
        p = Path(corpora.shard_folder(spec))
        if p.is_dir():
            out.append((p, None))
        elif p.name == INDEX and p.is_file():
            out.append((p.parent, None))
        else:
            matches = sorted(glob.glob(spec))
            if not matches:
                raise ValueError(f"data config: shards entry {spec!r} matches nothing; give a shard "
                                 "folder, a glob of .tar files, or an index.json path")
            groups: dict[Path, list[str]] = {}
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    out.append((mp, None))
                else:
                    groups.setdefault(mp.parent, []).append(mp.name)
            out.extend(groups.items())
    return out


def plan_epoch(cat: Catalog, cfg: LoaderConfig, epoch: int, world_size: int, train: bool,
               exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """All batches of one epoch for all ranks (sample ids into ``cat``), evened for ``world_size``.

    Pure function of the metadata, the config, the epoch and the world size. ``exclude`` (bool
    per sample) leaves out samples already seen this epoch (elastic resume); the rest is then
    evened by splitting, never dropped, and the random draws are those of the full plan.
    """
    rng = np.random.default_rng([cfg.seed, epoch])
    shuffle = cfg.shuffle and train
    n_shards = len(cat.paths)
    shard_order = rng.permutation(n_shards) if shuffle else np.arange(n_shards)
    by_shard = [np.arange(cat.bounds[s], cat.bounds[s + 1]) for s in range(n_shards)]
    edges = np.asarray(sorted(cfg.buckets), dtype=np.float64)
    window = max(1, cfg.shuffle_window)
    batches: list[np.ndarray] = []
    for w in range(0, n_shards, window):
        ids = np.concatenate([by_shard[s] for s in shard_order[w:w + window]])
        if shuffle:
            ids = rng.permutation(ids)
        if exclude is not None:
            ids = ids[~exclude[ids]]
        wb = _fill(ids[cat.has_audio[ids]], cat.duration, edges, cfg)
        text = ids[~cat.has_audio[ids]]
        wb += [text[i:i + cfg.max_batch_size] for i in range(0, len(text), cfg.max_batch_size)]
        if shuffle:
            wb = [wb[i] for i in rng.permutation(len(wb))]
        batches += wb
    return _even(batches, world_size, train and exclude is None)


def _fill(ids: np.ndarray, duration: np.ndarray, edges: np.ndarray, cfg: LoaderConfig) -> list[np.ndarray]:
    """Greedy batches within duration buckets: size x longest <= max_batch_seconds."""
    if len(ids) == 0:
        return []
    bucket = np.searchsorted(edges, duration[ids], side="left")
    ids = ids[np.argsort(bucket, kind="stable")]  # stable: keeps the shuffle within a bucket
    bucket = np.sort(bucket, kind="stable")
    out, cur, longest = [], [], 0.0
    for i, b in zip(ids.tolist(), bucket.tolist()):
        d = float(duration[i])
        if cur and (b != cur_bucket or len(cur) >= cfg.max_batch_size
                    or (len(cur) + 1) * max(longest, d) > cfg.max_batch_seconds):
            out.append(np.asarray(cur))
            cur, longest = [], 0.0
        if not cur:
            cur_bucket = b
        cur.append(i)
        longest = max(longest, d)
    out.append(np.asarray(cur))
    return out


def _even(batches: list[np.ndarray], world_size: int, train: bool) -> list[np.ndarray]:
    """Make the batch count a multiple of world_size (see the module docstring, point 3)."""
    n = len(batches)
    if n % world_size == 0:
        return batches
    if train and n >= world_size:
        return batches[:n - n % world_size]
    batches = list(batches)
    if sum(len(b) for b in batches) < world_size:
        raise ValueError(f"data: {sum(len(b) for b in batches)} samples cannot give each of "
                         f"{world_size} ranks a batch; use more data or fewer processes")
    while len(batches) % world_size:
        i = max(range(len(batches)), key=lambda j: len(batches[j]))
        b = batches[i]
        batches[i:i + 1] = [b[:len(b) // 2], b[len(b) // 2:]]
    return batches


class PlannedBatches(Dataset):
    """Map-style dataset: ``ds[(epoch, position)]`` is this rank's planned batch, read and collated."""

    def __init__(self, cat: Catalog, cfg: LoaderConfig, rank: int, world_size: int, train: bool,
                 steps: tuple = ()):
        self.cat, self.cfg, self.rank, self.world_size, self.train = cat, cfg, rank, world_size, train
        self.steps = tuple(steps)
        self.files = cat.paths + cat.state_paths  # what _pread opens, by number
        self._plans: dict[int, list[np.ndarray]] = {}
        self._fds: dict[int, int] = {}
        self.errors = 0
        self.history: dict[int, list] = {}  # epoch -> [[world_size, workers, position], ...]

    def rank_plans(self, epoch: int, world_size: int, workers: int, exclude) -> list[list[np.ndarray]]:
        """Every rank's batches of ``epoch`` for a layout (sample ids)."""
        whole = plan_epoch(self.cat, self.cfg, epoch, world_size, self.train, exclude)
        return [whole[r::world_size] for r in range(world_size)]

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (sample ids)."""
        if epoch not in self._plans:
            if len(self._plans) > 2:
                self._plans.pop(min(self._plans))
            exclude = handed_out(self, epoch, self.history.get(epoch, []))
            self._plans[epoch] = self.rank_plans(epoch, self.world_size, 0, exclude)[self.rank]
        return self._plans[epoch]

    def __getitem__(self, index: tuple[int, int]) -> dict:
        epoch, pos = index
        plan = self.plan(epoch)
        # a batch whose every sample is unreadable is replaced by the next planned one, so the
        # batch count (and the other ranks' step count) never changes
        for k in range(len(plan)):
            samples = [s for s in map(self._read, plan[(pos + k) % len(plan)].tolist()) if s is not None]
            if samples:
                return collate(samples)
        raise RuntimeError("data: no readable sample in this rank's plan; check the shards")

    def _read(self, i: int) -> dict | None:
        shard = int(self.cat.shard[i])
        j_off, j_size, f_off, f_size = self.cat.rows[i].tolist()
        try:
            raw = {"key": self.cat.keys[i], "json": self._pread(shard, j_off, j_size),
                   "flac": self._pread(shard, f_off, f_size) if f_off >= 0 else None}
            if self.cat.state_rows is not None and self.cat.state_rows[i, 0] >= 0:
                s_file, s_off, s_size = self.cat.state_rows[i].tolist()
                raw["states"] = self._pread(len(self.cat.paths) + s_file, s_off, s_size)
            return run_steps(raw, self.steps)
        except Exception as e:  # damaged shard: skip and count, within the budget
            self.errors += 1
            log.warning("data: skipped %s in %s: %s", self.cat.keys[i], self.cat.paths[shard], e)
            if self.errors > self.cfg.max_read_errors:
                raise RuntimeError(f"data: {self.errors} unreadable samples in this worker, over "
                                   f"max_read_errors={self.cfg.max_read_errors} (last: {self.cat.keys[i]} in "
                                   f"{self.cat.paths[shard]}: {e}); rewrite the damaged shards or raise "
                                   "max_read_errors") from e
            return None

    def _pread(self, file: int, offset: int, size: int) -> bytes:
        fd = self._fds.pop(file, None)
        if fd is None:
            fd = os.open(self.files[file], os.O_RDONLY)
            if len(self._fds) >= MAX_OPEN_SHARDS:  # least recently used first: dicts keep order
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[file] = fd  # (re)inserted last: most recently used
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"truncated shard: wanted {size} bytes at {offset}, got {len(data)}")
        return data

    def __getstate__(self):  # file descriptors do not cross into workers
        return dict(self.__dict__, _fds={})


def handed_out(planner, epoch: int, history: list) -> np.ndarray | None:
    """Samples of ``epoch`` handed out by earlier layouts (bool per sample), or None if none:
    each layout's ranks had taken the first ``position`` batches of their plans."""
    exclude = None
    for world_size, workers, position in history:
        plans = planner.rank_plans(epoch, world_size, workers, exclude)
        taken = [b for rank in plans for b in rank[:position]]
        exclude = np.zeros(len(planner.cat), dtype=bool) if exclude is None else exclude.copy()
        if taken:
            exclude[np.concatenate(taken)] = True
    return exclude


class StreamPlans:
    """The streaming plans of one rank (`westkit.data.streaming.stream_plan`), cached per epoch."""

    def __init__(self, cat: Catalog, cfg: LoaderConfig, rank: int, world_size: int, workers: int,
                 train: bool):
        self.cat, self.cfg, self.rank, self.world_size, self.workers = cat, cfg, rank, world_size, workers
        self.train = train
        self.history: dict[int, list] = {}
        self._plans: dict[int, list] = {}

    def rank_plans(self, epoch: int, world_size: int, workers: int, exclude) -> list[list[np.ndarray]]:
        plans = streaming.stream_plan(self.cat, self.cfg, epoch, world_size, workers, self.train, exclude)
        return [[ids for _, ids in rank] for rank in plans]

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """This rank's batches of ``epoch`` as (worker, sample ids), in the order handed out."""
        if epoch not in self._plans:
            if len(self._plans) > 2:
                self._plans.pop(min(self._plans))
            exclude = handed_out(self, epoch, self.history.get(epoch, []))
            self._plans[epoch] = streaming.stream_plan(self.cat, self.cfg, epoch, self.world_size,
                                                       self.workers, self.train, exclude)[self.rank]
        return self._plans[epoch]

    def slot_shards(self, epoch: int, worker: int) -> list[int]:
        """The shards ``worker`` of this rank streams in ``epoch``, in reading order."""
        slots = streaming.deal_shards(self.cat, self.cfg, epoch, self.world_size * self.workers, self.train)
        return slots[worker * self.world_size + self.rank]


class _Positions(Sampler):
    """(epoch, position) pairs from a start point: forever for training, one pass for eval."""

    def __init__(self, ds: PlannedBatches, epoch: int, pos: int):
        self.ds, self.epoch, self.pos = ds, epoch, pos

    def __iter__(self):
        epoch, pos = self.epoch, self.pos
        while True:
            n = len(self.ds.plan(epoch))
            for p in range(pos, n):
                yield epoch, p
            if not self.ds.train:
                return
            epoch, pos = epoch + 1, 0


def _as_is(batch):
    return batch


def _ignore_preemption_signals(worker_id: int) -> None:
    """Loader workers leave preemption to the rank: SLURM and torchrun signal whole process
    groups, and a worker killed by SIGTERM would crash the rank before it can checkpoint.
    So the rank must stop them itself (`_stop_workers`): SIGTERM no longer can."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


_RUNNING = weakref.WeakSet()
"""DataLoader iterators whose workers may be running."""


def _start_workers(dl: DataLoader):
    it = iter(dl)
    if dl.num_workers:
        _RUNNING.add(it)
    return it


def _stop_workers(it) -> None:
    """Stop a DataLoader iterator's workers now. DataLoader has no public close(); its
    ``__del__`` calls this same ``_shutdown_workers``, which returns early once Python is
    exiting, when torch leaves the (daemonic) workers to multiprocessing's exit handler. That
    handler stops them with SIGTERM, which our workers ignore, and then joins them: forever."""
    _RUNNING.discard(it)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


@atexit.register
def _stop_workers_at_exit() -> None:
    # registered after multiprocessing's and torch's exit handlers, so it runs before them
    for it in list(_RUNNING):
        _stop_workers(it)


class Loader:
    """Iterable of batches (the batch schema in `westkit.data.pipeline`) for one rank.

    Training loaders never end; evaluation loaders make one pass per ``iter()``. Every rank
    yields the same number of batches. ``state_dict()`` is the position of the next batch.
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, train: bool = True,
                 steps: tuple = ()):
        if not 0 <= rank < world_size:
            raise ValueError(f"data: rank {rank} outside world size {world_size}")
        self.cfg, self.rank, self.world_size, self.train = cfg, rank, world_size, train
        self.streaming = streams(cfg)
        self.catalog = Catalog(cfg)
        if self.streaming:
            self.workers = max(1, cfg.num_workers)
            self.planner = StreamPlans(self.catalog, cfg, rank, world_size, self.workers, train)
            self.dataset = streaming.StreamedBatches(self.catalog, cfg, self.workers, train, steps, self.planner)
        else:
            self.workers = cfg.num_workers
            self.dataset = self.planner = PlannedBatches(self.catalog, cfg, rank, world_size, train, steps)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (the whole pass for evaluation)."""
        return len(self.planner.plan(self.epoch))

    def __iter__(self):
        if self.streaming:
            yield from self._streamed()
            return
        start = (self.epoch, self.position) if self.train else (0, 0)
        self.dataset.errors = 0  # the read-error budget is per pass (and per worker)
        for batch in self._worker_batches(sampler=_Positions(self.dataset, *start)):
            self.position += 1
            if self.position >= len(self.dataset.plan(self.epoch)):
                self.epoch, self.position = self.epoch + 1, 0
            yield batch
        if not self.train:
            self.epoch, self.position = 0, 0

    def _streamed(self):
        """Streaming: workers tag batches with (epoch, position); hand them out in that order."""
        if not self.train:
            self.epoch, self.position = 0, 0
        self.dataset.start = (self.epoch, self.position)
        self.dataset.errors = 0
        pending = {}
        for where, batch in self._worker_batches():
            pending[where] = batch
            while (self.epoch, self.position) in pending:
                batch = pending.pop((self.epoch, self.position))
                self.position += 1
                if self.position >= len(self.planner.plan(self.epoch)):
                    self.epoch, self.position = self.epoch + 1, 0
                yield batch
        if not self.train:
            self.epoch, self.position = 0, 0

    def _worker_batches(self, **kw):
        """``self.dataset``'s batches through a DataLoader; its workers stop when this ends or
        is closed, not at interpreter exit (`_stop_workers`)."""
        cfg = self.cfg
        batches = _start_workers(DataLoader(
            self.dataset, batch_size=None, num_workers=cfg.num_workers, collate_fn=_as_is,
            pin_memory=cfg.pin_memory and torch.cuda.is_available(),
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
            worker_init_fn=_ignore_preemption_signals, **kw))
        try:
            yield from batches
        finally:
            _stop_workers(batches)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "world_size": self.world_size,
                "seed": self.cfg.seed, "mode": "stream" if self.streaming else "offset",
                "num_workers": self.workers, "history": self.planner.history.get(self.epoch, [])}

    def load_state_dict(self, state: dict) -> None:
        mode = "stream" if self.streaming else "offset"
        if state["seed"] != self.cfg.seed or state.get("mode", "offset") != mode:
            # positions index a plan made with another seed or reader: restart at the next epoch
            log.warning("data: resuming with seed %d/%s reading instead of %d/%s: starting "
                        "epoch %d from its beginning", self.cfg.seed, mode, state["seed"],
                        state.get("mode", "offset"), state["epoch"] + 1)
            self.epoch, self.position = state["epoch"] + 1, 0
            return
        history = [list(h) for h in state.get("history", [])]
        old = (state["world_size"], state.get("num_workers", self.workers))
        if old[0] != self.world_size or (self.streaming and old[1] != self.workers):
            # elastic: the rest of this epoch, planned for this layout without what was handed out
            history.append([*old, state["position"]])
            log.warning("data: resuming a state of world size %d (%d workers) with %d (%d): epoch %d "
                        "continues with the samples not yet seen", old[0], old[1], self.world_size,
                        self.workers, state["epoch"])
            self.epoch, self.position = state["epoch"], 0
        else:
            self.epoch, self.position = state["epoch"], state["position"]
        self.planner.history = {self.epoch: history} if history else {}
        self.planner._plans.clear()


    def require_audio(self, why: str) -> None:
        """Fail before training when a recipe that needs audio is given text-only samples."""
        n = int((~self.catalog.has_audio).sum())
        if n:
            raise ValueError(f"data config: {n} of {len(self.catalog)} samples in {self.cfg.shards} are "
                             f"text-only, but {why}; give shards with audio (or filter them out)")


class LanguageMix(MixedLoader):
    """Temperature language sampling over one `Loader` per language (``cfg.langs``).

    Each batch comes whole from one language, drawn with p_l = n_l ** alpha / sum_k n_k ** alpha
    (`temperature_probs` over the utterances each language's loader holds after filtering) by
    a generator seeded with ``seed``: the same language on every rank in every step, and
    `state_dict` (the draws and every language's position) resumes the same sequence.
    Attributes: counts (language -> utterances), probs (language -> p_l); `last_source` names
    the language of the latest batch.
    """

    def __init__(self, loaders: dict[str, Loader], alpha: float, seed: int):
        self.counts = {lang: len(loader.catalog) for lang, loader in loaders.items()}
        self.probs = temperature_probs(self.counts, alpha)
        super().__init__(loaders, self.probs, mode="random", seed=seed)

    def require_audio(self, why: str) -> None:
        for loader in self.loaders.values():
            loader.require_audio(why)

    def describe(self) -> str:
        """One line for the run's log: each language's utterances and sampling probability."""
        return "languages " + ", ".join(f"{lang}: {n} utts p={self.probs[lang]:.3f}" for lang, n in self.counts.items())


def build_loader(cfg: LoaderConfig, rank: int = 0, world_size: int = 1, train: bool = True,
                 steps: tuple = ()) -> Loader | LanguageMix:
    """The loader for one rank: see `Loader` and the module docstring for its guarantees.

    With ``cfg.langs``, training gets a `LanguageMix` of one loader per language and
    evaluation one loader over all of them. ``steps``: the recipe's per-sample steps after
    `westkit.data.pipeline.STEPS` (its model's tokenisation, `westkit.data.pipeline.tokenize`),
    run in the workers before collation."""
    if cfg.langs is None:
        return Loader(cfg, rank, world_size, train, steps)
    if not train:
        return Loader(dataclasses.replace(cfg, shards=cfg.all_shards(), langs=None), rank, world_size, train, steps)
    loaders = {lang: Loader(dataclasses.replace(cfg, shards=list(specs), langs=None), rank, world_size, train, steps)
               for lang, specs in cfg.langs.items()}
    return LanguageMix(loaders, cfg.alpha, cfg.seed)


def padding_report(loader: Loader | LanguageMix) -> str:
    """Audio padding of the first epoch's batch plan (metadata only), vs padding to 30 s; one
    line per language for a `LanguageMix`."""
    if isinstance(loader, LanguageMix):
        return "\n".join(f"{lang}: {padding_report(one)}" for lang, one in loader.loaders.items())
    dur = loader.catalog.duration
    if loader.streaming:
        plan = [b for rank in loader.planner.rank_plans(0, loader.world_size, loader.workers, None) for b in rank]
    else:
        plan = plan_epoch(loader.catalog, loader.cfg, 0, loader.world_size, train=True)
    speech = sum(float(dur[b].sum()) for b in plan)
    padded = sum(len(b) * float(dur[b].max()) for b in plan)
    return (f"data: {len(dur)} utterances, {speech / 3600:.2f} h in {len(plan)} batches per epoch "
            f"(all ranks); audio padding {100 * (1 - speech / max(padded, 1e-9)):.1f}% "
            f"(padded to 30 s it would be {100 * (1 - speech / (30.0 * len(dur))):.1f}%)")
