"""Temperature language sampling and the fixed-ratio mixing of batch streams (resumable)."""
import collections
import itertools

import pytest

from westkit.data.mixing import MixedLoader, temperature_probs


class Counter:
    """An infinite resumable loader yielding (name, i)."""

    def __init__(self, name):
        self.name, self.i = name, 0

    def __iter__(self):
        while True:
            self.i += 1
            yield (self.name, self.i - 1)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def test_temperature_probs():
    counts = {"en": 900, "de": 90, "sw": 10}
    assert temperature_probs(counts, 1.0) == pytest.approx({"en": 0.9, "de": 0.09, "sw": 0.01})
    assert temperature_probs(counts, 0.0) == pytest.approx({k: 1 / 3 for k in counts})
    half = temperature_probs(counts, 0.5)
    z = 30 + 90 ** 0.5 + 10 ** 0.5
    assert half == pytest.approx({"en": 30 / z, "de": 90 ** 0.5 / z, "sw": 10 ** 0.5 / z})
    assert half["sw"] > 0.01 and half["en"] < 0.9  # low-resource languages are lifted
    with pytest.raises(ValueError, match="alpha"):
        temperature_probs(counts, 1.5)
    with pytest.raises(ValueError, match="no data"):
        temperature_probs({"en": 5, "xx": 0}, 0.5)


@pytest.mark.parametrize("weights,pattern", [
    ({"text": 1, "audio": 1}, "TA" * 6),
    ({"text": 2, "audio": 1}, "TATTAT" * 2),
    ({"text": 1, "audio": 3}, "ATAA" * 3),
])
def test_ratio_mode_alternates_exactly(weights, pattern):
    mix = MixedLoader({k: Counter(k) for k in weights}, weights, mode="ratio")
    got = "".join(b[0][0].upper() for b in itertools.islice(mix, len(pattern)))
    assert got == pattern


def test_ratio_mode_three_sources_long_run_proportions():
    weights = {"text": 3, "audio": 2, "tts": 1}
    mix = MixedLoader({k: Counter(k) for k in weights}, weights, mode="ratio")
    counts = collections.Counter(b[0] for b in itertools.islice(mix, 600))
    assert counts == {"text": 300, "audio": 200, "tts": 100}


def test_random_mode_follows_probabilities_and_seed():
    probs = temperature_probs({"en": 900, "de": 90, "sw": 10}, 0.5)
    mix = MixedLoader({k: Counter(k) for k in probs}, probs, mode="random", seed=3)
    seq = [b[0] for b in itertools.islice(mix, 4000)]
    freq = collections.Counter(seq)
    for k, p in probs.items():
        assert abs(freq[k] / 4000 - p) < 0.03
    again = MixedLoader({k: Counter(k) for k in probs}, probs, mode="random", seed=3)
    assert [b[0] for b in itertools.islice(again, 200)] == seq[:200]
    other = MixedLoader({k: Counter(k) for k in probs}, probs, mode="random", seed=4)
    assert [b[0] for b in itertools.islice(other, 200)] != seq[:200]


@pytest.mark.parametrize("mode", ["ratio", "random"])
def test_resume_gives_the_same_batches(mode):
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    full = MixedLoader({k: Counter(k) for k in weights}, weights, mode=mode, seed=7)
    want = list(itertools.islice(full, 50))

    first = MixedLoader({k: Counter(k) for k in weights}, weights, mode=mode, seed=7)
    got = list(itertools.islice(first, 20))
    state = first.state_dict()
    resumed = MixedLoader({k: Counter(k) for k in weights}, weights, mode=mode, seed=7)
    resumed.load_state_dict(state)
    got += list(itertools.islice(resumed, 30))
    assert got == want


def test_finite_source_ends_the_mix_and_user_errors():
    mix = MixedLoader({"a": [1, 2], "b": [10, 20, 30]}, {"a": 1, "b": 1})
    assert list(mix) == [1, 10, 2, 20]
    with pytest.raises(ValueError, match="> 0"):
        MixedLoader({"a": [1]}, {"a": 0})
    with pytest.raises(ValueError, match="loaders are"):
        MixedLoader({"a": [1]}, {"b": 1})
