"""Streaming mode of the loader: shards read front to back (HTTP(S), ``pipe:`` commands, local
files) through WebDataset's tar iterator, split by rank and worker at shard level.

Why the guarantees of the offset reader still hold (see `westkit.data.loader`):

1. The shard folder's ``index.json`` is fetched once (main process) and gives, per sample, its
   shard, duration and text length; nothing else is needed to plan.
2. `stream_plan` deals the (shuffled) shards of an epoch to ``world_size x workers`` slots,
   each shard to the least loaded slot (slot k is rank ``k % world_size``, worker
   ``k // world_size``), so ranks get about the same audio. For each slot it then *simulates*
   the worker's stream from metadata: its shards' samples in tar order, a shuffle buffer of
   ``shuffle_buffer`` samples (seeded by seed, epoch, slot), and duration bucketing (a batch
   leaves its bucket when the next sample would break ``max_batch_size`` or
   ``max_batch_seconds``). The result is each worker's batches in the order the real stream
   completes them, so the batch count of every worker and rank is known before any audio is
   read. A rank's batches are its workers' batches taken in turn (w0, w1, w0, ...).
3. Ranks are evened as in the offset reader: training cuts every rank to the smallest
   count, evaluation splits a rank's largest batches until it has the largest count.
4. A worker reads its shards in order and keeps the members of the batches not yet complete
   (at most ``shuffle_buffer`` plus one open batch per bucket), then decodes and collates a
   batch (`westkit.data.pipeline.run_steps` with the recipe's steps, `collate`) when its last
   member has arrived. Items carry their (epoch, position) so the main process hands them out
   in the planned order.
5. Resume: the loader's state is (epoch, position). A worker skips the shards whose samples all
   belong to batches already handed out and starts at the first needed (shard, member): at its
   tar header (HTTP Range request, a seek for local files; from the index's offsets), or, for
   ``pipe:`` commands and servers without Range, from the shard's start, dropping the members
   before it. A retry after a network error starts the same way, at the first member not yet
   delivered.

Network errors are retried with exponential back-off (``retries``, ``retry_backoff``); a retry
starts at the first member not yet delivered (as a resume does). A shard that still fails (404, a
truncated tar, a failing command) loses its remaining samples: they are counted in the
worker's read-error budget (``max_read_errors``) and logged with the shard's URL. A batch
that loses every member is replaced by the worker's previous batch (or its next one), so the
batch count never changes.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import tarfile
import time
import urllib.error
import urllib.request
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from westkit.data.pipeline import collate, run_steps

log = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "pipe:")


def is_remote(spec: str) -> bool:
    """True for shard specs that only streaming can read (URLs and ``pipe:`` commands)."""
    return spec.startswith(REMOTE_PREFIXES)


def locate(spec: str, index_name: str) -> tuple[str, str | None, callable]:
    """A remote shard spec -> (where its index is, the one shard it names or None, name -> URL).

    ``http(s)://host/path/train`` (a folder: index at ``.../train/index.json``),
    ``http(s)://host/path/train/train-000003.tar`` (one shard of that folder), or
    ``pipe:COMMAND`` with ``{}`` where the file name goes (``pipe:aws s3 cp s3://b/train/{} -``).
    """
    if spec.startswith("pipe:"):
        if "{}" not in spec:
            raise ValueError(f"data config: shards entry {spec!r}: a pipe: command needs {{}} where the "
                             "file name goes, e.g. 'pipe:aws s3 cp s3://bucket/train/{} -' (index.json "
                             "and each shard are fetched by replacing {})")
        return spec.replace("{}", index_name), None, lambda name: spec.replace("{}", name)
    base, one = spec.rstrip("/"), None
    if base.endswith(".tar"):
        base, _, one = base.rpartition("/")
    return f"{base}/{index_name}", one, lambda name: f"{base}/{name}"


def _permanent(e: Exception) -> bool:
    """Errors no retry can fix: HTTP 4xx other than timeout/too-many-requests."""
    return isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (408, 429)


RETRYABLE = (OSError, tarfile.TarError, http.client.HTTPException, socket.timeout, ValueError, EOFError)


def _why(e: Exception) -> str:
    """An error in one line (WebDataset appends the stream object and URL to ``args``)."""
    first = e.args[0] if e.args else ""
    text = str(first).split(" @ ")[0] if isinstance(first, str) else str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_stream(url: str, timeout: float, offset: int = 0):
    """(readable binary stream, where it starts) for a URL, a ``pipe:`` command or a local path.

    ``offset`` > 0 asks for the bytes from there on (HTTP Range, a seek): a server that ignores
    the Range and a pipe give the whole file, so the second value says what was got.
    """
    if url.startswith(("http://", "https://")):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        return response, offset if response.status == 206 else 0
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb"), 0
    f = open(url, "rb")
    f.seek(offset)
    return f, offset


def fetch_bytes(url: str, timeout: float, retries: int, backoff: float) -> bytes:
    """The whole content of ``url``, retried with back-off on network errors."""
    for attempt in range(retries + 1):
        try:
            with open_stream(url, timeout)[0] as f:
                data = f.read()
            if hasattr(f, "wait_for_child"):
                f.wait_for_child()  # a pipe: command that failed raises here
            return data
        except RETRYABLE as e:
            if _permanent(e) or attempt == retries:
                raise OSError(f"{url}: {e}") from e
            log.warning("data: %s failed (%s); retry %d of %d in %.1f s", url, e, attempt + 1,
                        retries, backoff * 2 ** attempt)
            time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")


def fetch_index(url: str, timeout: float, retries: int, backoff: float) -> dict:
    """A remote index.json; ValueError naming the URL and what to do when it cannot be had."""
    try:
        return json.loads(fetch_bytes(url, timeout, retries, backoff))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"data config: cannot read the shard index {url} ({e}); serve the shard "
                         "folder's index.json next to its tars (westkit-shards writes it)") from e


class Misplaced(Exception):
    """A read that started at a member offset did not find the expected member there."""


def tar_samples(url: str, timeout: float, offset: int = 0) -> tuple[int, Iterator[dict]]:
    """(first byte read, WebDataset samples {"__key__", "json", "flac", ...}) of one shard, read
    front to back from the tar header at ``offset`` if the source can start there, else from 0."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    stream, start = open_stream(url, timeout, offset)

    def samples():
        try:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            if hasattr(stream, "wait_for_child"):
                stream.wait_for_child()
        finally:
            stream.close()

    return start, samples()


# ------------------------------------------------------------------------------------------
# planning (metadata only)

def _shuffled(ids: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` samples emits ``ids``: fill it, then
    each arriving sample replaces a random one, which is emitted; the rest drains shuffled."""
    if buffer <= 1 or len(ids) <= 1:
        return ids
    buf, out = list(ids[:buffer]), []
    for i, j in zip(ids[buffer:].tolist(), rng.integers(0, len(buf), size=max(0, len(ids) - buffer)).tolist()):
        out.append(buf[j])
        buf[j] = i
    rest = np.asarray(buf, dtype=np.int64)
    return np.concatenate([np.asarray(out, dtype=np.int64), rest[rng.permutation(len(rest))]])


def _bucketed(ids: np.ndarray, cat, edges: np.ndarray, cfg) -> list[np.ndarray]:
    """Batches in the order a stream completes them: one open batch per duration bucket (and
    one for text-only samples); a batch leaves when the next sample would break the limits."""
    open_: dict[int, list[int]] = {}
    longest: dict[int, float] = {}
    out: list[np.ndarray] = []
    audio_of = cat.has_audio[ids]
    dur_of = np.where(audio_of, cat.duration[ids], 0.0)
    bucket_of = np.where(audio_of, np.searchsorted(edges, dur_of, side="left"), -1)
    for i, audio, d, b in zip(ids.tolist(), audio_of.tolist(), dur_of.tolist(), bucket_of.tolist()):
        cur = open_.get(b)
        if cur and (len(cur) >= cfg.max_batch_size
                    or (audio and (len(cur) + 1) * max(longest[b], d) > cfg.max_batch_seconds)):
            out.append(np.asarray(cur))
            cur = None
        if not cur:
            open_[b], longest[b] = [], 0.0
        open_[b].append(i)
        longest[b] = max(longest[b], d)
    out += [np.asarray(v) for _, v in sorted(open_.items()) if v]
    return out


def deal_shards(cat, cfg, epoch: int, slots: int, train: bool) -> list[list[int]]:
    """Shards of each slot for one epoch: shuffled (training), each to the least loaded slot."""
    rng = np.random.default_rng([cfg.seed, epoch, 17])
    n = len(cat.paths)
    order = rng.permutation(n) if cfg.shuffle and train else np.arange(n)
    counts = np.diff(cat.bounds)
    load = np.zeros(slots)
    assigned: list[list[int]] = [[] for _ in range(slots)]
    for s in order.tolist():
        if counts[s] == 0:
            continue
        ids = np.arange(cat.bounds[s], cat.bounds[s + 1])
        audio = cat.has_audio[ids]
        # about the batches this shard makes: audio seconds per batch budget, text by batch size
        weight = (cat.duration[ids][audio].sum() / cfg.max_batch_seconds
                  + (~audio).sum() / cfg.max_batch_size)
        k = int(np.argmin(load))
        assigned[k].append(s)
        load[k] += max(weight, 1e-9)
    return assigned


def stream_plan(cat, cfg, epoch: int, world_size: int, workers: int, train: bool,
                exclude: np.ndarray | None = None) -> list[list[tuple[int, np.ndarray]]]:
    """Every rank's batches of one epoch as (worker, sample ids), in the order it yields them.

    Pure function of the metadata, the config, the epoch and the layout (world size, workers);
    ``exclude`` (bool per sample) drops samples already seen this epoch (elastic resume). Every
    rank gets the same number of batches (module docstring, points 2-3).
    """
    slots = world_size * workers
    assigned = deal_shards(cat, cfg, epoch, slots, train)
    nonempty = sum(1 for a in assigned[:world_size] if a)
    if nonempty < world_size:
        raise ValueError(f"data: streaming splits by shard, and {sum(map(len, assigned))} shards cannot "
                         f"give each of {world_size} ranks one; write more, smaller shards "
                         "(westkit-shards --shard-size) or use fewer processes")
    edges = np.asarray(sorted(cfg.buckets), dtype=np.float64)
    shuffle = cfg.shuffle and train
    per_slot: list[list[np.ndarray]] = []
    for k, shards in enumerate(assigned):
        ids = (np.concatenate([np.arange(cat.bounds[s], cat.bounds[s + 1]) for s in shards])
               if shards else np.zeros(0, dtype=np.int64))
        if exclude is not None:
            ids = ids[~exclude[ids]]
        if shuffle:
            ids = _shuffled(ids, cfg.shuffle_buffer, np.random.default_rng([cfg.seed, epoch, k, 29]))
        per_slot.append(_bucketed(ids, cat, edges, cfg))
    ranks = [[per_slot[w * world_size + r] for w in range(workers)] for r in range(world_size)]
    sizes = [sum(map(len, r)) for r in ranks]
    if train and exclude is None:
        target = min(sizes)
        return [_interleave(r, target) for r in ranks]
    # evaluation (and the rest of an epoch after an elastic resume): nothing may be skipped
    target = max(sizes)
    out = []
    for r, rank in enumerate(ranks):
        rank = [list(w) for w in rank]
        while sum(map(len, rank)) < target:
            w, j = max(((w, j) for w in range(workers) for j in range(len(rank[w]))),
                       key=lambda wj: len(rank[wj[0]][wj[1]]), default=(None, None))
            if w is None or len(rank[w][j]) < 2:
                raise ValueError(f"data: rank {r} has {sum(len(b) for w in rank for b in w)} samples, too few "
                                 f"to give it {target} batches like the other ranks; write smaller shards "
                                 "or use fewer processes")
            b = rank[w][j]
            rank[w][j:j + 1] = [b[:len(b) // 2], b[len(b) // 2:]]
        out.append(_interleave(rank, target))
    return out


def _interleave(worker_batches: list[list[np.ndarray]], total: int) -> list[tuple[int, np.ndarray]]:
    """A rank's sequence: its workers' batches in turn, cut to ``total``."""
    seq: list[tuple[int, np.ndarray]] = []
    for k in range(max((len(w) for w in worker_batches), default=0)):
        for w, batches in enumerate(worker_batches):
            if k < len(batches):
                seq.append((w, batches[k]))
    return seq[:total]


# ------------------------------------------------------------------------------------------
# reading

class StreamedBatches(IterableDataset):
    """This rank's planned batches, read by streaming; yields ((epoch, position), batch).

    ``plans`` (an object with ``plan(epoch) -> [(worker, ids)]`` and ``start``) is the loader,
    which owns the epoch plans (with any elastic-resume history); workers get a copy.
    """

    def __init__(self, cat, cfg, workers: int, train: bool, steps: tuple, plans):
        self.cat, self.cfg, self.workers, self.train = cat, cfg, workers, train
        self.steps, self.plans = tuple(steps), plans
        self.start = (0, 0)
        self.errors = 0

    def __iter__(self):
        info = get_worker_info()
        me = info.id if info is not None else 0
        epoch, pos = self.start
        while True:
            plan = self.plans.plan(epoch)
            yield from self._epoch(epoch, plan, me, pos)
            if not self.train:
                return
            epoch, pos = epoch + 1, 0

    def _epoch(self, epoch: int, plan, me: int, start: int):
        mine = [(p, ids) for p, (w, ids) in enumerate(plan) if w == me and p >= start]
        if not mine:
            return
        need = {i for _, ids in mine for i in ids.tolist()}
        # shards holding no needed sample are not read at all; in the first one that does, the
        # members before the first needed one are read and dropped (a resume's (shard, member))
        shards = self.plans.slot_shards(epoch, me)
        stream = self._samples(shards, need)
        pending: dict[int, dict | None] = {}
        last, owed = None, []
        for p, ids in mine:
            for i in ids.tolist():
                while i not in pending:
                    j, raw = next(stream)
                    pending[j] = raw
            samples = [s for s in (self._decode(pending.pop(i), i) for i in ids.tolist()) if s is not None]
            if not samples:
                if last is None:
                    owed.append(p)
                    continue
                yield (epoch, p), last
                continue
            last = collate(samples)
            for q in owed:
                yield (epoch, q), last
            owed = []
            yield (epoch, p), last
        if owed:
            raise RuntimeError("data: no readable sample in this worker's shards; check the shards")

    def _samples(self, shards: list[int], need: set) -> Iterator[tuple[int, dict | None]]:
        """(id, raw member or None if lost) for every needed sample of ``shards``, in tar order."""
        for s in shards:
            lo, hi = int(self.cat.bounds[s]), int(self.cat.bounds[s + 1])
            if not any(i in need for i in range(lo, hi)):
                continue  # every sample of it is already handed out: not read at all
            ids = {self.cat.keys[i]: i for i in range(lo, hi)}
            seen: set[int] = set()
            url = self.cat.paths[s]
            cfg = self.cfg
            seek, attempt = True, 0
            while True:
                # start at the first needed sample not delivered yet: on a resume or a retry the
                # members before it are not fetched again where the source can seek
                start = next(i for i in range(lo, hi) if i in need and i not in seen)
                offset = self._member_offset(start) if seek and start > lo else 0
                try:
                    first_byte, members = tar_samples(url, cfg.timeout, offset)
                    for n, member in enumerate(members):
                        i = ids.get(member["__key__"])
                        audio = member.get("flac", member.get("wav"))
                        complete = i is not None and "json" in member and (audio is not None
                                                                          or not self.cat.has_audio[i])
                        if n == 0 and first_byte and (i != start or not complete):
                            # not the header the index implies (a long name's extra header, a
                            # foreign tar's pax header): read this shard from its start instead
                            members.close()
                            raise Misplaced(f"{url}: sample {self.cat.keys[start]!r} is not at byte {first_byte}")
                        if i is None or i in seen:
                            continue  # filtered out, foreign, or delivered before a retry
                        if not complete:
                            continue  # (a stream cut mid-sample): the check below retries
                        seen.add(i)
                        if i in need:
                            yield i, {"key": self.cat.keys[i], "json": member["json"], "flac": audio}
                    # a dropped connection can look like the end of the tar: the index says
                    # what the shard holds, so a short read is an error (and is retried)
                    short = [i for i in range(start, hi) if i in need and i not in seen]
                    if short:
                        raise EOFError(f"the stream ended {len(short)} indexed samples short")
                    break
                except Misplaced:  # members not where the index says (foreign headers): from 0
                    seek = False
                    continue
                except RETRYABLE as e:
                    if _permanent(e) or attempt == cfg.retries:
                        lost = [i for i in range(lo, hi) if i not in seen and i in need]
                        log.warning("data: shard %s failed after %d attempts (%s): %d samples skipped",
                                    url, attempt + 1, _why(e), len(lost))
                        self._count(len(lost), f"shard {url}: {_why(e)}")
                        break
                    wait = cfg.retry_backoff * 2 ** attempt
                    log.warning("data: shard %s: %s; retry %d of %d in %.1f s", url, _why(e), attempt + 1,
                                cfg.retries, wait)
                    time.sleep(wait)
                    attempt += 1
            for i in range(lo, hi):  # what the tar did not hold (truncated, failed) is lost
                if i not in seen and i in need:
                    yield i, None

    def _member_offset(self, i: int) -> int:
        """Where sample ``i``'s first tar header is: 512 bytes before its first member's data
        (a member with a long name has more headers; `Misplaced` then falls back to 0)."""
        j_off, _, f_off, _ = self.cat.rows[i].tolist()
        return max(0, (min(j_off, f_off) if f_off >= 0 else j_off) - 512)

    def _decode(self, raw: dict | None, i: int) -> dict | None:
        if raw is None:
            return None
        try:
            if raw["json"] is None:
                raise ValueError("no json member")
            return run_steps(raw, self.steps)
        except Exception as e:  # corrupt member: skip and count, within the budget
            log.warning("data: skipped %s in %s: %s", raw["key"], self.cat.paths[int(self.cat.shard[i])], e)
            self._count(1, f"{raw['key']} in {self.cat.paths[int(self.cat.shard[i])]}: {e}")
            return None

    def _count(self, n: int, last: str) -> None:
        self.errors += n
        if self.errors > self.cfg.max_read_errors:
            raise RuntimeError(f"data: {self.errors} unreadable samples in this worker, over "
                               f"max_read_errors={self.cfg.max_read_errors} (last: {last}); rewrite or "
                               "re-upload the damaged shards, or raise max_read_errors")
