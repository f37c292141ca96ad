"""Projectors: encoder states (50 per second) -> LLM input embeddings at a lower rate.

Two designs, chosen by name in the config through a registry (`PROJECTORS`):
- ``conv1d`` (WeST): a local 3-tap convolution, a strided convolution that downsamples by
  ``rate``, then a linear map into the LLM's embedding space;
- ``stack`` (SLAM-ASR): stack ``rate`` consecutive states into one vector, then a 2-layer MLP.
Both zero the states past each utterance's length before mixing frames, so an utterance's
embeddings do not depend on what it is batched with, and return the new lengths
``ceil(len / rate)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn


@dataclasses.dataclass
class ProjectorConfig:
    """Which projector, and its shape. ``kind`` is a key of `PROJECTORS`."""
    kind: str = "conv1d"
    rate: int = 4          # encoder states per LLM embedding: 50 Hz / 4 = 12.5 embeddings per second
    hidden: int = 1024     # width of the hidden layer


PROJECTORS: dict[str, Callable[[ProjectorConfig, int, int], nn.Module]] = {}


def register_projector(name: str):
    """Decorator: make a projector class buildable by ``kind: name`` in configs."""
    def add(cls):
        PROJECTORS[name] = cls
        return cls
    return add


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    """The projector named by ``cfg.kind``, mapping ``in_dim`` encoder states to ``out_dim``."""
    if cfg.kind not in PROJECTORS:
        raise ValueError(f"projector.kind: unknown projector {cfg.kind!r}; "
                         f"choose one of {sorted(PROJECTORS)}")
    if cfg.rate < 1 or cfg.hidden < 1:
        raise ValueError(f"projector: rate and hidden must be positive, got {cfg}")
    return PROJECTORS[cfg.kind](cfg, in_dim, out_dim)


def _mask_and_pad(x: torch.Tensor, lens: torch.Tensor, rate: int) -> torch.Tensor:
    """Zero states past each length and right-pad the time axis to a multiple of ``rate``."""
    keep = torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]
    x = x * keep[..., None].to(x.dtype)
    return nn.functional.pad(x, (0, 0, 0, -x.shape[1] % rate))


@register_projector("conv1d")
class Conv1dProjector(nn.Module):
    """WeST: (B, T, D_enc), lens (B,) -> (B, ceil(T/rate), D_llm), ceil(lens/rate)."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.rate = cfg.rate
        self.smooth = nn.Conv1d(in_dim, in_dim, kernel_size=3, padding=1)
        self.down = nn.Conv1d(in_dim, cfg.hidden, kernel_size=cfg.rate, stride=cfg.rate)
        self.out = nn.Linear(cfg.hidden, out_dim)

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        x = _mask_and_pad(x.to(self.out.weight.dtype), lens, self.rate).transpose(1, 2)
        x = nn.functional.gelu(self.smooth(x)).transpose(1, 2)
        # the smoothing leaks into the first padded frame: zero it again before downsampling
        x = _mask_and_pad(x, lens, 1).transpose(1, 2)
        x = nn.functional.gelu(self.down(x)).transpose(1, 2)
        return self.out(x), -(-lens // self.rate)


@register_projector("stack")
class StackProjector(nn.Module):
    """SLAM-ASR: (B, T, D_enc), lens (B,) -> (B, ceil(T/rate), D_llm), ceil(lens/rate)."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.rate = cfg.rate
        self.fc1 = nn.Linear(in_dim * cfg.rate, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, out_dim)

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        x = _mask_and_pad(x.to(self.fc1.weight.dtype), lens, self.rate)
        b, t, d = x.shape
        x = x.reshape(b, t // self.rate, d * self.rate)
        return self.fc2(nn.functional.gelu(self.fc1(x))), -(-lens // self.rate)
