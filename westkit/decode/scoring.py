"""The one text normaliser and WER/CER scorer used everywhere (training logs, recognize, tables).

Normalisation is Whisper's English normaliser (transformers' ``EnglishTextNormalizer`` with the
British->American spelling table that ships with ``openai-whisper``) for English, and Whisper's
``BasicTextNormalizer`` (lower case, no punctuation or symbols, letters kept as they are) for any
other language, as Whisper's own multilingual evaluation does; edit distances come from
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


@functools.lru_cache(maxsize=1)
def _basic_normaliser():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize(text: str, lang: str = "en") -> str:
    """Whisper's English normalisation for ``lang`` "en" (or no language, ""): lower case, no
    punctuation, numbers as digits, American spelling, contractions expanded (``"Mr. Smith's
    colour"`` -> ``"mister smith is color"``); Whisper's basic normalisation for any other
    language (``"Über den Fluß!"`` -> ``"über den fluß"``)."""
    if lang in ("", "en"):
        return _normaliser()(text)
    return " ".join(_basic_normaliser()(text).split())


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


class WERAccumulator:
    """Corpus WER/CER over batches and ranks: sums edit counts (never averages rates), so
    ``add`` per batch, ``reduce`` over ranks and ``result`` equal `score` on everything at once.

        acc = WERAccumulator()
        for batch in loader:
            acc.add(batch["texts"], hyps)
        score = acc.reduce(all_sum, device).result()   # all_sum: westkit.train.distributed
    """
    FIELDS = ("substitutions", "deletions", "insertions", "hits", "char_errors", "ref_chars", "utterances")

    def __init__(self, normalise: bool = True):
        self.normalise = normalise
        self.counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, refs: list[str], hyps: list[str], langs: list[str] | None = None) -> WERAccumulator:
        """Count the edits of ``hyps`` against ``refs`` (pairwise, same order); ``langs`` (one
        per pair, e.g. a batch's "langs") picks each pair's normaliser (`normalize`)."""
        if len(refs) != len(hyps):
            raise ValueError(f"score: {len(refs)} references but {len(hyps)} hypotheses")
        if self.normalise:
            langs = langs or ["en"] * len(refs)
            refs = [normalize(r, lang) for r, lang in zip(refs, langs)]
            hyps = [normalize(h, lang) for h, lang in zip(hyps, langs)]
        refs = [" ".join(r.split()) for r in refs]
        hyps = [" ".join(h.split()) for h in hyps]
        c = self.counts
        c["utterances"] += len(refs)
        # a reference empty after normalisation: its hypothesis words are insertions
        c["insertions"] += sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
        c["char_errors"] += sum(len(h) for r, h in zip(refs, hyps) if not r)
        pairs = [(r, h) for r, h in zip(refs, hyps) if r]
        if pairs:
            r, h = map(list, zip(*pairs))
            w = jiwer.process_words(r, h)
            for k in ("substitutions", "deletions", "insertions", "hits"):
                c[k] += getattr(w, k)
            ch = jiwer.process_characters(r, h)
            c["char_errors"] += ch.substitutions + ch.deletions + ch.insertions
            c["ref_chars"] += ch.substitutions + ch.deletions + ch.hits
        return self

    def reduce(self, all_sum, *args) -> WERAccumulator:
        """Sum the counts over ranks: ``all_sum(dict, *args) -> dict`` (e.g.
        `westkit.train.distributed.all_sum` with its device). Every rank must call it."""
        self.counts = {k: int(round(v)) for k, v in all_sum(dict(self.counts), *args).items()}
        return self

    def result(self) -> Score:
        c = self.counts
        s, d, i = c["substitutions"], c["deletions"], c["insertions"]
        ref_words = s + d + c["hits"]
        return Score(
            wer=(s + d + i) / ref_words if ref_words else float(i > 0),
            cer=c["char_errors"] / c["ref_chars"] if c["ref_chars"] else float(c["char_errors"] > 0),
            substitutions=s, deletions=d, insertions=i, hits=c["hits"],
            ref_words=ref_words, ref_chars=c["ref_chars"], utterances=c["utterances"])


def score(refs: list[str], hyps: list[str], normalise: bool = True, langs: list[str] | None = None) -> Score:
    """Corpus-level WER and CER of ``hyps`` against ``refs`` (pairwise, same order; ``langs``
    picks each pair's normaliser, English without it).

    A reference that is empty after normalisation contributes its hypothesis words as
    insertions (so the rate is still errors / reference words over the whole set).
    """
    return WERAccumulator(normalise).add(refs, hyps, langs).result()


def word_errors(refs: list[str], hyps: list[str], words: list[set[str]], normalise: bool = True) -> dict:
    """How many of the chosen reference words each hypothesis misses (contextual biasing's
    B-WER without insertions): ``words[i]`` is a set of words of ``refs[i]`` (e.g. its rare words,
    normalised like the references), and each of their occurrences in the reference counts as
    an error when the alignment substitutes or deletes it. Returns ``{"words", "errors",
    "other_words", "other_errors"}``: the same counts for every other reference word (U-WER
    without insertions; insertions belong to no reference word and stay in `score`'s WER)."""
    if not len(refs) == len(hyps) == len(words):
        raise ValueError(f"word_errors: {len(refs)} references, {len(hyps)} hypotheses, {len(words)} word sets")
    out = dict.fromkeys(("words", "errors", "other_words", "other_errors"), 0)
    for ref, hyp, chosen in zip(refs, hyps, words):
        ref, hyp = (normalize(ref), normalize(hyp)) if normalise else (ref, hyp)
        r = ref.split()
        if not r:
            continue
        missed = [True] * len(r)
        for chunk in jiwer.process_words(ref, hyp).alignments[0] if hyp.split() else []:
            if chunk.type == "equal":
                missed[chunk.ref_start_idx:chunk.ref_end_idx] = [False] * (chunk.ref_end_idx - chunk.ref_start_idx)
        for w, m in zip(r, missed):
            side = "" if w in chosen else "other_"
            out[side + "words"] += 1
            out[side + "errors"] += m
    return out
