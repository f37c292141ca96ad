"""The CTranslate2 backend (`westkit.decode.ct2`): the conversion cache, and decoding that matches
the transformers path token for token (a tiny random Whisper; real whisper-tiny.en on real
telephone speech), with word times close to the transformers path's."""
import gzip
import subprocess
from pathlib import Path

import numpy as np
import pytest

from westkit.data.pipeline import pad_audio
from westkit.decode import ct2
from westkit.decode.search import GenerateConfig

pytest.importorskip("ctranslate2")

ASTERISK = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
PROMPTS = ["agent-alreadyon", "conf-onlyperson", "privacy-unident", "tt-weasels", "vm-incorrect",
           "queue-thankyou", "agent-pass", "conf-getpin"]


def test_conversion_is_cached_and_follows_the_checkpoint(tiny_whisper_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path / "home"))
    model = tmp_path / "model"
    shutil.copytree(tiny_whisper_dir, model)
    folder, tok = ct2.ct2_folder(str(model))
    assert folder.parent == tmp_path / "home" / "cache" / "ct2" and (folder / "model.bin").is_file()
    assert tok == str(model)
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert ct2.ct2_folder(str(model))[0] == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    # new weights in the same folder: a new conversion, not the stale one
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    assert ct2.ct2_folder(str(model))[0] != folder
    # a run folder of the Whisper recipe: its own ct2/ export, the tokenizer from hf/
    run = tmp_path / "run"
    shutil.copytree(model, run / "hf")
    shutil.copytree(folder, run / "ct2")
    assert ct2.ct2_folder(str(run)) == (run / "ct2", str(run / "hf"))
    assert ct2.ct2_folder(str(run / "ct2"))[0] == run / "ct2"  # a CTranslate2 folder as it is


def test_unknown_backend_and_compute_type_are_named(tiny_whisper_dir):
    with pytest.raises(ValueError, match="choose one of transformers, ctranslate2"):
        ct2.whisper_recognizer(str(tiny_whisper_dir), GenerateConfig(), backend="onnx")
    with pytest.raises(ValueError, match="--compute-type 'int4'"):
        ct2.whisper_recognizer(str(tiny_whisper_dir), GenerateConfig(), backend="ctranslate2", compute_type="int4")


def test_tiny_random_whisper_decodes_like_transformers(tiny_whisper_dir, tmp_path, monkeypatch):
    """A random model babbles up to its budget: greedy, both backends must pick the same ids and
    cut every row at its own budget (CTranslate2 takes one length per batch); beam search stays
    within the budgets too."""
    from westkit.decode.search import token_budget

    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    audio, lens = pad_audio([rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 24000, 40000)])
    gen = GenerateConfig(max_new_tokens=40)
    budgets = token_budget(lens, gen)
    ref = ct2.whisper_recognizer(str(tiny_whisper_dir), gen)(audio, lens)
    got = ct2.whisper_recognizer(str(tiny_whisper_dir), gen, backend="ctranslate2", compute_type="float32")(audio, lens)
    assert [t.ids for t in got] == [t.ids for t in ref] and [t.text for t in got] == [t.text for t in ref]
    assert [t.hit_limit for t in got] == [t.hit_limit for t in ref]
    assert any(t.hit_limit for t in ref) and len(set(budgets)) == 3  # the per-row cut was exercised
    beam = GenerateConfig(beam=2, max_new_tokens=40)
    outs = ct2.whisper_recognizer(str(tiny_whisper_dir), beam, backend="ctranslate2", compute_type="float32")(audio, lens)
    assert all(len(t.ids) <= b for t, b in zip(outs, budgets))


@pytest.fixture(scope="module")
def asterisk():
    if not ASTERISK.is_dir():
        pytest.skip("asterisk-core-sounds-en-g722 not installed")
    refs = dict(line.split(": ", 1) for line in gzip.open(TRANSCRIPTS, "rt") if ": " in line)
    audios = []
    for p in PROMPTS:
        raw = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", str(ASTERISK / f"{p}.g722"), "-ar", "16000",
                              "-ac", "1", "-f", "f32le", "-"], capture_output=True, check=True).stdout
        audios.append(np.frombuffer(raw, np.float32).copy())
    return audios, [refs[p].strip() for p in PROMPTS]


@pytest.mark.slow
def test_real_whisper_ids_words_and_int8(whisper_tiny_path, asterisk):
    from westkit.decode.scoring import score

    audios, refs = asterisk
    audio, lens = pad_audio(audios)
    gen = GenerateConfig()
    hf = ct2.whisper_recognizer(whisper_tiny_path, gen)
    fp32 = ct2.whisper_recognizer(whisper_tiny_path, gen, backend="ctranslate2", compute_type="float32")
    ref, ref_words = hf.decode_words(audio, lens)
    got, got_words = fp32.decode_words(audio, lens)
    assert [t.ids for t in got] == [t.ids for t in ref]
    diffs = [abs(a.start - b.start) + abs(a.end - b.end) for x, y in zip(ref_words, got_words) for a, b in zip(x, y)]
    assert [[w.word for w in x] for x in got_words] == [[w.word for w in x] for x in ref_words]
    assert np.mean(diffs) / 2 < 0.05  # the same heads and DTW: edges within a few 20 ms frames
    assert all(0 < w.confidence <= 1 for x in got_words for w in x)
    assert all(len(t.logprobs) == len(t.ids) for t in got)
    int8 = ct2.whisper_recognizer(whisper_tiny_path, gen, backend="ctranslate2")  # int8 on CPU by default
    w32 = score(refs, [t.text for t in got]).wer
    w8 = score(refs, [t.text for t in int8(audio, lens)]).wer
    assert w32 < 0.25 and w8 < w32 + 0.1, (w32, w8)
