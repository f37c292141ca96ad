import pytest

from westkit.decode.scoring import normalize, score, word_errors


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


def test_word_errors_count_the_chosen_reference_words_the_hypothesis_misses():
    refs = ["The patient took apixaban and warfarin daily.", "Give apixaban now.", "Nothing rare here."]
    hyps = ["the patient took a pixel band and warfarin daily", "give apixaban now", ""]
    chosen = [{"apixaban", "warfarin"}, {"apixaban"}, set()]
    out = word_errors(refs, hyps, chosen)
    # apixaban missed once (substituted), found once; warfarin found; all 3 words of the empty hypothesis missed
    assert out == {"words": 3, "errors": 1, "other_words": 5 + 2 + 3, "other_errors": 0 + 0 + 3}
    # insertions belong to no reference word: they leave both counts alone
    assert word_errors(["give apixaban now"], ["please give apixaban now now"], [{"apixaban"}])["errors"] == 0
    # a chosen word that is present but out of place is still aligned as a hit or a miss, never both
    swapped = word_errors(["apixaban then warfarin"], ["warfarin then apixaban"], [{"apixaban", "warfarin"}])
    assert swapped["words"] == 2 and swapped["errors"] == 2 and swapped["other_errors"] == 0
    with pytest.raises(ValueError, match="2 references, 1 hypotheses"):
        word_errors(["a", "b"], ["a"], [set(), set()])
