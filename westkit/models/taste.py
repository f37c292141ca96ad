"""TASTE (simplified, arXiv 2504.07053): text-aligned speech tokens and a unit decoder.

One aggregated speech embedding per text token: multi-head cross-attention whose queries are
the transcript's token embeddings, keys the frozen Whisper encoder's last layer and values a
middle layer (`TasteAggregator`), then a linear adapter and an optional residual vector
quantiser (`ResidualVQ`, the released TASTE uses 4 quantisers x 512 codes). The aggregated
embeddings are fused with the text embeddings (sum or concat, `Fusion`) and a small causal
transformer (`UnitDecoder`) predicts the utterance's speech units from the fused sequence
(teacher forcing in training, greedy at evaluation). `TasteModel` trains, beside it, the same
decoder on the text embeddings alone (``baseline``): the comparison says how much the
aggregated speech tokens carry.

Batch fields read (`westkit.data.pipeline` schema): ``text_ids`` (B, L) padded with 0 and
``text_lens`` (B,) (the text embedding table's tokens), ``targets`` (B, N) = units + EOS padded
with -100 and ``target_lens`` (B,), ``audio`` (B, T) + ``audio_lens`` (B,), or precomputed
``states`` (B, F', 2D) = [last layer | middle layer] (``westkit-encode --layer``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from westkit.models.features import HOP
from westkit.models.losses import IGNORE_INDEX, token_cross_entropy


@dataclass
class TasteConfig:
    """The ``model:`` section. ``n_units`` is the unit codebook's size (the recipe sets it)."""
    whisper: str = "whisper-tiny.en"      # frozen speech encoder: built-in name, hub id or folder
    layer: int = 2                        # the middle layer whose states are the values
    text_embed: Literal["whisper", "llm"] = "whisper"   # whose token embedding table gives queries
    llm: str = "smollm2-135m-instruct"    # with text_embed: llm
    d_model: int = 256
    heads: int = 4                        # cross-attention heads (d_model % heads == 0)
    align_prior: float = 10.0             # initial strength of the monotonic alignment prior (0: none)
    rvq_depth: int = 4                    # quantisers; 0: no quantisation (continuous tokens)
    rvq_codes: int = 512                  # codes per quantiser
    rvq_dim: int = 16                     # each quantiser looks codes up in this many dimensions
    commitment: float = 0.25              # weight of the commitment loss
    diversity: float = 0.1                # weight of the code-diversity loss (0: none)
    temperature: float = 0.2              # code logits = cosine similarity / temperature
    fusion: Literal["sum", "concat"] = "sum"
    dec_layers: int = 4
    dec_heads: int = 4
    dec_ff: int = 1024
    dropout: float = 0.1
    max_positions: int = 1024             # text tokens + 1 + units, per utterance
    baseline: bool = True                 # also train the same decoder on text alone
    n_units: int = 512

    def __post_init__(self):
        checks = [
            (self.d_model % self.heads == 0, f"model.heads ({self.heads}) must divide model.d_model ({self.d_model})"),
            (self.d_model % self.dec_heads == 0,
             f"model.dec_heads ({self.dec_heads}) must divide model.d_model ({self.d_model})"),
            (self.rvq_depth >= 0, f"model.rvq_depth must be >= 0 (0 turns quantisation off), got {self.rvq_depth}"),
            (self.rvq_codes >= 2, f"model.rvq_codes must be >= 2, got {self.rvq_codes}"),
            (self.layer >= 0, f"model.layer must be >= 0, got {self.layer}"),
            (self.n_units >= 2, f"model.n_units must be >= 2, got {self.n_units}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def bits_per_token(self) -> float:
        """Bits one text-aligned token carries after quantisation (0 without it)."""
        return self.rvq_depth * math.log2(self.rvq_codes)


def length_mask(lens: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) lengths -> (B, width) bool, True on real positions."""
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]


def state_lens(audio_lens: torch.Tensor) -> torch.Tensor:
    """Whisper encoder states per utterance (50 per second) from samples (B,)."""
    return (audio_lens // HOP + 1) // 2


# -- aggregation -------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """Multi-head attention of text queries over speech: Q text (B, L, Dq), K (B, T, Dk), V (B, T, Dv)
    -> (B, L, d_model). Padded audio frames are masked out of the keys; padded text rows are zero.

    Token embeddings carry no position, so the same word twice would attend alike; with
    ``align_prior`` > 0 the scores get a monotonic alignment prior, ``-a * (i/L - t/T)^2`` per
    head over each row's real lengths (token i's centre (i + 0.5) / L against frame t's
    (t + 0.5) / T), with a learned strength a per head (softplus, started at ``align_prior``).
    Without it a fresh aggregator averages nearly the whole utterance for every token.
    """

    def __init__(self, d_query: int, d_key: int, d_value: int, d_model: int, heads: int,
                 align_prior: float = 0.0):
        super().__init__()
        self.heads = heads
        self.prior = (nn.Parameter(torch.full((heads,), math.log(math.expm1(align_prior))))
                      if align_prior > 0 else None)
        self.q = nn.Linear(d_query, d_model)
        self.k = nn.Linear(d_key, d_model)
        self.v = nn.Linear(d_value, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, text, text_mask, keys, values, audio_mask, return_weights: bool = False):
        b, l, _ = text.shape
        t = keys.shape[1]
        split = lambda x, n: x.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, H, n, d)
        q, k, v = split(self.q(text), l), split(self.k(keys), t), split(self.v(values), t)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])            # (B, H, L, T)
        if self.prior is not None:
            n_text = text_mask.sum(1, keepdim=True).clamp(min=1).to(scores.dtype)
            n_audio = audio_mask.sum(1, keepdim=True).clamp(min=1).to(scores.dtype)
            rel_q = (torch.arange(l, device=text.device) + 0.5)[None] / n_text      # (B, L)
            rel_k = (torch.arange(t, device=text.device) + 0.5)[None] / n_audio     # (B, T)
            dist = (rel_q[:, :, None] - rel_k[:, None, :]) ** 2                      # (B, L, T)
            scores = scores - F.softplus(self.prior)[None, :, None, None] * dist[:, None]
        scores = scores.masked_fill(~audio_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(b, l, -1)
        out = self.out(out) * text_mask[..., None].to(out.dtype)
        return (out, weights) if return_weights else out


class ResidualVQ(nn.Module):
    """Residual vector quantisation of (B, L, D) with ``depth`` quantisers of ``codes`` codes.

    Each quantiser projects the residual to ``code_dim`` dimensions and L2-normalises it (z_e);
    code logits are cosine similarities to the L2-normalised codes / ``temperature``
    (factorised, normalised codes as in DAC). Evaluation takes the nearest code; training
    draws a hard Gumbel-softmax sample with the straight-through gradient (wav2vec 2.0): with
    the nearest code alone, every token of a freshly initialised aggregator picks the same code
    and the commitment loss keeps it there (measured here: one code of 128 in use after 100
    steps). Each quantiser's output is projected back and subtracted from the residual. Loss
    over real positions: codebook ``|sg(z_e) - q|^2`` + ``commitment * |z_e - sg(q)|^2`` +
    ``diversity * (1 - H(mean soft assignment) / log K)`` (wav2vec 2.0's diversity loss).
    Nothing is changed in place (sharded optimiser states would undo it).
    forward(z (B, L, D), mask (B, L)) -> (z_q (B, L, D), codes (B, L, depth) long, loss scalar).
    """

    def __init__(self, dim: int, depth: int, codes: int, code_dim: int, commitment: float,
                 diversity: float = 0.0, temperature: float = 0.2):
        super().__init__()
        self.depth, self.codes, self.commitment = depth, codes, commitment
        self.diversity, self.temperature = diversity, temperature
        self.codebooks = nn.Parameter(torch.randn(depth, codes, code_dim))
        self.down = nn.ModuleList(nn.Linear(dim, code_dim) for _ in range(depth))
        self.up = nn.ModuleList(nn.Linear(code_dim, dim) for _ in range(depth))

    def forward(self, z: torch.Tensor, mask: torch.Tensor):
        m = mask[..., None].to(z.dtype)
        n = m.sum().clamp(min=1)
        residual, out = z, torch.zeros_like(z)
        loss = z.new_zeros(())
        codes = []
        for i in range(self.depth):
            z_e = F.normalize(self.down[i](residual), dim=-1)                 # (B, L, c)
            book = F.normalize(self.codebooks[i], dim=-1)                       # (K, c)
            logits = z_e @ book.T / self.temperature                            # (B, L, K)
            if self.training:
                onehot = F.gumbel_softmax(logits.float(), tau=1.0, hard=True).to(z_e.dtype)
                idx, q = onehot.argmax(-1), onehot @ book                       # straight-through
            else:
                idx = logits.argmax(-1)                                         # nearest on the sphere
                q = F.embedding(idx, book)
            if self.diversity:
                p = (logits.softmax(-1) * m).sum((0, 1)) / n                    # (K,) mean assignment
                entropy = -(p * p.clamp(min=1e-9).log()).sum()
                loss = loss + self.diversity * (1 - entropy / math.log(self.codes))
            dim = z_e.shape[-1]
            loss = loss + (((q - z_e.detach()) ** 2) * m).sum() / (n * dim)
            loss = loss + self.commitment * (((z_e - q.detach()) ** 2) * m).sum() / (n * dim)
            step = self.up[i](q)
            out = out + step
            residual = residual - step
            codes.append(idx)
        return out * m, torch.stack(codes, -1), loss


def code_usage(codes: torch.Tensor, mask: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Histogram of code use per quantiser over real positions: codes (B, L, Q) -> (Q, n_codes)."""
    flat = codes[mask]                                                          # (N, Q)
    return torch.stack([torch.bincount(flat[:, q], minlength=n_codes) for q in range(codes.shape[-1])])


class TasteAggregator(nn.Module):
    """Text queries over Whisper states -> one speech embedding per text token (B, L, d_model).

    forward(text (B, L, Dq), text_mask, last (B, T, Dw), middle (B, T, Dw), audio_mask) ->
    (tokens (B, L, d_model), codes (B, L, Q) or None, vq loss scalar).
    """

    def __init__(self, d_text: int, d_speech: int, cfg: TasteConfig):
        super().__init__()
        self.attention = CrossAttention(d_text, d_speech, d_speech, cfg.d_model, cfg.heads, cfg.align_prior)
        self.adapter = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.d_model))
        self.rvq = (ResidualVQ(cfg.d_model, cfg.rvq_depth, cfg.rvq_codes, cfg.rvq_dim, cfg.commitment,
                               cfg.diversity, cfg.temperature) if cfg.rvq_depth else None)

    def forward(self, text, text_mask, last, middle, audio_mask):
        z = self.adapter(self.attention(text, text_mask, last, middle, audio_mask))
        if self.rvq is None:
            return z * text_mask[..., None].to(z.dtype), None, z.new_zeros(())
        return self.rvq(z, text_mask)


