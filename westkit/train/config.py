"""`TrainConfig`: the training engine's settings (the ``train:`` section of a recipe's YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    """What the engine needs to train by steps; defaults live here only.

    A "step" is one optimiser update, i.e. ``grad_accum`` micro-batches on every rank.
    """
    max_steps: int = 1000
    """Optimiser updates to run (training is by steps; the train loader repeats forever)."""
    grad_accum: int = 1
    """Micro-batches per optimiser update on each rank."""
    trainable: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch patterns over ``model.named_parameters()`` names; everything else is frozen.
    Each pattern must match at least one parameter, e.g. ``["projector.*", "*.lora_*"]``."""
    ds_config: str = "zero3"
    """A file in ``ds_configs/`` by stem ("zero2", "zero3", "zero3_offload") or a path to a JSON."""

    # optimiser (AdamW over trainable parameters only) and schedule
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape after warmup, from ``lr`` down to ``lr * min_lr_ratio`` at ``max_steps``."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    """Global gradient-norm clipping; 0 turns it off."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """"auto" is bf16 on GPU and fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Turn on activation checkpointing in the outermost Hugging Face models inside the model
    (``gradient_checkpointing_enable``), frozen ones included."""

    seed: int = 0
    """Seeds the RNGs at the start of training (offset by rank); resuming restores them."""
    log_every: int = 10
    """Steps between console/metrics.jsonl/TensorBoard records."""
    eval_every: int = 0
    """Steps between calls of the recipe's ``eval_fn``; 0 evaluates only at the end."""
    save_every: int = 0
    """Steps between checkpoints; 0 saves only at the end (and on preemption)."""
    keep_last: int = 2
    """Complete checkpoints kept on disk; older ones are deleted after a newer one is published."""
    resume: bool = True
    """Continue from ``out_dir/checkpoints/latest`` when it exists."""
    export_trainable: bool = True
    """At the end, write the trainable weights to ``out_dir/trainable.safetensors``."""

    def __post_init__(self):
        checks = [
            (self.max_steps > 0, "max_steps must be > 0"),
            (self.grad_accum > 0, "grad_accum must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 <= self.warmup_steps <= self.max_steps, "warmup_steps must be in [0, max_steps]"),
            (len(self.betas) == 2, "betas must be two numbers, e.g. [0.9, 0.999]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 turns clipping off)"),
            (self.log_every > 0, "log_every must be > 0"),
            (self.eval_every >= 0 and self.save_every >= 0, "eval_every/save_every must be >= 0"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (bool(self.trainable), "trainable must name at least one parameter pattern"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"train config: {message}")
