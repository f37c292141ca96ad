"""Hallucination guards: flag hypotheses that are not transcripts of the audio.

LLM-based recognisers fail in recognisable ways (WeST #116, SLAM-LLM #237): they loop on a
phrase, answer like a chat assistant ("I apologize, but ...", "Sure, here is ..."), or say
something over silence. `check` returns the flags of one hypothesis; recognize reports WER on
all utterances and on the unflagged ones, as WeST's tables do.

Flags: ``repetition`` (an n-gram repeated back to back), ``compression`` (zlib compression
ratio above Whisper's 2.4 threshold), ``non_transcript`` (an assistant-style reply),
``speech_on_silence`` (words output for silent audio), ``truncated`` (the token budget cut it),
``low_confidence`` (mean token probability below ``min_confidence``; off at 0, see
docs/timestamps.md for how well confidence predicts word errors).
"""
from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

REPLY_PATTERNS = [
    r"\bi apologi[sz]e\b",
    r"\bi'?m sorry,? but\b",
    r"^\s*sure[,!.]? (here|i)\b",
    r"\bhere(?: is|'s) (?:the|a|your) transcri",
    r"\bas an ai\b",
    r"\b(?:no|not any) (?:speech|audio) (?:to|in|was)\b",
    r"\b(?:can ?not|can't|unable to) (?:transcribe|hear|process)\b",
    r"\bthe (?:audio|recording|speech) (?:is|does|doesn't|appears|seems|contains)\b",
    r"^\s*(?:transcript(?:ion)?|assistant)\s*:",
]


@dataclasses.dataclass
class GuardConfig:
    """Thresholds of the guards (the ``guards`` section of recognize's options)."""
    max_repeats: int = 4             # an n-gram (n <= 4 words) this many times in a row
    max_compression_ratio: float = 2.4
    min_chars_for_ratio: int = 40    # short texts never compress; don't judge them
    silence_dbfs: float = -50.0      # RMS below this is silence
    min_confidence: float = 0.0      # flag hypotheses whose confidence is below this (0: off)
    reply_patterns: list[str] = dataclasses.field(default_factory=lambda: list(REPLY_PATTERNS))


def compression_ratio(text: str) -> float:
    """len(utf-8) / len(zlib(utf-8)): about 1-2 for speech transcripts, higher for loops."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def longest_repeat(words: list[str], max_n: int = 4) -> int:
    """Most back-to-back copies of any n-gram (n <= max_n) in ``words``; 1 if nothing repeats."""
    best = 1
    for n in range(1, max_n + 1):
        for start in range(n):
            run, prev = 1, None
            for i in range(start, len(words) - n + 1, n):
                gram = words[i:i + n]
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level of float audio in dB relative to full scale (-inf for zeros)."""
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def check(hyp: str, audio: np.ndarray | None = None, cfg: GuardConfig | None = None,
          truncated: bool = False, confidence: float | None = None) -> list[str]:
    """Flags for one hypothesis (empty list = looks like a transcript). ``audio`` (T,) float;
    ``confidence`` in [0, 1] (`westkit.decode.timestamps.token_confidence`)."""
    cfg = cfg or GuardConfig()
    flags = []
    words = re.findall(r"[\w']+", hyp.lower())
    if longest_repeat(words) >= cfg.max_repeats:
        flags.append("repetition")
    if len(hyp) >= cfg.min_chars_for_ratio and compression_ratio(hyp) > cfg.max_compression_ratio:
        flags.append("compression")
    if any(re.search(p, hyp, re.IGNORECASE) for p in cfg.reply_patterns):
        flags.append("non_transcript")
    if audio is not None and words and rms_dbfs(audio) < cfg.silence_dbfs:
        flags.append("speech_on_silence")
    if truncated:
        flags.append("truncated")
    if confidence is not None and confidence < cfg.min_confidence:
        flags.append("low_confidence")
    return flags
