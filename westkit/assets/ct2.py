"""Read a CTranslate2 ``model.bin`` and map a Whisper model onto transformers' parameter names.

File layout (CTranslate2 binary format version 6, little endian)::

    u32 version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x [ str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes ]
    u32 n_aliases x [ str alias | str target ]
    str = u16 length (counting a trailing NUL) + bytes

CTranslate2 fuses projections that transformers keeps apart: self-attention q, k, v are one
``linear_0`` (rows q|k|v) and cross-attention k, v are one ``linear_1`` (rows k|v). Whisper's
k projections have no bias, so CTranslate2 stores zeros there and we drop them.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType enum
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# CTranslate2's ActivationType enum -> transformers' activation names
_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 5: "tanh"}


@dataclass
class CT2Model:
    """A CTranslate2 model file: ``variables`` name -> array, ``aliases`` alias -> target name."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def scalar(self, name: str) -> int:
        return int(self.variables[name].reshape(-1)[0])


def read_ct2(path: str | Path) -> CT2Model:
    """Parse ``model.bin``. Arrays are read-only views into one buffer read from disk."""
    path = Path(path)
    buf = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("<H")
        value = buf[pos:pos + n - 1].decode()
        pos += n
        return value

    version = take("<I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 model format version {version}; this reader knows version 6")
    spec, revision = text(), take("<I")
    variables = {}
    for _ in range(take("<I")):
        name = text()
        dims = [take("<I") for _ in range(take("<B"))]
        code = take("<B")
        if code not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has data type {code}, which this reader does not handle")
        dtype = np.dtype(_DTYPES[code])
        n_bytes = take("<I")
        variables[name] = np.frombuffer(buf, dtype, n_bytes // dtype.itemsize, pos).reshape(dims or [1])
        pos += n_bytes
    aliases = {}
    for _ in range(take("<I")):
        alias = text()
        aliases[alias] = text()
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} unread bytes at the end; not a CTranslate2 version 6 file?")
    return CT2Model(spec, revision, variables, aliases)


def whisper_config_kwargs(m: CT2Model) -> dict:
    """WhisperConfig arguments read off the model's shapes and scalars (no token ids)."""
    v = m.variables
    n_layers = {side: len({int(x) for x in re.findall(rf"^{side}/layer_(\d+)/", "\n".join(v), re.M)})
                for side in ("encoder", "decoder")}
    vocab, d_model = v["decoder/embeddings/weight"].shape
    activation = m.scalar("decoder/activation")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"CTranslate2 activation type {activation} has no transformers equivalent here")
    if m.scalar("decoder/scale_embeddings") or not m.scalar("decoder/pre_norm"):
        raise ValueError("this is not a Whisper-shaped model (scaled embeddings or post-norm)")
    return dict(
        vocab_size=vocab,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_layers["encoder"],
        decoder_layers=n_layers["decoder"],
        encoder_attention_heads=m.scalar("encoder/num_heads"),
        decoder_attention_heads=m.scalar("decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function=_ACTIVATIONS[activation],
        scale_embedding=False,
        tie_word_embeddings=True,
    )


def whisper_state_dict(m: CT2Model, encoder_layers: int, decoder_layers: int) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` state-dict keys.

    Values become float32 tensors (float16 -> float32 is exact). Not produced: the k_proj biases
    (Whisper has none) and ``proj_out.weight`` (tied to ``model.decoder.embed_tokens.weight``).
    Every CTranslate2 weight is used exactly once; a leftover one raises, so a model with parts
    this mapping does not know cannot be converted silently wrong.
    """
    v = m.variables
    used: set[str] = set()
    sd: dict[str, torch.Tensor] = {}

    def t(name: str) -> torch.Tensor:
        used.add(name)
        return torch.from_numpy(v[name].astype(np.float32))

    def norm(hf: str, ct: str):
        sd[hf + ".weight"], sd[hf + ".bias"] = t(ct + "/gamma"), t(ct + "/beta")

    def linear(hf: str, ct: str):
        sd[hf + ".weight"], sd[hf + ".bias"] = t(ct + "/weight"), t(ct + "/bias")

    def self_attention(hf: str, ct: str):
        w, b = t(ct + "/linear_0/weight"), t(ct + "/linear_0/bias")
        q_w, k_w, v_w = w.chunk(3)
        q_b, k_b, v_b = b.chunk(3)
        if k_b.abs().max() != 0:
            raise ValueError(f"{ct}: non-zero key bias; Whisper's k_proj has no bias")
        sd.update({hf + ".q_proj.weight": q_w, hf + ".k_proj.weight": k_w, hf + ".v_proj.weight": v_w,
                   hf + ".q_proj.bias": q_b, hf + ".v_proj.bias": v_b})
        linear(hf + ".out_proj", ct + "/linear_1")

    def cross_attention(hf: str, ct: str):
        linear(hf + ".q_proj", ct + "/linear_0")
        w, b = t(ct + "/linear_1/weight"), t(ct + "/linear_1/bias")
        k_w, v_w = w.chunk(2)
        k_b, v_b = b.chunk(2)
        if k_b.abs().max() != 0:
            raise ValueError(f"{ct}: non-zero key bias; Whisper's k_proj has no bias")
        sd.update({hf + ".k_proj.weight": k_w, hf + ".v_proj.weight": v_w, hf + ".v_proj.bias": v_b})
        linear(hf + ".out_proj", ct + "/linear_2")

    enc, dec = "model.encoder", "model.decoder"
    linear(enc + ".conv1", "encoder/conv1")
    linear(enc + ".conv2", "encoder/conv2")
    sd[enc + ".embed_positions.weight"] = t("encoder/position_encodings/encodings")
    norm(enc + ".layer_norm", "encoder/layer_norm")
    sd[dec + ".embed_tokens.weight"] = t("decoder/embeddings/weight")
    sd[dec + ".embed_positions.weight"] = t("decoder/position_encodings/encodings")
    norm(dec + ".layer_norm", "decoder/layer_norm")
    for side, prefix, n in (("encoder", enc, encoder_layers), ("decoder", dec, decoder_layers)):
        for i in range(n):
            ct, hf = f"{side}/layer_{i}", f"{prefix}.layers.{i}"
            self_attention(hf + ".self_attn", ct + "/self_attention")
            norm(hf + ".self_attn_layer_norm", ct + "/self_attention/layer_norm")
            linear(hf + ".fc1", ct + "/ffn/linear_0")
            linear(hf + ".fc2", ct + "/ffn/linear_1")
            norm(hf + ".final_layer_norm", ct + "/ffn/layer_norm")
            if side == "decoder":
                cross_attention(hf + ".encoder_attn", ct + "/attention")
                norm(hf + ".encoder_attn_layer_norm", ct + "/attention/layer_norm")

    # scalars (num_heads, activation, ...) are read by whisper_config_kwargs, not weights
    leftover = [k for k, a in v.items() if k not in used and a.size > 1]
    if leftover:
        raise ValueError(f"CTranslate2 weights with no transformers counterpart: {leftover[:5]}")
    return sd
