"""Word timestamps, confidence, long-form decoding and subtitle outputs.

Fast tests: word grouping on the real Whisper tokenizer, window planning, the snap to speech,
the subtitle writers. Slow tests run the real whisper-tiny.en on espeak-ng speech whose word
boundaries are known to the sample (`westkit.decode.aligned_speech`).
"""
import json

import numpy as np
import pytest
import torch

from westkit.decode import longform, timestamps as ts
from westkit.models.features import SAMPLE_RATE

SENTENCES = [("Please hold while I transfer your call to the next available agent.", "en-us"),
             ("The museum is closed on Mondays but open late on Thursday evenings.", "en-gb"),
             ("Tomorrow morning the train to the city leaves at eight o'clock.", "en-gb-scotland")]


@pytest.fixture(scope="module")
def tokenizer(whisper_tiny_path):
    from westkit.models.whisper import load_whisper_tokenizer

    return load_whisper_tokenizer(whisper_tiny_path)


def test_words_group_tokens_and_attach_punctuation(tokenizer):
    text = ' "Hello," she said - it\'s twenty-one (really).'
    ids = tokenizer.encode(text, add_special_tokens=False)
    words = ts.split_words(tokenizer, ids)
    assert [w for w, _ in words] == ['"Hello,"', "she", "said", "-it's", "twenty-one", "(really)."]
    assert [p for _, g in words for p in g] == list(range(len(ids)))  # every token, in order, once
    starts = np.arange(len(ids) + 1) * 0.1
    got = ts.words_from_tokens(tokenizer, ids, starts, [np.log(0.5)] * len(ids), offset=1.0)
    assert [(round(w.start, 2), round(w.end, 2)) for w in got][:2] == [
        (1.0, round(1.0 + 0.1 * len(words[0][1]), 2)), (round(1.0 + 0.1 * len(words[0][1]), 2), round(1.0 + 0.1 * (len(words[0][1]) + 1), 2))]
    assert all(w.confidence == pytest.approx(0.5) for w in got)


def test_windows_cover_all_speech_within_30s_without_overlap():
    sr = SAMPLE_RATE
    regions = [(1 * sr, 5 * sr), (6 * sr, 20 * sr), (21 * sr, 29 * sr), (40 * sr, 115 * sr), (116 * sr, 117 * sr)]
    cfg = longform.LongformConfig()
    wins = longform.plan_windows(regions, 120 * sr, cfg)
    assert all(b - a <= 30 * sr for a, b in wins)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(wins, wins[1:]))
    for a, b in regions:  # every speech sample sits in some window
        covered = sum(min(b, wb) - max(a, wa) for wa, wb in wins if wb > a and wa < b)
        assert covered == b - a
    # 1-29 s merged (28 s); 75 s of speech cut in three 25 s pieces, the last second joins the third
    assert len(wins) == 4 and wins[-1] == (90 * sr, int(117.2 * sr))
    assert wins[0] == (int(0.8 * sr), int(29.2 * sr))  # padded by 0.2 s into the silence


def test_snap_moves_dtw_boundaries_onto_the_pauses():
    """DTW's typical output (numbers from whisper-tiny.en on an espeak-ng sentence): each end is
    the next start, pauses go to the word before, boundaries trail the speech by up to 0.4 s."""
    truth = [(0.58, 0.90), (1.03, 1.46), (1.53, 1.95), (2.01, 2.51), (2.80, 3.17), (3.50, 3.78), (4.01, 4.37)]
    dtw = [(0.00, 1.14), (1.14, 1.62), (1.62, 2.12), (2.12, 2.76), (2.76, 3.60), (3.60, 4.10), (4.10, 4.66)]
    audio = np.zeros(5 * SAMPLE_RATE, np.float32)
    for a, b in truth:
        audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] = 0.3
    words = [ts.Word("w", a + 7.0, b + 7.0, 1.0) for a, b in dtw]  # audio[0] is at 7 s
    ts.snap_to_speech(words, audio, offset=7.0)
    got = np.array([(w.start - 7, w.end - 7) for w in words])
    assert np.abs(got - np.array(truth)).max() <= 0.011  # to the 10 ms frame
    # where speech runs on without pauses the DTW times stay
    words = [ts.Word("w", a, b, 1.0) for a, b in dtw]
    ts.snap_to_speech(words, np.full(5 * SAMPLE_RATE, 0.3, np.float32))
    assert [(w.start, w.end) for w in words] == dtw


