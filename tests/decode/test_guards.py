"""Hallucination guards: each flag fires on its failure and stays quiet on real transcripts."""
import numpy as np
import pytest

from westkit.decode.guards import GuardConfig, check, compression_ratio, longest_repeat, rms_dbfs

TRANSCRIPTS = [
    "Please hold while I transfer your call.",
    "the weather in the north will be cold and windy with rain later",
    "Here is the news at six o'clock.",
    "yes yes I know",
    "Sure thing, the meeting moved to Tuesday.",
    "",
]
SPEECH = 0.3 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)


@pytest.mark.parametrize("text", TRANSCRIPTS)
def test_real_transcripts_are_not_flagged(text):
    assert check(text, SPEECH) == []


@pytest.mark.parametrize("text,flag", [
    ("the the the the the", "repetition"),
    ("thank you for calling thank you for calling thank you for calling thank you for calling", "repetition"),
    ("I apologize, but it appears that there is no speech to transcribe.", "non_transcript"),
    ("Sure, here is the transcription: hello world", "non_transcript"),
    ("I'm sorry, but I cannot transcribe this audio.", "non_transcript"),
    ("Transcript: hello world", "non_transcript"),
])
def test_failures_are_flagged(text, flag):
    assert flag in check(text, SPEECH)


def test_compression_ratio_catches_long_loops_only():
    loop = "ok then we go " * 20
    assert compression_ratio(loop) > 2.4 and "compression" in check(loop, SPEECH)
    assert compression_ratio(TRANSCRIPTS[1]) < 2.0
    assert "compression" not in check("aaaa", SPEECH, GuardConfig(min_chars_for_ratio=40))


def test_words_on_silence_are_flagged_and_empty_silence_is_fine():
    silence = np.zeros(16000, dtype=np.float32) + 1e-5
    assert rms_dbfs(silence) < -90 and rms_dbfs(SPEECH) > -20
    assert check("thank you", silence) == ["speech_on_silence"]
    assert check("", silence) == []


def test_longest_repeat_counts_back_to_back_ngrams():
    assert longest_repeat("a b a b a b c".split()) == 3
    assert longest_repeat("a b c d".split()) == 1
    assert longest_repeat("x y z x y z".split()) == 2


def test_truncated_is_reported():
    assert check("hello", SPEECH, truncated=True) == ["truncated"]


def test_low_confidence_flag_only_when_asked():
    from westkit.decode.guards import GuardConfig, check

    assert check("hello there", confidence=0.3) == []  # off by default
    assert check("hello there", cfg=GuardConfig(min_confidence=0.5), confidence=0.3) == ["low_confidence"]
    assert check("hello there", cfg=GuardConfig(min_confidence=0.5), confidence=0.7) == []
