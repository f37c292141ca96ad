"""Long-form transcription: audio of any length -> windows of at most 30 s -> batched decoding.

1. `speech_regions`: silero-vad (its wheel ships the model; ``get_speech_timestamps``) finds
   speech in the whole file.
2. `plan_windows` (cut and merge, as WhisperX does): neighbouring regions are merged while the
   window stays within ``max_window`` seconds; a region longer than that is cut into equal
   pieces; each window then takes up to ``pad`` seconds of the silence around it without
   touching its neighbours. Audio between windows is silence by the VAD's verdict; nothing
   with speech in it is dropped, and the windows are reported in ``segments``.
3. `transcribe`: every window of every file is decoded in length-sorted batches of
   ``batch_size`` windows with a recognizer's ``decode_words`` (`WhisperRecognizer`: the
   alignment heads' cross-attention; `westkit.decode.ct2.Ct2WhisperRecognizer`: CTranslate2's
   ``align``; `WestRecognizer`: the LLM's attention over the audio embeddings,
   `westkit.decode.timestamps`), word times are shifted by the window's start and (``snap``)
   shrunk off the window's quiet frames (`westkit.decode.timestamps.snap_to_speech`).

Words come out in time order, never overlapping (each window's DTW path is monotonic, windows
do not overlap, times are capped at their window's end). Where a hypothesis ends ``resume_after``
seconds or more before its window does and the VAD hears speech after its last word (Whisper
tends to stop early on windows of many short utterances), the rest of the window is decoded
again from that word's end, like openai-whisper's seek; its segment is flagged ``resumed``. A
window whose token budget cut the hypothesis is flagged ``truncated`` in its segment and the
utterance's ``flags``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from westkit.data.pipeline import pad_audio
from westkit.decode import timestamps as ts
from westkit.models.features import SAMPLE_RATE


@dataclasses.dataclass
class LongformConfig:
    """How long audio is cut into windows and decoded."""
    max_window: float = 30.0          # seconds; Whisper's window
    pad: float = 0.2                  # seconds of silence kept around each window
    vad_threshold: float = 0.5        # silero-vad speech probability
    min_silence_ms: int = 300         # a pause this long splits speech regions
    min_speech_ms: int = 150
    batch_size: int = 8               # windows per decoder batch
    snap: bool = True                 # shrink word edges off quiet frames (timestamps.snap_to_speech)
    resume_after: float = 1.0         # seconds of speech left after a window's last word: decode them again


_VAD = None


def _vad_model():
    global _VAD
    if _VAD is None:
        from silero_vad import load_silero_vad

        _VAD = load_silero_vad(onnx=False)
    return _VAD


def speech_regions(audio: np.ndarray, cfg: LongformConfig) -> list[tuple[int, int]]:
    """(start, end) samples of speech in 16 kHz mono ``audio`` (T,), in order, per silero-vad."""
    from silero_vad import get_speech_timestamps

    found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                                  _vad_model(), sampling_rate=SAMPLE_RATE, threshold=cfg.vad_threshold,
                                  min_silence_duration_ms=cfg.min_silence_ms,
                                  min_speech_duration_ms=cfg.min_speech_ms, speech_pad_ms=0)
    return [(int(r["start"]), int(r["end"])) for r in found]


def plan_windows(regions: list[tuple[int, int]], total: int, cfg: LongformConfig) -> list[tuple[int, int]]:
    """Cut-and-merge ``regions`` (samples) into windows of at most ``cfg.max_window`` s within
    [0, total), each padded into the silence around it; windows never overlap."""
    limit = int(cfg.max_window * SAMPLE_RATE)
    pieces = []
    for a, b in regions:
        n = -(-(b - a) // limit)  # long speech without a pause: equal pieces under the limit
        edges = np.linspace(a, b, n + 1).round().astype(int)
        pieces += list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    windows: list[list[int]] = []
    for a, b in pieces:
        if windows and b - windows[-1][0] <= limit:
            windows[-1][1] = b
        else:
            windows.append([a, b])
    pad = int(cfg.pad * SAMPLE_RATE)
    out = []
    for i, (a, b) in enumerate(windows):
        room = limit - (b - a)
        lo = max(0, out[-1][1] if out else 0, a - min(pad, room // 2))
        hi = min(total, windows[i + 1][0] if i + 1 < len(windows) else total, b + min(pad, room - (a - lo)))
        out.append((lo, hi))
    return out


def file_windows(audio: np.ndarray, cfg: LongformConfig) -> list[tuple[int, int]]:
    """One file's windows: the whole file when it fits one window (decoded exactly as a short
    utterance is), else `plan_windows` over silero-vad's speech regions."""
    if len(audio) <= int(cfg.max_window * SAMPLE_RATE):
        return [(0, len(audio))]
    return plan_windows(speech_regions(audio, cfg), len(audio), cfg)


