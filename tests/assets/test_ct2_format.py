"""The CTranslate2 reader and Whisper name mapping, checked against CTranslate2's own converter.

A tiny random transformers Whisper is converted to model.bin by `ctranslate2.converters`
(independent of our code); reading it back through `westkit.assets.ct2` must give the exact
original tensors and shape config. Heads, layers and FFN sizes differ between encoder and
decoder so a swapped or misnumbered mapping cannot pass.
"""
import struct

import numpy as np
import pytest
import torch

from westkit.assets import ct2

TINY = dict(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=3,
            encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=96, decoder_ffn_dim=128,
            max_source_positions=1500, max_target_positions=448)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, whisper_tiny_path):
    """(random HF Whisper, folder of its CTranslate2 conversion made by ctranslate2 itself)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import AutoTokenizer, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(**TINY, decoder_start_token_id=50257, bos_token_id=50257, eos_token_id=50256,
                           pad_token_id=50256)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped or swapped one shows
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.normal_()
    hf = tmp_path_factory.mktemp("hf")
    model.save_pretrained(hf)
    # the converter needs a Whisper tokenizer for the vocabulary; the real one fits vocab_size
    AutoTokenizer.from_pretrained(whisper_tiny_path).save_pretrained(hf)
    out = tmp_path_factory.mktemp("ct2") / "model"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization="float32")
    return model, out


def test_config_read_off_the_file(tiny_pair):
    _, out = tiny_pair
    kwargs = ct2.whisper_config_kwargs(ct2.read_ct2(out / "model.bin"))
    assert {k: kwargs[k] for k in TINY} == TINY
    assert kwargs["activation_function"] == "gelu"


def test_mapping_reproduces_every_tensor(tiny_pair):
    model, out = tiny_pair
    sd = ct2.whisper_state_dict(ct2.read_ct2(out / "model.bin"), TINY["encoder_layers"], TINY["decoder_layers"])
    want = {k: v for k, v in model.state_dict().items() if k != "proj_out.weight"}  # tied
    assert set(sd) == set(want)
    for k in want:
        torch.testing.assert_close(sd[k], want[k], rtol=0, atol=0, msg=k)


def test_real_wheel_parses_fully():
    """The wheel's model.bin: all bytes consumed, Whisper tiny.en's shapes, one alias."""
    from westkit.assets import whisper

    m = ct2.read_ct2(whisper.wheel_dir() / "model.bin")
    kwargs = ct2.whisper_config_kwargs(m)
    assert (kwargs["d_model"], kwargs["encoder_layers"], kwargs["decoder_layers"],
            kwargs["encoder_attention_heads"], kwargs["vocab_size"]) == (384, 4, 4, 6, 51864)
    assert m.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert m.variables["decoder/embeddings/weight"].dtype == np.float16


def _write(path, version=6, variables=(("a", np.arange(6, dtype=np.float32).reshape(2, 3)),), aliases=()):
    def s(x):
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = struct.pack("<I", version) + s("TestSpec") + struct.pack("<I", 1) + struct.pack("<I", len(variables))
    for name, a in variables:
        out += s(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<B", codes[a.dtype]) + struct.pack("<I", a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases)
    path.write_bytes(out)


def test_reader_on_handmade_file(tmp_path):
    a = np.arange(6, dtype=np.float16).reshape(3, 2)
    b = np.array([7], dtype=np.int16)
    _write(tmp_path / "m.bin", variables=(("x/w", a), ("x/n", b)), aliases=(("y", "x/w"),))
    m = ct2.read_ct2(tmp_path / "m.bin")
    assert (m.spec, m.revision) == ("TestSpec", 1)
    np.testing.assert_array_equal(m.variables["x/w"], a)
    assert m.variables["x/w"].dtype == np.float16 and m.scalar("x/n") == 7
    assert m.aliases == {"y": "x/w"}


def test_reader_rejects_other_versions_and_trailing_bytes(tmp_path):
    _write(tmp_path / "v5.bin", version=5)
    with pytest.raises(ValueError, match="version 5"):
        ct2.read_ct2(tmp_path / "v5.bin")
    _write(tmp_path / "extra.bin")
    (tmp_path / "extra.bin").write_bytes((tmp_path / "extra.bin").read_bytes() + b"junk")
    with pytest.raises(ValueError, match="unread bytes"):
        ct2.read_ct2(tmp_path / "extra.bin")
