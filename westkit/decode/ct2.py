"""The CTranslate2 backend for Whisper models (faster-whisper's runtime): int8 on CPU, float16 on GPU.

`Ct2WhisperRecognizer` has the interface of `westkit.decode.recognizers.WhisperRecognizer`
(``encode`` -> ``decode_states`` -> transcripts, ``decode_words`` for timestamps), so
`westkit.decode.longform`, ``westkit transcribe / evaluate / compare --backend ctranslate2`` and
``westkit-recognize --backend ctranslate2`` run either backend with the same code.

Which folder it runs (`ct2_folder`): a run folder's ``ct2/`` export (recipes/whisper), a folder
that already is a CTranslate2 model (``model.bin``), or any Whisper checkpoint (asset name, hub
id, HF folder) converted once by CTranslate2's own converter (`westkit.models.whistle.export_ct2`,
float32) into ``WESTKIT_HOME/cache/ct2/``, keyed by the checkpoint's files. The compute type
(``int8``, ``float16``, ...) is chosen when loading, from the one float32 conversion.

What is CTranslate2's: the encoder, greedy/beam search (``generate``) and the alignment-head DTW
(``align``, which also gives each token's probability: faster-whisper's word confidence). What is
written here: the same log-mel features as the transformers path (`westkit.models.features.LogMel`),
the same prefix and suppression (no special token but the end), per-row token budgets (CTranslate2
takes one length for a batch: each row is cut to its own budget afterwards, so greedy ids and
``hit_limit`` equal the transformers path's), and the conversion cache.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from westkit.decode.recognizers import Transcript, row_prefixes, whisper_prefix
from westkit.decode.search import GenerateConfig, token_budget
from westkit.models.features import LogMel

COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")


def _is_ct2(folder: Path) -> bool:
    return (folder / "model.bin").is_file() and (folder / "config.json").is_file()


def _checkpoint_key(path: str) -> str:
    """What identifies a checkpoint's content cheaply: a folder's path with its files' sizes and
    modification times, or a hub id as written."""
    p = Path(path)
    if not p.is_dir():
        return path
    files = sorted(f for f in p.iterdir() if f.is_file())
    return json.dumps([str(p.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def ct2_folder(name: str) -> tuple[Path, str]:
    """(CTranslate2 folder, HF folder or hub id for the tokenizer) of Whisper ``name``: a run
    folder (its ``ct2/`` export if there is one), a CTranslate2 folder, or a checkpoint
    converted once into the cache (see the module docstring)."""
    from filelock import FileLock

    from westkit import assets, paths
    from westkit.models.whistle import export_ct2

    p = Path(name)
    if p.is_dir() and (p / "hf" / "config.json").is_file() and not (p / "config.json").is_file():
        if _is_ct2(p / "ct2"):  # a run folder with its CTranslate2 export
            return p / "ct2", str(p / "hf")
        p = p / "hf"
    if p.is_dir() and _is_ct2(p):
        return p, str(p)
    hf = assets.resolve(str(p) if p.is_dir() else name)
    key = hashlib.sha1(_checkpoint_key(hf).encode()).hexdigest()[:16]
    out = paths.writable(paths.home() / "cache" / "ct2") / f"{Path(hf).name}-{key}"
    if not _is_ct2(out):
        with FileLock(str(out) + ".lock"):
            if not _is_ct2(out):
                tmp = out.with_name(out.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                export_ct2(Path(hf), tmp)
                shutil.rmtree(out, ignore_errors=True)
                tmp.rename(out)
    return out, hf


def _device(device) -> str:
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--backend ctranslate2 runs on cpu or cuda, not {kind}")
    return kind


class Ct2WhisperRecognizer:
    """A Whisper model run by CTranslate2 (see the module docstring)."""

    def __init__(self, model, tokenizer, gen: GenerateConfig, n_mels: int, median_filter_width: int = 7,
                 language: str | None = None):
        self.model, self.tokenizer, self.gen = model, tokenizer, gen
        from westkit.models.whisper import WhisperText

        self.prefix, self.eot = whisper_prefix(tokenizer, language), tokenizer.eos_token_id
        self.text = WhisperText(tokenizer)   # after whisper_prefix: a given language wins
        self.suppress = list(range(self.eot + 1, len(tokenizer)))  # special tokens after the end token
        self.logmel = LogMel(n_mels)
        self.median_filter_width = median_filter_width
        self.limit = 448 - len(self.prefix)  # Whisper's decoder positions, prefix included
        self.device = torch.device("cpu")  # where audio goes: features are made on the CPU

    @classmethod
    def load(cls, name: str, gen: GenerateConfig, device="cpu", compute_type: str | None = None,
             language: str | None = None) -> Ct2WhisperRecognizer:
        """Any Whisper ``name`` (see `ct2_folder`), with CTranslate2's ``compute_type`` (None:
        int8 on CPU, float16 on GPU)."""
        try:
            import ctranslate2
        except ImportError:
            raise ValueError("--backend ctranslate2 needs ctranslate2: pip install ctranslate2") from None
        from westkit.models.whisper import load_whisper_tokenizer

        compute_type = compute_type or ("int8" if _device(device) == "cpu" else "float16")
        if compute_type not in COMPUTE_TYPES:
            raise ValueError(f"--compute-type {compute_type!r}: choose one of {', '.join(COMPUTE_TYPES)}")
        folder, tokenizer_from = ct2_folder(name)
        config = json.loads((folder / "config.json").read_text())
        model = ctranslate2.models.Whisper(str(folder), device=_device(device), compute_type=compute_type,
                                           intra_threads=torch.get_num_threads())
        return cls(model, load_whisper_tokenizer(tokenizer_from), gen, model.n_mels,
                   int(config.get("median_filter_width", 7)), language)

    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """audio (B, T), audio_lens (B,) samples -> CTranslate2's encoder output (B, 1500, D)
        over the log-mel features of the 30 s window (the first 30 s are heard, as in Whisper)."""
        import ctranslate2

        feats, _ = self.logmel(audio.float().cpu(), audio_lens.cpu(), pad_to_30s=True)
        return self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy())),
                                 to_cpu=False)

    def decode_states(self, states, audio_lens: torch.Tensor | None = None, everyone_done=None,
                      langs: list[str] | None = None) -> list[Transcript]:
        """Encoder output (`encode`) -> transcripts, with the transformers path's budgets and
        per-row language prefixes (``langs``, as `WhisperRecognizer.decode_states`)."""
        if everyone_done is not None:
            raise ValueError("the CTranslate2 backend decodes in one process (no ZeRO-3 lockstep)")
        n = int(states.shape[0])
        budgets = (token_budget(audio_lens, self.gen) if audio_lens is not None else [self.gen.max_new_tokens] * n)
        budgets = [min(b, self.limit) for b in budgets]
        # CTranslate2's max_length for Whisper allows max_length // 2 new tokens here (measured):
        # ask for one more than the largest budget, then cut each row to its own
        results = self.model.generate(states, row_prefixes(self.text, self.prefix, langs, n), beam_size=self.gen.beam,
                                      max_length=min(448, 2 * (max(budgets) + 1)), length_penalty=self.gen.length_penalty,
                                      suppress_blank=False, suppress_tokens=self.suppress)
        outs = []
        for r, budget in zip(results, budgets):
            ids = [t for t in r.sequences_ids[0] if t != self.eot]
            outs.append(Transcript(self.tokenizer.decode(ids[:budget], skip_special_tokens=True).strip(),
                                   ids[:budget], len(ids) >= budget))
        return outs

    def __call__(self, audio: torch.Tensor, audio_lens: torch.Tensor, everyone_done=None) -> list[Transcript]:
        return self.decode_states(self.encode(audio, audio_lens), audio_lens, everyone_done)

    def decode_words(self, audio: torch.Tensor, audio_lens: torch.Tensor, offsets: list[float] | None = None):
        """audio (B, T), audio_lens (B,) -> (transcripts, words per row), as the transformers
        path's ``decode_words``."""
        states = self.encode(audio, audio_lens)
        outs = self.decode_states(states, audio_lens)
        return outs, self.words(states, audio_lens, outs, offsets)

    def words(self, states, audio_lens: torch.Tensor, transcripts: list[Transcript],
              offsets: list[float] | None = None):
        """Word times and confidences from CTranslate2's ``align`` (alignment heads + DTW over
        the audio's frames); fills each transcript's ``logprobs`` from its token probabilities."""
        from westkit.decode import timestamps as ts

        mel_frames = [min(3000, int(n) // 160) for n in audio_lens.tolist()]
        offsets = offsets or [0.0] * len(transcripts)
        aligned = self.model.align(states, self.prefix, [t.ids + [self.eot] for t in transcripts],
                                   mel_frames, median_filter_width=self.median_filter_width)
        result = []
        for t, a, off, n in zip(transcripts, aligned, offsets, audio_lens.tolist()):
            text_idx, time_idx = (np.array(x) for x in zip(*a.alignments)) if a.alignments else (np.zeros(1), np.zeros(1))
            jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
            starts = time_idx[jumps] * ts.FRAME_SECONDS
            starts = np.pad(starts, (0, max(0, len(t.ids) + 1 - len(starts))), mode="edge")  # every token a start
            t.logprobs = [math.log(max(p, 1e-12)) for p in a.text_token_probs[:len(t.ids)]]
            frames = math.ceil(int(n) / ts.SAMPLES_PER_FRAME)
            result.append(ts.words_from_tokens(self.tokenizer, t.ids, starts, t.logprobs, off,
                                               off + frames * ts.FRAME_SECONDS))
        return result


BACKENDS = ("transformers", "ctranslate2")


def whisper_recognizer(name: str, gen: GenerateConfig, backend: str = "transformers", device="cpu",
                       dtype=torch.float32, compute_type: str | None = None, language: str | None = None):
    """A Whisper recogniser of either backend (``transformers`` or ``ctranslate2``)."""
    if backend == "ctranslate2":
        return Ct2WhisperRecognizer.load(name, gen, device, compute_type, language)
    if backend != "transformers":
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from westkit.decode.recognizers import WhisperRecognizer

    return WhisperRecognizer.load(name, gen, torch.device(device), dtype, language)

