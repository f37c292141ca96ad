"""Loss normalisation over tokens, shared by every recipe so they cannot drift.

Models return ``loss`` as the mean over their target tokens in one micro-batch. Under gradient
accumulation and data parallelism DeepSpeed averages those means with equal weight, which
over-weights short utterances. When the model can count its target tokens before the forward
pass (``count_loss_tokens(batch) -> int``), the engine rescales each micro-batch's loss with
`accumulation_weights` so the update is the mean over *all* target tokens of the step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def count_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Target tokens in ``labels`` (B, L): positions not equal to ``ignore_index``."""
    return int((labels != ignore_index).sum().item())


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over target tokens, computed in float32.

    ``logits`` (B, L, V) predict ``labels`` (B, L) at the same positions (shift before calling);
    positions equal to ``ignore_index`` (prompt, audio, padding) carry no loss.
    Returns ``(loss, num_tokens)``: a scalar mean (0 when there is no target token, not NaN)
    and the token count as a 0-dim long tensor.
    """
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                            ignore_index=ignore_index, reduction="sum")
    n = (labels != ignore_index).sum()
    return total / n.clamp(min=1), n


def accumulation_weights(counts: list[int], global_total: int, world_size: int) -> list[float]:
    """Per-micro-batch loss multipliers that turn DeepSpeed's average into a token mean.

    DeepSpeed divides each micro-batch loss by the number of micro-batches ``G`` and averages
    gradients over ``world_size`` ranks, so the update follows ``sum_i loss_i / (G * W)``.
    Multiplying ``loss_i`` (a mean over ``n_i`` tokens) by ``n_i * G * W / N`` (``N`` tokens in
    the whole step, all ranks) makes it ``sum_i n_i * loss_i / N``: every token weighs the same.
    ``counts`` are this rank's ``n_i``; ``global_total`` is ``N``.
    """
    if global_total <= 0:
        return [1.0] * len(counts)
    scale = len(counts) * world_size / global_total
    return [n * scale for n in counts]
