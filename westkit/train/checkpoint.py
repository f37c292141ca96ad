"""Checkpoints that survive being killed at any moment, and weight exports.

Layout under ``out_dir/checkpoints/``::

    step_00000200/            one complete checkpoint (DeepSpeed's files + ours)
        zero_pp_rank_*_mp_rank_00_model_states.pt   trainable weights/buffers (DeepSpeed)
        *_optim_states.pt     ZeRO partitions: fp32 master weights, AdamW moments (DeepSpeed)
        trainer_rank00000.pt  step, data-loader state, RNG states of that rank (westkit)
    step_00000300.partial/    a save in progress (or killed): never read, removed on start
    latest                    the name of the newest complete checkpoint, e.g. "step_00000300"
    zero_to_fp32.py           DeepSpeed's consolidation script
    step_00000200/universal/  made on demand when a run with another number of processes
                              resumes: DeepSpeed's universal checkpoint (one fp32 tensor and its
                              Adam moments per parameter, world-size free), see `Checkpointer.load`

A save writes to ``<tag>.partial``; once every rank has finished (barrier) rank 0 renames it to
``<tag>`` and replaces ``latest`` atomically (write a temp file, fsync, ``os.replace``). A kill
at any point therefore leaves ``latest`` naming the previous complete checkpoint. Frozen
parameters are not saved: recipes rebuild them from their pretrained source.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

PARTIAL = ".partial"
POINTER = "latest"
UNIVERSAL = "universal"
TAG_RE = re.compile(r"^step_\d{8}$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and (if any) the current GPU."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Checkpointer:
    """Saves/loads full training state through a DeepSpeed engine under ``root``.

    Every method is a collective: all ranks call it in the same order.
    """

    def __init__(self, root: str | Path, keep_last: int, rank: int):
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"*{PARTIAL}"):  # saves that were killed
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()

    def latest(self) -> str | None:
        """Tag of the newest complete checkpoint, or None."""
        pointer = self.root / POINTER
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        if not (self.root / tag).is_dir():
            raise ValueError(f"{pointer} names {tag!r}, which is missing; point it at one of "
                             f"{self.complete()} or delete it to start afresh")
        return tag

    def complete(self) -> list[str]:
        """Tags of complete checkpoints on disk, oldest first."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and TAG_RE.match(p.name))

    def save(self, engine, step: int, trainer_state: dict) -> Path:
        """Write a checkpoint for ``step`` and publish it; ``trainer_state`` is this rank's."""
        tag = tag_for(step)
        partial = tag + PARTIAL
        engine.save_checkpoint(str(self.root), tag=partial, save_latest=False,
                               exclude_frozen_parameters=True)
        torch.save(trainer_state, self.root / partial / f"trainer_rank{self.rank:05d}.pt")
        dist.barrier()  # every rank's files are on disk before anything is published
        if self.rank == 0:
            self._publish(partial, tag)
        dist.barrier()
        return self.root / tag

    def _publish(self, partial: str, tag: str) -> None:
        final = self.root / tag
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(self.root / partial, final)
        tmp = self.root / f"{POINTER}.tmp"
        with open(tmp, "w") as f:
            f.write(tag + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / POINTER)
        for old in self.complete()[:-self.keep_last]:
            if old != tag:
                shutil.rmtree(self.root / old, ignore_errors=True)

    def load(self, engine, tag: str) -> dict:
        """Restore DeepSpeed state from ``tag``; returns this rank's trainer state.

        A checkpoint written by another number of processes is resumed elastically: rank 0
        converts it once into DeepSpeed's universal checkpoint (``<tag>/universal``, one fp32
        tensor and its optimiser moments per parameter), which every rank then loads into its
        own ZeRO partitions. The trainer state is then rank 0's (step, loader position; the
        loader re-plans the rest of its epoch for the new world size) with ``"elastic": True``,
        so the caller reseeds the RNGs instead of restoring another rank's.
        """
        world = dist.get_world_size()
        path = self.root / tag / f"trainer_rank{self.rank:05d}.pt"
        if not path.is_file():
            path = self.root / tag / "trainer_rank00000.pt"
        if not path.is_file():
            raise ValueError(f"{path} is missing: {self.root / tag} is not a complete westkit "
                             f"checkpoint; point {self.root / POINTER} at an earlier one")
        state = torch.load(path, map_location="cpu", weights_only=False)
        elastic = state["world_size"] != world
        load_dir, load_tag = self.root, tag
        if elastic:
            if self.rank == 0:
                self._universal(tag)
            dist.barrier()
            load_dir, load_tag = self.root / tag, UNIVERSAL
            engine._config.load_universal_checkpoint = True  # read by load_checkpoint only
        try:
            load_path, _ = engine.load_checkpoint(str(load_dir), tag=load_tag, load_module_strict=False,
                                                  load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        finally:
            engine._config.load_universal_checkpoint = False
        if load_path is None:
            raise ValueError(f"DeepSpeed could not load {self.root / tag}")
        return dict(state, elastic=elastic)

    def _universal(self, tag: str) -> Path:
        """``<tag>/universal``: DeepSpeed's world-size-free form of the checkpoint (made once)."""
        import argparse
        import contextlib
        import io

        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        out = self.root / tag / UNIVERSAL
        if out.is_dir():
            return out
        tmp = self.root / tag / (UNIVERSAL + PARTIAL)
        shutil.rmtree(tmp, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(self.root / tag), output_folder=str(tmp),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                  strict=True, inject_missing_state=True)
        with contextlib.redirect_stdout(io.StringIO()):  # its progress prints, one per parameter
            ds_to_universal(args)
        # it also writes a `latest_universal` pointer beside its output, naming the temporary
        # folder; the tag is always passed explicitly here, so the pointer would only mislead
        (self.root / tag / "latest_universal").unlink(missing_ok=True)
        os.replace(tmp, out)
        return out


def trainable_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable parameters on CPU, on rank 0; {} elsewhere. Collective.

    Under ZeRO-3 each rank holds a shard; the parameters are gathered one at a time so the
    whole model never needs to fit in one device's memory.
    """
    import deepspeed

    out = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None,
                                                enabled=hasattr(p, "ds_id")):
            if dist.get_rank() == 0:
                out[name] = p.detach().to("cpu", copy=True).contiguous()
    return out


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, gathered, on CPU on rank 0. Collective."""
    import deepspeed

    out = {}
    for name, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None,
                                                enabled=hasattr(p, "ds_id")):
            if dist.get_rank() == 0:
                out[name] = p.detach().to("cpu", copy=True).contiguous()
    if dist.get_rank() == 0:
        for name, b in engine.module.named_buffers():
            out.setdefault(name, b.detach().to("cpu", copy=True).contiguous())
    return out


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to ``path`` atomically (temp file, then rename), with the mode a normal
    file gets under the umask (safetensors creates its file 0600: teammates could not read it)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata or {})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def consolidate(checkpoint_dir: str | Path, out_file: str | Path, tag: str | None = None) -> Path:
    """Offline (no GPU, no process group): merge a ZeRO checkpoint into one fp32 safetensors.

    ``checkpoint_dir`` is ``out_dir/checkpoints``; ``tag`` defaults to its ``latest``. Only
    trainable parameters are in westkit checkpoints, so that is what the file holds.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    if tag is None:
        pointer = checkpoint_dir / POINTER
        if not pointer.is_file():
            raise ValueError(f"{pointer} not found: is {checkpoint_dir} a westkit checkpoints "
                             f"folder? Name one of its step_* folders with --tag (tag=)")
        tag = pointer.read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag,
                                                     exclude_frozen_parameters=True)
    state = {k: v.contiguous() for k, v in state.items()}
    return save_safetensors(state, out_file, {"checkpoint": str(checkpoint_dir / tag)})
