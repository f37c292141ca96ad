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


REFS = ["the cat sat on the mat", "Hello, World!", "", "a b c", "one two three four", "colour"]
HYPS = ["the bat sat on mat", "hello world", "uh huh", "a b c d", "one too", ""]


def test_accumulator_over_batches_equals_scoring_everything_at_once():
    from westkit.decode.scoring import WERAccumulator
    from westkit.train.distributed import all_sum

    whole = score(REFS, HYPS)
    acc = WERAccumulator()
    for i in range(0, len(REFS), 2):
        acc.add(REFS[i:i + 2], HYPS[i:i + 2])
    assert acc.reduce(all_sum, "cpu").result() == whole  # one process: the sum is itself
    # two "ranks" holding halves: summing their counts gives the whole set's score, not the
    # mean of their rates
    a, b = WERAccumulator().add(REFS[:2], HYPS[:2]), WERAccumulator().add(REFS[2:], HYPS[2:])
    assert a.reduce(lambda c: {k: v + b.counts[k] for k, v in c.items()}).result() == whole
    mean_of_rates = (score(REFS[:2], HYPS[:2]).wer + score(REFS[2:], HYPS[2:]).wer) / 2
    assert whole.wer != pytest.approx(mean_of_rates)
