"""Attention for packed sequences without the flash-attn package: sdpa on each utterance alone.

A packed LLM sequence (1, N) holds several utterances, positions restarting at 0 for each.
transformers reads that as a block-diagonal causal mask: flash-attention runs it as varlen
attention, but sdpa and eager build the (N, N) mask and attend over all of it, (sum of lengths)^2
work instead of the padded batch's B x (longest)^2, which can eat what packing saves. With
``cu_seq_lens_q`` in the forward's kwargs (transformers' name for the utterance boundaries,
(n + 1,) int32 cumulative lengths, the same kwarg its flash-attention path reads), this
attention runs sdpa causally on each utterance's slice and concatenates: the same numbers as
the block mask with only the blocks' work, and on a GPU each slice may use torch's own flash
kernel (no mask). Without that kwarg (decoding, unpacked training) it is transformers' sdpa,
unchanged.

Written here because transformers' sdpa has no varlen path and torch's
``torch.nn.attention.varlen.varlen_attn`` is CUDA-only; this is a loop over transformers'
``sdpa_attention_forward``, registered through its `AttentionInterface`.
"""
from __future__ import annotations

import torch

PACKED_SDPA = "westkit_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None,
                          cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """query (1, Hq, N, D), key / value (1, Hkv, N, D) -> ((1, N, Hq, D), None).

    With ``cu_seq_lens_q`` the (block-diagonal) ``attention_mask`` is not used: each utterance
    [c_i, c_i+1) attends causally to itself only."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    kwargs.pop("cu_seq_lens_k", None)
    bounds = cu_seq_lens_q.tolist()
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                    dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
             for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=1), None


def use_packed_sdpa(llm) -> bool:
    """Switch a transformers LM that runs sdpa to `packed_sdpa_attention` (the same numbers;
    only packed forwards that pass ``cu_seq_lens_q`` take the per-utterance path). An LM on
    flash-attention or eager is left as it is (flash already runs varlen). Returns whether it
    switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if llm.config._attn_implementation not in ("sdpa", PACKED_SDPA):
        return False
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # unpacked forwards: sdpa's masks
    llm.set_attn_implementation(PACKED_SDPA)
    return True


def packed_kwargs(lengths: torch.Tensor) -> dict:
    """lengths (n,) of the packed utterances, in order -> the boundary kwargs transformers'
    causal LMs pass down to attention (read by `packed_sdpa_attention` and by flash-attention)."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
