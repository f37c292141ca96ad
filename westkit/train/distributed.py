"""Process-group setup and the few collectives the engine needs, the same on CPU and GPU.

Works under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set), under ``srun torchrun`` via
`launch/torchrun.sh`, and as plain ``python script.py`` (world size 1 on a free local port).
GPU runs use NCCL, CPU runs use gloo (DeepSpeed's CPU accelerator falls back to gloo when
oneCCL is not installed).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> DistInfo:
    """Join (or create) the default process group through DeepSpeed; idempotent.

    Started without torchrun, the process becomes a world of one on a free local port.
    """
    from westkit.noise import silence_known

    silence_known()  # dependencies' harmless per-step warnings would bury the progress bar
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        # say it rather than let DeepSpeed probe for other accelerators (its CPU one falls
        # back to gloo when oneCCL is not installed)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        import deepspeed  # deferred: importing it probes accelerators and prints warnings

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   verbose=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (one small all-reduce)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over all ranks (every rank must pass the same keys in the same order)."""
    if not values:
        return {}
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def union_of_names(names: list[str]) -> list[str]:
    """Sorted union of every rank's ``names`` (a collective; cheap, called at log time only)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return sorted(names)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(names))
    return sorted(set().union(*gathered))


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor value of a batch dict to ``device``; other values stay as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}
