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
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """"auto" is bf16 on GPU and fp32 on CPU; fp16 (GPU only) uses DeepSpeed's loss scaling."""
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
        # messages name keys as `train.KEY`, the section every recipe gives this config, and
        # `westkit.config.build` puts the file in front
        checks = [
            (self.max_steps > 0, f"train.max_steps must be > 0, got {self.max_steps}"),
            (self.grad_accum > 0, f"train.grad_accum must be > 0, got {self.grad_accum}"),
            (self.lr > 0, f"train.lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.warmup_steps <= self.max_steps,
             f"train.warmup_steps ({self.warmup_steps}) is more than train.max_steps "
             f"({self.max_steps}): the learning rate would never finish warming up; lower it "
             f"too, e.g. train.max_steps={self.max_steps} train.warmup_steps="
             f"{self.max_steps // 10}"),
            (len(self.betas) == 2, "train.betas must be two numbers, e.g. [0.9, 0.999]"),
            (self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 turns clipping off)"),
            (self.log_every > 0, "train.log_every must be > 0"),
            (self.eval_every >= 0 and self.save_every >= 0,
             "train.eval_every/train.save_every must be >= 0"),
            (self.keep_last >= 1, "train.keep_last must be >= 1"),
            (bool(self.trainable), "train.trainable must name at least one parameter pattern"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
