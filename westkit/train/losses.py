"""Loss normalisation over tokens across micro-batches and ranks, shared by every recipe.

Models return ``loss`` as the mean over their target tokens in one micro-batch
(`westkit.models.losses.token_cross_entropy`). Under gradient accumulation and data
parallelism DeepSpeed averages those means with equal weight, which over-weights short
utterances. When the batch says how many target tokens it holds (``num_targets``, counted by
the data pipeline), the engine rescales each micro-batch's loss with `accumulation_weights`
so the update is the mean over *all* target tokens of the step.
"""
from __future__ import annotations


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
