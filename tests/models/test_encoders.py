"""Encoders by name: each family (Whisper, wav2vec2 with group and layer norm, HuBERT, MMS-style
CTC checkpoints) on tiny randomly initialised configs: frame rate, width, lengths, padded frames
zeroed, states independent of the batch, and a WeST model on top that trains."""
import pytest
import torch

from westkit.models import encoders
from westkit.models.encoders import ENCODERS, SSLAudioEncoder, build_encoder
from westkit.models.projector import ProjectorConfig
from westkit.models.west import AUDIO, WestConfig, WestModel, char_tokenizer
from westkit.models.whisper import WhisperAudioEncoder

LENS = [16000, 5000, 11234]


def _conv(kw):
    # three conv layers with total stride 320: 50 states per second, like the real models
    return dict(conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8), **kw)


def tiny_wav2vec2(norm: str):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(**_conv(dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer", hidden_dropout=0.1, layerdrop=0.1, mask_time_prob=0.5))))


def tiny_hubert():
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    return HubertModel(HubertConfig(**_conv(dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group"))))


def tiny_whisper():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    return WhisperAudioEncoder(WhisperEncoder(WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        num_mel_bins=80, max_source_positions=1500)).eval())


FAMILIES = {
    "whisper": tiny_whisper,
    "wav2vec2-base (group norm)": lambda: SSLAudioEncoder(tiny_wav2vec2("group")),
    "wav2vec2-large (layer norm)": lambda: SSLAudioEncoder(tiny_wav2vec2("layer")),
    "hubert": lambda: SSLAudioEncoder(tiny_hubert()),
}


def batch(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lens), max(lens))
    for i, n in enumerate(lens):
        audio[i, :n] = torch.randn(n, generator=g) * 0.1
    return audio, torch.tensor(lens)


@pytest.mark.parametrize("family", FAMILIES)
def test_states_follow_length_and_do_not_depend_on_the_batch(family):
    enc = FAMILIES[family]().train()  # the engine trains the whole model: the encoder must not care
    assert enc.dim == 32 and enc.frame_rate == 50
    audio, lens = batch(LENS)
    states, n = enc(audio, lens)
    assert not states.requires_grad
    assert n.tolist() == [int(x) for x in n] and abs(int(n[0]) - 50) <= 1   # 1 s -> 50 states
    assert states.shape == (3, int(n.max()), 32)
    for i, length in enumerate(LENS):
        assert not states[i, int(n[i]):].any()                      # padded frames are zero
        alone, m = enc(audio[i:i + 1, :length], lens[i:i + 1])
        assert int(m[0]) == int(n[i])
        torch.testing.assert_close(states[i, :int(n[i])], alone[0], atol=2e-5, rtol=1e-4)
    again, _ = enc(audio, lens)
    assert torch.equal(states, again)                               # no dropout / SpecAugment


def test_ssl_checkpoints_load_by_name_including_a_ctc_head(tmp_path):
    """MMS-style checkpoints are Wav2Vec2ForCTC: AutoModel loads the encoder and drops the head."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(**_conv(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, num_conv_pos_embeddings=16,
                                      num_conv_pos_embedding_groups=2, vocab_size=12,
                                      feat_extract_norm="layer", do_stable_layer_norm=True)))
    Wav2Vec2ForCTC(cfg).save_pretrained(tmp_path / "mms")
    enc = build_encoder("ssl", str(tmp_path / "mms"))
    assert isinstance(enc, SSLAudioEncoder) and enc.dim == 32 and not enc.per_utterance
    states, n = enc(*batch([8000]))
    assert states.shape == (1, int(n[0]), 32)


def test_unknown_kinds_and_30s_padding_off_whisper_are_errors():
    with pytest.raises(ValueError, match="model.encoder_kind.*whisper"):
        build_encoder("conformer", "x")
    with pytest.raises(ValueError, match="model.pad_to_30s"):
        build_encoder("ssl", "x", pad_to_30s=True)
    assert {"whisper", "ssl"} <= set(ENCODERS)
    with_adapter = tiny_wav2vec2("layer")
    with_adapter.config.add_adapter = True
    with pytest.raises(ValueError, match="add_adapter"):
        SSLAudioEncoder(with_adapter)


@pytest.mark.parametrize("family", ["wav2vec2-base (group norm)", "hubert"])
def test_west_on_an_ssl_encoder_trains_the_projector(family):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    cfg = WestConfig(projector=ProjectorConfig(rate=2, hidden=64), system=None, prompt=f"hear {AUDIO}")
    model = WestModel.assemble(cfg, FAMILIES[family](), llm, tok)
    audio, lens = batch([8000, 4000])
    targets = [model.prompt.target(t) for t in ("ab", "cde")]
    width = max(map(len, targets))
    out = model({"audio": audio, "audio_lens": lens,
                 "targets": torch.tensor([t + [-100] * (width - len(t)) for t in targets]),
                 "target_lens": torch.tensor([len(t) for t in targets])})
    out["loss"].backward()
    assert out["num_tokens"] == sum(map(len, targets))
    assert model.projector.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.encoder.frame_rate / cfg.projector.rate == 25


def test_encoders_module_is_a_plain_model_module():
    import inspect

    src = inspect.getsource(encoders)
    assert "westkit.data" not in src and "westkit.train" not in src and "torch.distributed" not in src
