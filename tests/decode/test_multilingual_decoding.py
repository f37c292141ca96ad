"""Per-row language decoding and scoring: each row's own language prefix (``--language``
overrides), English rows by the English normaliser, other languages by Whisper's basic one,
and per-language WER in the report of a mixed set."""
import pytest
import torch

from westkit.decode.recognize import report
from westkit.decode.recognizers import WhisperRecognizer, row_prefixes
from westkit.decode.scoring import normalize, score
from westkit.decode.search import GenerateConfig
from westkit.models.whisper import WhisperText, load_whisper_tokenizer


@pytest.fixture(scope="module")
def base_tokenizer_path():
    from westkit.assets import materialise
    try:
        return str(materialise("whisper-base"))
    except ValueError as e:
        pytest.skip(str(e))


def test_english_keeps_its_normaliser_other_languages_get_the_basic_one():
    assert normalize("Mr. Smith's colour", "en") == normalize("Mr. Smith's colour") == "mister smith is color"
    assert normalize("Über den Fluß, bitte!", "de") == "über den fluß bitte"
    assert normalize("¿Me pasas la sal?", "es") == "me pasas la sal"
    # the English rules (spelling, number words) do not touch German text
    assert normalize("Zwei Kinder", "de") == "zwei kinder"
    # scoring follows each pair's language
    assert score(["Über den Fluß"], ["über den fluß"], langs=["de"]).wer == 0.0


def test_a_mixed_set_reports_wer_per_language():
    rows = [{"key": "a", "ref": "the cat", "hyp": "the cat", "flags": [], "lang": "en", "duration": 1.0},
            {"key": "b", "ref": "der Hund", "hyp": "der Mund", "flags": [], "lang": "de", "duration": 1.0},
            {"key": "c", "ref": "el gato", "hyp": "el gato negro", "flags": [], "lang": "es", "duration": 1.0}]
    rep = report(rows)
    assert set(rep["languages"]) == {"en", "de", "es"}
    for lang in ("en", "de", "es"):
        part = [r for r in rows if r["lang"] == lang]
        assert rep["languages"][lang] == score([r["ref"] for r in part], [r["hyp"] for r in part],
                                               langs=[lang]).as_dict()
    assert rep["languages"]["en"]["wer"] == 0 < rep["languages"]["de"]["wer"]
    assert rep["all"]["utterances"] == 3
    assert "languages" not in report([dict(r, lang="en") for r in rows])   # one language: no split


def test_row_prefixes_follow_the_rows_unless_a_language_is_given(base_tokenizer_path):
    tok = load_whisper_tokenizer(base_tokenizer_path)
    text = WhisperText(tok)
    rows = row_prefixes(text, list(tok.prefix_tokens), ["en", "de"], 2)
    assert [tok.convert_ids_to_tokens(r[1]) for r in rows] == ["<|en|>", "<|de|>"]
    fixed = list(tok.prefix_tokens)
    assert row_prefixes(text, fixed, ["en", ""], 2) == [fixed] * 2      # an unlabelled row: the fixed one
    assert row_prefixes(text, fixed, None, 3) == [fixed] * 3
    forced = load_whisper_tokenizer(base_tokenizer_path)
    forced.set_prefix_tokens(language="es", task="transcribe")
    assert row_prefixes(WhisperText(forced), list(forced.prefix_tokens), ["en", "de"], 2) == [list(forced.prefix_tokens)] * 2


def test_per_row_languages_decode_as_each_row_would_with_its_language_given(base_tokenizer_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=51865, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64)
    whisper = WhisperForConditionalGeneration(cfg).eval()
    gen = GenerateConfig(max_new_tokens=6)
    states = torch.randn(2, 1500, 32)
    mixed = WhisperRecognizer(whisper, load_whisper_tokenizer(base_tokenizer_path), gen)
    outs = mixed.decode_states(states, langs=["en", "de"])
    for i, lang in enumerate(["en", "de"]):
        alone = WhisperRecognizer(whisper, load_whisper_tokenizer(base_tokenizer_path), gen, language=lang)
        assert outs[i].ids == alone.decode_states(states[i:i + 1])[0].ids
