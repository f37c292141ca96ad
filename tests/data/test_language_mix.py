"""Temperature language sampling in the loader (``langs`` + ``alpha``): one loader per
language, batches drawn whole from one language with p_l ~ n_l ** alpha, resumable."""
import collections
import itertools
import json

import pytest

from westkit.config import build
from westkit.data.loader import LanguageMix, LoaderConfig, build_loader
from westkit.data.mixing import temperature_probs
from westkit.data.shards import Entry, write_shards

COUNTS = {"en": 60, "de": 15, "es": 6}


@pytest.fixture(scope="module")
def lang_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("langs")
    out = {}
    for lang, n in COUNTS.items():
        entries = [Entry(key=f"{lang}-{i:03d}", text=f"{lang} sentence {i}", lang=lang) for i in range(n)]
        write_shards(entries, root / lang, prefix=lang, workers=1, progress=False)
        out[lang] = [str(root / lang)]
    return out


def mix(lang_shards, alpha=0.5, seed=3) -> LanguageMix:
    cfg = LoaderConfig(langs=lang_shards, alpha=alpha, seed=seed, max_batch_size=2, num_workers=0)
    return build_loader(cfg)


def test_batches_follow_the_temperature_probabilities(lang_shards):
    loader = mix(lang_shards)
    assert loader.counts == COUNTS
    want = temperature_probs(COUNTS, 0.5)
    assert loader.probs == pytest.approx(want)
    n = 1500
    seen = collections.Counter()
    for batch in itertools.islice(loader, n):
        assert set(batch["langs"]) == {loader.last_source}   # a batch is one language, its own
        seen[loader.last_source] += 1
    for lang, p in want.items():
        assert seen[lang] / n == pytest.approx(p, abs=4 * (p * (1 - p) / n) ** 0.5)
    # alpha = 1 follows the data: es is drawn far less often than at alpha 0.5
    data = mix(lang_shards, alpha=1.0)
    es = sum(data.last_source == "es" for _ in itertools.islice(data, 600))
    assert es / 600 < want["es"] - 0.03


def test_same_seed_same_sequence_and_resume_continues_it(lang_shards):
    full = [b["keys"] for b in itertools.islice(mix(lang_shards), 80)]
    assert full == [b["keys"] for b in itertools.islice(mix(lang_shards), 80)]
    assert full != [b["keys"] for b in itertools.islice(mix(lang_shards, seed=4), 80)]
    first = mix(lang_shards)
    got = [b["keys"] for b in itertools.islice(first, 35)]
    state = json.loads(json.dumps(first.state_dict()))   # as it goes through a checkpoint
    resumed = mix(lang_shards)
    resumed.load_state_dict(state)
    got += [b["keys"] for b in itertools.islice(resumed, 45)]
    assert got == full


def test_evaluation_reads_every_language_once(lang_shards):
    cfg = LoaderConfig(langs=lang_shards, max_batch_size=4, num_workers=0)
    keys = [k for b in build_loader(cfg, train=False) for k in b["keys"]]
    assert sorted(keys) == sorted(f"{l}-{i:03d}" for l, n in COUNTS.items() for i in range(n))


@pytest.mark.parametrize("values, message", [
    ({"shards": ["a"], "langs": {"en": ["a"]}}, "either shards or langs"),
    ({"langs": {}}, "langs must map languages"),
    ({"langs": {"en": []}}, "langs.en must be a non-empty list"),
    ({"langs": {"en": ["a"]}, "alpha": 1.5}, "alpha must lie in"),
    ({"langs": {False: ["a"]}}, "quote it"),
    ({"langs": {"en": ["a"]}, "states": "s"}, "states cannot be combined with langs"),
])
def test_config_errors_name_the_problem(values, message):
    with pytest.raises(ValueError, match=message) as e:
        build(LoaderConfig, values, "conf.yaml: data")
    assert "data" in str(e.value)


def test_padding_report_has_a_line_per_language(tmp_path):
    from data_helpers import tone_shards

    from westkit.data.loader import padding_report

    langs = {lang: [str(tone_shards(tmp_path / lang, [1.0, 1.5, 2.0], prefix=lang))] for lang in ("en", "de")}
    lines = padding_report(build_loader(LoaderConfig(langs=langs, num_workers=0))).splitlines()
    assert [x.split(":")[0] for x in lines] == ["en", "de"] and all("3 utterances" in x for x in lines)
