"""The WhisTLE text-to-latent encoder (TLE): a small VAE that maps text to Whisper encoder states.

WhisTLE (arXiv 2509.10452) adapts a Whisper decoder to a new domain from text alone: a TLE
trained on paired speech stands in for the speech encoder while the decoder is fine-tuned on
text, and the real encoder is restored at inference.

Pipeline (shapes for one batch; ``L`` text tokens, ``T`` encoder frames, ``H`` Whisper width)::

    tokens (B, L) -> embed + positions (+ language) -> transformer encoder -> h (B, L, Dt)
    masked mean of h -> mu, logvar (B, Dz) -> z (B, Dz)
    per-token softplus(h) summed -> predicted speech length in frames (B,)
    h -> length map onto the first n frames of the grid (B, T, Dt) -> linear -> (B, T, Dc)
    frames >= n get a learned silence vector; + sinusoidal positions
    residual Conv1D blocks with FiLM(z) (width Dc) -> linear -> states (B, T, H)

Where speech sits on the grid. Whisper always encodes a 30 s window (T = 1500 frames at
50 frames/s) in which the speech fills only the first ``n = ceil(samples / 320)`` frames and
the rest encodes padded silence. Text has no duration, so the TLE predicts ``n`` from the text
(a duration head trained on paired data with an MSE on ``log n``) and maps the text onto frames
``[0, n)``. Training uses the true ``n`` (teacher forcing); text-only use the predicted one.
Frames after the speech are made in one of two ways (``TLEConfig.tail``):

* ``"regress"``: the conv stack produces all ``T`` frames and all of them are regressed to the
  teacher's states of the padded silence;
* ``"template"``: frames up to ``n + margin_frames`` are regressed; every later frame is taken
  from a per-position template, the running mean of the teacher's states over frames that lie
  after ``n + margin_frames`` in the paired data (no gradient, kept in a buffer so checkpoints
  carry it). The margin covers the encoder's context leaking past the end of speech.

Loss: ``MSE(states, teacher) + beta(step) * KL_free_bits + duration_weight * MSE(log n)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TLEConfig:
    """Sizes and loss settings of the TLE. ``d_model`` and ``n_frames`` must match the teacher."""
    vocab_size: int = 51865
    d_text: int = 256            # width of the text transformer
    text_layers: int = 2
    text_heads: int = 4
    max_text_len: int = 448      # Whisper's decoder limit; longer texts are an error
    d_latent: int = 64           # size of the global latent z
    d_model: int = 384           # Whisper encoder width (tiny: 384)
    n_frames: int = 1500         # encoder frames for a 30 s window
    frames_per_second: float = 50.0
    d_conv: int = 256            # width of the conv stack (projected to d_model at the end)
    conv_layers: int = 4
    conv_kernel: int = 5
    dropout: float = 0.1
    num_langs: int = 0           # > 0 adds a language embedding (ids from `langs`)
    langs: list[str] | None = None  # names of the language ids, in order
    tail: Literal["regress", "template"] = "template"
    margin_frames: int = 25      # frames after the speech still regressed when tail="template"
    beta: float = 0.01           # KL weight after warm-up
    beta_warmup_steps: int = 200  # linear KL annealing over this many training forwards
    free_bits: float = 0.1       # nats per latent dimension below which KL is not penalised
    duration_weight: float = 1.0

    def __post_init__(self):
        # a langs list with no embedding (num_langs: 0) would silently ignore the languages
        if self.langs is not None and self.num_langs != len(self.langs):
            raise ValueError(f"tle.num_langs={self.num_langs} but tle.langs names {len(self.langs)} "
                             f"languages {self.langs}: set num_langs: {len(self.langs)}")


class FiLMConvBlock(nn.Module):
    """Residual Conv1D block modulated by a global latent: ``x + W2 gelu(FiLM(LN(conv(x)), z))``."""

    def __init__(self, d_model: int, d_latent: int, kernel: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(d_model)
        self.film = nn.Linear(d_latent, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        # start as identity modulation (gamma = beta = 0) and a near-identity block
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), z (B, Dz) -> (B, T, D)."""
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        gamma, shift = self.film(z).unsqueeze(1).chunk(2, dim=-1)
        y = self.norm(y) * (1 + gamma) + shift
        return x + self.drop(self.out(F.gelu(y)))


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Sinusoidal positions (length, channels), sin in the first half, cos in the second."""
    half = channels // 2
    inv = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
    angle = torch.arange(length)[:, None].float() * inv[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def language_ids(langs: list[str], names: list[str] | None, device=None) -> torch.Tensor | None:
    """Language names -> ids (B,) in the order of ``names`` (TLEConfig.langs); None without names."""
    if not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(langs) - set(index))
    if unknown:
        raise ValueError(f"language(s) {unknown} not in tle.langs={names}: add them to the TLE "
                         f"config (and train the TLE on them) or filter the data")
    return torch.tensor([index[x] for x in langs], dtype=torch.long, device=device)


def speech_frames(audio_lens: torch.Tensor, n_frames: int, samples_per_frame: int = 320) -> torch.Tensor:
    """Encoder frames covered by speech: ceil(samples / 320) at 16 kHz, clamped to [1, n_frames].

    audio_lens (B,) in samples -> (B,) long. 320 samples = 2 log-mel hops = one encoder frame.
    """
    n = torch.div(audio_lens + samples_per_frame - 1, samples_per_frame, rounding_mode="floor")
    return n.clamp(1, n_frames).long()


def length_map(h: torch.Tensor, text_lens: torch.Tensor, n: torch.Tensor, n_frames: int):
    """Stretch each text sequence linearly over the first ``n`` frames of an ``n_frames`` grid.

    h (B, L, D), text_lens (B,) valid tokens (>= 1), n (B,) frames (1..n_frames) ->
    (mapped (B, n_frames, D) zero after n, speech mask (B, n_frames) bool).
    Frame t < n reads position s = (t + 0.5) * len / n - 0.5 of the text, interpolating
    linearly between the two nearest tokens (so the first and last tokens land at the ends).
    """
    B, L, D = h.shape
    # positions in fp32 even for a bf16 model: bf16 cannot count past 256 frames exactly
    t = torch.arange(n_frames, device=h.device, dtype=torch.float32)[None, :]  # (1, T)
    lens = text_lens.float()[:, None]
    s = ((t + 0.5) * lens / n.float()[:, None] - 0.5)
    s = torch.minimum(s.clamp(min=0), lens - 1)                                 # (B, T)
    lo = s.floor().long()
    hi = torch.minimum(lo + 1, text_lens[:, None].long() - 1)
    w = (s - lo.to(h.dtype)).unsqueeze(-1)
    gather = lambda idx: torch.gather(h, 1, idx.unsqueeze(-1).expand(B, n_frames, D))
    mapped = gather(lo) * (1 - w) + gather(hi) * w
    mask = torch.arange(n_frames, device=h.device)[None, :] < n[:, None]
    return mapped * mask.unsqueeze(-1).to(h.dtype), mask


@dataclass
class TLEOutput:
    states: torch.Tensor        # (B, T, H) pseudo encoder states
    mu: torch.Tensor            # (B, Dz)
    logvar: torch.Tensor        # (B, Dz)
    log_frames: torch.Tensor    # (B,) predicted log of the speech length in frames
    n: torch.Tensor             # (B,) speech frames used for the length map
    regress_mask: torch.Tensor  # (B, T) frames the MSE applies to


class TLE(nn.Module):
    """Text-to-latent VAE; a plain module (no teacher inside, see `TLERegression`)."""

    def __init__(self, cfg: TLEConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_text)
        self.register_buffer("text_pos", sinusoids(cfg.max_text_len, cfg.d_text), persistent=False)
        self.lang_embed = nn.Embedding(cfg.num_langs, cfg.d_text) if cfg.num_langs > 0 else None
        layer = nn.TransformerEncoderLayer(cfg.d_text, cfg.text_heads, 4 * cfg.d_text, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(cfg.d_text)
        self.to_latent = nn.Linear(cfg.d_text, 2 * cfg.d_latent)
        self.duration = nn.Linear(cfg.d_text, 1)
        # per-token frames start near a typical speaking rate (~6 frames per BPE token)
        nn.init.zeros_(self.duration.weight)
        nn.init.constant_(self.duration.bias, math.log(math.expm1(6.0)))
        self.to_frames = nn.Linear(cfg.d_text, cfg.d_conv)
        self.silence = nn.Parameter(torch.zeros(cfg.d_conv))
        self.register_buffer("frame_pos", sinusoids(cfg.n_frames, cfg.d_conv), persistent=False)
        self.blocks = nn.ModuleList(FiLMConvBlock(cfg.d_conv, cfg.d_latent, cfg.conv_kernel, cfg.dropout)
                                    for _ in range(cfg.conv_layers))
        self.out_norm = nn.LayerNorm(cfg.d_conv)
        self.out = nn.Linear(cfg.d_conv, cfg.d_model)
        # tail template: running mean of the teacher's silence states per frame position
        self.register_buffer("tail_sum", torch.zeros(cfg.n_frames, cfg.d_model))
        self.register_buffer("tail_count", torch.zeros(cfg.n_frames))
        # training forwards seen, for the KL schedule (saved with the checkpoint)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def encode_text(self, tokens: torch.Tensor, text_lens: torch.Tensor, langs: torch.Tensor | None = None):
        """tokens (B, L), text_lens (B,), langs (B,) or None ->
        (h (B, L, Dt) zero at padding, pooled (B, Dt), valid (B, L) bool)."""
        L = tokens.shape[1]
        if L > self.cfg.max_text_len:
            raise ValueError(f"text of {L} tokens is longer than TLEConfig.max_text_len="
                             f"{self.cfg.max_text_len}; filter long texts in the loader")
        x = self.embed(tokens) + self.text_pos[:L].to(self.embed.weight.dtype)
        if self.lang_embed is not None:
            if langs is None:
                raise ValueError("this TLE has a language embedding (num_langs > 0): pass langs")
            x = x + self.lang_embed(langs)[:, None, :]
        pad = torch.arange(L, device=tokens.device)[None, :] >= text_lens[:, None]
        h = self.text_norm(self.text_encoder(x, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
        return h * keep, pooled, ~pad

    def forward(self, tokens: torch.Tensor, text_lens: torch.Tensor, n: torch.Tensor | None = None,
                langs: torch.Tensor | None = None, sample: bool | None = None) -> TLEOutput:
        """Pseudo encoder states for ``tokens``.

        tokens (B, L) long, text_lens (B,), n (B,) speech frames (None: use the predicted
        length), langs (B,) language ids or None; ``sample`` draws z ~ q(z|text) (default: in
        training mode), else z = mu.
        """
        cfg = self.cfg
        h, pooled, valid = self.encode_text(tokens, text_lens, langs)
        mu, logvar = self.to_latent(pooled).chunk(2, dim=-1)
        sample = self.training if sample is None else sample
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        per_token = F.softplus(self.duration(h).squeeze(-1)) * valid
        log_frames = per_token.sum(1).clamp(min=1e-3).log()
        if n is None:
            n = log_frames.detach().exp().round().long().clamp(1, cfg.n_frames)
        width = self._grid_width(n)
        mapped, speech = length_map(h, text_lens, n, width)
        x = torch.where(speech.unsqueeze(-1), self.to_frames(mapped), self.silence.to(mapped.dtype))
        x = x + self.frame_pos[:width].to(x.dtype)
        for block in self.blocks:
            x = block(x, z)
        states = self.out(self.out_norm(x))                                    # (B, width, H)
        t = torch.arange(cfg.n_frames, device=x.device)[None, :]
        if cfg.tail == "template":
            regress = t < (n + cfg.margin_frames)[:, None]
            template = (self.tail_sum / self.tail_count.clamp(min=1)[:, None]).to(states.dtype)
            states = torch.cat([states, template[width:].expand(len(n), -1, -1)], dim=1)
            # positions no paired example ever reached as silence keep the network's output
            use = ~regress & (self.tail_count > 0)[None, :]
            states = torch.where(use.unsqueeze(-1), template.expand_as(states), states)
        else:
            regress = (t < cfg.n_frames).expand(len(n), -1)
        return TLEOutput(states, mu, logvar, log_frames, n, regress)

    def _grid_width(self, n: torch.Tensor) -> int:
        """Frames the conv stack must run on: with the template tail, only up to the longest
        regressed frame plus the stack's receptive field (a 3 s utterance needs ~10% of the
        grid); everything later comes from the template. The full grid where the template
        has never seen a frame, or with the regressed tail."""
        cfg = self.cfg
        if cfg.tail != "template":
            return cfg.n_frames
        reach = cfg.conv_layers * (cfg.conv_kernel // 2)
        width = min(cfg.n_frames, int(n.max()) + cfg.margin_frames + reach)
        if bool((self.tail_count[width:] == 0).any()):
            return cfg.n_frames
        return width

    @torch.no_grad()
    def update_tail_template(self, teacher: torch.Tensor, n: torch.Tensor) -> None:
        """Add the teacher's states (B, T, H) after ``n + margin_frames`` to the running mean."""
        t = torch.arange(self.cfg.n_frames, device=teacher.device)[None, :]
        tail = (t >= (n + self.cfg.margin_frames)[:, None]).to(teacher.dtype)   # (B, T)
        self.tail_sum += (teacher * tail.unsqueeze(-1)).sum(0).to(self.tail_sum.dtype)
        self.tail_count += tail.sum(0).to(self.tail_count.dtype)

    def beta(self) -> float:
        """KL weight now: linear warm-up from 0 to ``cfg.beta`` over ``beta_warmup_steps`` forwards."""
        if self.cfg.beta_warmup_steps <= 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, float(self.num_updates) / self.cfg.beta_warmup_steps)


