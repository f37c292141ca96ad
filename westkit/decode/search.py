"""The one decoding core: batched greedy and beam search with a KV cache over a step function.

A *step* owns a model's KV cache and turns tokens into next-token logits:

* ``step.first() -> logits (N, V)``: the logits after the prompt (computed once);
* ``step.next(tokens (N,)) -> logits (N, V)``: feed one token per row, get the next logits;
* ``step.select(index (N',))``: keep/reorder/repeat rows of the cache (beam search);
* ``step.limit``: the most new tokens the model can hold (None: no limit of its own).

Adapters: `LLMStep` (a decoder-only LLM over left-padded ``inputs_embeds``, the WeST prompt)
and `WhisperStep` (Whisper's decoder over given encoder states (B, T, D)). `greedy` and
`beam_search` work on any step, so every recipe decodes with the same rules: each row stops at
a stop token or at its own token budget (`token_budget`, tied to the audio's duration), and the
batch stops when every row has. Rows never interact, so results do not depend on the batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from westkit.models.features import SAMPLE_RATE


@dataclasses.dataclass
class GenerateConfig:
    """How to search, and how many tokens an utterance may produce."""
    beam: int = 1                    # 1 = greedy
    tokens_per_second: float = 8.0   # budget per second of audio (speech is ~3-5 tokens/s)
    base_tokens: int = 16            # plus this many, for short utterances
    max_new_tokens: int = 448        # hard cap whatever the duration
    length_penalty: float = 1.0      # beam search: log-prob / length ** penalty


@dataclasses.dataclass
class Generated:
    """One hypothesis: token ids without the stop token, whether the budget cut it, and the
    log-probability of each id under the model (``logprobs[i]`` for ``ids[i]``; confidence).
    Equality compares ids and hit_limit only: log-probs move in the last float bits with the
    batch's size, the ids must not."""
    ids: list[int]
    hit_limit: bool
    logprobs: list[float] = dataclasses.field(default_factory=list, compare=False)


def token_budget(audio_lens: torch.Tensor, cfg: GenerateConfig, sample_rate: int = SAMPLE_RATE) -> list[int]:
    """audio_lens (B,) samples -> per-utterance new-token limits (``base + rate * seconds``, capped)."""
    return [min(cfg.max_new_tokens, cfg.base_tokens + math.ceil(cfg.tokens_per_second * n / sample_rate))
            for n in audio_lens.tolist()]


# -- steps ---------------------------------------------------------------------------------

class LLMStep:
    """A decoder-only LLM (transformers ``*ForCausalLM``) continuing a left-padded prompt.

    inputs: ``inputs_embeds`` (B, L, H), ``attention_mask`` and ``position_ids`` (B, L), as
    `westkit.models.west.WestModel.prompt_inputs` returns them. Every row continues at its own
    next position; padding never enters attention because the mask grows with the cache.
    """
    limit = None

    def __init__(self, llm, inputs: dict):
        self.llm = llm
        self.inputs = inputs
        self.mask, self.pos = inputs["attention_mask"], inputs["position_ids"][:, -1:]
        self.cache = None

    def first(self) -> torch.Tensor:
        out = self.llm(**self.inputs, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1]

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.pos = self.pos + 1
        out = self.llm(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.pos,
                       cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)
        self.mask, self.pos = self.mask[index], self.pos[index]


class WhisperStep:
    """Whisper's decoder (``WhisperForConditionalGeneration``) over encoder states (B, T, D).

    Starts every row from ``prefix`` (the tokenizer's ``prefix_tokens``: no timestamps; or one
    equal-length prefix per row, e.g. each row's language token) and
    never emits a special token other than ``eot`` (``<|endoftext|>``): logits past it are
    -inf. The decoder holds ``max_target_positions`` tokens, the prefix included (``limit``).
    """

    def __init__(self, whisper, states: torch.Tensor, prefix: list[int], eot: int):
        self.whisper, self.states, self.eot = whisper, states, eot
        per_row = bool(prefix) and isinstance(prefix[0], (list, tuple))
        rows = [list(p) for p in prefix] if per_row else [list(prefix)] * states.shape[0]
        assert len({len(r) for r in rows}) == 1, "per-row prefixes of one model have one length"
        self.prefix = torch.tensor(rows, device=states.device)
        self.limit = whisper.config.max_target_positions - self.prefix.shape[1]
        self.rows = torch.arange(states.shape[0], device=states.device)  # cache row -> input row
        self.cache = None

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.whisper.model.decoder(input_ids=ids, encoder_hidden_states=self.states,
                                         cache=self.cache, use_cache=True)
        self.cache = out.cache
        logits = self.whisper.proj_out(out.last_hidden_state[:, -1])
        logits[:, self.eot + 1:] = -torch.inf  # special tokens (timestamps, task, language) after eot
        return logits

    def first(self) -> torch.Tensor:
        return self._run(self.prefix)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens[:, None])

    def select(self, index: torch.Tensor) -> None:
        rows = self.rows[index]
        if torch.equal(rows, self.rows):
            # beams move within their utterance: the cross-attention keys/values (T = 1500
            # per row, the bulk of the cache) already are the right ones
            self.cache.self_attention_cache.reorder_cache(index)
            return
        self.cache.reorder_cache(index)
        self.states, self.rows = self.states[index], rows


# -- searches ------------------------------------------------------------------------------

def _budgets(step, budgets: list[int]) -> list[int]:
    return [min(b, step.limit) for b in budgets] if step.limit is not None else list(budgets)


def _all_done(finished: bool, everyone_done: Callable[[bool], bool] | None) -> bool:
    """``everyone_done(local_done) -> bool`` lets processes that shard the weights (ZeRO-3, where
    every forward is collective) keep stepping until all are done; a finished process then runs
    idle steps whose tokens are discarded."""
    return everyone_done(finished) if everyone_done else finished


