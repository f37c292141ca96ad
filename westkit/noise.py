"""Warnings of westkit's dependencies that are understood and harmless, silenced in one place.

Each entry says why it is harmless; anything not listed here is shown as Python shows it, so a
new warning (a deprecation in our own calls, a numerical problem) stays visible. Entry points
call `silence_known` (`westkit.train.distributed.init`, `westkit-recognize`).
"""
from __future__ import annotations

import warnings

KNOWN_HARMLESS = [
    # DeepSpeed's ZeRO partitioning calls the old names of two collectives, once per gathered
    # or reduced bucket (about six times a step); the new names do the same thing
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"),
    # PEFT asks the model for the old name of a property when it wraps it with LoRA
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def silence_known() -> None:
    """Hide exactly the warnings in `KNOWN_HARMLESS` (idempotent)."""
    for category, message in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)
