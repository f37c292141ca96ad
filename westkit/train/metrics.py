"""Counting what a step processed: loss (token-weighted), tokens, audio seconds, throughput.

Models report counters in their output dict (``num_tokens``, ``audio_seconds``, any other
number); `StepStats` sums them over micro-batches and, at log time, over ranks, so every
recipe's logged loss and tokens/s mean the same thing.
"""
from __future__ import annotations

import time

import torch

from westkit.train import distributed

COUNTERS = ("num_tokens", "audio_seconds")


def audio_seconds(batch: dict, sample_rate: int = 16000) -> torch.Tensor:
    """Seconds of real (unpadded) audio in a batch: ``audio_lens`` (B,) summed; 0 if text-only."""
    if "audio_lens" not in batch:
        return torch.zeros(())
    return batch["audio_lens"].sum() / sample_rate


def feature_frames(audio_lens: torch.Tensor, hop_length: int = 160) -> torch.Tensor:
    """Log-mel frames per utterance (B,) for ``audio_lens`` (B,) samples: Whisper's 10 ms hop."""
    return audio_lens // hop_length


def _detached(value):
    # kept on the device: converting each micro-batch with .item() would stall a GPU
    return value.detach().float() if torch.is_tensor(value) else float(value)


class StepStats:
    """Sums over the micro-batches of the steps since the last `reduce`, on one rank."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: dict = {"loss_sum": 0.0, "loss_weight": 0.0, "micro_batches": 0.0}
        for name in COUNTERS:
            self.sums[name] = 0.0
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, out: dict, tokens: int | None) -> None:
        """Record one micro-batch's model output; its loss weighs ``tokens`` (1 if unknown)."""
        weight = _detached(tokens) if tokens is not None else 1.0
        self.sums["loss_sum"] = self.sums["loss_sum"] + _detached(out["loss"]) * weight
        self.sums["loss_weight"] = self.sums["loss_weight"] + weight
        self.sums["micro_batches"] += 1
        for name in COUNTERS:
            if name in out:
                self.sums[name] = self.sums[name] + _detached(out[name])

    def end_step(self):
        self.steps += 1

    def reduce(self, device: torch.device) -> dict[str, float]:
        """Collective: totals over all ranks -> loss, tokens/s, audio-s/s; then reset."""
        totals = distributed.all_sum({k: float(v) for k, v in self.sums.items()}, device)
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
        self.reset()
        return result