@torch.no_grad()
def greedy(step, budgets: list[int], stop_ids: list[int],
           everyone_done: Callable[[bool], bool] | None = None) -> list[Generated]:
    """Greedy decoding of ``step``'s rows, each within its own budget. One `Generated` per row."""
    budgets = _budgets(step, budgets)
    logits = step.first()
    device = logits.device
    stops = torch.tensor(stop_ids, device=device)
    limit = torch.tensor(budgets, device=device)
    b = logits.shape[0]
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
    logps = torch.zeros(b, 0, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    stopped = torch.zeros(b, dtype=torch.bool, device=device)
    n = 0
    while True:
        nxt = logits.argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        logps = torch.cat([logps, logits.float().log_softmax(-1).gather(1, nxt[:, None])], dim=1)
        stopped |= ~done & torch.isin(nxt, stops)
        n += 1
        done |= stopped | (n >= limit)
        if _all_done(bool(done.all()), everyone_done):
            break
        logits = step.next(nxt)
    return [_cut(row, stop_ids, budget, lp) for row, budget, lp in zip(tokens.tolist(), budgets, logps.tolist())]


@torch.no_grad()
def beam_search(step, budgets: list[int], stop_ids: list[int], beam: int, length_penalty: float = 1.0,
                everyone_done: Callable[[bool], bool] | None = None) -> list[Generated]:
    """Beam search of width ``beam`` per row; the KV cache is reordered per beam (``step.select``).

    A hypothesis ends at a stop token (scored by its summed log-probability / length **
    ``length_penalty``, the stop token counted); a row is done once it holds ``beam`` ended
    hypotheses or reaches its budget, where its live beams compete too (flagged ``hit_limit``).
    Returns the best hypothesis per row; ``beam=1`` gives `greedy`'s result.
    """
    budgets = _budgets(step, budgets)
    stops = set(stop_ids)
    logp = step.first().float().log_softmax(-1)          # (B, V)
    b, vocab = logp.shape
    device = logp.device
    step.select(torch.arange(b, device=device).repeat_interleave(beam))
    scores = torch.full((b, beam), -torch.inf, device=device)
    scores[:, 0] = 0.0                                   # one live beam per row at the start
    logp = logp.repeat_interleave(beam, 0)               # (B * beam, V)
    live: list[list[list[int]]] = [[[] for _ in range(beam)] for _ in range(b)]
    live_lp: list[list[list[float]]] = [[[] for _ in range(beam)] for _ in range(b)]  # per-token log-probs
    ended: list[list[tuple[float, list[int], bool, list[float]]]] = [[] for _ in range(b)]
    done = [False] * b
    n = 0
    while True:
        n += 1
        cand = (scores.reshape(-1, 1) + logp).reshape(b, beam * vocab)
        top, idx = cand.topk(2 * beam, dim=-1)          # enough to refill beams after stops
        src = torch.arange(b * beam, device=device).reshape(b, beam)  # finished rows keep theirs
        nxt = torch.zeros(b, beam, dtype=torch.long, device=device)
        new_scores = scores.clone()
        for r in range(b):
            if done[r]:
                continue
            picked = 0
            new_live, new_lp = [], []
            for s, i in zip(top[r].tolist(), idx[r].tolist()):
                k, tok = divmod(i, vocab)
                if s == -math.inf:
                    break
                ids = live[r][k] + [tok]
                if tok in stops:
                    ended[r].append((s / len(ids) ** length_penalty, live[r][k], False, live_lp[r][k]))
                    continue
                src[r, picked], nxt[r, picked], new_scores[r, picked] = r * beam + k, tok, s
                new_live.append(ids)
                new_lp.append(live_lp[r][k] + [float(logp[r * beam + k, tok])])
                picked += 1
                if picked == beam:
                    break
            for p in range(picked, beam):             # fewer candidates than beams: dead beams
                new_scores[r, p] = -math.inf
                new_live.append([])
                new_lp.append([])
            live[r], live_lp[r] = new_live, new_lp
            if len(ended[r]) >= beam or picked == 0:
                done[r] = True
            elif n >= budgets[r]:
                ended[r] += [(float(new_scores[r, p]) / n ** length_penalty, live[r][p], True, live_lp[r][p])
                             for p in range(picked)]
                done[r] = True
        scores = new_scores
        if _all_done(all(done), everyone_done):
            break
        step.select(src.reshape(-1))
        logp = step.next(nxt.reshape(-1)).float().log_softmax(-1)
    best = [max(e, key=lambda x: x[0]) if e else (0.0, [], True, []) for e in ended]
    return [Generated(ids, hit, lp) for _, ids, hit, lp in best]


def _cut(row: list[int], stop_ids: list[int], budget: int, logprobs: list[float]) -> Generated:
    """Ids (and their log-probs) up to the first stop token (excluded) and within ``budget``."""
    for i, t in enumerate(row[:budget]):
        if t in stop_ids:
            return Generated(row[:i], False, logprobs[:i])
    return Generated(row[:budget], True, logprobs[:budget])


def search(step, budgets: list[int], stop_ids: list[int], cfg: GenerateConfig,
           everyone_done: Callable[[bool], bool] | None = None) -> list[Generated]:
    """`greedy` when ``cfg.beam == 1``, else `beam_search` with ``cfg``'s width and length penalty."""
    if cfg.beam > 1:
        return beam_search(step, budgets, stop_ids, cfg.beam, cfg.length_penalty, everyone_done)
    return greedy(step, budgets, stop_ids, everyone_done)
