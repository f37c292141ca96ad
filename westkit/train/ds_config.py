"""DeepSpeed JSON configs: find one by name, fill its "auto" fields from `TrainConfig`.

The shipped configs (``ds_configs/zero2.json``, ``zero3.json``, ``zero3_offload.json``) hold
only what is about sharding; everything a recipe decides (micro-batches, accumulation,
clipping, precision) is "auto" and comes from the recipe's `TrainConfig`. The optimiser and
schedule are built by the engine, so a config must not have "optimizer"/"scheduler" sections.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from westkit.train.config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def find(name_or_path: str) -> Path:
    """``"zero3"`` -> ``ds_configs/zero3.json``; an existing path passes through."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise ValueError(f"DeepSpeed config {name_or_path!r} not found: give a JSON path or one of "
                     f"{known} (from {CONFIG_DIR})")


def hidden_size(model: torch.nn.Module) -> int | None:
    """Largest ``hidden_size``/``d_model`` among Hugging Face configs inside ``model``."""
    sizes = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        for key in ("hidden_size", "d_model"):
            value = getattr(cfg, key, None)
            if isinstance(value, int):
                sizes.append(value)
    return max(sizes) if sizes else None


def fill(raw: dict, cfg: TrainConfig, world_size: int, on_gpu: bool,
         hidden: int | None = None, where: str = "ds config") -> dict:
    """A copy of ``raw`` with every "auto" value filled; offload removed on CPU.

    Batches have a variable number of utterances (bucketed by seconds), so DeepSpeed's
    micro-batch size is nominal (1): it only enters DeepSpeed's own throughput printouts.
    """
    ds = copy.deepcopy(raw)
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"{where}: remove the {section!r} section; the engine builds the "
                             f"optimiser and schedule from the train config (lr, schedule, ...)")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)
    fp16 = cfg.precision == "fp16"   # with DeepSpeed's dynamic loss scaling (GPUs without bf16)
    if (bf16 or fp16) and not on_gpu:
        raise ValueError(f"train.precision={cfg.precision} needs a GPU; use 'auto' or 'fp32' on CPU")
    top = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
    }
    for key, value in top.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    for key in ("bf16", "fp16"):
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = bf16 if key == "bf16" else fp16
    zero = ds.get("zero_optimization", {})
    sizes = {"reduce_bucket_size": lambda h: h * h,
             "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
             "stage3_param_persistence_threshold": lambda h: 10 * h}
    for key, rule in sizes.items():
        if zero.get(key) == "auto":
            if hidden:
                zero[key] = rule(hidden)
            else:  # DeepSpeed's own default
                del zero[key]
    if not on_gpu:
        # There is no device memory to relieve on CPU, and DeepSpeed's CPU Adam would need a
        # C++ build: offloading is a no-op there, so the same config file runs everywhere.
        zero.pop("offload_optimizer", None)
        zero.pop("offload_param", None)
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        raise ValueError(f"{where}: no rule fills 'auto' for {leftover}; give a value")
    return ds


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def load(name_or_path: str, cfg: TrainConfig, world_size: int, on_gpu: bool,
         model: torch.nn.Module | None = None) -> dict:
    """Read a DeepSpeed JSON (by stem or path) and `fill` it."""
    path = find(name_or_path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: {e.msg}") from None
    return fill(raw, cfg, world_size, on_gpu, hidden_size(model) if model is not None else None,
                where=str(path))


def zero_stage(name_or_path: str) -> int:
    """The ZeRO stage a DeepSpeed config names (0 when it has no zero_optimization section)."""
    return int(json.loads(find(name_or_path).read_text()).get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    """Whether the (filled) config keeps optimiser states in CPU memory."""
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device in ("cpu", "nvme")