def _unheard(audio: np.ndarray, a: int, b: int, words: list, cfg: LongformConfig) -> int | None:
    """Where window [a, b) needs decoding again: the end of its last word, when the hypothesis
    stopped ``cfg.resume_after`` s or more before the window's end and silero-vad hears speech
    after it (Whisper sometimes ends a window of many short utterances after the first few);
    else None."""
    if not words:
        return None
    rest = max(a, int(round(words[-1].end * SAMPLE_RATE)))
    if b - rest < cfg.resume_after * SAMPLE_RATE or rest - a < 0.1 * SAMPLE_RATE:  # nothing left / no progress
        return None
    return rest if speech_regions(audio[rest:b], cfg) else None


def transcribe(rec, audios: list[np.ndarray], cfg: LongformConfig | None = None,
               windows: list[list[tuple[int, int]]] | None = None, progress: str | None = None) -> list[dict]:
    """Transcribe whole files: one `westkit.decode.timestamps.result_dict` per ``audios[i]``
    (T,) float at 16 kHz, with ``flags`` (``no_speech``, ``truncated``) and ``decoded_seconds``
    (the windows' total: the rest is what the VAD called silence). ``windows`` (samples
    per file) skips the VAD when given; ``progress`` names a progress bar (stderr) over the batches."""
    import sys

    from tqdm import tqdm

    cfg = cfg or LongformConfig()
    if windows is None:
        windows = [plan_windows(speech_regions(a, cfg), len(a), cfg) for a in audios]
    windows = [sorted(ws) for ws in windows]
    queue = [(f, a, b) for f, ws in enumerate(windows) for a, b in ws]
    decoded: dict[tuple[int, int], tuple] = {}
    resumed: set[tuple[int, int]] = set()
    bar = tqdm(total=len(queue), desc=progress, unit="window", file=sys.stderr, disable=progress is None)
    while queue:
        queue.sort(key=lambda j: -(j[2] - j[1]))  # similar lengths together
        chunk, queue = queue[:cfg.batch_size], queue[cfg.batch_size:]
        audio, lens = pad_audio([audios[f][a:b] for f, a, b in chunk])
        audio, lens = audio.to(rec.device), lens.to(rec.device)
        outs, words = rec.decode_words(audio, lens, [a / SAMPLE_RATE for _, a, _ in chunk])
        for (f, a, b), t, w in zip(chunk, outs, words):
            if cfg.snap:
                ts.snap_to_speech(w, audios[f][a:b], a / SAMPLE_RATE)
            rest = _unheard(audios[f], a, b, w, cfg)
            if rest is not None:  # the model stopped before the window's speech did: seek on
                windows[f][windows[f].index((a, b))] = (a, rest)
                windows[f].append((rest, b))
                windows[f].sort()
                queue.append((f, rest, b))
                bar.total += 1
                resumed.add((f, a))
            decoded[(f, a)] = (t, w)
        bar.update(len(chunk))
    bar.close()
    results = []
    for f, ws in enumerate(windows):
        words, segments, texts, flags = [], [], [], []
        for a, b in ws:
            t, w = decoded[(f, a)]
            words += w
            texts.append(t.text)
            seg_flags = (["truncated"] if t.hit_limit else []) + (["resumed"] if (f, a) in resumed else [])
            flags += [x for x in seg_flags if x == "truncated"]
            segments.append(ts.segment(w, t.text, a / SAMPLE_RATE, b / SAMPLE_RATE, flags=seg_flags))
        if not ws:
            flags.append("no_speech")
        results.append(ts.result_dict(" ".join(x for x in texts if x), words, segments,
                                      len(audios[f]) / SAMPLE_RATE, flags=sorted(set(flags)),
                                      decoded_seconds=round(sum(b - a for a, b in ws) / SAMPLE_RATE, 3)))
    return results
