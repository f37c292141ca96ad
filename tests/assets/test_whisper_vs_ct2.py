"""The converted Whisper tiny.en decodes exactly like CTranslate2 running the wheel's model.bin.

Both get the same log-mel features (transformers' WhisperFeatureExtractor) of real human speech
(Asterisk telephone prompts, G.722) and espeak-ng speech, decode greedily from
<|startoftranscript|><|notimestamps|>, and must produce identical token ids.
"""
import gzip
import shutil
import subprocess

import numpy as np
import pytest
import torch

ASTERISK = "/usr/share/asterisk/sounds/en"
TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
PROMPTS = ["agent-alreadyon", "conf-onlyperson", "privacy-unident", "tt-weasels", "vm-incorrect",
           "queue-thankyou"]
ESPEAK = ["The quick brown fox jumps over the lazy dog.",
          "Please call the office before nine o'clock tomorrow morning.",
          "Seven hundred people attended the meeting in the town hall."]
SOT, NO_TIMESTAMPS, EOT = 50257, 50362, 50256


def _g722(name: str) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", f"{ASTERISK}/{name}.g722",
                          "-ar", "16000", "-ac", "1", "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).copy()


def _espeak(text: str, tmp_path) -> np.ndarray:
    import soundfile
    import soxr

    wav = tmp_path / "tts.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    audio, sr = soundfile.read(wav, dtype="float32")
    return soxr.resample(audio, sr, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    """[(id, 16 kHz float32 audio, reference text or None)]"""
    if shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None:
        pytest.skip("needs ffmpeg and espeak-ng (launch/bootstrap.sh installs them)")
    refs = dict(line.split(": ", 1) for line in gzip.open(TRANSCRIPTS, "rt") if ": " in line)
    tmp = tmp_path_factory.mktemp("espeak")
    return ([(p, _g722(p), refs[p].strip()) for p in PROMPTS]
            + [(f"espeak-{i}", _espeak(t, tmp), t) for i, t in enumerate(ESPEAK)])


@pytest.fixture(scope="module")
def features(utterances):
    from transformers import WhisperFeatureExtractor

    audio = [a for _, a, _ in utterances]
    return WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features


@pytest.mark.slow
def test_greedy_tokens_equal_ctranslate2(whisper_tiny_path, utterances, features):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from westkit.assets import whisper

    reference = ctranslate2.models.Whisper(str(whisper.wheel_dir()), device="cpu", compute_type="float32")
    results = reference.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                 [[SOT, NO_TIMESTAMPS]] * len(features), beam_size=1, max_length=448)
    want = [r.sequences_ids[0] for r in results]

    model = AutoModelForSpeechSeq2Seq.from_pretrained(whisper_tiny_path).eval()
    with torch.no_grad():
        out = model.generate(torch.from_numpy(features))  # settings from the generation config only
    # transformers returns the tokens after the prompt, then EOT and padding (also EOT)
    got = [[t for t in row.tolist() if t not in (SOT, NO_TIMESTAMPS, EOT)] for row in out]
    for (uid, _, _), w, g in zip(utterances, want, got):
        assert len(w) >= 2, f"{uid}: reference decoded almost nothing: {w}"
        assert g == w, f"{uid}: transformers {g} != ctranslate2 {w}"

    # and the transcripts are the speech (both could be wrong the same way otherwise)
    import jiwer
    processor = AutoProcessor.from_pretrained(whisper_tiny_path)
    texts = processor.batch_decode(out, skip_special_tokens=True)
    norm = processor.tokenizer.normalize
    refs = [norm(r) for _, _, r in utterances]
    hyps = [norm(t) for t in texts]
    assert jiwer.wer(refs, hyps) < 0.25, list(zip(refs, hyps))
