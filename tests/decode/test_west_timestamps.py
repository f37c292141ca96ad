"""WeST word timestamps: the LLM's attention over the audio embeddings + DTW, and choosing the
heads that align on speech with known timings. Tiny random models; no files, no network."""
import numpy as np
import pytest
import torch

from westkit.decode import align_heads, longform, timestamps as ts
from westkit.decode.recognizers import Transcript, WestRecognizer
from westkit.decode.search import GenerateConfig
from westkit.models.features import SAMPLE_RATE


@pytest.fixture(scope="module")
def rec():
    from westkit.models.west import tiny_random

    return WestRecognizer(tiny_random(), GenerateConfig(max_new_tokens=24), ts.WestHeads([(0, 0), (1, 1)], 1))


def _audio(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lens), max(lens))
    for i, n in enumerate(lens):
        audio[i, :n] = 0.1 * torch.randn(n, generator=g)
    return audio, torch.tensor(lens)


def _check_words(words, text, lo, hi):
    assert [w.word for w in words] == text.split()  # every word of the transcript, in order
    assert all(lo - 1e-9 <= w.start <= w.end <= hi + 1e-9 for w in words)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:]))  # monotonic, no overlap


def test_west_words_are_monotonic_non_overlapping_and_cover_the_transcript(rec):
    m = rec.model
    texts = ["hello big world, and more.", "one two three four five six seven", "ok"]
    ids = [m.prompt.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    probs = [np.linspace(0.2, 0.9, len(r)) for r in ids]
    outs = [Transcript(t, r, False, np.log(p).tolist()) for t, r, p in zip(texts, ids, probs)]
    audio, lens = _audio([3 * SAMPLE_RATE, 2 * SAMPLE_RATE, SAMPLE_RATE // 2])
    emb, n = m.audio_embeddings(audio, lens)
    words = ts.west_words(rec, emb, n, outs, offsets=[10.0, 0.0, 2.0])
    for w, t, off, dur in zip(words, texts, [10.0, 0.0, 2.0], lens.tolist()):
        _check_words(w, t, off, off + dur / SAMPLE_RATE + m.seconds_per_embedding)
    # confidence: the mean probability of each word's tokens (the first word: "hello" = 5 chars)
    assert words[0][0].confidence == pytest.approx(probs[0][:5].mean())
    # the path spans the audio: the first word starts in its first half, the last ends in its second
    assert words[1][0].start < 1.0 and words[1][-1].end > 1.0


def test_decode_words_and_long_form_with_a_west_model(rec):
    """The recognizer's own hypotheses through the long-form path (windows given): words cover
    each hypothesis, times are inside their window, confidences in [0, 1]."""
    audio, lens = _audio([2 * SAMPLE_RATE, SAMPLE_RATE])
    outs, words = rec.decode_words(audio, lens, [0.0, 0.0])
    for t, w, n in zip(outs, words, lens.tolist()):
        assert "".join(t.text.split()) == "".join(x.word for x in w)
        assert all(0 <= x.start <= x.end <= n / SAMPLE_RATE + 1e-9 and 0 <= x.confidence <= 1 for x in w)
    waves = [a[:n].numpy() for a, n in zip(audio, lens.tolist())]
    res = longform.transcribe(rec, waves, longform.LongformConfig(batch_size=2), [[(0, len(w))] for w in waves])
    assert [r["text"] for r in res] == [t.text for t in outs]


def test_batch_size_does_not_change_west_timings(rec):
    audio, lens = _audio([int(2.5 * SAMPLE_RATE), SAMPLE_RATE, int(1.7 * SAMPLE_RATE)], seed=1)
    m = rec.model
    texts = ["a bb ccc dd e", "xy z", "the cat sat on it"]
    ids = [m.prompt.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    outs = [Transcript(t, r, False, [-0.1] * len(r)) for t, r in zip(texts, ids)]
    emb, n = m.audio_embeddings(audio, lens)
    together = ts.west_words(rec, emb, n, outs)
    alone = []
    for i in range(3):
        e, k = m.audio_embeddings(audio[i:i + 1, :lens[i]], lens[i:i + 1])
        alone += ts.west_words(rec, e, k, outs[i:i + 1])
    assert [[w.as_dict() for w in ws] for ws in together] == [[w.as_dict() for w in ws] for ws in alone]
    # and the recognizer's own search + timing pass
    got3 = rec.decode_words(audio, lens)
    got1 = [rec.decode_words(audio[i:i + 1, :lens[i]], lens[i:i + 1]) for i in range(3)]
    assert [t.ids for t in got3[0]] == [g[0][0].ids for g in got1]
    assert [[w.as_dict() for w in ws] for ws in got3[1]] == [[w.as_dict() for w in g[1][0]] for g in got1]


def _planted(seed: int, n_layers=3, n_heads=4, planted=(1, 2), decoy=(2, 0), seconds=0.1):
    """Utterances of 3-6 words with true spans; every head random but ``planted`` (attends to
    the token's own word, broadly and noisily) and ``decoy`` (sharply on the *next* word)."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(6):
        n_words = int(rng.integers(3, 7))
        t, spans = 0.3, []
        for _ in range(n_words):
            d = rng.uniform(0.2, 0.6)
            spans.append((t, t + d))
            t += d + rng.uniform(0.05, 0.3)
        n_pos = int(np.ceil((t + 0.3) / seconds))
        token_word = sorted(rng.integers(0, n_words, 2 * n_words).tolist() + list(range(n_words)))
        n_tok = len(token_word)
        att = torch.from_numpy(rng.dirichlet(np.ones(n_pos), size=(n_layers * n_heads, n_tok + 1)))
        inside = ts.span_mask(spans, token_word, n_pos, seconds).double()
        nxt = ts.span_mask(spans, [min(w + 1, n_words - 1) for w in token_word], n_pos, seconds).double()
        noise = torch.from_numpy(rng.dirichlet(np.ones(n_pos), size=n_tok))
        att[planted[0] * n_heads + planted[1], :n_tok] = 0.5 * inside / inside.sum(-1, keepdim=True) + 0.5 * noise
        att[decoy[0] * n_heads + decoy[1], :n_tok] = 0.98 * nxt / nxt.sum(-1, keepdim=True) + 0.02 * noise
        data.append({"att": att.float(), "token_word": token_word, "spans": spans, "n_words": n_words})
    return data


def test_head_selection_picks_the_planted_aligned_head():
    data = _planted(0)
    heads = align_heads.select(data, n_heads=4, seconds=0.1, ks=(1, 2, 4), widths=(1, 3))
    assert heads.heads[0] == (1, 2)  # the best head is the aligned one, not the sharp decoy
    top = heads.info["top_scores"]
    assert top[0][:2] == [1, 2] and top[0][2] > 0.5 > heads.info["chance"]
    assert heads.info["mean_score"] < top[0][2] and 0 < heads.info["audio_share_mean"] <= 1
    # DTW over the chosen heads times the words to within a position or two
    best = heads.info["dtw_trials"][f"k{len(heads.heads)}_w{heads.median_filter_width}"]
    assert best["mae_ms"] < 150 and best["mae_ms"] < heads.info["dtw_trials"]["all_w1"]["mae_ms"]
    # without the planted head, the decoy is not mistaken for alignment: the best head left is random
    for d in data:
        d["att"][1 * 4 + 2] = d["att"][0]
    top = align_heads.select(data, n_heads=4, seconds=0.1, ks=(1,), widths=(1,)).info["top_scores"]
    assert top[0][2] < 0.5


def test_heads_file_round_trip(tmp_path):
    h = ts.WestHeads([(3, 1), (0, 2)], 3, {"chance": 0.1})
    h.save(tmp_path / ts.HEADS_FILE)
    assert ts.WestHeads.load(tmp_path / ts.HEADS_FILE) == h


def test_word_timestamps_of_a_west_run_need_its_heads_before_loading(tmp_path, capsys):
    from westkit.decode import recognize

    with pytest.raises(SystemExit):
        recognize.parse_args(["--west", str(tmp_path), "--audio", "a.wav", "--out", "o", "--word-timestamps"])
    assert "python -m westkit.decode.align_heads --west" in capsys.readouterr().err
    (tmp_path / ts.HEADS_FILE).write_text('{"heads": [[0, 0]]}')
    args = recognize.parse_args(["--west", str(tmp_path), "--audio", "a.wav", "--out", "o", "--word-timestamps"])
    assert args.word_timestamps


def test_west_decode_words_without_heads_names_the_fix(rec):
    bare = WestRecognizer(rec.model, rec.gen)
    audio, lens = _audio([SAMPLE_RATE])
    with pytest.raises(ValueError, match="align_heads"):
        bare.decode_words(audio, lens)


def test_dtw_over_planted_attention_recovers_the_word_times():
    """Attention that sits on each token's true span (plus noise) -> DTW word boundaries within
    two audio positions of the truth; the same attention reversed in time does not."""
    rng = np.random.default_rng(3)
    spans, t = [], 0.4
    for _ in range(6):
        spans.append((t, t + rng.uniform(0.2, 0.5)))
        t = spans[-1][1] + rng.uniform(0.1, 0.3)
    seconds, n_pos = 0.08, int(np.ceil((t + 0.4) / 0.08))
    token_word = [0, 1, 1, 2, 3, 3, 3, 4, 5]
    inside = ts.span_mask(spans, token_word + [5], n_pos, seconds).double()
    att = torch.stack([inside / inside.sum(-1, keepdim=True) + 0.05 * torch.from_numpy(rng.random((10, n_pos)))
                       for _ in range(3)])
    s, e = ts.word_times(ts.dtw_starts(att, 1, seconds), token_word, 6)
    assert s[0] == 0.0  # the path starts at the first position (the snap to speech moves it)
    assert np.abs(s[1:] - [a for a, _ in spans[1:]]).max() <= 2 * seconds  # a pause may go either way
    assert np.allclose(e[:-1], s[1:])  # a word ends where the next starts
    s, _ = ts.word_times(ts.dtw_starts(att.flip(-1), 1, seconds), token_word, 6)
    assert np.abs(s - [a for a, _ in spans]).mean() > 0.3