def kl_free_bits(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(q(z|x) || N(0, I)) with free bits per dimension (Kingma et al. 2016).

    mu, logvar (B, Dz) -> (penalised KL: sum over dims of max(mean_b KL_d, free_bits),
    raw KL: sum over dims of mean_b KL_d), both scalars in nats.
    """
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)      # (B, Dz)
    per_dim = kl.mean(0)
    return per_dim.clamp(min=free_bits).sum(), per_dim.sum()


def tle_loss(out: TLEOutput, teacher: torch.Tensor, n_true: torch.Tensor, cfg: TLEConfig,
             beta: float) -> dict[str, torch.Tensor]:
    """The TLE objective for one batch.

    out: the TLE's output (made with ``n = n_true``), teacher (B, T, H) encoder states,
    n_true (B,) speech frames. Returns ``loss`` = mse + beta * kl + duration_weight * dur, with
    ``mse`` the mean squared error per element over the regressed frames, ``kl`` the raw KL,
    ``dur`` the MSE of log frames, ``speech_mse`` over speech frames only and ``full_mse``
    over the whole grid (template frames included: comparable across ``tail`` modes).
    """
    mask = out.regress_mask.unsqueeze(-1).to(teacher.dtype)
    sq = (out.states - teacher).pow(2)
    mse = (sq * mask).sum() / (mask.sum() * teacher.shape[-1]).clamp(min=1)
    speech = (torch.arange(teacher.shape[1], device=teacher.device)[None, :] < n_true[:, None])
    speech = speech.unsqueeze(-1).to(teacher.dtype)
    speech_mse = (sq * speech).sum() / (speech.sum() * teacher.shape[-1]).clamp(min=1)
    kl_pen, kl = kl_free_bits(out.mu, out.logvar, cfg.free_bits)
    dur = (out.log_frames - n_true.to(out.log_frames.dtype).log()).pow(2).mean()
    loss = mse + beta * kl_pen + cfg.duration_weight * dur
    return {"loss": loss, "mse": mse.detach(), "speech_mse": speech_mse.detach(),
            "full_mse": sq.detach().mean(),
            "kl": kl.detach(), "dur": dur.detach()}


TLE_WEIGHTS, TLE_CONFIG = "tle.safetensors", "tle.json"


def save_tle(folder, cfg: TLEConfig, state: dict[str, torch.Tensor]) -> None:
    """Write a trained TLE as ``folder/tle.json`` (its config) + ``folder/tle.safetensors``.

    ``state`` is the TLE's state dict (parameters and the persistent buffers: tail template and
    KL schedule), e.g. the ``tle.*`` entries of a gathered training state with the prefix cut.
    """
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / TLE_WEIGHTS))
    (folder / TLE_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")


def load_tle(folder) -> TLE:
    """The TLE saved by `save_tle` in ``folder`` (a stage-1 run folder), on the CPU."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from westkit.config import build

    folder = Path(folder)
    if not (folder / TLE_WEIGHTS).is_file() or not (folder / TLE_CONFIG).is_file():
        raise ValueError(f"{folder} holds no trained TLE ({TLE_CONFIG} + {TLE_WEIGHTS}): give the "
                         f"output folder of recipes/tle/train.py")
    cfg = build(TLEConfig, json.loads((folder / TLE_CONFIG).read_text()), str(folder / TLE_CONFIG))
    tle = TLE(cfg)
    tle.load_state_dict(load_file(str(folder / TLE_WEIGHTS)))
    return tle
