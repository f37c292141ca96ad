"""Token cross-entropy: the loss every text-producing model uses, computed in one place."""
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