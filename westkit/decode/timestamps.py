"""Word timestamps, word confidence, and the transcript outputs (JSON, SRT, WebVTT).

Whisper word timing is the method of openai-whisper's ``timing.py`` and of transformers'
``return_token_timestamps``: after the search (`westkit.decode.search`) has chosen the ids,
one teacher-forced decoder pass over ``prefix + ids`` returns the
cross-attention of the model's alignment heads (``generation_config.alignment_heads``;
whisper-tiny.en ships 8); each head is normalised over the tokens, median-filtered over time
(``config.median_filter_width``), the heads are averaged, and dynamic time warping finds the
monotonic path of tokens over the 20 ms encoder frames. The median filter and the DTW are
transformers' own (`_median_filter`, `_dynamic_time_warping` in
``transformers.models.whisper.generation_whisper``); written here by hand: the teacher-forced
pass (the search keeps no attention), grouping tokens into words with punctuation attached
(`split_words`), per-word confidence (mean token probability, the search's log-probs), the
long-word clamp at sentence ends (openai-whisper's rule), the snap of word edges off
quiet frames (`snap_to_speech`), and the output writers.

WeST / LLM-ASR word timing (VoxLM v2's idea) runs the same normalisation, median filter and
DTW (`dtw_starts`, shared) over the LLM's self-attention from the transcript tokens to the
audio-embedding positions of its input (`west_attention`), in the heads a run's
``alignment_heads.json`` names (`WestHeads`, chosen on speech with known timings by
`westkit.decode.align_heads` with `head_scores`); one embedding lasts
`WestModel.seconds_per_embedding` (projector rate / encoder frame rate).

A word's start is the time DTW enters its first token; its end, the time it enters the next
word's first token (or the end token). Times are seconds from the start of the audio given.

Outputs (`result_dict`): ``{"text", "words": [{"word", "start", "end", "confidence"}],
"segments": [{"start", "end", "text", "confidence"}], "audio_duration"}``; `to_srt`, `to_vtt`
write the segments as subtitle cues. `transcribe_file` is the one-call entry for a CLI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from westkit.models.features import SAMPLE_RATE

FRAME_SECONDS = 0.02          # one Whisper encoder state: 2 log-mel hops of 10 ms
SAMPLES_PER_FRAME = round(FRAME_SECONDS * SAMPLE_RATE)
SENTENCE_END = ".!?。"
LEADING_PUNCT = "\"'“¿([{-«"
WORD_START = ("Ġ", "▁", " ", "\n")


@dataclasses.dataclass
class Word:
    """One word: its text (punctuation attached), start and end in seconds, and confidence in
    [0, 1] (mean probability of its tokens)."""
    word: str
    start: float
    end: float
    confidence: float

    def as_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


# -- tokens -> words --------------------------------------------------------------------------

def split_words(tokenizer, ids: list[int]) -> list[tuple[str, list[int]]]:
    """Group sub-word ids into words: (text, token positions) per word.

    A word starts at a token with a leading space (byte-level BPE ``Ġ``, SentencePiece ``▁``,
    or a plain space: character tokenizers); tokens without one (sub-words,
    trailing punctuation such as ``,`` ``.``) join the word before. A word made only of
    punctuation joins the next word if it opens (``"`` ``(`` ``-`` ...), else the previous one.
    """
    groups: list[list[int]] = []
    pieces = tokenizer.convert_ids_to_tokens(ids)
    for pos, piece in enumerate(pieces):
        if not groups or piece.startswith(WORD_START):
            groups.append([pos])
        else:
            groups[-1].append(pos)
    words = [(tokenizer.decode([ids[p] for p in g]).strip(), g) for g in groups]
    merged: list[tuple[str, list[int]]] = []
    carry: tuple[str, list[int]] | None = None
    for text, g in words:
        if carry is not None:
            text, g, carry = carry[0] + text, carry[1] + g, None
        if text and not any(c.isalnum() for c in text):
            if text[-1] in LEADING_PUNCT:
                carry = (text, g)
                continue
            if merged:
                merged[-1] = (merged[-1][0] + text, merged[-1][1] + g)
                continue
        merged.append((text, g))
    if carry is not None:
        merged.append(carry)
    return [(t, g) for t, g in merged if t]


def words_from_tokens(tokenizer, ids: list[int], token_starts: np.ndarray, logprobs: list[float],
                      offset: float = 0.0, end_limit: float | None = None) -> list[Word]:
    """Words of one hypothesis.

    token_starts (len(ids) + 1,) seconds: when each token starts, the last entry the end token;
    logprobs (len(ids),) from the search. ``offset`` shifts every time (long-form windows);
    ``end_limit`` caps them (the window's end).
    """
    words = []
    probs = np.exp(np.asarray(logprobs, dtype=np.float64)) if logprobs else np.ones(len(ids))
    for text, g in split_words(tokenizer, ids):
        start, end = float(token_starts[g[0]]), float(token_starts[g[-1] + 1])
        words.append(Word(text, start + offset, end + offset, float(probs[g].mean())))
    _clamp_long_words(words)
    if end_limit is not None:
        for w in words:
            w.start, w.end = min(w.start, end_limit), min(w.end, end_limit)
    return words


def _clamp_long_words(words: list[Word]) -> None:
    """openai-whisper's rule: DTW stretches a word at a sentence end over the pause after it
    (or the word after a sentence end over the pause before it); cap those at twice the median
    word duration (itself at most 0.7 s)."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return
    max_d = 2 * min(0.7, float(np.median(durations)))
    for i, w in enumerate(words):
        if w.end - w.start <= max_d:
            continue
        if w.word[-1] in SENTENCE_END:
            w.end = w.start + max_d
        elif i == 0 or words[i - 1].word[-1] in SENTENCE_END:
            w.start = w.end - max_d


def snap_to_speech(words: list[Word], audio: np.ndarray, offset: float = 0.0, floor_db: float = 35.0,
                   reach: float = 0.3, min_gap: float = 0.03, noise_margin_db: float = 6.0) -> None:
    """Move word edges (in place) onto the pauses of ``audio`` (T,), whose ``audio[0]`` is at
    ``offset`` s.

    DTW puts a word's end at the next word's start, so a pause goes to the word before it, and
    its boundaries trail the speech by a frame or a few. Frames of 10 ms quieter than
    ``floor_db`` below the loudest frame, or than ``noise_margin_db`` above the noise floor
    (the 10th percentile of the frame levels; at most 20 dB below the peak), are quiet; quiet runs of at least ``min_gap`` s are
    pauses, and the speech between two pauses is an island. An edge in a pause moves to the
    pause's edge (a start to its end, an end to its start). An edge inside an island gives the
    island to the word on the side of the nearer island edge, if that edge is within ``reach``
    s: for the later word the boundary becomes the island's onset (and the earlier word ends
    at the pause before it), for the earlier word its offset. Words stay in order and never
    overlap; where speech runs on without pauses the DTW times stay.
    """
    hop = SAMPLE_RATE // 100
    n = len(audio) // hop
    if n == 0 or not words:
        return
    frames = audio[:n * hop].reshape(n, hop).astype(np.float64)
    level = 10 * np.log10((frames ** 2).mean(1) + 1e-12)
    # audio without pauses has its 10th percentile in speech: the noise rule never cuts deeper
    # than 20 dB below the peak
    peak = level.max()
    loud = level > max(peak - floor_db, min(np.percentile(level, 10) + noise_margin_db, peak - 20.0))
    runs = np.flatnonzero(np.diff(np.r_[1, loud.astype(np.int8), 1]))  # quiet runs: [runs[2k], runs[2k+1])
    for a, b in zip(runs[0::2], runs[1::2]):
        if b - a < min_gap * 100 and a > 0 and b < n:
            loud[a:b] = True  # a closure inside a word, not a pause
    edge = np.diff(np.r_[0, loud.astype(np.int8), 0])
    ons = offset + np.flatnonzero(edge == 1) / 100       # island k is [ons[k], offs[k])
    offs = offset + np.flatnonzero(edge == -1) / 100

    def island(t: float) -> int | None:
        k = int(np.searchsorted(ons, t, side="right")) - 1
        return k if k >= 0 and t < offs[k] else None

    def later_word_gets(k: int, t: float) -> bool | None:
        """Whether island k, cut at t, goes to the later word (None: both edges out of reach)."""
        to_on, to_off = t - ons[k], offs[k] - t
        if min(to_on, to_off) > reach:
            return None
        return bool(to_on <= to_off)

    prev_end = -np.inf
    for w in words:
        start, end = w.start, w.end
        k = island(w.start)
        if k is None:  # in a pause: the next onset
            nxt = ons[(ons >= w.start) & (ons < w.end)]
            start = nxt[0] if nxt.size else w.start
        elif later_word_gets(k, w.start) is True:
            start = ons[k]
        elif later_word_gets(k, w.start) is False and k + 1 < len(ons) and ons[k + 1] < w.end:
            start = ons[k + 1]
        start = max(start, prev_end)
        t = w.end - 1e-6  # the last instant inside the word
        k = island(t)
        if k is None:  # in a pause: the last offset before it
            prv = offs[(offs <= w.end) & (offs > start)]
            end = prv[-1] if prv.size else w.end
        elif later_word_gets(k, w.end) is False:
            end = offs[k]
        elif later_word_gets(k, w.end) is True and k > 0 and offs[k - 1] > start:
            end = offs[k - 1]
        w.start, w.end = float(start), float(max(end, start))
        prev_end = w.end


# -- Whisper: cross-attention + DTW -------------------------------------------------------------

@contextlib.contextmanager
def eager_attention(model):
    """Attention weights need the eager implementation (SDPA does not return them)."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def alignment_heads(whisper) -> list[tuple[int, int]]:
    """The (layer, head) pairs whose cross-attention follows the audio: the checkpoint's
    ``generation_config.alignment_heads``; ValueError naming the fix when it has none."""
    heads = getattr(whisper.generation_config, "alignment_heads", None)
    if not heads:
        raise ValueError(f"{whisper.config.name_or_path}: generation_config.json has no alignment_heads; "
                         "copy them from the base checkpoint this model was fine-tuned from")
    return [tuple(h) for h in heads]


def dtw_starts(weights: torch.Tensor, filter_width: int, frame_seconds: float) -> np.ndarray:
    """weights (H, N, T): attention of N token queries over T audio frames in H heads -> (N,)
    the time (s) at which the DTW path enters each token.

    Each head is normalised over the tokens, median-filtered over time (width ``filter_width``,
    odd), the heads are averaged and DTW finds the monotonic path: openai-whisper's method, with
    transformers' `_median_filter` and `_dynamic_time_warping`. Shared by Whisper
    (cross-attention, 20 ms frames) and WeST (LLM self-attention over the audio embeddings).
    """
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping, _median_filter

    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    m = (weights - mean) / std.clamp(min=1e-10)
    m = _median_filter(m, filter_width).mean(dim=0)  # (N, T)
    text_idx, time_idx = _dynamic_time_warping(-m.double().cpu().numpy())
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    return time_idx[jumps] * frame_seconds


@torch.no_grad()
def whisper_token_starts(whisper, states: torch.Tensor, prefix: list[int], eot: int,
                         ids: list[list[int]], frames: list[int]) -> list[np.ndarray]:
    """Per row, the start time (s) of each id and of the end token: (len(ids[b]) + 1,) arrays.

    states (B, T, D) encoder states (the 30 s window); ``frames[b]`` encoder states that hold
    audio (DTW runs over those only). One teacher-forced decoder pass over ``prefix + ids`` (the
    last id's query is the row that predicts the end token, so the end token is never fed and a
    hypothesis that filled the decoder's positions still fits); rows are padded with ``eot``
    after their end, which the causal decoder never lets reach a real token.
    """
    heads = alignment_heads(whisper)
    n_pre = len(prefix)
    width = n_pre + max(len(r) for r in ids)
    batch = torch.full((len(ids), width), eot, dtype=torch.long, device=states.device)
    for b, r in enumerate(ids):
        batch[b, :n_pre + len(r)] = torch.tensor(prefix + r, device=states.device)
    with eager_attention(whisper):
        out = whisper.model.decoder(input_ids=batch, encoder_hidden_states=states,
                                    output_attentions=True, use_cache=False)
    weights = torch.stack([out.cross_attentions[l][:, h] for l, h in heads], dim=1).float()  # (B, H, L, T)
    result = []
    for b, r in enumerate(ids):
        n = len(r)
        if n == 0:
            result.append(np.zeros(1))
            continue
        # the query at position p predicts token p + 1: rows of the text ids and the end token
        m = weights[b, :, n_pre - 1:n_pre + n, :max(1, frames[b])]
        result.append(dtw_starts(m, whisper.config.median_filter_width, FRAME_SECONDS))
    return result


def whisper_words(rec, states: torch.Tensor, audio_lens: torch.Tensor, transcripts,
                  offsets: list[float] | None = None) -> list[list[Word]]:
    """Words with times and confidence for a `WhisperRecognizer`'s transcripts of ``states``
    (B, T, D); audio_lens (B,) samples (the part of the window that holds audio)."""
    frames = [math.ceil(int(n) / SAMPLES_PER_FRAME) for n in audio_lens.tolist()]
    starts = whisper_token_starts(rec.whisper, states, rec.prefix, rec.eot, [t.ids for t in transcripts], frames)
    offsets = offsets or [0.0] * len(transcripts)
    return [words_from_tokens(rec.tokenizer, t.ids, s, t.logprobs, off, off + n * FRAME_SECONDS)
            for t, s, off, n in zip(transcripts, starts, offsets, frames)]


# -- WeST / LLM-ASR: the LLM's self-attention over the audio embeddings + DTW -----------------

HEADS_FILE = "alignment_heads.json"   # beside a WeST run's trainable.safetensors


@dataclasses.dataclass
class WestHeads:
    """The (layer, head) pairs of a WeST model's LLM whose attention from the transcript tokens
    to the audio embeddings follows the audio, chosen on speech with known word timings
    (`westkit.decode.align_heads`), and the median filter width (in audio embeddings) DTW uses."""
    heads: list[tuple[int, int]]
    median_filter_width: int = 1
    info: dict = dataclasses.field(default_factory=dict)   # how they were chosen (scores, data)

    @classmethod
    def load(cls, path) -> WestHeads:
        import json

        d = json.loads(Path(path).read_text())
        return cls([tuple(h) for h in d["heads"]], d.get("median_filter_width", 1), d.get("info", {}))

    def save(self, path) -> None:
        import json

        Path(path).write_text(json.dumps({"heads": [list(h) for h in self.heads],
                                          "median_filter_width": self.median_filter_width,
                                          "info": self.info}, indent=1) + "\n")


@torch.no_grad()
def west_attention(model, emb: torch.Tensor, n_audio: torch.Tensor, ids: list[list[int]], prompts=None,
                   heads: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """The LLM's attention from each row's transcript queries to its audio embeddings.

    emb (B, N, H), n_audio (B,): `WestModel.audio_embeddings`; ``ids[b]`` the transcript ids
    (no end token). One teacher-forced pass over prompt + ``ids`` (eager attention). Per row, a
    float tensor (K, len(ids[b]) + 1, n_audio[b]): K = ``heads`` in their order (default every
    (layer, head), layer-major); query rows are the positions that predict each id and the end
    token (as for Whisper), columns the audio embeddings in time order.
    """
    inputs = model.embed_prompt(emb, n_audio, targets=ids, prompts=prompts)
    inputs.pop("labels")
    _, is_audio, *_ = model.layout(n_audio.tolist(), ids, prompts)
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    with eager_attention(llm):
        out = llm(**inputs, output_attentions=True, use_cache=False, logits_to_keep=1)
    if heads is None:
        att = torch.stack(out.attentions, dim=1).flatten(1, 2)  # (B, layers * heads, L, L)
    else:
        att = torch.stack([out.attentions[l][:, h] for l, h in heads], dim=1)  # (B, K, L, L)
    width = att.shape[-1]
    rows = []
    for b, r in enumerate(ids):
        cols = is_audio[b].nonzero()[:, 0].to(att.device)
        rows.append(att[b, :, width - len(r) - 1:, cols].float())
    return rows


def west_token_starts(model, heads: WestHeads, emb: torch.Tensor, n_audio: torch.Tensor,
                      ids: list[list[int]], prompts=None) -> list[np.ndarray]:
    """Per row, the start time (s) of each id and of the end token: (len(ids[b]) + 1,) arrays,
    by DTW over ``heads``' attention to the audio embeddings (`west_attention`), one embedding
    lasting `WestModel.seconds_per_embedding`."""
    att = west_attention(model, emb, n_audio, ids, prompts, heads.heads)
    return [np.zeros(1) if not r else dtw_starts(a, heads.median_filter_width, model.seconds_per_embedding)
            for a, r in zip(att, ids)]


def west_words(rec, emb: torch.Tensor, n_audio: torch.Tensor, transcripts,
               offsets: list[float] | None = None) -> list[list[Word]]:
    """Words with times and confidence for a `WestRecognizer`'s transcripts (emb (B, N, H),
    n_audio (B,) from `WestModel.audio_embeddings`); needs the recognizer's ``heads``."""
    m = rec.model
    starts = west_token_starts(m, rec.heads, emb, n_audio, [t.ids for t in transcripts])
    offsets = offsets or [0.0] * len(transcripts)
    return [words_from_tokens(m.prompt.tokenizer, t.ids, s, t.logprobs, off, off + n * m.seconds_per_embedding)
            for t, s, off, n in zip(transcripts, starts, offsets, n_audio.tolist())]


# -- choosing heads on speech with known word timings ----------------------------------------

def span_mask(spans: list[tuple[float, float]], token_word: list[int], n_pos: int, seconds: float) -> torch.Tensor:
    """(n_tokens, n_pos) bool: audio position k (covering [k, k + 1) * ``seconds``) overlaps the
    true span ``spans[token_word[i]]`` (start, end seconds) of token i's word."""
    a = torch.arange(n_pos, dtype=torch.float64) * seconds
    s = torch.tensor([spans[w][0] for w in token_word], dtype=torch.float64)[:, None]
    e = torch.tensor([spans[w][1] for w in token_word], dtype=torch.float64)[:, None]
    return (a[None] < e) & (a[None] + seconds > s)


def head_scores(att: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """att (K, n, N): K heads' attention of n token queries over N audio positions; inside
    (n, N) `span_mask` -> (K,) each head's mean share (over the tokens) of its audio attention
    that falls on the token's own word. Uniform attention scores ``inside.float().mean()``."""
    w = att / att.sum(-1, keepdim=True).clamp(min=1e-12)
    return (w * inside.to(w.dtype)).sum(-1).mean(-1)


def word_times(starts: np.ndarray, token_word: list[int], n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Token start times (n_tokens + 1,) (the last: the end token) -> word (starts, ends): a
    word starts where its first token does and ends where the next word (or the end) starts."""
    first = [token_word.index(w) for w in range(n_words)] + [len(token_word)]
    t = np.asarray(starts)[first]
    return t[:-1], t[1:]


# -- outputs ---------------------------------------------------------------------------------------

def token_confidence(logprobs: list[float]) -> float | None:
    """A hypothesis' confidence from its tokens' log-probs: their mean probability (None if none)."""
    return float(np.exp(np.asarray(logprobs, dtype=np.float64)).mean()) if logprobs else None


def confidence(words: list[Word]) -> float | None:
    """An utterance's (or segment's) confidence: the mean of its words' (None without words)."""
    return float(np.mean([w.confidence for w in words])) if words else None


def result_dict(text: str, words: list[Word], segments: list[dict], audio_duration: float, **extra) -> dict:
    """The per-utterance output schema (see the module docstring)."""
    return {"text": text, "words": [w.as_dict() for w in words], "segments": segments,
            "audio_duration": round(audio_duration, 3), **extra}


def segment(words: list[Word], text: str, start: float, end: float, **extra) -> dict:
    """One segment: its words' span (the window's, without words), text and confidence."""
    if words:
        start, end = words[0].start, words[-1].end
    conf = confidence(words)
    return {"start": round(start, 3), "end": round(end, 3), "text": text,
            "confidence": None if conf is None else round(conf, 4), **extra}


def _cues(result: dict, max_words: int = 12, max_seconds: float = 7.0) -> list[tuple[float, float, str]]:
    """Subtitle cues: each segment's words in runs of at most ``max_words`` / ``max_seconds``."""
    cues = []
    words = result["words"]
    for seg in result["segments"]:
        inside = [w for w in words if seg["start"] - 1e-6 <= w["start"] and w["end"] <= seg["end"] + 1e-6]
        if not inside:
            if seg["text"]:
                cues.append((seg["start"], seg["end"], seg["text"]))
            continue
        run: list[dict] = []
        for w in inside:
            if run and (len(run) >= max_words or w["end"] - run[0]["start"] > max_seconds):
                cues.append((run[0]["start"], run[-1]["end"], " ".join(x["word"] for x in run)))
                run = []
            run.append(w)
        cues.append((run[0]["start"], run[-1]["end"], " ".join(x["word"] for x in run)))
    return cues


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(result: dict) -> str:
    """SubRip text of a `result_dict`."""
    return "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(result), 1))


def to_vtt(result: dict) -> str:
    """WebVTT text of a `result_dict`."""
    return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n\n"
                                  for a, b, text in _cues(result))


def write_outputs(result: dict, folder: Path, key: str) -> list[Path]:
    """``key.json``, ``key.srt`` and ``key.vtt`` in ``folder`` (made if missing)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{key}.json", folder / f"{key}.srt", folder / f"{key}.vtt"]
    paths[0].write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    paths[1].write_text(to_srt(result))
    paths[2].write_text(to_vtt(result))
    return paths


def transcribe_file(path: str, model="whisper-tiny.en", out_dir: str | None = None, batch_size: int = 8,
                    device: str = "cpu", beam: int = 1, language: str | None = None) -> dict:
    """Transcribe one audio file of any length with word timestamps and confidence.

    ``model``: a Whisper asset name, hub id or folder, or a loaded recogniser with
    ``decode_words`` (`WhisperRecognizer`, `westkit.decode.ct2.Ct2WhisperRecognizer`, a
    `WestRecognizer` with its heads; reuse it across files). Long audio is cut at pauses (silero-vad) into windows of at most 30 s,
    decoded in batches of ``batch_size`` windows (`westkit.decode.longform`). Returns the
    `result_dict`; with ``out_dir``, also writes ``<stem>.json``, ``.srt`` and ``.vtt`` there.
    ValueError names the file if it cannot be read.
    """
    from westkit.data.audio import BadInput, read_audio
    from westkit.decode import longform
    from westkit.decode.recognizers import WhisperRecognizer
    from westkit.decode.search import GenerateConfig

    try:
        audio = read_audio(str(path))
    except BadInput as e:
        raise ValueError(f"{path}: cannot read the audio ({e}); give a wav/flac/mp3/ogg file") from None
    rec = model if hasattr(model, "decode_words") else WhisperRecognizer.load(
        model, GenerateConfig(beam=beam), torch.device(device), torch.float32, language)
    result = longform.transcribe(rec, [audio], longform.LongformConfig(batch_size=batch_size))[0]
    if out_dir is not None:
        write_outputs(result, Path(out_dir), Path(path).stem)
    return result
