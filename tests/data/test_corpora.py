"""Offline corpora: cached, deterministic, disjoint splits, held-out test voice, readable."""
import hashlib
import json
import os

import pytest

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.shards import read_index


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_make_builds_once_and_is_deterministic(westkit_home, tmp_path):
    first = corpora.make("general-train", limit=4, progress=False)
    assert first == westkit_home / "data" / "general-train-limit4"
    stamp = (first / "index.json").stat().st_mtime_ns
    assert corpora.make("general-train", limit=4, progress=False) == first
    assert (first / "index.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
    meta = json.loads((first / "corpus.json").read_text())
    assert meta["utterances"] == 4 and meta["build_seconds"] > 0 and "project licence" in meta["licence"]
    os.environ["WESTKIT_HOME"] = str(tmp_path)
    try:
        again = corpora.make("general-train", limit=4, progress=False)
    finally:
        os.environ["WESTKIT_HOME"] = str(westkit_home)
    assert again != first and _digest(again) == _digest(first)
    assert not list((westkit_home / "data").glob(".*partial"))


def test_piper_test_set_is_deterministic_speech_of_held_out_sentences(westkit_home, tmp_path):
    """special-test-piper: the special-test sentences in piper's neural voice, the same bytes on
    every build (piper's sampling noise is off), a few seconds of non-silent audio each."""
    first = corpora.make("special-test-piper", limit=2, progress=False)
    os.environ["WESTKIT_HOME"] = str(tmp_path)
    try:
        again = corpora.make("special-test-piper", limit=2, progress=False)
    finally:
        os.environ["WESTKIT_HOME"] = str(westkit_home)
    assert _digest(again) == _digest(first)
    cfg = LoaderConfig(shards=[str(first)], num_workers=0, shuffle=False)
    batches = list(build_loader(cfg, train=False))
    texts = [t for b in batches for t in b["texts"]]
    assert len(texts) == 2 and set(texts) <= set(corpora._split("special", test=True))
    for b in batches:
        for i, n in enumerate(b["audio_lens"].tolist()):
            assert 1.0 < n / 16000 < 15.0 and float(b["audio"][i, :n].abs().max()) > 0.05


def test_general_corpora_are_speech_of_their_sentences(westkit_home):
    folder = corpora.make("general-test", limit=3, progress=False)
    cfg = LoaderConfig(shards=[str(folder)], num_workers=0, shuffle=False)
    batch = [b for b in build_loader(cfg, train=False)]
    texts = {t for b in batch for t in b["texts"]}
    general = set(corpora.sentences("general"))
    assert len(texts) == 3 and texts <= general
    for b in batch:
        # a few seconds of non-silent speech per sentence
        for i, n in enumerate(b["audio_lens"].tolist()):
            assert 1.0 < n / 16000 < 12.0
            assert float(b["audio"][i, :n].abs().max()) > 0.05
    train = {s for s in general if not corpora._is_test(s, corpora.TEST_FRACTION["general"])}
    assert not texts & train


def test_splits_are_disjoint_and_special_test_voice_is_held_out():
    special_text = {e.text for e in corpora._entries("special-text")}
    tts = list(corpora._entries("special-tts"))
    test = list(corpora._entries("special-test"))
    assert {e.text for e in tts} == special_text and len(special_text) > 150
    assert len(test) > 40 and not {e.text for e in test} & special_text
    train_voices = {e.audio.voice for name in ("special-tts", "general-train", "general-test")
                    for e in corpora._entries(name)}
    assert len(train_voices) > 10
    assert {e.audio.voice for e in test} == {corpora.HELDOUT_VOICE} and not train_voices & {corpora.HELDOUT_VOICE}
    heldout_accent = corpora.HELDOUT_VOICE.split("+")[0]
    assert not any(v.split("+")[0] == heldout_accent for v in train_voices)
    adapt = {e.key for e in corpora._entries("asterisk-adapt")}
    ast_test = {e.key for e in corpora._entries("asterisk-test")}
    assert not adapt & ast_test and 200 < len(adapt) + len(ast_test) <= len(corpora.asterisk_prompts())
    assert 0.35 < len(adapt) / (len(adapt) + len(ast_test)) < 0.65


def test_asterisk_corpora(westkit_home):
    test = corpora.make("asterisk-test", limit=3, progress=False)
    adapt = corpora.make("asterisk-adapt", progress=False)
    ti, ai = read_index(test), read_index(adapt)
    assert ti["totals"]["samples"] == 3 and ti["totals"]["duration"] > 1.0
    assert ai["totals"]["text_only"] == ai["totals"]["samples"] > 200
    texts = [t for b in build_loader(LoaderConfig(shards=[str(adapt)], num_workers=0), train=False)
             for t in b["texts"]]
    assert len(texts) == ai["totals"]["samples"]
    assert not any("[" in t or "  " in t for t in texts)
    assert corpora.normalise_prompt(" Press [beep]  one (pause) now. ") == "Press one now."


def test_rare_words_are_the_domain_names_not_common_words():
    assert corpora.rare_words("Rivaroxaban should be taken with food.") == ["rivaroxaban"]
    assert corpora.rare_words("Warfarin and warfarin, then apixaban.") == ["warfarin", "apixaban"]
    assert corpora.rare_words("The patient was started on the tablets.") == []
    assert not any(corpora.rare_words(s) for s in corpora.sentences("general"))
    train, test = corpora.rare_vocabulary(False), corpora.rare_vocabulary(True)
    assert len(train) > 150 and len(test) > 50 and {"apixaban", "betelgeuse"} & set(train + test)


def test_context_corpus_is_the_same_audio_with_rare_words_and_distractors(westkit_home):
    plain = corpora.make("special-test", limit=4, progress=False)
    ctx = corpora.make("special-test-context", limit=4, progress=False)
    load = lambda folder: [s for b in build_loader(LoaderConfig(shards=[str(folder)], num_workers=0, shuffle=False),
                                                   train=False)
                           for s in zip(b["keys"], b["texts"], b["audio"], b.get("contexts", [None] * len(b["keys"])))]
    a, b = load(plain), load(ctx)
    assert [k for k, *_ in b] == ["special-test-context" + k[len("special-test"):] for k, *_ in a]
    test_vocab = set(corpora.rare_vocabulary(True))
    for (_, text, audio, none), (_, text2, audio2, context) in zip(a, b):
        assert text == text2 and none is None and audio.equal(audio2)   # same speech, now with a context
        words = context.split(", ")
        own = corpora.rare_words(text)
        assert set(own) <= set(words) and len(words) == len(own) + corpora.CONTEXT_DISTRACTORS
        assert set(words) <= test_vocab          # distractors from the test split's own names
    assert len({c for *_, c in b}) == 4
    # the distractors of training utterances never name a test word the training text lacks
    train_only = set(corpora.rare_vocabulary(False))
    for e in list(corpora._entries("general-train-context"))[:20]:
        assert set(e.extra["context"].split(", ")) <= train_only and not corpora.rare_words(e.text)


def test_unknown_corpus_is_a_value_error():
    with pytest.raises(ValueError, match="choose one of"):
        corpora.make("general")


def _make_in_child(home, queue):
    os.environ["WESTKIT_HOME"] = home
    path = corpora.make("special-test", limit=2, progress=False)
    st = (path / "index.json").stat()
    queue.put((str(path), st.st_ino, st.st_mtime_ns))


def test_concurrent_makes_build_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # two processes starting together, like two ranks
    queue = ctx.Queue()
    procs = [ctx.Process(target=_make_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    # both got the same files (inode and mtime): one built, the other waited and reused it
    assert results[0] == results[1]
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == ["special-test-limit2"]
