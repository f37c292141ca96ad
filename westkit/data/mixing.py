"""Mixing several batch streams: temperature-based language sampling and fixed-ratio alternation.

Both are the same operation at the batch level: each step draws the next batch from one of
several loaders (one per language, or one per source such as text-only / audio / TTS audio).

* `temperature_probs(counts, alpha)`: p_l proportional to n_l ** alpha. alpha = 1 samples in
  proportion to the data, alpha = 0 uniformly over languages; alpha < 1 (e.g. 0.3-0.7) lifts
  low-resource languages without repeating them as often as uniform sampling does.
* `MixedLoader(loaders, weights, mode)`: ``mode="random"`` draws the source of every batch
  from the weights (temperature sampling); ``mode="ratio"`` follows them deterministically with
  a smooth weighted round-robin (weights 1:1 alternate A B A B, 2:1 give A B A A B A ...), the
  stage-2 text/audio alternation of WhisTLE.

A batch always comes whole from one source (a text-only batch never mixes with audio), and the
choice depends only on the seed and the step, never on the rank: under ZeRO-3 every rank must
run the same branch of the model in the same step, or the parameter gathers would not match.
Everything that decides the stream, the sources' own positions included, is in
`state_dict()`, so a resumed run sees the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Literal


@dataclass
class MixConfig:
    """Relative weights of named batch sources (0 leaves one out) and how to follow them: the
    ``mix:`` section of WhisTLE stage 2 (sources ``text``, ``audio``, ``tts``, ``real``)."""
    text: float = 1.0
    audio: float = 1.0
    tts: float = 0.0
    real: float = 0.0
    mode: Literal["ratio", "random"] = "ratio"   # ratio: deterministic interleaving
    seed: int = 0

    def weight(self, source: str) -> float:
        return float(getattr(self, source))


def temperature_probs(counts: dict[str, float], alpha: float) -> dict[str, float]:
    """Sampling probability per language, p_l = n_l ** alpha / sum_k n_k ** alpha.

    counts: amount of data per language (utterances, hours or tokens; must be > 0),
    alpha in [0, 1]. Returns probabilities in the same key order, summing to 1.
    """
    if not counts:
        raise ValueError("temperature_probs: no languages given")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"temperature alpha={alpha} must lie in [0, 1] (1: as in the data, 0: uniform)")
    bad = {k: v for k, v in counts.items() if not v > 0}
    if bad:
        raise ValueError(f"languages with no data {bad}: drop them from the mix")
    w = {k: float(v) ** alpha for k, v in counts.items()}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


class MixedLoader:
    """Interleave batches of several (infinite) loaders by weight.

    loaders: name -> iterable of batches (each with ``state_dict``/``load_state_dict`` if the
    mix is to be resumable); weights: name -> weight > 0 (normalised here); mode: "ratio"
    (deterministic) or "random" (seeded draws). Iterating yields batches; `last_source` names
    where the latest one came from. A finite source that runs out ends the mix.
    """

    def __init__(self, loaders: dict[str, Iterable], weights: dict[str, float],
                 mode: Literal["ratio", "random"] = "ratio", seed: int = 0):
        if set(loaders) != set(weights):
            raise ValueError(f"mix weights name {sorted(weights)} but the loaders are {sorted(loaders)}")
        bad = {k: v for k, v in weights.items() if not v > 0}
        if bad:
            raise ValueError(f"mix weights must be > 0, got {bad}: leave a source out instead")
        if mode not in ("ratio", "random"):
            raise ValueError(f"mix mode {mode!r} must be 'ratio' or 'random'")
        self.loaders = dict(loaders)
        self.names = list(loaders)
        total = sum(weights.values())
        self.weights = {k: weights[k] / total for k in self.names}
        self.mode = mode
        self.seed = seed
        self.steps = 0
        self.credit = {k: 0.0 for k in self.names}
        self.rng = random.Random(seed)
        self.last_source: str | None = None
        self._iters: dict[str, object] = {}

    def next_source(self) -> str:
        """Advance the schedule by one batch and return the source it names (no I/O)."""
        if self.mode == "random":
            name = self.rng.choices(self.names, weights=[self.weights[k] for k in self.names])[0]
        else:
            # smooth weighted round-robin: everyone earns its weight, the richest spends 1
            for k in self.names:
                self.credit[k] += self.weights[k]
            name = max(self.names, key=lambda k: self.credit[k])
            self.credit[name] -= 1.0
        self.steps += 1
        return name

    def __iter__(self):
        while True:
            name = self.next_source()
            if name not in self._iters:
                self._iters[name] = iter(self.loaders[name])
            try:
                batch = next(self._iters[name])
            except StopIteration:
                return
            self.last_source = name
            yield batch

    def state_dict(self) -> dict:
        """The schedule's position and each source's own state."""
        return {"steps": self.steps, "credit": dict(self.credit), "rng": self.rng.getstate(),
                "sources": {k: l.state_dict() for k, l in self.loaders.items() if hasattr(l, "state_dict")}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["credit"]) != set(self.names):
            raise ValueError(f"checkpoint mixes sources {sorted(state['credit'])}, this run {self.names}: "
                             f"resume with the same mix")
        self.steps = state["steps"]
        self.credit = dict(state["credit"])
        rng = state["rng"]
        # a state that went through JSON/pickle may hold lists where random wants tuples
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        for k, s in state["sources"].items():
            self.loaders[k].load_state_dict(s)
        self._iters = {}  # fresh iterators continue from the sources' restored positions