class Fusion(nn.Module):
    """Text embeddings (B, L, Dq) [+ speech tokens (B, L, d)] -> the decoder's prefix (B, L, d)."""

    def __init__(self, d_text: int, d_model: int, kind: str, speech: bool):
        super().__init__()
        self.kind, self.speech = kind, speech
        self.text = nn.Linear(d_text, d_model)
        self.mix = nn.Linear(2 * d_model, d_model) if speech and kind == "concat" else None

    def forward(self, text: torch.Tensor, speech: torch.Tensor | None = None) -> torch.Tensor:
        t = self.text(text)
        if not self.speech:
            return t
        return self.mix(torch.cat([t, speech], -1)) if self.mix is not None else t + speech


# -- the unit decoder ----------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm causal self-attention + GELU MLP over (B, W, d). Every weight is used through a
    module call, so ZeRO-3 gathers it (``nn.TransformerEncoderLayer`` reads some directly)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, w, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, w, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class UnitDecoder(nn.Module):
    """A causal transformer over ``[prefix (L_i), BOS, units]`` predicting units and EOS.

    Unit ids are 0..n_units-1, ``eos = n_units``, ``bos = n_units + 1``. Rows are packed left to
    right (prefix, BOS, units, then padding), so padding only ever follows a row's real
    positions and the causal mask alone keeps it out of every scored prediction.
    """

    def __init__(self, cfg: TasteConfig):
        super().__init__()
        d = cfg.d_model
        self.n_units, self.eos, self.bos = cfg.n_units, cfg.n_units, cfg.n_units + 1
        self.max_positions = cfg.max_positions
        self.embed = nn.Embedding(cfg.n_units + 2, d)
        self.pos = nn.Embedding(cfg.max_positions, d)
        self.layers = nn.ModuleList(Block(d, cfg.dec_heads, cfg.dec_ff, cfg.dropout)
                                    for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_units + 1)

    def pack(self, prefix, prefix_lens, units, unit_lens):
        """(B, L, d) prefix + (B, M) unit inputs -> (x (B, W, d), W) with rows laid out as
        [prefix_i, BOS, units_i[:unit_lens_i]] and W = max(L_i + 1 + M_i)."""
        b, device = prefix.shape[0], prefix.device
        width = int((prefix_lens + 1 + unit_lens).max())
        if width > self.max_positions:
            raise ValueError(f"an utterance needs {width} decoder positions (text tokens + 1 + units), "
                             f"more than model.max_positions={self.max_positions}: raise it or filter "
                             f"long utterances (data.max_duration)")
        p = torch.arange(width, device=device)[None, :].expand(b, -1)
        j = p - prefix_lens[:, None] - 1                                    # index into units; -1: BOS
        inside = (j >= 0) & (j < unit_lens[:, None])
        if units.shape[1]:
            ids = units.gather(1, j.clamp(0, units.shape[1] - 1))
            ids = torch.where(inside, ids, torch.full_like(ids, self.bos))
        else:
            ids = torch.full_like(p, self.bos)
        tok = self.embed(ids)
        pre = prefix.gather(1, p.clamp(max=prefix.shape[1] - 1)[..., None].expand(-1, -1, prefix.shape[-1]))
        x = torch.where((p < prefix_lens[:, None])[..., None], pre, tok)
        return x + self.pos(p), width

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return self.norm(x)

    def forward(self, prefix, prefix_lens, targets, target_lens):
        """Teacher forcing. targets (B, N) = units + EOS padded with -100 -> (logits (B, W, V),
        labels (B, W)): position L_i + j predicts targets[i, j]; other labels are -100."""
        units = targets[:, :-1].clamp(min=0)
        x, width = self.pack(prefix, prefix_lens, units, target_lens - 1)
        logits = self.head(self.hidden(x))
        p = torch.arange(width, device=x.device)[None, :]
        j = p - prefix_lens[:, None]
        scored = (j >= 0) & (j < target_lens[:, None])
        labels = targets.gather(1, j.clamp(0, targets.shape[1] - 1))
        return logits, torch.where(scored, labels, torch.full_like(labels, IGNORE_INDEX))

    def next_logits(self, prefix, prefix_lens, units: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the unit after ``units`` (B, n), every row with n units so far."""
        n = torch.full_like(prefix_lens, units.shape[1])
        x, _ = self.pack(prefix, prefix_lens, units, n)
        h = self.hidden(x)
        last = (prefix_lens + n)[:, None, None].expand(-1, 1, h.shape[-1])
        return self.head(h.gather(1, last)[:, 0])


class UnitStep:
    """`westkit.decode.search` step over a `UnitDecoder` (no KV cache: the decoder is small and
    every step re-reads the packed rows, which keeps rows of different prefix lengths exact)."""
    limit = None

    def __init__(self, decoder: UnitDecoder, prefix, prefix_lens):
        self.decoder, self.prefix, self.prefix_lens = decoder, prefix, prefix_lens
        self.units = torch.zeros(prefix.shape[0], 0, dtype=torch.long, device=prefix.device)
        self.limit = decoder.max_positions - int(prefix_lens.max()) - 1

    def first(self) -> torch.Tensor:
        return self.decoder.next_logits(self.prefix, self.prefix_lens, self.units)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        # a finished row keeps receiving tokens (EOS, idle steps); they are cut afterwards
        self.units = torch.cat([self.units, tokens.clamp(max=self.decoder.n_units - 1)[:, None]], 1)
        return self.decoder.next_logits(self.prefix, self.prefix_lens, self.units)

    def select(self, index: torch.Tensor) -> None:
        self.prefix, self.prefix_lens, self.units = self.prefix[index], self.prefix_lens[index], self.units[index]


# -- the model -----------------------------------------------------------------------------------

def load_text_embedding(cfg: TasteConfig) -> nn.Embedding:
    """The frozen token embedding table the queries come from: Whisper's decoder's or the LLM's."""
    from westkit.assets import resolve

    if cfg.text_embed == "whisper":
        from transformers import WhisperForConditionalGeneration
        source = WhisperForConditionalGeneration.from_pretrained(resolve(cfg.whisper))
    else:
        from transformers import AutoModelForCausalLM
        source = AutoModelForCausalLM.from_pretrained(resolve(cfg.llm))
    table = source.get_input_embeddings().weight.detach().float().clone()
    return nn.Embedding.from_pretrained(table, freeze=True)


def text_encoder_name(cfg: TasteConfig) -> str:
    """The checkpoint whose tokenizer makes ``text_ids`` for ``cfg.text_embed``."""
    return cfg.whisper if cfg.text_embed == "whisper" else cfg.llm


class TasteModel(nn.Module):
    """Frozen Whisper encoder + frozen text embeddings -> aggregator -> fusion -> unit decoder,
    and (``cfg.baseline``) the same decoder on text alone. forward(batch) -> dict with ``loss``
    (TASTE CE + baseline CE + VQ loss), ``num_tokens`` and per-part losses/accuracies."""

    export_scope = "trainable"

    def __init__(self, cfg: TasteConfig, encoder: nn.Module, text_embedding: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder                            # WhisperAudioEncoder, frozen
        self.text_embedding = text_embedding              # frozen
        d_text, d_speech = text_embedding.embedding_dim, encoder.dim
        if cfg.layer > encoder.num_layers:
            raise ValueError(f"model.layer={cfg.layer}, but {cfg.whisper} has {encoder.num_layers} encoder "
                             f"layers: choose 0..{encoder.num_layers}")
        self.aggregator = TasteAggregator(d_text, d_speech, cfg)
        self.fusion = Fusion(d_text, cfg.d_model, cfg.fusion, speech=True)
        self.decoder = UnitDecoder(cfg)
        if cfg.baseline:
            self.baseline = nn.ModuleDict({"fusion": Fusion(d_text, cfg.d_model, cfg.fusion, speech=False),
                                           "decoder": UnitDecoder(cfg)})

    @classmethod
    def from_config(cls, cfg: TasteConfig) -> TasteModel:
        from westkit.models.whisper import WhisperAudioEncoder
        return cls(cfg, WhisperAudioEncoder.from_pretrained(cfg.whisper), load_text_embedding(cfg))

    def speech_states(self, batch: dict):
        """(last (B, T, D), middle (B, T, D), audio_mask (B, T)) from the batch's precomputed
        ``states`` [last | middle] or by running the frozen encoder on its audio."""
        if "states" in batch:
            states = batch["states"].float()
            d = states.shape[-1] // 2
            lens = state_lens(batch["audio_lens"]).clamp(max=states.shape[1])
            return states[..., :d], states[..., d:], length_mask(lens, states.shape[1])
        last, middle, lens = self.encoder.forward_layers(batch["audio"], batch["audio_lens"], self.cfg.layer)
        return last.float(), middle.float(), length_mask(lens, last.shape[1])

    def speech_tokens(self, batch: dict):
        """(text embeddings (B, L, Dq), text mask (B, L), speech tokens (B, L, d), codes or None,
        vq loss)."""
        text_mask = length_mask(batch["text_lens"], batch["text_ids"].shape[1])
        text = self.text_embedding(batch["text_ids"])
        last, middle, audio_mask = self.speech_states(batch)
        tokens, codes, vq_loss = self.aggregator(text, text_mask, last, middle, audio_mask)
        return text, text_mask, tokens, codes, vq_loss

    def prefixes(self, batch: dict) -> dict:
        """The decoder prefixes: {"taste": (B, L, d), "baseline": (B, L, d)} and what made them."""
        text, text_mask, tokens, codes, vq_loss = self.speech_tokens(batch)
        out = {"taste": self.fusion(text, tokens), "codes": codes, "vq_loss": vq_loss, "text_mask": text_mask}
        if self.cfg.baseline:
            out["baseline"] = self.baseline["fusion"](text)
        return out

    def decoders(self) -> dict:
        d = {"taste": self.decoder}
        if self.cfg.baseline:
            d["baseline"] = self.baseline["decoder"]
        return d

    def forward(self, batch: dict) -> dict:
        pre = self.prefixes(batch)
        out = {"vq_loss": pre["vq_loss"]}
        loss = pre["vq_loss"]
        for name, decoder in self.decoders().items():
            logits, labels = decoder(pre[name], batch["text_lens"], batch["targets"], batch["target_lens"])
            ce, n = token_cross_entropy(logits, labels)
            scored = labels != IGNORE_INDEX
            out[f"loss_{name}"] = ce.detach()
            out[f"acc_{name}"] = ((logits.argmax(-1) == labels) & scored).sum() / n.clamp(min=1)
            loss = loss + ce
            out["num_tokens"] = n
        if pre["codes"] is not None:
            usage = code_usage(pre["codes"], pre["text_mask"], self.cfg.rvq_codes)
            out["codes_used"] = (usage > 0).float().sum(-1).mean()   # per quantiser, this batch
        out["loss"] = loss
        return out

    def export(self, out_dir: str | Path, state: dict) -> list[Path]:
        """``taste.json``: the model config beside ``trainable.safetensors`` (the weights)."""
        import json
        path = Path(out_dir) / "taste.json"
        path.write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1) + "\n")
        return [path]
