"""Counting what a step processed: loss (token-weighted), tokens, audio seconds, throughput.

Models report counters in their output dict (``num_tokens``, ``audio_seconds``): `StepStats`
sums them over micro-batches and, at log time, over ranks, so every recipe's logged loss and
tokens/s mean the same thing. Any other scalar in the output (say ``audio_padding``) is logged as
its mean over the micro-batches that reported it.
"""
from __future__ import annotations

import time

import torch

from westkit.models.features import SAMPLE_RATE
from westkit.train import distributed

COUNTERS = ("num_tokens", "audio_seconds")


def audio_seconds(batch: dict, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Seconds of real (unpadded) audio in a batch: ``audio_lens`` (B,) summed; 0 if text-only."""
    if "audio_lens" not in batch:
        return torch.zeros(())
    return batch["audio_lens"].sum() / sample_rate


def _detached(value):
    # kept on the device: converting each micro-batch with .item() would stall a GPU
    return value.detach().float() if torch.is_tensor(value) else float(value)


def _is_scalar(value) -> bool:
    if torch.is_tensor(value):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class StepStats:
    """Sums over the micro-batches of the steps since the last `reduce`, on one rank."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: dict = {"loss_sum": 0.0, "loss_weight": 0.0, "micro_batches": 0.0}
        for name in COUNTERS:
            self.sums[name] = 0.0
        self.means: dict = {}  # name -> [sum, count] of other scalar outputs
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, out: dict, tokens: int | None) -> None:
        """Record one micro-batch's model output; its loss weighs ``tokens`` (1 if unknown)."""
        weight = _detached(tokens) if tokens is not None else 1.0
        self.sums["loss_sum"] = self.sums["loss_sum"] + _detached(out["loss"]) * weight
        self.sums["loss_weight"] = self.sums["loss_weight"] + weight
        self.sums["micro_batches"] += 1
        for name, value in out.items():
            if name in COUNTERS:
                self.sums[name] = self.sums[name] + _detached(value)
            elif name != "loss" and _is_scalar(value):
                acc = self.means.setdefault(name, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + _detached(value), acc[1] + 1

    def end_step(self):
        self.steps += 1

    def reduce(self, device: torch.device) -> dict[str, float]:
        """Collective: totals over all ranks -> loss, tokens/s, audio-s/s; then reset."""
        # ranks may have seen different optional outputs: agree on the names first
        names = distributed.union_of_names(sorted(self.means))
        sums = {k: float(v) for k, v in self.sums.items()}
        for name in names:
            acc = self.means.get(name, (0.0, 0.0))
            sums[f"mean_sum/{name}"], sums[f"mean_count/{name}"] = float(acc[0]), float(acc[1])
        totals = distributed.all_sum(sums, device)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        result = {"loss": totals["loss_sum"] / max(totals["loss_weight"], 1e-12),
                  "step_time": seconds / max(self.steps, 1)}
        for name in COUNTERS:
            if totals[name]:
                result[name] = totals[name]
        if totals["num_tokens"]:
            result["tokens_per_s"] = totals["num_tokens"] / seconds
        if totals["audio_seconds"]:
            result["audio_s_per_s"] = totals["audio_seconds"] / seconds
        for name in names:
            if totals[f"mean_count/{name}"]:
                result[name] = totals[f"mean_sum/{name}"] / totals[f"mean_count/{name}"]
        self.reset()
        return result
