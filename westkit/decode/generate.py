"""Batched generation from prompt embeddings with a KV cache: greedy and beam search.

The prompt is left-padded with explicit position ids (see `westkit.models.west.WestModel.layout`),
so every row starts generating at its own next position and padding never enters attention.
Each row has its own token budget (`token_budget`, tied to the audio's duration): a row stops
at a stop token or its budget, and the batch stops when every row has.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch


@dataclasses.dataclass
class GenerateConfig:
    """How to search, and how many tokens an utterance may produce."""
    beam: int = 1                    # 1 = greedy
    tokens_per_second: float = 8.0   # budget per second of audio (speech is ~3-5 tokens/s)
    base_tokens: int = 16            # plus this many, for short utterances
    max_new_tokens: int = 448        # hard cap whatever the duration
    length_penalty: float = 1.0      # beam search: score / length ** penalty


@dataclasses.dataclass
class Generated:
    """One hypothesis: token ids without the stop token, and whether the budget cut it."""
    ids: list[int]
    hit_limit: bool


def token_budget(audio_lens: torch.Tensor, cfg: GenerateConfig, sample_rate: int = 16000) -> list[int]:
    """audio_lens (B,) samples -> per-utterance new-token limits (``base + rate * seconds``, capped)."""
    return [min(cfg.max_new_tokens, cfg.base_tokens + math.ceil(cfg.tokens_per_second * n / sample_rate))
            for n in audio_lens.tolist()]


@torch.no_grad()
def greedy(llm, inputs: dict, budgets: list[int], stop_ids: list[int],
           everyone_done: Callable[[bool], bool] | None = None) -> list[Generated]:
    """Greedy decoding. ``inputs``: ``inputs_embeds`` (B, L, H), ``attention_mask`` and
    ``position_ids`` (B, L), left-padded. Returns one `Generated` per row.

    ``everyone_done(local_done) -> bool`` lets processes that shard the weights (ZeRO-3, where
    every forward is collective) keep stepping until all of them are done; a finished process
    then runs idle steps whose tokens are discarded.
    """
    mask, pos = inputs["attention_mask"], inputs["position_ids"]
    device = mask.device
    b = mask.shape[0]
    stops = torch.tensor(stop_ids, device=device)
    limit = torch.tensor(budgets, device=device)
    out = llm(**inputs, use_cache=True, logits_to_keep=1)
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    stopped = torch.zeros(b, dtype=torch.bool, device=device)
    step = 0
    while True:
        nxt = out.logits[:, -1].argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        stopped |= ~done & torch.isin(nxt, stops)
        step += 1
        done |= stopped | (step >= limit)
        finished = bool(done.all())
        if everyone_done(finished) if everyone_done else finished:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = llm(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                  past_key_values=out.past_key_values, use_cache=True)
    return [_cut(row, stop_ids, budget, bool(s)) for row, budget, s in zip(tokens.tolist(), budgets, stopped)]


@torch.no_grad()
def beam_search(llm, inputs: dict, budgets: list[int], stop_ids: list[int], beam: int,
                pad_id: int, length_penalty: float = 1.0) -> list[Generated]:
    """Beam search with transformers' ``generate`` on the same left-padded inputs.

    Rows share the batch's largest budget inside ``generate``; each hypothesis is then cut at
    its own budget (and flagged ``hit_limit``) so results follow the same rule as `greedy`.
    """
    seqs = llm.generate(
        inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
        num_beams=beam, do_sample=False, max_new_tokens=max(budgets), eos_token_id=list(stop_ids),
        pad_token_id=pad_id, length_penalty=length_penalty, early_stopping=True)
    out = []
    for row, budget in zip(seqs.tolist(), budgets):
        stopped = any(t in stop_ids for t in row[:budget])
        out.append(_cut(row, stop_ids, budget, stopped))
    return out


def _cut(row: list[int], stop_ids: list[int], budget: int, stopped: bool) -> Generated:
    """Ids up to the first stop token (excluded) and within ``budget``."""
    for i, t in enumerate(row[:budget]):
        if t in stop_ids:
            return Generated(row[:i], False)
    return Generated(row[:budget], not stopped)
