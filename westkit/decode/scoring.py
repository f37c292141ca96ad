"""The one text normaliser and WER/CER scorer used everywhere (training logs, recognize, tables).

Normalisation is Whisper's English normaliser (transformers' ``EnglishTextNormalizer`` with the
British->American spelling table that ships with ``openai-whisper``); edit distances come from
``jiwer``. Both are shared so that every number westkit prints is comparable with every other.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json

import jiwer


@functools.lru_cache(maxsize=1)
def _normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        table = importlib.metadata.distribution("openai-whisper").locate_file(
            "whisper/normalizers/english.json")
        with open(table) as f:
            spelling = json.load(f)
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError):
        raise RuntimeError(
            "Whisper's English spelling table was not found: run "
            "`pip install --no-deps openai-whisper` (launch/bootstrap.sh does this)") from None
    return EnglishTextNormalizer(spelling)


def normalize(text: str) -> str:
    """Whisper's English normalisation: lower case, no punctuation, numbers as digits,
    American spelling, contractions expanded. ``"Mr. Smith's colour"`` -> ``"mister smith is color"``."""
    return _normaliser()(text)


@dataclasses.dataclass(frozen=True)
class Score:
    """Error counts over a whole test set; rates are errors / reference length."""
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    ref_chars: int
    utterances: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"WER {100 * self.wer:.2f}% (S {self.substitutions} D {self.deletions} "
                f"I {self.insertions} / {self.ref_words} words), CER {100 * self.cer:.2f}%, "
                f"{self.utterances} utterances")


def score(refs: list[str], hyps: list[str], normalise: bool = True) -> Score:
    """Corpus-level WER and CER of ``hyps`` against ``refs`` (pairwise, same order).

    A reference that is empty after normalisation contributes its hypothesis words as
    insertions (so the rate is still errors / reference words over the whole set).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"score: {len(refs)} references but {len(hyps)} hypotheses")
    if normalise:
        refs = [normalize(r) for r in refs]
        hyps = [normalize(h) for h in hyps]
    refs = [" ".join(r.split()) for r in refs]
    hyps = [" ".join(h.split()) for h in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    extra_words = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    extra_chars = sum(len(h) for r, h in zip(refs, hyps) if not r)
    s = d = i = hits = ref_words = 0
    c_err = ref_chars = 0
    if pairs:
        r, h = zip(*pairs)
        w = jiwer.process_words(list(r), list(h))
        s, d, i, hits = w.substitutions, w.deletions, w.insertions, w.hits
        ref_words = s + d + hits
        c = jiwer.process_characters(list(r), list(h))
        c_err = c.substitutions + c.deletions + c.insertions
        ref_chars = c.substitutions + c.deletions + c.hits
    i += extra_words
    c_err += extra_chars
    return Score(
        wer=(s + d + i) / ref_words if ref_words else float(i > 0),
        cer=c_err / ref_chars if ref_chars else float(c_err > 0),
        substitutions=s, deletions=d, insertions=i, hits=hits,
        ref_words=ref_words, ref_chars=ref_chars, utterances=len(refs))
