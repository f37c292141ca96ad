"""German and Spanish variants of the espeak-ng corpora: their own sentences and voice, `lang` in every shard."""
import numpy as np
import pytest

from westkit.data import corpora
from westkit.data.loader import LoaderConfig, build_loader


def test_every_base_has_a_de_and_es_variant_with_its_own_sentences():
    for base in corpora.LANG_BASES:
        for lang in ("de", "es"):
            assert f"{base}-{lang}" in corpora.NAMES
    for domain in ("general", "special"):
        for lang in ("de", "es"):
            train, test = corpora._split(f"{domain}_{lang}", False), corpora._split(f"{domain}_{lang}", True)
            assert len(train) >= 20 and len(test) >= 3 and not set(train) & set(test)
            assert not set(train) & set(corpora.sentences(domain))   # not the English lists


@pytest.mark.parametrize("name, lang", [("special-test-de", "de"), ("general-train-es", "es")])
def test_a_small_variant_builds_with_its_language_and_audible_audio(westkit_home, name, lang):
    folder = corpora.make(name, limit=2, progress=False)
    cfg = LoaderConfig(shards=[str(folder)], num_workers=0, shuffle=False)
    batches = list(build_loader(cfg, train=False))
    domain = name.split("-")[0]
    assert {l for b in batches for l in b["langs"]} == {lang}
    assert {t for b in batches for t in b["texts"]} <= set(corpora.sentences(f"{domain}_{lang}"))
    for b in batches:
        for wave, n in zip(b["audio"], b["audio_lens"]):
            wave = wave[:n].numpy()
            assert n > 8000                                      # over half a second of speech
            assert float(np.sqrt(np.mean(wave ** 2))) > 0.01     # audible, not silence
    entries = list(corpora._entries(name))
    assert all(e.speaker.startswith(lang) for e in entries)     # the language's own espeak-ng voice


def test_text_only_variant_has_the_language(westkit_home):
    entries = list(corpora._entries("special-text-es"))
    assert entries and all(e.lang == "es" and e.audio is None for e in entries)
    assert list(corpora._entries("special-text"))[0].lang == "en"
