"""The long-form seek (`westkit.decode.longform._unheard`): decode a window again from its last
word when the hypothesis stopped early and speech follows, and only then."""
import subprocess

import numpy as np
import pytest

from westkit.decode import longform
from westkit.decode.timestamps import Word
from westkit.models.features import SAMPLE_RATE


@pytest.fixture(scope="module")
def speech_then_speech(tmp_path_factory):
    """2 s of espeak-ng speech, 1 s of silence, 2 s of speech (16 kHz)."""
    import soundfile as sf
    import soxr

    wav = tmp_path_factory.mktemp("seek") / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Please hold the line."], check=True, capture_output=True)
    audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)[:2 * SAMPLE_RATE]
    audio = np.pad(audio, (0, 2 * SAMPLE_RATE - len(audio)))
    return np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32), audio])


def test_seek_only_where_speech_is_left(speech_then_speech):
    audio, cfg = speech_then_speech, longform.LongformConfig()
    n = len(audio)
    early = [Word("please", 0.1, 0.5, 0.9), Word("hold", 0.5, 1.4, 0.9)]
    assert longform._unheard(audio, 0, n, early, cfg) == int(1.4 * SAMPLE_RATE)  # speech after 1.4 s
    assert longform._unheard(audio, 0, n, early + [Word("line", 3.5, 4.8, 0.9)], cfg) is None  # reached the end
    assert longform._unheard(audio, 0, n, [], cfg) is None  # nothing decoded: no seek (no loop)
    silent_tail = np.concatenate([audio[:2 * SAMPLE_RATE], np.zeros(3 * SAMPLE_RATE, np.float32)])
    assert longform._unheard(silent_tail, 0, n, early, cfg) is None  # only silence is left
    # a window that starts later: times are seconds of the file, the result samples of the file
    assert longform._unheard(audio, SAMPLE_RATE, n, [Word("x", 1.0, 1.02, 0.9)], cfg) is None  # no progress
