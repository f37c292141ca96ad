"""Decoding on several processes: each rank decodes its share of the batches, rank 0 writes one
report identical to the single-process one.

    torchrun --nproc_per_node 4 -m westkit.decode.recognize --west RUN --shards test --out DEC

Shard sets are dealt by the loader's own plan (batch ``j`` of the evened plan to rank
``j % world``); list sets (jsonl, audio files) by batch position the same way. Every row is
numbered by its batch's place in the whole plan (`number`), so sorting the gathered rows
(`merge`) restores the single-process order. Decoding is batch-invariant (greedy and beam
hypotheses do not depend on the batch), so the hypotheses are those of one process.
Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import torch


def init() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins a gloo group (CPU objects only
    cross it) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def device(name: str) -> torch.device:
    """``--device cuda`` means this process's GPU (``LOCAL_RANK``) under torchrun."""
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def deal(batches: list, rank: int, world: int) -> list:
    """This rank's batches of a list (batch ``j`` to rank ``j % world``)."""
    return batches[rank::world]


def number(batches: Iterable[dict], rank: int, world: int) -> Iterator[dict]:
    """This rank's batches with ``order`` per row: (place of its batch in the whole plan, row)."""
    for j, batch in enumerate(batches):
        yield dict(batch, order=[(rank + world * j, i) for i in range(len(batch["keys"]))])


def merge(rows: dict[str, list[dict]], seconds: dict[str, float], world: int):
    """Every rank's rows (each with its ``order``) -> all rows in plan order, with the decode
    seconds summed over ranks (the compute spent); the same on every rank."""
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, (rows, seconds))
        rows = {name: [r for part, _ in parts for r in part[name]] for name in rows}
        seconds = {name: sum(s[name] for _, s in parts) for name in seconds}
    for rs in rows.values():
        rs.sort(key=lambda r: r.pop("order"))
    return rows, seconds