def test_srt_and_vtt():
    words = [ts.Word("Hello,", 0.5, 0.9, 0.9), ts.Word("world.", 0.9, 1.25, 0.8), ts.Word("Again", 3601.0, 3601.5, 0.7)]
    segs = [ts.segment(words[:2], "Hello, world.", 0.0, 2.0), ts.segment(words[2:], "Again", 3600.0, 3602.0)]
    res = ts.result_dict("Hello, world. Again", words, segs, 3602.0)
    assert res["segments"][0] == {"start": 0.5, "end": 1.25, "text": "Hello, world.", "confidence": 0.85}
    assert ts.to_srt(res) == ("1\n00:00:00,500 --> 00:00:01,250\nHello, world.\n\n"
                              "2\n01:00:01,000 --> 01:00:01,500\nAgain\n\n")
    assert ts.to_vtt(res).startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.250\nHello, world.\n\n")


def test_transcribe_file_names_an_unreadable_file_before_loading_a_model(tmp_path):
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(ValueError, match="bad.wav: cannot read the audio"):
        ts.transcribe_file(str(tmp_path / "bad.wav"), model="no-such-model")


# -- real whisper-tiny.en on speech with known word boundaries ----------------------------------

@pytest.fixture(scope="module")
def rec(whisper_tiny_path):
    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig

    return WhisperRecognizer.load(whisper_tiny_path, GenerateConfig(), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def utts():
    from westkit.decode.aligned_speech import make_utterance

    return [make_utterance(t, v, seed=i) for i, (t, v) in enumerate(SENTENCES)]


def _errors(u, words):
    """(start errors, end errors) in s of hypothesis words matched to reference words."""
    import difflib
    import re

    norm = [re.sub(r"[^\w']", "", w.lower()) for w in u.words]
    hyp = [re.sub(r"[^\w']", "", w["word"].lower()) for w in words]
    sm = difflib.SequenceMatcher(None, norm, hyp, autojunk=False)
    pairs = [(b.a + k, b.b + k) for b in sm.get_matching_blocks() for k in range(b.size)]
    return (np.array([words[h]["start"] - u.starts[r] for r, h in pairs]),
            np.array([words[h]["end"] - u.ends[r] for r, h in pairs]), len(pairs))


@pytest.mark.slow
def test_word_boundaries_on_known_timings_and_batch_independence(rec, utts):
    audios = [u.audio for u in utts]
    whole = [[(0, len(a))] for a in audios]
    raw = longform.transcribe(rec, audios, longform.LongformConfig(batch_size=3, snap=False), whole)
    single = longform.transcribe(rec, audios, longform.LongformConfig(batch_size=1, snap=False), whole)
    assert [r["words"] for r in raw] == [r["words"] for r in single]  # batch size changes nothing
    snapped = []
    for u, r in zip(utts, raw):  # what transcribe does with snap=True
        words = [ts.Word(**w) for w in r["words"]]
        ts.snap_to_speech(words, u.audio)
        snapped.append([w.as_dict() for w in words])
    starts, ends, matched = [], [], 0
    for u, words in zip(utts, snapped):
        s, e, n = _errors(u, words)
        starts.append(s), ends.append(e)
        matched += n
        assert all(0.0 <= w["confidence"] <= 1.0 for w in words)
    starts, ends = np.abs(np.concatenate(starts)), np.abs(np.concatenate(ends))
    assert matched >= 0.8 * sum(len(u.words) for u in utts)
    # docs/timestamps.md has the full benchmark; a word spread evenly over the audio would be
    # off by about half a second, DTW alone by 0.1-0.2 s
    assert starts.mean() < 0.06 and ends.mean() < 0.06
    assert (np.maximum(starts, ends) <= 0.1).mean() >= 0.85
    # DTW alone: ends run into the pauses after the words; the snap is what makes them good
    raw_ends = np.abs(np.concatenate([_errors(u, r["words"])[1] for u, r in zip(utts, raw)]))
    assert raw_ends.mean() > ends.mean() + 0.05


@pytest.mark.slow
def test_long_form_covers_the_whole_file_through_recognize(rec, utts, tmp_path):
    """About 55 s of speech (the three utterances, twice, with pauses): VAD windows of at most
    30 s, words in order without overlap from the first to the last word, through
    westkit-recognize --word-timestamps with its subtitles."""
    import soundfile as sf

    from westkit.decode import recognize

    gap = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    parts, truth = [], []
    t = 0
    for u in utts + utts:
        truth += [(t / SAMPLE_RATE + s, t / SAMPLE_RATE + e) for s, e in zip(u.starts, u.ends)]
        parts += [u.audio, gap]
        t += len(u.audio) + len(gap)
    audio = np.concatenate(parts)
    assert len(audio) / SAMPLE_RATE > 45  # more than one window
    sf.write(tmp_path / "long.wav", audio, SAMPLE_RATE)
    sf.write(tmp_path / "quiet.wav", np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    rc = recognize.main(["--whisper", f"tiny={rec.whisper.config.name_or_path}", "--audio", str(tmp_path / "long.wav"),
                         str(tmp_path / "quiet.wav"), "--out", str(tmp_path / "out"), "--word-timestamps",
                         "--batch-size", "4"])
    assert rc == 0
    row, quiet = map(json.loads, (tmp_path / "out" / "hyps.jsonl").read_text().splitlines())
    assert quiet["words"] == [] and {"no_speech", "empty"} <= set(quiet["flags"])  # reported, not dropped
    assert "truncated_30s" not in row["flags"] and row["audio_duration"] == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
    words = row["words"]
    assert len(words) >= 0.8 * len(truth)
    assert all(w["start"] <= w["end"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))  # monotonic, no overlap
    assert abs(words[0]["start"] - truth[0][0]) < 0.3 and abs(words[-1]["end"] - truth[-1][1]) < 0.3
    assert len(row["segments"]) >= 2 and all(s["end"] - s["start"] <= 30 for s in row["segments"])
    srt = (tmp_path / "out" / "subtitles" / "long.srt").read_text()
    vtt = (tmp_path / "out" / "subtitles" / "long.vtt").read_text()
    assert srt.startswith("1\n00:00:0") and vtt.startswith("WEBVTT") and "-->" in srt
    assert json.loads((tmp_path / "out" / "subtitles" / "long.json").read_text())["words"] == words
    # the library call a CLI makes: one file in, words near the truth, the three files out
    sf.write(tmp_path / "one.wav", utts[0].audio, SAMPLE_RATE)
    one = ts.transcribe_file(str(tmp_path / "one.wav"), model=rec, out_dir=str(tmp_path / "lib"))
    s, e, n = _errors(utts[0], one["words"])
    assert n >= 0.8 * len(utts[0].words) and np.abs(s).mean() < 0.1 and np.abs(e).mean() < 0.1
    assert all((tmp_path / "lib" / f"one.{x}").is_file() for x in ("json", "srt", "vtt"))
    assert one["audio_duration"] == pytest.approx(len(utts[0].audio) / SAMPLE_RATE, abs=1e-3)


def test_alignment_of_a_hypothesis_that_fills_the_decoder(tiny_whisper_dir):
    """A tiny random Whisper (64 positions): a hypothesis of 62 ids (the budget's cap) still
    aligns, one start per id plus the end token, in time order; a checkpoint without
    alignment heads is named with the fix."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    whisper = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    tok = WhisperTokenizerFast.from_pretrained(tiny_whisper_dir)
    prefix = list(tok.prefix_tokens)
    states = torch.randn(2, 1500, 32, generator=torch.Generator().manual_seed(0))
    ids = [list(range(300, 300 + 64 - len(prefix))), [300, 301]]
    with pytest.raises(ValueError, match="no alignment_heads"):
        ts.whisper_token_starts(whisper, states, prefix, tok.eos_token_id, ids, [1500, 100])
    whisper.generation_config.alignment_heads = [[0, 0], [1, 1]]
    before = whisper.config._attn_implementation
    starts = ts.whisper_token_starts(whisper, states, prefix, tok.eos_token_id, ids, [1500, 100])
    assert [len(s) for s in starts] == [63, 3]
    assert all((np.diff(s) >= 0).all() for s in starts) and starts[1][-1] <= 100 * ts.FRAME_SECONDS
    assert whisper.config._attn_implementation == before  # eager only for the alignment pass
