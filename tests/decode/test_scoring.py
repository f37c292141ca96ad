import pytest

from westkit.decode.scoring import normalize, score


def test_normaliser_is_whispers_english_one():
    # spelling table (colour -> color), titles, contractions, number words -> digits
    assert normalize("Mr. Smith's colour, isn't it?") == "mister smith is color is not it"
    assert normalize("Twenty-five PERCENT!") == "25%"
    assert normalize("  Hello,   world.  ") == "hello world"


def test_counts_substitutions_deletions_insertions():
    s = score(["the cat sat on the mat", "a b c"], ["the bat sat on mat", "a b c d"])
    assert (s.substitutions, s.deletions, s.insertions) == (1, 1, 1)
    assert s.ref_words == 9 and s.hits == 7
    assert s.wer == pytest.approx(3 / 9)
    assert s.utterances == 2


def test_normalisation_removes_formatting_differences():
    assert score(["Hello, World!"], ["hello world"]).wer == 0.0
    assert score(["Hello, World!"], ["hello world"], normalise=False).wer == 1.0


def test_cer_counts_characters():
    s = score(["abcd"], ["abxd"], normalise=False)
    assert s.cer == pytest.approx(1 / 4)
    assert s.wer == 1.0


def test_empty_reference_counts_hypothesis_as_insertions():
    s = score(["", "one two"], ["uh huh", "one two"], normalise=False)
    assert s.insertions == 2 and s.ref_words == 2 and s.wer == pytest.approx(1.0)
    assert score([""], [""]).wer == 0.0


def test_mismatched_lengths_is_a_user_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
